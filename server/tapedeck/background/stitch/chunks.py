"""Reading a recording's inputs back from the store: the chunks finalize pinned, streamed in
part order and verified against their finalize snapshot as they are consumed
(``verified_chunks``), and ``read_object`` for a whole small object."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from tapedeck.infra.jobs import JobFailed
from tapedeck.infra.store import MD5_HEX, ObjectNotFound, ObjectStore

#: The most one read asks of the store (and one pipe read returns): memory per stream.
READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as snapshotted at finalize: the pinned object (``key``), its size and MD5."""

    part: int
    size: int
    md5: str
    key: str


def read_object(store: ObjectStore, key: str) -> bytes:
    """All bytes of ``key`` (``ObjectNotFound`` if absent)."""
    stream = store.open(key)
    try:
        return stream.read()
    finally:
        stream.close()


class _VerifiedChunk(io.RawIOBase):
    """One pinned chunk object streamed from the store (never held whole in memory),
    counted and MD5-hashed as it is read, also into the recording's running ``whole`` MD5.

    ``finish()`` reads whatever the consumer left, closes the stream and raises
    ``JobFailed('checksum_mismatch')`` unless the bytes have the snapshotted size and MD5
    (the MD5 check is skipped for multipart ETags)."""

    def __init__(self, stream: BinaryIO, chunk: ChunkRecord, whole: Any) -> None:
        super().__init__()
        self._stream = stream
        self._chunk = chunk
        self._whole = whole
        self._md5 = hashlib.md5()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(min(len(view), READ_BLOCK))
        n = len(data)
        view[:n] = data
        self._md5.update(data)
        self._whole.update(data)
        self.size += n
        return n

    def finish(self) -> None:
        while self.readinto(bytearray(READ_BLOCK)):
            pass
        self._stream.close()
        chunk, digest = self._chunk, self._md5.hexdigest()
        if self.size != chunk.size or (MD5_HEX.match(chunk.md5) and digest != chunk.md5):
            raise JobFailed("checksum_mismatch",
                            f"Chunk {chunk.part} changed after finalize (MD5 {digest}, "
                            f"expected {chunk.md5}).", part=chunk.part)

    def close(self) -> None:
        self._stream.close()
        super().close()


def _open_chunk(store: ObjectStore, chunk: ChunkRecord) -> BinaryIO:
    try:
        return store.open(chunk.key)
    except ObjectNotFound:
        raise JobFailed("chunk_missing", f"Chunk {chunk.part} is no longer in the store.",
                        part=chunk.part) from None


def verified_chunks(store: ObjectStore, chunks: list[ChunkRecord], checksum_md5: str | None,
                    before_each: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """Chunk streams in part order, read from the objects finalize pinned, each checked
    against its snapshot once consumed; after the last one, the MD5 of all bytes against
    ``checksum_md5`` (if given). Raises ``JobFailed``.

    Memory is bounded by a constant whatever the chunk sizes: each chunk is streamed in
    ``READ_BLOCK`` reads (nothing is prefetched or held whole), and its check runs when the
    consumer asks for the next chunk (or the end), before the stitched upload can finish."""
    whole = hashlib.md5()
    for chunk in chunks:
        if before_each is not None:
            before_each()
        current = _VerifiedChunk(_open_chunk(store, chunk), chunk, whole)
        try:
            yield io.BufferedReader(current, buffer_size=READ_BLOCK)
            current.finish()
        finally:
            current.close()
    if checksum_md5 is not None and whole.hexdigest() != checksum_md5:
        raise JobFailed("checksum_mismatch",
                        "The chunks no longer match the checksum_md5 given at finalize.",
                        expected=checksum_md5, actual=whole.hexdigest())
