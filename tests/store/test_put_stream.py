"""``S3Store.put_stream`` (the StreamingPut capability) against the real SeaweedFS: one
PUT sent while its body is produced; the object exists only if the body ended well."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator

import pytest

from tapedeck.errors import TapedeckError
from tapedeck.infra.store import ObjectExists
from tapedeck.infra.store.s3 import S3Store

DATA = os.urandom(300_000)


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def blocks(data: bytes, *, fail_after: int | None = None, fail_at_end: bool = False,
           size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        if fail_after is not None and i >= fail_after:
            raise RuntimeError("the producer failed")
        yield data[i:i + size]
    if fail_at_end:
        raise RuntimeError("refused at the end")


def keys(store: S3Store) -> list[str]:
    return [o.key for o in store.list("k/")]


def test_streams_one_single_put_with_md5_etag(store: S3Store) -> None:
    info = store.put_stream("k/a", blocks(DATA), len(DATA), content_md5_b64=b64md5(DATA),
                            if_absent=True, content_type="audio/ogg")
    assert info.etag == hashlib.md5(DATA).hexdigest()
    assert info.size == len(DATA)
    stream = store.open("k/a")
    try:
        assert stream.read() == DATA
    finally:
        stream.close()
    assert store.stat("k/a").size == len(DATA)  # type: ignore[union-attr]


@pytest.mark.parametrize(("failure", "message"), [({"fail_after": 128 * 1024}, "the producer failed"),
                                                  ({"fail_at_end": True}, "refused at the end")])
def test_a_failing_producer_stores_nothing(store: S3Store, failure: dict[str, object],
                                           message: str) -> None:
    # fail_at_end: every byte was produced, the last block was held back → still nothing
    with pytest.raises(RuntimeError, match=f"^{message}$"):
        store.put_stream("k/b", blocks(DATA, **failure), len(DATA))  # type: ignore[arg-type]
    assert keys(store) == []


@pytest.mark.parametrize("body", [DATA + b"x", DATA[:-1]])
def test_other_length_is_invalid_and_stores_nothing(store: S3Store, body: bytes) -> None:
    with pytest.raises(TapedeckError) as caught:
        store.put_stream("k/c", blocks(body), len(DATA))
    assert caught.value.type == "invalid_request"
    assert keys(store) == []


def test_wrong_content_md5_is_refused_by_the_store(store: S3Store) -> None:
    with pytest.raises(TapedeckError) as caught:
        store.put_stream("k/d", blocks(DATA), len(DATA), content_md5_b64=b64md5(b"other"))
    assert caught.value.type == "checksum_mismatch"
    assert keys(store) == []


def test_if_absent_never_overwrites(store: S3Store) -> None:
    store.put_stream("k/e", blocks(DATA), len(DATA), if_absent=True)
    with pytest.raises(ObjectExists, match=r"^k/e$"):
        store.put_stream("k/e", blocks(b"y" * 1000), 1000, if_absent=True)
    assert store.stat("k/e").etag == hashlib.md5(DATA).hexdigest()  # type: ignore[union-attr]
