"""Checking a chunk as it arrives: one valid Ogg Opus stream, without decoding.

``check_stream(blocks, consume)`` hands every block of ``blocks`` to ``consume`` (the caller
spools, hashes and counts it) while ``OpusStreamReader`` checks the bytes seen so far: Ogg
page structure and CRCs, the OpusHead and OpusTags headers, packet TOCs and granule
positions, the end-of-stream page, and that nothing follows it. It raises ``InvalidAudio``
at the first bad page; the blocks after it are never pulled (so never consumed). Memory is
one page plus one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from tapedeck.oggopus.stream import OpusStreamInfo, probe


class _PulledStream:
    """A read()-able view of an iterator of blocks; each block is consumed when pulled."""

    def __init__(self, blocks: Iterable[bytes], consume: Callable[[bytes], None]) -> None:
        self._blocks: Iterator[bytes] = iter(blocks)
        self._consume = consume
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            block = next(self._blocks, None)
            if block is None:
                return b""
            self._consume(block)
            self._buf = bytes(block)
        if n < 0 or n >= len(self._buf):
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


def check_stream(blocks: Iterable[bytes], consume: Callable[[bytes], None]) -> OpusStreamInfo:
    """Consume ``blocks`` while checking them (see the module docstring); the stream's
    summary when they form one valid Ogg Opus stream, else ``InvalidAudio``."""
    return probe(_PulledStream(blocks, consume))  # type: ignore[arg-type]  # read() suffices
