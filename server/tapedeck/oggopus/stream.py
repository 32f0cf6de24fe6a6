"""One Ogg Opus logical stream: validating reader, ``probe`` and ``OggOpusWriter``.

Validation follows RFC 7845: OpusHead alone on the BOS page, OpusTags alone on the following
page(s), one serial number, consecutive page sequence numbers, granule positions that agree
with the packet durations read from the TOC bytes (an initial offset is allowed, end trimming
on the EOS page only), an EOS page, and nothing after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import BinaryIO

from tapedeck.oggopus.ogg import (
    MAX_SEGMENTS,
    NO_GRANULE,
    OggStreamWriter,
    PageReader,
    RawPage,
    Sink,
    packet_ends,
)
from tapedeck.oggopus.opus import (
    GRANULE_RATE,
    TOC_SAMPLES,
    InvalidAudio,
    OpusHead,
    OpusTags,
    packet_duration,
)


def samples_to_ms(samples: int) -> int:
    """48 kHz samples to milliseconds, rounded half up."""
    return (samples * 1000 + GRANULE_RATE // 2) // GRANULE_RATE


@dataclass(slots=True)
class AudioPage:
    """A verified audio page with its packets' durations.

    ``durations`` lists the packets that END on this page (a packet that started on an earlier
    page is included, with ``prefix`` holding its earlier bytes). ``self_contained`` pages
    start with a fresh packet and end with a complete one, so they can be copied verbatim.
    ``trim`` is the end trimming (samples) declared by the EOS page, else 0.
    """

    page: RawPage
    npackets: int
    durations: list[int]
    samples: int
    prefix: bytes | None
    self_contained: bool
    trim: int = 0
    _packets: list[bytes] | None = field(default=None, repr=False)

    def packets(self) -> list[bytes]:
        """The complete packets ending on this page, in order."""
        if self._packets is None:  # only fast-path pages: no prefix, no open packet
            self._packets = _slice_packets(self.page, packet_ends(self.page.segments)[0], None)
        return self._packets


def _slice_packets(page: RawPage, ends: list[int], prefix: bytes | None) -> list[bytes]:
    base = 27 + page.nseg
    data = page.data
    out = []
    start = base
    for end in ends:
        out.append(data[start : base + end])
        start = base + end
    if prefix is not None and out:
        out[0] = prefix + out[0]
    return out


@dataclass(frozen=True)
class OpusStreamInfo:
    """What ``probe`` learned about a valid Ogg Opus stream. Sample counts are 48 kHz."""

    serial: int
    head: OpusHead
    tags: OpusTags
    packets: int
    pages: int
    samples: int  # playable samples: packet samples - pre_skip - end_trim
    final_granule: int
    end_trim: int
    granule_offset: int
    size_bytes: int

    @property
    def channels(self) -> int:
        return self.head.channels

    @property
    def pre_skip(self) -> int:
        return self.head.pre_skip

    @property
    def duration_ms(self) -> int:
        return samples_to_ms(self.samples)


class OpusStreamReader:
    """Validating, streaming reader of one Ogg Opus logical stream.

    The constructor reads and checks the OpusHead and OpusTags pages; ``next_audio_page()``
    then returns audio pages until the EOS page, then ``None`` (after checking that nothing
    follows). Every inconsistency raises ``InvalidAudio``.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._reader = PageReader(stream)
        self.total = 0  # samples of all packets completed so far (granule units)
        self.packets = 0
        self.granule_offset: int | None = None
        self.end_trim = 0
        self.final_granule = 0
        self._carry: bytes | None = None
        self._finished = False
        first = self._reader.next_page()
        if first is None:
            raise InvalidAudio("empty stream")
        self.serial = first.serial
        self._seqno = first.seqno
        self.head_packet = self._read_head(first)
        self.head = OpusHead.parse(self.head_packet)
        self.tags_packet = self._read_tags()
        self.tags = OpusTags.parse(self.tags_packet)

    # -- headers -----------------------------------------------------------------------------

    def _read_head(self, page: RawPage) -> bytes:
        if not page.bos or page.continued:
            raise InvalidAudio("first page is not a beginning-of-stream page")
        ends, open_end = packet_ends(page.segments)
        if open_end or ends != [len(page.body)]:
            raise InvalidAudio("the OpusHead page must hold exactly one packet")
        if page.granule != 0:
            raise InvalidAudio("the OpusHead page must have granule position 0")
        if page.eos:
            raise InvalidAudio("stream ends after its OpusHead (no audio)")
        return page.body

    def _read_tags(self) -> bytes:
        parts: list[bytes] = []
        while True:
            page = self._next_page("stream ends before its OpusTags header")
            if page.continued != bool(parts):
                raise InvalidAudio("OpusTags must start on a fresh page")
            ends, open_end = packet_ends(page.segments)
            parts.append(page.body)
            if page.eos:
                raise InvalidAudio("stream has no audio packets")
            if open_end and not ends:
                continue
            if open_end or ends != [len(page.body)]:
                raise InvalidAudio("OpusTags must be alone on its page(s)")
            if page.granule != 0:
                raise InvalidAudio("the OpusTags page must have granule position 0")
            return b"".join(parts)

    def _next_page(self, missing: str) -> RawPage:
        page = self._reader.next_page()
        if page is None:
            raise InvalidAudio(missing)
        if page.serial != self.serial:
            raise InvalidAudio("more than one logical stream (multiplexed or chained Ogg "
                               "streams are not supported)")
        if page.bos:
            raise InvalidAudio(f"unexpected beginning-of-stream page at byte {page.offset}")
        if page.seqno != (self._seqno + 1) & 0xFFFFFFFF:
            raise InvalidAudio(f"page sequence jumps from {self._seqno} to {page.seqno} "
                               "(missing pages)")
        self._seqno = page.seqno
        return page

    # -- audio -------------------------------------------------------------------------------

    def next_audio_page(self) -> AudioPage | None:
        """The next audio page, or ``None`` after the EOS page (checking nothing follows)."""
        if self._finished:
            if self._reader.next_page() is not None:
                raise InvalidAudio("data after the end-of-stream page (chained or "
                                   "concatenated streams are not supported)")
            return None
        page = self._next_page("stream ends without an end-of-stream page (truncated)")
        if page.continued != (self._carry is not None):
            raise InvalidAudio(f"broken packet continuation at byte {page.offset}")
        audio = self._measure(page)
        self._check_granule(audio)
        self.total += audio.samples
        self.packets += audio.npackets
        if page.eos:
            self._finish(audio)
        return audio

    def _measure(self, page: RawPage) -> AudioPage:
        segments = page.segments
        prefix = self._carry
        if prefix is None and 255 not in segments and 0 not in segments and segments:
            return self._measure_simple(page, segments)
        ends, open_end = packet_ends(segments)
        packets = _slice_packets(page, ends, prefix)
        durations = [packet_duration(p) for p in packets]
        tail = page.data[27 + page.nseg + (ends[-1] if ends else 0) :]
        if ends:
            self._carry = tail if open_end else None
        else:  # no packet ends here: the page only continues (or is empty)
            self._carry = (prefix or b"") + tail if open_end else prefix
        self_contained = prefix is None and not open_end and bool(ends)
        return AudioPage(page, len(ends), durations, sum(durations), prefix, self_contained,
                         _packets=packets)

    def _measure_simple(self, page: RawPage, segments: bytes) -> AudioPage:
        """Fast path: every lacing value is one whole packet of 1..254 bytes, so packet i
        starts at the sum of the first i lacing values and its TOC byte is found directly.
        """
        n = len(segments)
        tocs = bytes(map(page.data.__getitem__, accumulate(segments[:-1], initial=27 + n)))
        first = TOC_SAMPLES[tocs[0]]
        if first >= 0 and tocs.count(tocs[0]) == n:  # one TOC for the whole page (typical)
            return AudioPage(page, n, [first] * n, first * n, None, True)
        durations = list(map(TOC_SAMPLES.__getitem__, tocs))
        if min(durations) < 0:
            ends = list(accumulate(segments))
            durations = [packet_duration(p) for p in _slice_packets(page, ends, None)]
        return AudioPage(page, n, durations, sum(durations), None, True)

    def _check_granule(self, audio: AudioPage) -> None:
        page = audio.page
        granule = page.granule
        if granule < NO_GRANULE:
            raise InvalidAudio(f"invalid granule position on the page at byte {page.offset}")
        if not audio.npackets:
            known = self.granule_offset is not None
            if granule != NO_GRANULE and not (known and granule == self._expected(0)):
                raise InvalidAudio(f"granule position on a page where no packet ends "
                                   f"(byte {page.offset})")
            return
        if granule == NO_GRANULE:
            raise InvalidAudio(f"page at byte {page.offset} lacks a granule position")
        if page.eos:
            self._check_final_granule(audio)
            return
        if self.granule_offset is None:
            self.granule_offset = granule - self.total - audio.samples
            if self.granule_offset < 0:
                raise InvalidAudio("first audio granule position is smaller than its packets' "
                                   "duration")
        elif granule != self._expected(audio.samples):
            raise InvalidAudio(f"granule position {granule} at byte {page.offset} does not "
                               f"match the packet durations (expected "
                               f"{self._expected(audio.samples)})")

    def _expected(self, page_samples: int) -> int:
        return (self.granule_offset or 0) + self.total + page_samples

    def _check_final_granule(self, audio: AudioPage) -> None:
        if self.granule_offset is None:
            self.granule_offset = 0
        trim = self._expected(audio.samples) - audio.page.granule
        if trim < 0:
            raise InvalidAudio("final granule position is past the end of the audio")
        if trim > audio.samples:
            raise InvalidAudio("end trimming removes more than the last page's audio")
        audio.trim = trim

    def _finish(self, audio: AudioPage) -> None:
        if self._carry is not None:
            raise InvalidAudio("stream ends inside a packet")
        if self.packets == 0:
            raise InvalidAudio("stream has no audio packets")
        self.end_trim = audio.trim
        self.final_granule = audio.page.granule if audio.npackets else self._expected(0)
        if self.total - self.end_trim < self.head.pre_skip:
            raise InvalidAudio("pre-skip is longer than the stream")
        self._finished = True

    @property
    def samples(self) -> int:
        """Playable samples (valid once the EOS page was read)."""
        return self.total - self.end_trim - self.head.pre_skip

    def info(self) -> OpusStreamInfo:
        """Summary; call after ``next_audio_page()`` returned ``None``."""
        return OpusStreamInfo(
            serial=self.serial, head=self.head, tags=self.tags, packets=self.packets,
            pages=self._reader.pages, samples=self.samples, final_granule=self.final_granule,
            end_trim=self.end_trim, granule_offset=self.granule_offset or 0,
            size_bytes=self._reader.offset,
        )


def probe(stream: BinaryIO) -> OpusStreamInfo:
    """Validate a whole Ogg Opus stream (streaming) and describe it.

    Raises ``InvalidAudio(reason=..., part=None)`` for anything that is not a single valid
    Ogg Opus logical stream: empty, garbage, another format, truncated, bad CRC, missing or
    misplaced headers, inconsistent granule positions, chained streams, trailing data.
    """
    reader = OpusStreamReader(stream)
    while reader.next_audio_page() is not None:
        pass
    return reader.info()


class OggOpusWriter:
    """Writes a standard Ogg Opus file from Opus packets.

    The constructor writes the BOS page (OpusHead) and the OpusTags page. ``write_packet``
    appends audio; granule positions count every packet's samples (48 kHz, so they include
    the pre-skip). A page is closed before the packet that would push it past ``page_samples``
    of audio (default 1 s) or past 255 lacing values. ``finish(final_granule)`` writes the
    last page with EOS; a ``final_granule`` below the sum of packet samples trims the end
    (at most the last page's audio). The last packet is held back until the next
    ``write_packet`` or ``finish`` so it always lands on the EOS page.
    """

    def __init__(
        self, sink: Sink, serial: int, head: OpusHead, tags: OpusTags | None = None, *,
        page_samples: int = GRANULE_RATE,
    ) -> None:
        self._ogg = OggStreamWriter(sink, serial)
        self._ogg.write_packet(head.to_bytes(), 0)
        self._ogg.flush()
        self._ogg.write_packet((tags or OpusTags()).to_bytes(), 0)
        self._ogg.flush()
        self.pre_skip = head.pre_skip
        self.page_samples = page_samples
        self.granule = 0  # samples of every packet written so far
        self.packets = 0
        self._page_start = 0  # granule at the start of the page being filled
        self._held: tuple[bytes, int] | None = None

    @property
    def bytes_written(self) -> int:
        """Bytes handed to the sink so far (all of them after ``finish``)."""
        return self._ogg.bytes_written

    def write_packet(self, packet: bytes, samples: int | None = None) -> None:
        """Append one Opus packet; ``samples`` defaults to its TOC duration."""
        duration = packet_duration(packet) if samples is None else samples
        if self._held is not None:
            held, held_duration = self._held
            self._page_break_before(held, self.granule - held_duration)
            self._ogg.write_packet(held, self.granule)
        self.granule += duration
        self.packets += 1
        self._held = (packet, duration)

    def _page_break_before(self, packet: bytes, start: int) -> None:
        """Close the current page before a packet starting at granule ``start`` if the page
        already holds ``page_samples`` of audio or the packet's lacing would not fit.
        """
        ogg = self._ogg
        if ogg.pending_packets and (
            start - self._page_start >= self.page_samples
            or ogg.pending_segments + len(packet) // 255 + 1 > MAX_SEGMENTS
        ):
            ogg.flush()
            self._page_start = start

    def finish(self, final_granule: int | None = None) -> int:
        """Write the EOS page and drain to the sink; returns the final granule position.

        Raises ``ValueError`` if no packet was written or ``final_granule`` is above the
        packets' samples, below the pre-skip, or below the previous page's granule position.
        """
        if self._held is None:
            raise ValueError("no audio packets were written")
        final = self.granule if final_granule is None else final_granule
        packet, duration = self._held
        self._page_break_before(packet, self.granule - duration)
        if not (max(self._page_start, self.pre_skip) <= final <= self.granule):
            raise ValueError(f"final granule {final} outside [{self._page_start}, "
                             f"{self.granule}] or below pre-skip {self.pre_skip}")
        self._ogg.write_packet(packet, final)
        self._held = None
        self._ogg.flush(eos=True)
        return final
