"""Ogg framing (RFC 3533): streaming page reader, packet reassembly, page writer.

The reader never holds more than one read block plus one page (<= 65,307 bytes) in memory and
reads from any object with a ``read(n)`` method (short reads are fine). Every page is checked
for the capture pattern, the stream structure version and its CRC. The writer lays packets out
in pages (lacing values, continued packets, BOS/EOS flags, sequence numbers, CRC) and writes
to any object with a ``write`` method.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import BinaryIO, Protocol

from tapedeck.oggopus._crc import REV, crc_page_bytes, crc_update
from tapedeck.oggopus.opus import InvalidAudio

CAPTURE = b"OggS"
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04
#: Granule position of a page on which no packet ends.
NO_GRANULE = -1
MAX_SEGMENTS = 255

_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seqno, crc, nseg
_HEADER_PREFIX = struct.Struct("<4sBBqII")  # the 22 bytes before the CRC field
_ZERO_CRC = b"\0\0\0\0"
_READ_BLOCK = 1 << 16


class Sink(Protocol):
    """Anything bytes can be written to (a file, a pipe, a BytesIO, a socket file)."""

    def write(self, data: bytes, /) -> int | None: ...


class _PageFlags:
    """The header-type flags of a page, as properties over ``flags``."""

    __slots__ = ()
    flags: int

    @property
    def continued(self) -> bool:
        """The page starts with the rest of a packet from the previous page."""
        return bool(self.flags & FLAG_CONTINUED)

    @property
    def bos(self) -> bool:
        """First page of a logical stream."""
        return bool(self.flags & FLAG_BOS)

    @property
    def eos(self) -> bool:
        """Last page of a logical stream."""
        return bool(self.flags & FLAG_EOS)


@dataclass(frozen=True, slots=True)
class RawPage(_PageFlags):
    """One verified page exactly as read: ``data`` is the whole page, ``reversed_data`` the
    same bytes bit-reversed (kept so the CRC of a relabelled copy costs no second pass).
    """

    data: bytes
    reversed_data: bytes
    flags: int
    granule: int
    serial: int
    seqno: int
    nseg: int
    offset: int  # byte offset of the page in its stream

    @property
    def segments(self) -> bytes:
        """The lacing values."""
        return self.data[27 : 27 + self.nseg]

    @property
    def body(self) -> bytes:
        """The page payload."""
        return self.data[27 + self.nseg :]


@dataclass(frozen=True, slots=True)
class OggPage(_PageFlags):
    """A page as values; ``to_bytes`` serializes it with a fresh CRC."""

    flags: int
    granule: int
    serial: int
    seqno: int
    segments: bytes
    body: bytes


    def to_bytes(self) -> bytes:
        """The page on the wire."""
        return encode_page(self.flags, self.granule, self.serial, self.seqno, self.segments,
                           self.body)


def encode_page(
    flags: int, granule: int, serial: int, seqno: int, segments: bytes | bytearray,
    body: bytes | bytearray,
) -> bytes:
    """Serialize one page (header, lacing values, body) with its CRC."""
    if len(segments) > MAX_SEGMENTS or sum(segments) != len(body):
        raise ValueError("lacing values do not describe the body")
    prefix = _HEADER_PREFIX.pack(CAPTURE, 0, flags, granule, serial, seqno)
    tail = bytes([len(segments)]) + bytes(segments)
    state = crc_update(prefix.translate(REV))
    state = crc_update(_ZERO_CRC, state)
    state = crc_update(tail.translate(REV), state)
    state = crc_update(bytes(body).translate(REV), state)
    return b"".join((prefix, crc_page_bytes(state), tail, body))


def relabel_page(page: RawPage, flags: int, granule: int, serial: int, seqno: int) -> bytes:
    """A copy of ``page`` with new flags, granule, serial and sequence number (lacing and body
    unchanged); the CRC is recomputed from the page's kept bit-reversed bytes.
    """
    prefix = _HEADER_PREFIX.pack(CAPTURE, 0, flags, granule, serial, seqno)
    state = crc_update(prefix.translate(REV))
    state = crc_update(_ZERO_CRC, state)
    state = crc_update(memoryview(page.reversed_data)[26:], state)
    return b"".join((prefix, crc_page_bytes(state), memoryview(page.data)[26:]))


class PageReader:
    """Reads verified pages one at a time from a binary stream.

    ``next_page()`` returns ``None`` at a clean end of stream and raises ``InvalidAudio`` for
    garbage, a truncated page, an unknown version or a CRC mismatch (with the byte offset).
    """

    def __init__(self, stream: BinaryIO, block_size: int = _READ_BLOCK) -> None:
        self._read = stream.read
        self._block = block_size
        self._buf = b""
        self._pos = 0
        self._offset = 0  # stream offset of self._buf[self._pos]
        self.pages = 0

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far (the offset of the next page)."""
        return self._offset

    def _fill(self, n: int) -> bool:
        """Make ``n`` unread bytes available; False if the stream ends first."""
        while len(self._buf) - self._pos < n:
            data = self._read(max(self._block, n - (len(self._buf) - self._pos)))
            if not data:
                return False
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        return True

    def next_page(self) -> RawPage | None:
        """The next verified page, or ``None`` at the end of the stream."""
        if not self._fill(27):
            if len(self._buf) - self._pos == 0:
                return None
            raise InvalidAudio(f"stream ends inside a page header at byte {self._offset}")
        buf, pos = self._buf, self._pos
        if buf[pos : pos + 4] != CAPTURE:
            raise InvalidAudio(f"no Ogg page at byte {self._offset} (not an Ogg stream, "
                               "or garbage between pages)")
        if buf[pos + 4] != 0:
            raise InvalidAudio(f"unknown Ogg version {buf[pos + 4]} at byte {self._offset}")
        nseg = buf[pos + 26]
        if not self._fill(27 + nseg):
            raise InvalidAudio(f"stream ends inside the page at byte {self._offset}")
        buf, pos = self._buf, self._pos
        size = 27 + nseg + sum(buf[pos + 27 : pos + 27 + nseg])
        if not self._fill(size):
            raise InvalidAudio(f"stream ends inside the page at byte {self._offset}")
        buf, pos = self._buf, self._pos
        data = buf[pos : pos + size]
        page = self._verify(data, nseg)
        self._pos += size
        self._offset += size
        self.pages += 1
        return page

    def _verify(self, data: bytes, nseg: int) -> RawPage:
        rev = data.translate(REV)
        view = memoryview(rev)
        state = crc_update(view[:22])
        state = crc_update(_ZERO_CRC, state)
        state = crc_update(view[26:], state)
        if crc_page_bytes(state) != data[22:26]:
            raise InvalidAudio(f"bad CRC on the page at byte {self._offset} (corrupt data)")
        _, _, flags, granule, serial, seqno, _, _ = _HEADER.unpack_from(data)
        return RawPage(data, rev, flags, granule, serial, seqno, nseg, self._offset)


def iter_pages(stream: BinaryIO) -> Iterator[OggPage]:
    """Every page of ``stream`` (verified), streaming."""
    reader = PageReader(stream)
    while (raw := reader.next_page()) is not None:
        yield OggPage(raw.flags, raw.granule, raw.serial, raw.seqno, raw.segments, raw.body)


def packet_ends(segments: bytes) -> tuple[list[int], bool]:
    """Offsets in the body where packets end, and whether the last packet continues on the
    next page (last lacing value 255).
    """
    if 255 not in segments:
        return list(accumulate(segments)), False
    ends = []
    offset = 0
    for value in segments:
        offset += value
        if value < 255:
            ends.append(offset)
    return ends, segments[-1] == 255


@dataclass(frozen=True, slots=True)
class OggPacket:
    """A reassembled packet. ``granule`` is the granule position of the page on which the
    packet ends if it is the last packet ending there, else ``None``; ``bos`` marks the
    stream's first packet and ``eos`` its last (libogg semantics).
    """

    data: bytes
    serial: int
    granule: int | None
    bos: bool
    eos: bool


def iter_packets(stream: BinaryIO) -> Iterator[OggPacket]:
    """Reassemble the packets of a single-serial stream (lacing and continued packets)."""
    reader = PageReader(stream)
    carry: bytes | None = None
    first = True
    while (page := reader.next_page()) is not None:
        if page.continued != (carry is not None):
            raise InvalidAudio(f"broken packet continuation at page {page.seqno}")
        ends, open_end = packet_ends(page.segments)
        body = page.body
        start = 0
        for i, end in enumerate(ends):
            data = body[start:end] if carry is None else carry + body[start:end]
            carry = None
            last = i == len(ends) - 1 and not open_end
            granule = page.granule if i == len(ends) - 1 else None
            yield OggPacket(data, page.serial, granule, first, page.eos and last)
            first = False
            start = end
        if open_end:
            carry = (carry or b"") + body[start:]
    if carry is not None:
        raise InvalidAudio("stream ends inside a packet")


class OggStreamWriter:
    """Writes one logical Ogg stream: packets in, pages out.

    ``write_packet(data, granule)`` appends a packet whose end has granule position
    ``granule``; pages are emitted when the 255-entry lacing table overflows (a packet then
    continues on the next page) or on ``flush()``. The first page gets BOS; ``flush(eos=True)``
    marks the last page EOS (an empty EOS page if nothing is pending). Output is buffered and
    handed to ``sink.write`` in large blocks; call ``close()`` (or ``flush(eos=True)``, which
    also drains the buffer) before using the sink's content.
    """

    def __init__(self, sink: Sink, serial: int, *, buffer_size: int = 1 << 16) -> None:
        self._sink = sink
        self.serial = serial & 0xFFFFFFFF
        self._buffer_size = buffer_size
        self._out = bytearray()
        self._seg = bytearray()
        self._body = bytearray()
        self._ends: list[tuple[int, int]] = []  # (segment count after packet, granule)
        self._continued = False
        self._seqno = 0
        self._closed = False
        self.bytes_written = 0
        self.pages_written = 0

    @property
    def pending_segments(self) -> int:
        """Lacing values waiting for the next page."""
        return len(self._seg)

    @property
    def pending_packets(self) -> int:
        """Packets ending in the next page."""
        return len(self._ends)

    def write_packet(self, data: bytes | bytearray | memoryview, granule: int) -> None:
        """Append one packet (any length, including 0)."""
        self._check_open()
        n = len(data)
        if n < 255:
            self._seg.append(n)
        else:
            self._seg += b"\xff" * (n // 255)
            self._seg.append(n % 255)
        self._body += data
        self._ends.append((len(self._seg), granule))
        while len(self._seg) > MAX_SEGMENTS:
            self._emit(MAX_SEGMENTS, eos=False)

    def flush(self, *, eos: bool = False) -> None:
        """Emit everything pending as page(s); with ``eos`` the last one ends the stream."""
        self._check_open()
        while len(self._seg) > MAX_SEGMENTS:
            self._emit(MAX_SEGMENTS, eos=False)
        if self._seg or eos:
            self._emit(len(self._seg), eos=eos)
        if eos:
            self.close()

    def copy_page(self, page: RawPage, granule: int) -> None:
        """Re-emit a self-contained input page (its packets start and end on it) under this
        stream's serial and sequence number with ``granule``; nothing may be pending.
        """
        self._check_open()
        if self._seg:
            raise ValueError("copy_page with packets pending; flush() first")
        flags = FLAG_BOS if self._seqno == 0 else 0
        self._put(relabel_page(page, flags, granule, self.serial, self._seqno))

    def close(self) -> None:
        """Drain the output buffer to the sink. Pending packets must have been flushed."""
        if self._seg:
            raise ValueError("close() with packets pending; flush() first")
        if self._out:
            _write_all(self._sink, bytes(self._out))
            self._out.clear()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the stream is closed")

    def _emit(self, nseg: int, *, eos: bool) -> None:
        granule = NO_GRANULE
        done = 0
        for count, packet_granule in self._ends:
            if count > nseg:
                break
            granule = packet_granule
            done += 1
        size = sum(self._seg[:nseg])
        flags = (FLAG_CONTINUED if self._continued else 0) | (FLAG_BOS if self._seqno == 0 else 0)
        if eos and nseg == len(self._seg):
            flags |= FLAG_EOS
        page = encode_page(flags, granule, self.serial, self._seqno, self._seg[:nseg],
                           self._body[:size])
        self._continued = nseg > 0 and self._seg[nseg - 1] == 255
        del self._seg[:nseg]
        del self._body[:size]
        self._ends = [(count - nseg, g) for count, g in self._ends[done:]]
        self._put(page)

    def _put(self, page: bytes) -> None:
        self._out += page
        self._seqno += 1
        self.pages_written += 1
        self.bytes_written += len(page)
        if len(self._out) >= self._buffer_size:
            _write_all(self._sink, bytes(self._out))
            self._out.clear()


def _write_all(sink: Sink, data: bytes) -> None:
    """Write all of ``data`` even if ``sink.write`` accepts only part of it (raw files)."""
    while data:
        n = sink.write(data)
        if n is None or n >= len(data):
            return
        data = data[n:]
