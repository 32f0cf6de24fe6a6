"""The stitcher: remux Ogg Opus chunk files into ONE logical Ogg Opus stream.

Input chunks are read one after another, streaming (memory does not grow with their number
or length); every chunk is fully validated (``OpusStreamReader``). The output has chunk 1's
serial (unless given), OpusHead (so its pre-skip) and OpusTags, continuous page sequence
numbers and granule positions, and the last chunk's end trimming.

Boundaries. Let chunk k end with end trimming T and chunk k+1 start with pre-skip S:
1. Overlap: chunks cut from ONE continuous encoder start with the previous chunk's last
   packets, covered by their pre-skip (4 packets = 80 ms, S = 3840). The longest run of
   leading packets that equals the previous chunk's trailing packets byte for byte and lies
   within S is dropped. With T = 0 the remaining S is 0: the boundary is seamless and the
   result decodes bit-identically to the whole recording encoded as one stream.
2. Leading packets that lie entirely within the remaining pre-skip carry no audio: dropped.
3. Trailing packets of chunk k lying entirely within T carry no audio: dropped.
4. Independent chunks (a fresh encoder each) leave T + S samples of padding and encoder
   warm-up at the boundary. If that exceeds the last packet of chunk k, the packet is dropped
   (losing less than S samples of audio), so the timeline error stays below one packet.
The sum of what remains (T + S - dropped audio) over all boundaries is ``drift_samples``.

Speed: pages that start and end with whole packets are re-emitted with only serial,
sequence number, granule position, flags and CRC rewritten (no re-lacing); only the pages
around a boundary are re-laced packet by packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tapedeck.oggopus.ogg import MAX_SEGMENTS, OggStreamWriter, Sink
from tapedeck.oggopus.opus import GRANULE_RATE, InvalidAudio, OpusHead
from tapedeck.oggopus.stream import AudioPage, OpusStreamReader, samples_to_ms

#: Upper bound on the packets two chunks may share (80 ms of 2.5 ms frames is 32).
MAX_OVERLAP_PACKETS = 64

_Packet = tuple[bytes, int]  # (packet bytes, duration in 48 kHz samples)


@dataclass(frozen=True)
class RemuxResult:
    """What ``remux`` wrote. Sample counts are 48 kHz; ``samples`` is the playable length."""

    duration_ms: int
    samples: int
    bytes_written: int
    packets: int
    pages: int
    chunks: int
    pre_skip: int
    final_granule: int
    seamless_boundaries: int  # overlap matched and nothing left between the chunks
    dropped_packets: int  # removed at boundaries (overlap, pre-skip, trimmed, step 4)
    drift_samples: int  # stitched samples minus the sum of the chunks' samples
    copied_pages: int  # pages re-emitted without re-lacing
    #: Per chunk, where its first audible sample lies on the stitched timeline (48 kHz
    #: samples after the output's pre-skip); chunk 1 starts at 0.
    chunk_starts: tuple[int, ...] = ()


@dataclass
class _ChunkEnd:
    """The part of a chunk that waits for the next chunk's start."""

    held: list[_Packet]  # packets of the chunk's EOS page, not written yet
    trim: int  # the chunk's end trimming
    tail: list[bytes]  # the chunk's last packets, as they were in the chunk


def remux(
    chunks: Iterable[BinaryIO], sink: Sink, *, serial: int | None = None,
    page_samples: int = GRANULE_RATE,
) -> RemuxResult:
    """Stitch Ogg Opus ``chunks`` (in order) into one logical stream written to ``sink``.

    ``chunks`` may be a lazy iterable (e.g. a generator opening each object as it is needed);
    streams are read to their end and not closed. ``sink`` only needs ``write``; output is
    written in blocks of about 64 KiB as it is produced. Raises ``InvalidAudio(part=k, ...)``
    naming the first invalid chunk (1-based) and ``ValueError`` for an empty ``chunks``; in
    both cases the sink holds a partial, invalid file that must not be published.
    """
    stitcher = _Stitcher(sink, serial, page_samples)
    for part, stream in enumerate(chunks, start=1):
        try:
            stitcher.add_chunk(stream)
        except InvalidAudio as exc:
            raise exc.for_part(part) from exc
    return stitcher.finish()


class _Stitcher:
    def __init__(self, sink: Sink, serial: int | None, page_samples: int) -> None:
        self._sink = sink
        self._serial = serial
        self._page_samples = page_samples
        self._out: OggStreamWriter | None = None
        self._head = OpusHead()
        self._granule = 0  # samples of all packets written (the next packet's start)
        self._page_start = 0  # granule where the page being filled starts
        self._prev: _ChunkEnd | None = None
        self._chunks = 0
        self._chunk_samples = 0
        self._packets = 0
        self._copied = 0
        self._dropped = 0
        self._seamless = 0
        self._rest = 0  # pre-skip left in the stream by the last ``_join`` (warm-up samples)
        self._starts: list[int] = []

    # -- per chunk ---------------------------------------------------------------------------

    def add_chunk(self, stream: BinaryIO) -> None:
        """Append one chunk, in phases: its headers start the output or are checked against
        chunk 1's (``_begin``); after chunk 1, its start is read up to its pre-skip and the
        boundary with the previous chunk resolved (``_start_after``: module docstring steps
        1-4); its pages are streamed up to the EOS page (``_body``); its end is checked and
        held for the next boundary (``_end``)."""
        reader = OpusStreamReader(stream)
        out = self._begin(reader)
        recent = _Recent()
        eos: AudioPage | None = None
        held: list[_Packet] = []
        if self._prev is None:
            self._starts.append(0)
        else:
            eos, held = self._start_after(reader, recent)
        if eos is None:
            eos, held = self._body(reader, out, recent)
        self._end(reader, eos, held, recent)

    def _begin(self, reader: OpusStreamReader) -> OggStreamWriter:
        """Start the output with chunk 1's headers, or check a later chunk's layout."""
        if self._out is None:
            serial = reader.serial if self._serial is None else self._serial
            out = OggStreamWriter(self._sink, serial)
            out.write_packet(reader.head_packet, 0)
            out.flush()
            out.write_packet(reader.tags_packet, 0)
            out.flush()
            self._out, self._head = out, reader.head
            return out
        head = reader.head
        layout = (head.channels, head.mapping_family, head.stream_count, head.coupled_count,
                  head.channel_mapping)
        first = self._head
        if layout != (first.channels, first.mapping_family, first.stream_count,
                      first.coupled_count, first.channel_mapping):
            raise InvalidAudio("channel layout differs from chunk 1")
        return self._out

    @staticmethod
    def _next(reader: OpusStreamReader, recent: _Recent) -> AudioPage:
        page = reader.next_audio_page()
        if page is None:  # pragma: no cover - the reader raises on a missing EOS page
            raise InvalidAudio("stream ends without an end-of-stream page")
        recent.add(page)
        return page

    def _body(self, reader: OpusStreamReader, out: OggStreamWriter,
              recent: _Recent) -> tuple[AudioPage, list[_Packet]]:
        """Stream the chunk's pages up to its EOS page: self-contained pages are copied, the
        others re-laced. Returns the EOS page and its packets, held for the next boundary."""
        while True:
            page = self._next(reader, recent)
            if page.page.eos:
                return page, list(_packets(page))
            if page.self_contained:
                self._copy(out, page)
            else:
                for packet in _packets(page):
                    self._write(packet)

    def _end(self, reader: OpusStreamReader, eos: AudioPage, held: list[_Packet],
             recent: _Recent) -> None:
        """Check that nothing follows the EOS page and that the chunk has audio; count it and
        keep its end (held packets, trimming, last packets) for the next boundary."""
        reader.next_audio_page()  # None, or raises if anything follows the EOS page
        if reader.samples <= 0:
            raise InvalidAudio("chunk has no audio after its pre-skip")
        self._chunks += 1
        self._chunk_samples += reader.samples
        self._prev = _ChunkEnd(held, eos.trim, recent.tail())

    # -- boundaries --------------------------------------------------------------------------

    def _start_after(self, reader: OpusStreamReader,
                     recent: _Recent) -> tuple[AudioPage | None, list[_Packet]]:
        """A later chunk's start: read it up to its pre-skip, resolve the boundary
        (``_join``), record where the chunk starts on the stitched timeline and write its
        kept leading packets. Returns the EOS page if the chunk ended within its start
        (else None) and that page's kept packets, held for the next boundary."""
        first, eos = self._read_start(reader, recent)
        skip = self._join(first, reader.head.pre_skip)
        self._starts.append(self._granule + self._rest - self._head.pre_skip)
        keep = first[skip:]
        own = max(0, len(first) - (eos.npackets if eos else 0) - skip)
        for packet in keep[:own] if eos else keep:
            self._write(packet)
        return eos, keep[own:]

    def _read_start(self, reader: OpusStreamReader,
                    recent: _Recent) -> tuple[list[_Packet], AudioPage | None]:
        """The chunk's leading packets: whole pages until they cover its pre-skip or the EOS
        page was read (that page, else None)."""
        first: list[_Packet] = []
        eos: AudioPage | None = None
        while eos is None and _samples(first) < reader.head.pre_skip:
            page = self._next(reader, recent)
            first.extend(_packets(page))
            eos = page if page.page.eos else None
        return first, eos

    def _join(self, first: list[_Packet], pre_skip: int) -> int:
        """Resolve the boundary before a chunk starting with ``first`` (module docstring
        steps 1-4), write the previous chunk's held packets, and return how many leading
        packets of ``first`` to drop.
        """
        prev = self._prev
        assert prev is not None
        skip = _overlap(prev.tail, first, pre_skip)
        rest = pre_skip - _samples(first[:skip])
        overlapped = skip > 0
        while skip < len(first) and first[skip][1] <= rest:
            rest -= first[skip][1]
            skip += 1
        self._rest = rest
        held, trim = prev.held, prev.trim
        while held and held[-1][1] <= trim:
            trim -= held.pop()[1]
            self._dropped += 1
        gap = trim + rest
        if held and gap > held[-1][1]:
            gap -= held.pop()[1]
            self._dropped += 1
        if overlapped and gap == 0:
            self._seamless += 1
        self._dropped += skip
        for packet in held:
            self._write(packet)
        return skip

    # -- output ------------------------------------------------------------------------------

    def _write(self, packet: _Packet, granule: int | None = None) -> None:
        """Append one packet, closing the page first if it is full (1 s or 255 lacing values).
        ``granule`` overrides the packet's end granule (end trimming of the last packet).
        """
        out = self._out
        assert out is not None
        data, duration = packet
        if out.pending_packets and (
            self._granule - self._page_start >= self._page_samples
            or out.pending_segments + len(data) // 255 + 1 > MAX_SEGMENTS
        ):
            out.flush()
            self._page_start = self._granule
        self._granule += duration
        out.write_packet(data, self._granule if granule is None else granule)
        self._packets += 1

    def _copy(self, out: OggStreamWriter, page: AudioPage) -> None:
        if out.pending_packets:
            out.flush()
        self._granule += page.samples
        out.copy_page(page.page, self._granule)
        self._page_start = self._granule
        self._packets += page.npackets
        self._copied += 1

    def finish(self) -> RemuxResult:
        out, prev = self._out, self._prev
        if out is None or prev is None:
            raise ValueError("no chunks to remux")
        held, trim = prev.held, prev.trim
        while len(held) > 1 and held[-1][1] <= trim:
            trim -= held.pop()[1]
            self._dropped += 1
        for packet in held[:-1]:
            self._write(packet)
        if held:
            self._write(held[-1], granule=self._granule + held[-1][1] - trim)
        elif out.pending_packets == 0:  # input ended with an empty EOS page
            out.write_packet(b"", self._granule)  # pragma: no cover - exotic muxers only
        final = self._granule - trim
        out.flush(eos=True)
        samples = final - self._head.pre_skip
        return RemuxResult(
            duration_ms=samples_to_ms(samples), samples=samples,
            bytes_written=out.bytes_written, packets=self._packets, pages=out.pages_written,
            chunks=self._chunks, pre_skip=self._head.pre_skip, final_granule=final,
            seamless_boundaries=self._seamless, dropped_packets=self._dropped,
            drift_samples=samples - self._chunk_samples, copied_pages=self._copied,
            chunk_starts=tuple(self._starts),
        )


def _packets(page: AudioPage) -> Iterator[_Packet]:
    return zip(page.packets(), page.durations, strict=True)


def _samples(packets: list[_Packet]) -> int:
    return sum(duration for _, duration in packets)


def _overlap(tail: list[bytes], first: list[_Packet], pre_skip: int) -> int:
    """The longest ``n`` with ``first[:n]`` == ``tail[-n:]`` (bytes) lying within
    ``pre_skip``; 0 if none.
    """
    limit = 0
    covered = 0
    for _, duration in first[: len(tail)]:
        covered += duration
        if covered > pre_skip:
            break
        limit += 1
    for n in range(limit, 0, -1):
        if all(tail[len(tail) - n + i] == first[i][0] for i in range(n)):
            return n
    return 0


class _Recent:
    """The last pages of a chunk: enough to hold its last ``MAX_OVERLAP_PACKETS`` packets."""

    def __init__(self) -> None:
        self._pages: deque[AudioPage] = deque()
        self._count = 0  # packets in self._pages

    def add(self, page: AudioPage) -> None:
        pages = self._pages
        pages.append(page)
        self._count += page.npackets
        while len(pages) > 1 and self._count - pages[0].npackets >= MAX_OVERLAP_PACKETS:
            self._count -= pages.popleft().npackets

    def tail(self) -> list[bytes]:
        """The last ``MAX_OVERLAP_PACKETS`` packets (fewer if the chunk is shorter)."""
        packets: list[bytes] = []
        for page in self._pages:
            packets.extend(page.packets())
        return packets[-MAX_OVERLAP_PACKETS:]
