"""The ``ObjectStore`` contract, run against every backend: S3Store on a real ``weed``, and
MemoryStore. The core tests run on every backend; a capability's tests (presigning, multipart
cleanup) run on the backends that have it (``backends_with``)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from tapedeck.errors import TapedeckError
from tapedeck.infra.store import MultipartCleanup, ObjectExists, ObjectNotFound, ObjectStore, Presigning
from tapedeck.infra.store.memory import MemoryStore
from tapedeck.infra.store.s3 import PART_SIZE, S3Store
from tapedeck.infra.weed import ManagedWeed, free_port

CAPABILITIES: dict[str, set[type]] = {"s3": {Presigning, MultipartCleanup}, "memory": set()}
BACKENDS = list(CAPABILITIES)


def backends_with(capability: type) -> pytest.MarkDecorator:
    """Run a test only on the backends that have ``capability``."""
    names = [b for b, caps in CAPABILITIES.items() if capability in caps]
    return pytest.mark.parametrize("backend", names, indirect=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def obj_store(backend: str, request: pytest.FixtureRequest) -> ObjectStore:
    """The backend under test, on an empty bucket/namespace."""
    if backend == "s3":
        s: ObjectStore = request.getfixturevalue("store")
        return s
    if backend == "memory":
        return MemoryStore()
    raise AssertionError(backend)


@pytest.fixture
def down_store(backend: str) -> Iterator[ObjectStore]:
    """The backend when its store cannot be reached (S3: an address where nothing listens)."""
    if backend == "memory":
        memory = MemoryStore()
        memory.down = True
        yield memory
        return
    if backend != "s3":
        raise AssertionError(backend)
    s = S3Store(f"127.0.0.1:{free_port()}", "AKIDEXAMPLE", "x" * 40, "nowhere")
    yield s
    s.close()


def test_declared_capabilities_are_the_real_ones(obj_store: ObjectStore, backend: str) -> None:
    """``CAPABILITIES`` matches what each backend implements (runtime protocol checks)."""
    assert isinstance(obj_store, ObjectStore)
    assert {c for c in (Presigning, MultipartCleanup) if isinstance(obj_store, c)} == (
        CAPABILITIES[backend])


@pytest.fixture
def store_at(
    backend: str, obj_store: ObjectStore, weed: ManagedWeed
) -> Iterator[Callable[[datetime], ObjectStore]]:
    """Build a second view of ``obj_store``'s bucket whose clock is fixed at a given time."""
    if backend != "s3":
        raise AssertionError(backend)
    assert isinstance(obj_store, S3Store)
    made: list[S3Store] = []

    def make(at: datetime) -> ObjectStore:
        s = S3Store(weed.endpoint, weed.access_key, weed.secret_key, obj_store.bucket,
                    clock=lambda: at)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put_bytes(s: ObjectStore, key: str, data: bytes, **kw: object) -> object:
    return s.put(key, io.BytesIO(data), len(data), **kw)  # type: ignore[arg-type]


def read_all(s: ObjectStore, key: str) -> bytes:
    f = s.open(key)
    try:
        return f.read()
    finally:
        f.close()


def http_request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One plain HTTP request (no SDK) to a presigned URL."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def error_type(exc: pytest.ExceptionInfo[TapedeckError]) -> str:
    return exc.value.type


# -- put / open / stat / delete --------------------------------------------------------------


def test_put_then_open_stat_roundtrip(obj_store: ObjectStore) -> None:
    data = os.urandom(300_000)
    info = obj_store.put("recordings/r1/chunks/chunk_1.opus", io.BytesIO(data), len(data),
                         content_type="audio/ogg")
    assert info.key == "recordings/r1/chunks/chunk_1.opus"
    assert info.size == len(data)
    assert info.etag == md5_hex(data)
    st = obj_store.stat("recordings/r1/chunks/chunk_1.opus")
    assert st is not None
    assert (st.key, st.size, st.etag) == (info.key, len(data), md5_hex(data))
    assert st.last_modified.tzinfo is not None
    assert read_all(obj_store, "recordings/r1/chunks/chunk_1.opus") == data


def test_empty_object(obj_store: ObjectStore) -> None:
    info = put_bytes(obj_store, "empty", b"")
    assert info.size == 0  # type: ignore[attr-defined]
    assert read_all(obj_store, "empty") == b""


def test_put_overwrites(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "k", b"first")
    put_bytes(obj_store, "k", b"second!")
    assert read_all(obj_store, "k") == b"second!"
    st = obj_store.stat("k")
    assert st is not None and st.size == 7 and st.etag == md5_hex(b"second!")


def test_put_if_absent_writes_only_a_new_key(obj_store: ObjectStore) -> None:
    info = obj_store.put("k", io.BytesIO(b"first"), 5, if_absent=True)
    assert info.etag == md5_hex(b"first")
    with pytest.raises(ObjectExists, match=r"^k$"):
        obj_store.put("k", io.BytesIO(b"second!"), 7, if_absent=True,
                      content_md5_b64=base64.b64encode(hashlib.md5(b"second!").digest()).decode())
    assert read_all(obj_store, "k") == b"first"
    obj_store.delete("k")
    obj_store.put("k", io.BytesIO(b"third"), 5, if_absent=True)
    assert read_all(obj_store, "k") == b"third"


@pytest.fixture
def start_upload(backend: str, obj_store: ObjectStore) -> Callable[[str], None]:
    """Leave an unfinished multipart upload (one part sent) under a key, as a worker killed
    in the middle of ``put(length=-1)`` does."""
    if backend != "s3":
        raise AssertionError(backend)
    assert isinstance(obj_store, S3Store)
    client, bucket = obj_store._client, obj_store.bucket

    def start(key: str) -> None:
        upload_id = client._create_multipart_upload(bucket, key, {})
        client._upload_part(bucket, key, b"x" * 1024, {}, upload_id, 1)
    return start


@backends_with(MultipartCleanup)
def test_abort_incomplete_uploads_under_a_prefix(
        obj_store: ObjectStore, start_upload: Callable[[str], None]) -> None:
    put_bytes(obj_store, "recordings/a/chunks/chunk_1.opus", b"kept")
    for key in ("recordings/a/audio/a.opus", "recordings/a/audio/a.opus",
                "recordings/a/other.opus", "recordings/ab/audio/ab.opus"):
        start_upload(key)
    assert obj_store.abort_incomplete_uploads("recordings/a/") == 3
    assert obj_store.abort_incomplete_uploads("recordings/a/") == 0
    assert obj_store.abort_incomplete_uploads("recordings/") == 1  # only ab's was left
    assert read_all(obj_store, "recordings/a/chunks/chunk_1.opus") == b"kept"
    assert [o.key for o in obj_store.list("recordings/")] == ["recordings/a/chunks/chunk_1.opus"]


def test_stream_reads_in_pieces_and_close_is_final(obj_store: ObjectStore) -> None:
    data = os.urandom(1_000_003)
    put_bytes(obj_store, "big", data)
    f = obj_store.open("big")
    pieces = []
    while chunk := f.read(65_537):
        pieces.append(chunk)
    f.close()
    assert b"".join(pieces) == data
    with pytest.raises(ValueError, match="closed file"):
        f.read(1)


def test_many_partial_reads_do_not_exhaust_connections(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "p", os.urandom(2_000_000))
    for _ in range(30):  # more than the pool size: closing must give connections back
        f = obj_store.open("p")
        assert len(f.read(10)) == 10
        f.close()
    assert obj_store.stat("p") is not None


def test_missing_key(obj_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="nope/missing"):
        obj_store.open("nope/missing")
    assert obj_store.stat("nope/missing") is None
    obj_store.delete("nope/missing")  # not an error


def test_delete(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "a/b", b"x")
    obj_store.delete("a/b")
    assert obj_store.stat("a/b") is None
    with pytest.raises(ObjectNotFound, match="a/b"):
        obj_store.open("a/b")
    assert list(obj_store.list("a/")) == []


# -- list ------------------------------------------------------------------------------------


def test_list_is_in_key_order_and_filtered_by_prefix(obj_store: ObjectStore) -> None:
    # Keys chosen so that "directories first" and byte order disagree ('-' < '.' < '/' < '0').
    keys = ["r/a/b/c", "r/a0", "r/a-b", "r/a/b", "r/a.b", "r/ab", "r/a/a/z", "r/é", "other"]
    for k in keys:
        put_bytes(obj_store, k, k.encode())
    listed = list(obj_store.list("r/"))
    expected = sorted((k for k in keys if k.startswith("r/")), key=lambda k: k.encode())
    assert [i.key for i in listed] == expected
    assert all(i.size == len(i.key.encode()) and i.etag == md5_hex(i.key.encode())
               for i in listed)
    assert [i.key for i in obj_store.list("r/a/")] == ["r/a/a/z", "r/a/b", "r/a/b/c"]
    assert list(obj_store.list("zzz")) == []


def test_list_chunks_of_a_recording(obj_store: ObjectStore) -> None:
    for part in (3, 1, 2, 10):
        put_bytes(obj_store, f"recordings/r1/chunks/chunk_{part:05d}.opus", b"o" * part)
    put_bytes(obj_store, "recordings/r10/chunks/chunk_00001.opus", b"other recording")
    listed = [i.key for i in obj_store.list("recordings/r1/chunks/")]
    assert listed == [f"recordings/r1/chunks/chunk_{p:05d}.opus" for p in (1, 2, 3, 10)]


# -- checksums -------------------------------------------------------------------------------


def test_content_md5_match_is_stored(obj_store: ObjectStore) -> None:
    data = b"chunk bytes" * 1000
    info = put_bytes(obj_store, "c", data, content_md5_b64=md5_b64(data))
    assert info.etag == md5_hex(data)  # type: ignore[attr-defined]
    assert read_all(obj_store, "c") == data


def test_content_md5_mismatch_stores_nothing(obj_store: ObjectStore) -> None:
    with pytest.raises(TapedeckError) as exc:
        put_bytes(obj_store, "c", b"the bytes sent", content_md5_b64=md5_b64(b"other bytes"))
    assert error_type(exc) == "checksum_mismatch"
    assert obj_store.stat("c") is None


def test_content_md5_mismatch_keeps_previous_object(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "c", b"good")
    with pytest.raises(TapedeckError) as exc:
        put_bytes(obj_store, "c", b"evil", content_md5_b64=md5_b64(b"good"))
    assert error_type(exc) == "checksum_mismatch"
    assert read_all(obj_store, "c") == b"good"


def test_malformed_content_md5_is_invalid_request(obj_store: ObjectStore) -> None:
    with pytest.raises(TapedeckError) as exc:
        put_bytes(obj_store, "c", b"x", content_md5_b64="not base64!")
    assert error_type(exc) == "invalid_request"


def test_short_body_is_invalid_request(obj_store: ObjectStore) -> None:
    with pytest.raises(TapedeckError) as exc:
        obj_store.put("short", io.BytesIO(b"12345"), 10)
    assert error_type(exc) == "invalid_request"
    assert obj_store.stat("short") is None


# -- multipart (length = -1) -----------------------------------------------------------------


def test_unknown_length_streams_multipart(obj_store: ObjectStore) -> None:
    data = os.urandom(2 * PART_SIZE + 123_457)  # three parts
    info = obj_store.put("stitched.opus", io.BytesIO(data), content_type="audio/ogg")
    assert info.size == len(data)
    assert info.etag.endswith("-3")  # multipart ETag: not the MD5 of the content
    st = obj_store.stat("stitched.opus")
    assert st is not None and st.size == len(data)
    assert hashlib.sha256(read_all(obj_store, "stitched.opus")).digest() == (
        hashlib.sha256(data).digest()
    )


def test_unknown_length_small_object(obj_store: ObjectStore) -> None:
    info = obj_store.put("small", io.BytesIO(b"tiny"))
    assert info.size == 4
    assert read_all(obj_store, "small") == b"tiny"


def test_unknown_length_with_md5(obj_store: ObjectStore) -> None:
    data = os.urandom(PART_SIZE + 10)
    obj_store.put("m", io.BytesIO(data), content_md5_b64=md5_b64(data))
    assert read_all(obj_store, "m") == data
    with pytest.raises(TapedeckError) as exc:
        obj_store.put("m2", io.BytesIO(data), content_md5_b64=md5_b64(data[:-1]))
    assert error_type(exc) == "checksum_mismatch"
    assert obj_store.stat("m2") is None
    with pytest.raises(TapedeckError) as exc:
        obj_store.put("m3", io.BytesIO(b"small"), content_md5_b64=md5_b64(b"other"))
    assert error_type(exc) == "checksum_mismatch"
    assert obj_store.stat("m3") is None


# -- presigned URLs --------------------------------------------------------------------------


@backends_with(Presigning)
def test_presigned_put_and_get_with_plain_http(obj_store: ObjectStore) -> None:
    data = os.urandom(50_000)
    url, headers = obj_store.presign_put("direct/upload.opus", timedelta(minutes=5))
    status, _ = http_request("PUT", url, data, headers)
    assert status == 200
    assert read_all(obj_store, "direct/upload.opus") == data
    status, body = http_request("GET", obj_store.presign_get("direct/upload.opus",
                                                             timedelta(minutes=5)))
    assert (status, body) == (200, data)


@backends_with(Presigning)
def test_presigned_put_with_content_md5(obj_store: ObjectStore) -> None:
    key = "direct/a b/ü+x.opus"  # needs URI encoding in the signed path
    data = os.urandom(20_000)
    url, headers = obj_store.presign_put(key, timedelta(minutes=5), content_md5_b64=md5_b64(data))
    assert headers == {"Content-MD5": md5_b64(data)}
    assert http_request("PUT", url, b"tampered" + data[8:], headers)[0] == 400
    assert obj_store.stat(key) is None
    assert http_request("PUT", url, data, {})[0] == 403  # the header is part of the signature
    other = md5_b64(b"x" * 10)
    assert http_request("PUT", url, b"x" * 10, {"Content-MD5": other})[0] == 403
    assert obj_store.stat(key) is None
    assert http_request("PUT", url, data, headers)[0] == 200
    assert read_all(obj_store, key) == data


@backends_with(Presigning)
def test_tampered_presigned_urls_are_refused(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "secret", b"s3cret")
    get_url = obj_store.presign_get("secret", timedelta(minutes=5))
    assert http_request("GET", get_url.replace("/secret?", "/secreu?"))[0] == 403
    sig_at = get_url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if get_url[sig_at] != "0" else "1"
    assert http_request("GET", get_url[:sig_at] + flipped + get_url[sig_at + 1:])[0] == 403
    put_url, _ = obj_store.presign_put("target", timedelta(minutes=5))
    assert http_request("PUT", put_url.replace("/target?", "/victim?"), b"x")[0] == 403
    assert obj_store.stat("victim") is None
    # no signature at all
    assert http_request("GET", get_url.split("?")[0])[0] == 403


@backends_with(Presigning)
def test_expired_presigned_urls_are_refused(
    obj_store: ObjectStore, store_at: Callable[[datetime], ObjectStore]
) -> None:
    put_bytes(obj_store, "old", b"old")
    past = store_at(datetime.now(UTC) - timedelta(hours=2))
    assert http_request("GET", past.presign_get("old", timedelta(minutes=1)))[0] == 403
    url, headers = past.presign_put("late", timedelta(minutes=1))
    assert http_request("PUT", url, b"x", headers)[0] == 403
    url, headers = past.presign_put("late", timedelta(minutes=1), content_md5_b64=md5_b64(b"x"))
    assert http_request("PUT", url, b"x", headers)[0] == 403
    assert obj_store.stat("late") is None
    # the same store signing "now" works: the refusal above is the expiry
    fresh = store_at(datetime.now(UTC))
    assert http_request("GET", fresh.presign_get("old", timedelta(minutes=1))) == (200, b"old")


# -- store down ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_store_down_is_storage_unavailable(down_store: ObjectStore) -> None:
    calls: list[Callable[[], object]] = [
        lambda: put_bytes(down_store, "k", b"x"),
        lambda: down_store.put("k", io.BytesIO(b"x")),
        lambda: down_store.open("k"),
        lambda: down_store.stat("k"),
        lambda: list(down_store.list("")),
        lambda: down_store.delete("k"),
    ]
    if isinstance(down_store, MultipartCleanup):
        calls.append(lambda: down_store.abort_incomplete_uploads("k"))
    for call in calls:
        with pytest.raises(TapedeckError) as exc:
            call()
        assert error_type(exc) == "storage_unavailable"


# -- ranged reads (ObjectStore.open(key, offset, length)) ------------------------------------

@pytest.mark.parametrize(("offset", "length"), [
    (0, None), (0, 1), (100, 1000), (999_000, None), (999_999, 5), (0, 2_000_000),
    (123_457, 65_537)])
def test_open_reads_a_range(obj_store: ObjectStore, offset: int, length: int | None) -> None:
    data = os.urandom(1_000_000)
    put_bytes(obj_store, "r", data)
    f = obj_store.open("r", offset, length)
    try:
        got = f.read()
    finally:
        f.close()
    end = None if length is None else offset + length
    assert got == data[offset:end]


def test_open_past_the_end_or_empty_range_is_empty(obj_store: ObjectStore) -> None:
    put_bytes(obj_store, "r", b"0123456789")
    for offset, length in ((10, None), (50, 3), (3, 0)):
        f = obj_store.open("r", offset, length)
        assert f.read() == b"", (offset, length)
        f.close()
    for offset, length in ((5, None), (0, 0), (20, 1)):  # a missing key stays missing
        with pytest.raises(ObjectNotFound, match="nope"):
            obj_store.open("nope", offset, length)
    with pytest.raises(ValueError, match=re.escape("bad range: offset=-1, length=None")):
        obj_store.open("r", -1)
    with pytest.raises(ValueError, match=re.escape("bad range: offset=0, length=-2")):
        obj_store.open("r", 0, -2)
