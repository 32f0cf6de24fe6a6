"""Chunk rules on the in-process domain (MemoryStore + ManualClock): checksums, identical
retries, replacement by newer versioned objects, limits, the store being down, delete."""

from __future__ import annotations

import hashlib

import pytest

from tapedeck.errors import TapedeckError

from domainkit import World


def _keys(w: World, recording_id: str) -> list[str]:
    return [o.key for o in w.store.list(f"recordings/{recording_id}/chunks/")]


def test_identical_retry_is_already_stored_and_writes_nothing(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    md5 = hashlib.md5(b"chunk one").hexdigest()
    first = w.domain.chunks.upload(p, rec.id, 1, [b"chunk ", b"one"], md5=md5)
    again = w.domain.chunks.upload(p, rec.id, 1, [b"chunk one"], md5=md5)
    assert (first.already_stored, first.replaced) == (False, False)
    assert (again.already_stored, again.replaced) == (True, False)
    assert first.chunk.md5 == again.chunk.md5 == md5
    assert len(_keys(w, rec.id)) == 1


def test_different_bytes_replace_the_part_with_a_new_object(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    w.domain.chunks.upload(p, rec.id, 1, [b"old bytes"])
    result = w.domain.chunks.upload(p, rec.id, 1, [b"new bytes"])
    assert (result.already_stored, result.replaced) == (False, True)
    keys = _keys(w, rec.id)
    assert len(keys) == 2 and keys[0] < keys[1]  # versioned keys: nothing overwritten
    listing = w.domain.chunks.list(p, rec.id)
    assert [(c.part, c.md5) for c in listing.chunks] == [
        (1, hashlib.md5(b"new bytes").hexdigest())]
    w.domain.recordings.finalize(p, rec.id, 1, 1_000, hashlib.md5(b"new bytes").hexdigest())


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_a_wrong_digest_stores_nothing(domain_world: World, algorithm: str) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    wrong = getattr(hashlib, algorithm)(b"other").hexdigest()
    with pytest.raises(TapedeckError, match=f"chunk's {algorithm} does not match") as info:
        w.domain.chunks.upload(p, rec.id, 1, [b"the bytes"], **{algorithm: wrong})
    assert info.value.type == "checksum_mismatch"
    assert info.value.details["actual"] == getattr(hashlib, algorithm)(b"the bytes").hexdigest()
    assert _keys(w, rec.id) == []
    assert w.domain.recordings.get(p, rec.id).chunks_received == 0


@pytest.mark.parametrize(("kwargs", "field", "match"), [
    ({"md5": "not-hex"}, "md5", "md5"),
    ({"require_checksum": True}, "md5", "Send the chunk's md5 or sha256"),
])
def test_bad_digest_arguments_are_invalid(domain_world: World, kwargs: dict[str, object],
                                          field: str, match: str) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    with pytest.raises(TapedeckError, match=match) as info:
        w.domain.chunks.upload(p, rec.id, 1, [b"x"], **kwargs)  # type: ignore[arg-type]
    assert (info.value.type, info.value.details["field"]) == ("invalid_request", field)


def test_empty_oversize_and_out_of_range_parts(domain_world: World) -> None:
    w = domain_world
    w.domain.ctx.settings = w.settings.replace(max_chunk_bytes=8, max_chunks=3)
    p = w.principal()
    rec = w.streaming(p)
    with pytest.raises(TapedeckError, match="must not be empty") as empty:
        w.domain.chunks.upload(p, rec.id, 1, [b""])
    with pytest.raises(TapedeckError, match="at most 8 bytes") as big:
        w.domain.chunks.upload(p, rec.id, 1, [b"12345", b"6789"])
    with pytest.raises(TapedeckError, match="at most 8 bytes") as announced:
        w.domain.chunks.upload(p, rec.id, 1, [b"1"], size=9)
    with pytest.raises(TapedeckError, match="between 1 and 3") as part:
        w.domain.chunks.upload(p, rec.id, 4, [b"1"])
    assert [e.value.type for e in (empty, big, announced, part)] == [
        "invalid_request", "payload_too_large", "payload_too_large", "invalid_request"]
    assert _keys(w, rec.id) == []


def test_chunks_after_finalize_are_refused_and_not_listed(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    checksum = w.put_chunks(p, rec.id, b"one")
    w.domain.recordings.finalize(p, rec.id, 1, 1_000, checksum)
    with pytest.raises(TapedeckError, match="is uploaded; it no longer accepts") as info:
        w.domain.chunks.upload(p, rec.id, 2, [b"two"])
    assert (info.value.type, info.value.details["status"]) == ("recording_not_streaming",
                                                               "uploaded")
    assert [c.part for c in w.domain.chunks.list(p, rec.id).chunks] == [1]


def test_store_down_is_storage_unavailable_and_nothing_counts(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    w.store.down = True
    with pytest.raises(TapedeckError) as info:
        w.domain.chunks.upload(p, rec.id, 1, [b"bytes"])
    assert info.value.type == "storage_unavailable"
    w.store.down = False
    assert w.domain.recordings.get(p, rec.id).chunks_received == 0
    assert w.domain.chunks.upload(p, rec.id, 1, [b"bytes"]).already_stored is False


def test_delete_a_stray_part_then_finalize(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    w.put_chunks(p, rec.id, b"a", b"b", b"stray")
    with pytest.raises(TapedeckError, match="Part 5 is not stored") as info:
        w.domain.chunks.delete(p, rec.id, 5)
    assert info.value.type == "chunk_not_found"
    after = w.domain.chunks.delete(p, rec.id, 3)
    assert ([c.part for c in after.chunks], after.missing_chunks) == ([1, 2], [])
    done = w.domain.recordings.finalize(p, rec.id, 2, 1_000,
                                        hashlib.md5(b"ab").hexdigest())
    assert done.status == "uploaded"


def test_missing_parts_are_listed(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    for part in (1, 4):
        w.domain.chunks.upload(p, rec.id, part, [b"p%d" % part])
    listing = w.domain.chunks.list(p, rec.id)
    assert ([c.part for c in listing.chunks], listing.missing_chunks) == ([1, 4], [2, 3])


def test_presigned_urls_need_the_capability(domain_world: World) -> None:
    """MemoryStore has no ``Presigning``: the domain answers a typed error, not a crash."""
    w = domain_world
    p = w.principal()
    rec = w.streaming(p)
    with pytest.raises(TapedeckError, match="cannot issue direct URLs") as info:
        w.domain.chunks.create_upload_url(p, rec.id, 1)
    assert info.value.type == "invalid_state"
