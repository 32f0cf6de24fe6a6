"""The object-key layout: where every object a recording owns lives in the store, and the
one way to find a part's current object. Every writer and reader of a chunk or media object
goes through these functions (never a hand-built key)."""

from __future__ import annotations

import re
from datetime import datetime

from tapedeck.errors import error
from tapedeck.ids import new_id
from tapedeck.infra.store import ObjectInfo, ObjectStore, Presigning

# A part's object: ``chunk_{part}.{version}.opus``, one new object (a fresh sortable version)
# per upload or presigned URL, so no upload ever overwrites another; ``chunk_{part}.opus``
# (no version, the oldest) is the layout before issue 15.
CHUNK_KEY_RE = re.compile(
    r"^recordings/(rec_[0-9A-Za-z]+)/chunks/chunk_(\d+)(?:\.(v[0-9A-Za-z]+))?\.opus$")


def chunk_prefix(recording_id: str) -> str:
    """Store prefix under which a recording's chunks live."""
    return f"recordings/{recording_id}/chunks/"


def chunk_key(recording_id: str, part: int, version: str | None = None) -> str:
    """Store key of one object of a part: ``recordings/{id}/chunks/chunk_{part}.{version}.opus``
    (``chunk_{part}.opus`` without a version). THE chunk layout: every writer and reader
    of a part's object goes through this function, ``new_chunk_key``, ``part_key`` or
    ``stored_parts``."""
    suffix = "" if version is None else f".{version}"
    return f"{chunk_prefix(recording_id)}chunk_{part}{suffix}.opus"


def new_chunk_key(recording_id: str, part: int, now: datetime | None = None) -> str:
    """A key no object has yet for a new upload of ``part`` (newer than every earlier one
    made by this process: ``tapedeck.ids``); ``now``: the domain's clock."""
    return chunk_key(recording_id, part, new_id("v", now))


def part_key(recording_id: str, part: int, pinned: str | None) -> str:
    """The object finalize pinned for ``part`` (``chunks.object_key``); ledger rows written
    before pinning existed (``None``) name the unversioned key."""
    return pinned if pinned is not None else chunk_key(recording_id, part)


def chunk_objects(store: ObjectStore, recording_id: str,
                  part: int | None = None) -> dict[int, list[ObjectInfo]]:
    """Every chunk object the store holds for a recording (or only for ``part``), by part,
    oldest upload first."""
    prefix = chunk_prefix(recording_id) + ("" if part is None else f"chunk_{part}.")
    parts: dict[int, list[tuple[str, ObjectInfo]]] = {}
    for obj in store.list(prefix):
        m = CHUNK_KEY_RE.match(obj.key)
        if m and m.group(1) == recording_id:
            parts.setdefault(int(m.group(2)), []).append((m.group(3) or "", obj))
    return {part: [obj for _, obj in sorted(objs, key=lambda vo: vo[0])]
            for part, objs in parts.items()}


def stored_parts(store: ObjectStore, recording_id: str,
                 part: int | None = None) -> dict[int, ObjectInfo]:
    """The current object of each part the store holds (its latest upload), by part number:
    the truth that finalize, expiry and chunk listings go by."""
    return {n: objs[-1] for n, objs in chunk_objects(store, recording_id, part).items()}


def recording_prefix(recording_id: str) -> str:
    """Store prefix of every object a recording owns."""
    return f"recordings/{recording_id}/"


def presigning(store: ObjectStore) -> Presigning:
    """``store`` as a ``Presigning`` store, or ``invalid_state`` when it cannot hand out
    direct URLs (clients upload and download through the API instead)."""
    if not isinstance(store, Presigning):
        raise error("invalid_state", "This server's object store cannot issue direct URLs;"
                    " upload and download through the API.")
    return store
