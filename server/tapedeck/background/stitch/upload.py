"""Streaming a remux into the store: ``stitch_into_store`` runs ``oggopus.remux`` in a
helper thread whose output the store's multipart upload reads through a bounded in-memory
pipe, so that any failure of the remux or of its ``check`` aborts the upload (nothing is
left under the key unless complete and checked)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from tapedeck.background.stitch.chunks import READ_BLOCK
from tapedeck.infra.store import ObjectInfo, ObjectStore
from tapedeck.oggopus import RemuxResult, remux

#: S3's minimum multipart part size: the ``stitch.uploading`` failpoint fires once the first
#: part of the output was handed to the store (or all of a smaller output was).
_FIRST_PART = 5 * 1024 * 1024
_PIPE_LIMIT = 8 * 1024 * 1024


class _ProducerFailed(Exception):
    """Raised to the store's reader when the producer failed (carries the cause)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _ReaderGone(Exception):
    """Raised to the producer when the consumer stopped reading (upload failed)."""


class _Pipe:
    """A bounded in-memory byte pipe: one producer thread writes, the store's upload reads.

    ``read`` blocks until data, end of stream (``close``) or the producer's failure
    (``fail``: the next read raises ``_ProducerFailed``, so the upload aborts). ``abort`` (by
    the consumer) makes the producer's next ``write`` raise ``_ReaderGone``.
    """

    def __init__(self, limit: int = _PIPE_LIMIT, on_read: Callable[[int, bool], None] | None = None,
                 ) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._limit = limit
        self._eof = False
        self._error: BaseException | None = None
        self._aborted = False
        self._on_read = on_read
        self.bytes_read = 0

    def write(self, data: bytes, /) -> int:
        with self._cond:
            while len(self._buf) >= self._limit and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise _ReaderGone()
            self._buf += data
            self._cond.notify_all()
        return len(data)

    def close(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        if self._on_read is not None:
            self._on_read(self.bytes_read, self._at_eof())
        with self._cond:
            want = len(self._buf) if n < 0 else min(n, READ_BLOCK)
            while self._error is None and not self._eof and (not self._buf or len(self._buf) < want):
                self._cond.wait()
            if self._error is not None:
                raise _ProducerFailed(self._error)
            size = len(self._buf) if n < 0 else min(n, len(self._buf))
            out = bytes(self._buf[:size])
            del self._buf[:size]
            self.bytes_read += size
            self._cond.notify_all()
            return out

    def _at_eof(self) -> bool:
        with self._cond:
            return self._eof and not self._buf


class _HashingSink:
    """Forwards writes to a sink, counting and MD5-hashing them."""

    def __init__(self, sink: _Pipe) -> None:
        self._sink = sink
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self._sink.write(data)


@dataclass(frozen=True)
class Stitched:
    """A stitched object in the store."""

    key: str
    size: int
    md5: str
    remux: RemuxResult


def stitch_into_store(store: ObjectStore, chunks: Iterable[BinaryIO], key: str, *,
                      check: Callable[[RemuxResult], None] | None = None,
                      on_upload: Callable[[], None] | None = None) -> Stitched:
    """Remux ``chunks`` into one Ogg Opus object streamed to ``key`` (multipart put).

    The remux runs in a helper thread feeding the upload through a bounded pipe, so reading
    chunks, remuxing and uploading overlap. ``check(result)`` runs after the remux and before
    the upload's final read: raising there (or anywhere in the remux) aborts the upload, and
    the exception is re-raised here. ``on_upload()`` is called once when the first 5 MiB part
    (or the whole of a smaller output) has been read by the upload.
    """
    pipe = _Pipe(on_read=_on_first_part(on_upload))
    producer = _Remuxer(chunks, pipe, check, name=f"stitch-{key}")
    producer.start()
    info = _upload(store, key, pipe, producer)
    return _stitched(key, info, producer)


def _on_first_part(on_upload: Callable[[], None] | None) -> Callable[[int, bool], None]:
    """The pipe's read hook: ``on_upload()`` once, when the upload has read past the first
    part (or reaches the end of a smaller output)."""
    fired = threading.Event()

    def on_read(done: int, eof: bool) -> None:
        if on_upload is not None and not fired.is_set() and (done > _FIRST_PART or eof):
            fired.set()
            on_upload()

    return on_read


class _Remuxer:
    """The producer: in a helper thread, ``remux(chunks)`` into the pipe (counted and hashed
    by ``sink``), then ``check(result)``. Success closes the pipe (the upload reads to its
    end); a failure fails it (the upload's next read raises); a gone reader just stops. The
    ``chunks`` iterable is closed in that thread either way."""

    def __init__(self, chunks: Iterable[BinaryIO], pipe: _Pipe,
                 check: Callable[[RemuxResult], None] | None, name: str) -> None:
        self._chunks = chunks
        self._pipe = pipe
        self._check = check
        self.sink = _HashingSink(pipe)
        self.result: RemuxResult | None = None
        self._thread = threading.Thread(target=self._produce, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _produce(self) -> None:
        try:
            result = remux(self._chunks, self.sink)
            if self._check is not None:
                self._check(result)
            self.result = result
            self._pipe.close()
        except _ReaderGone:
            pass
        except BaseException as exc:
            self._pipe.fail(exc)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:  # a generator: stop its prefetching now, in this thread
                close()


def _upload(store: ObjectStore, key: str, pipe: _Pipe, producer: _Remuxer) -> ObjectInfo:
    """The upload: ``store.put`` reads the pipe to its end. The producer's failure is
    re-raised as itself; either way the pipe is aborted (a producer still writing stops)
    and the producer joined before this returns."""
    try:
        return store.put(key, pipe, -1, content_type="audio/ogg")  # type: ignore[arg-type]
    except _ProducerFailed as exc:
        raise exc.cause from None
    finally:
        pipe.abort()
        producer.join()


def _stitched(key: str, info: ObjectInfo, producer: _Remuxer) -> Stitched:
    """What the completed upload holds: all the bytes the remux wrote, checked."""
    sink = producer.sink
    if info.size != sink.size:  # pragma: no cover - the store contract guarantees this
        raise RuntimeError(f"store kept {info.size} of {sink.size} bytes")
    assert producer.result is not None  # the pipe ended, so the remux and check succeeded
    return Stitched(key, sink.size, sink.md5.hexdigest(), producer.result)
