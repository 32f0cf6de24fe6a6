"""Opaque page cursors of the list calls: unpadded urlsafe base64 of a small JSON object.

A cursor is only ever a value a list call returned; anything else, whatever it decodes to,
is ``invalid_request`` on ``cursor`` (never an internal error).
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from tapedeck.clock import parse_iso
from tapedeck.errors import TapedeckError, invalid

_K = TypeVar("_K", str, int)


def encode(fields: dict[str, Any]) -> str:
    """The cursor carrying ``fields`` (compact JSON)."""
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> dict[str, Any]:
    """The fields of a cursor made by ``encode``; ``invalid_request`` if it is not one."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):  # binascii.Error, JSONDecodeError, bad UTF-8
        raise _not_a_cursor() from None
    if not isinstance(data, dict):
        raise _not_a_cursor()
    return data


def encode_position(created_at: str, item_id: str) -> str:
    """The cursor after the item (``created_at`` ISO-8601, ``item_id``) of a list ordered by
    ``(created_at, id)``."""
    return encode({"c": created_at, "i": item_id})


def decode_position(cursor: str) -> tuple[str, str]:
    """``(created_at, id)`` of an ``encode_position`` cursor; ``invalid_request`` otherwise."""
    data = decode(cursor)
    created, item_id = data.get("c"), data.get("i")
    if not isinstance(created, str) or not isinstance(item_id, str):
        raise _not_a_cursor()
    try:
        parse_iso(created)
    except ValueError:
        raise _not_a_cursor() from None
    return created, item_id


def encode_key(value: str | int) -> str:
    """The cursor after the item whose sort key is ``value`` (an id or a sequence number)."""
    return encode({"k": value})


def decode_key(cursor: str, kind: type[_K]) -> _K:
    """The sort key of an ``encode_key`` cursor, which must be a ``kind``."""
    value = decode(cursor).get("k")
    if not isinstance(value, kind):
        raise _not_a_cursor()
    return value


def _not_a_cursor() -> TapedeckError:
    return invalid("cursor", "cursor is not a value returned by this API.")
