"""Capture → Opus chunks → spool, one recording (segment) after another.

A recording ends when the source ends, the requested duration is reached, ``stop`` is set
(SIGTERM: the current chunk is finished short and the recording closed at once), it holds
``max_chunks`` chunks (the capture rolls over into a new recording without losing a sample),
or the spool would overflow with the next chunk.

Spool full: the recording is closed properly and capture PAUSES (agent state
``capture = paused: spool full``, logged as an error). Nothing already captured is ever
dropped. A live device cannot wait, so the audio that arrives during the pause is not
recorded and its length is reported; live capture resumes into a new recording once uploads
have freed room for three chunks. A file source instead waits at the chunk boundary (one
recording, no gap) until uploads free room.

The decision to end a recording is taken at chunk boundaries, so a rolled-over recording
ends with a full chunk and the next sample goes to the next recording.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tapedeck_agent.capture import AudioSource
from tapedeck_agent.config import AgentConfig
from tapedeck_agent.encoder import EncodedChunk, OpusChunker
from tapedeck_agent.health import config_for_next_recording
from tapedeck_agent.spool import Spool, samples_to_ms

FRAME_MS = 20
READ_MS = 100
log = logging.getLogger("tapedeck_agent.recorder")


@dataclass
class RecordResult:
    """What one ``record()`` call produced."""

    local_ids: list[str] = field(default_factory=list)
    frames_read: int = 0
    frames_dropped: int = 0  # live audio not recorded while the spool was full
    ended_by: str = ""  # "duration", "end_of_file", "stop"


class Recorder:
    """Runs one source into the spool. ``notify`` is called after every stored chunk."""

    def __init__(self, cfg: AgentConfig, spool: Spool, notify: Callable[[], None]) -> None:
        self.cfg = cfg  # the current recording's: ``base`` + the server's pushed settings
        self.base = cfg
        self.spool = spool
        self.notify = notify
        self._rate = cfg.sample_rate
        self._chunk_frames = cfg.sample_rate * cfg.chunk_duration_ms // 1000
        self._bytes_per_frame = 2 * cfg.channels
        self._carry = b""
        self._source: AudioSource | None = None
        self._overflows_logged = 0

    @property
    def chunk_estimate_bytes(self) -> int:
        """A generous size estimate of one chunk file (bitrate + Ogg overhead)."""
        return int(self.cfg.bitrate / 8 * self.cfg.chunk_duration_ms / 1000 * 1.1) + 4096

    def spool_full(self, chunks_ahead: int = 1) -> bool:
        """Would ``chunks_ahead`` more chunks push the spool past its limit, even after
        deleting chunk files the server already holds (down to half the limit, or lower
        if the chunks need more)?"""
        needed = chunks_ahead * self.chunk_estimate_bytes
        if self.spool.usage_bytes() + needed <= self.spool.max_bytes:
            return False
        limit = self.spool.max_bytes
        freed = self.spool.evict_uploaded(min(limit // 2, limit - needed))
        if freed:
            log.warning("spool near its limit: deleted %d bytes of chunk files the server "
                        "already holds", freed)
        return self.spool.usage_bytes() + needed > limit

    def record(self, source: AudioSource, stop: threading.Event, *, origin: str,
               max_frames: int | None = None, name: str = "") -> RecordResult:
        """Record until the source ends, ``max_frames`` frames were read or ``stop``."""
        if source.sample_rate != self._rate or source.channels != self.cfg.channels:
            raise ValueError("source format differs from the configuration")
        result = RecordResult()
        self._source = source
        owner, lock = self.spool.new_owner()
        try:
            while not result.ended_by:
                if self.spool_full(chunks_ahead=2):
                    self._pause(source, stop, max_frames, result)
                    continue
                self._segment(source, stop, owner, origin, name, max_frames, result)
        finally:
            self.spool.set_state("capture", "idle")
            lock.release()
        return result

    # -- one recording ----------------------------------------------------------------------
    def _segment(self, source: AudioSource, stop: threading.Event, owner: str, origin: str,
                 name: str, max_frames: int | None, result: RecordResult) -> None:
        # Pushed settings apply from a new recording only, never inside one.
        self.cfg, version = config_for_next_recording(self.base, self.spool)
        self._chunk_frames = self._rate * self.cfg.chunk_duration_ms // 1000
        cfg = self.cfg
        left = None if max_frames is None else max_frames - result.frames_read
        estimate = cfg.max_chunks * cfg.chunk_duration_ms
        if left is not None:
            estimate = min(estimate, left * 1000 // self._rate)
        local_id = self.spool.new_recording(
            source=origin, name=name, sample_rate=self._rate, channels=cfg.channels,
            chunk_duration_ms=cfg.chunk_duration_ms, estimated_duration_ms=estimate,
            owner=owner)
        result.local_ids.append(local_id)
        self.spool.set_state("capture", f"recording {local_id}")
        log.info("recording %s started (%s, %d Hz x%d, %d ms chunks, %d bit/s, dtx %s, "
                 "settings version %d)", local_id, origin, self._rate, cfg.channels,
                 cfg.chunk_duration_ms, cfg.bitrate, "on" if cfg.dtx else "off", version)
        chunker = OpusChunker(sample_rate=self._rate, channels=cfg.channels,
                              chunk_duration_ms=cfg.chunk_duration_ms, frame_ms=FRAME_MS,
                              bitrate=cfg.bitrate, complexity=cfg.complexity, dtx=cfg.dtx)
        try:
            self._feed_until_end(source, stop, local_id, chunker, max_frames, result)
        finally:
            for chunk in chunker.finish():
                self._store(local_id, chunk)
            rec = self.spool.close_recording(local_id)
            log.info("recording %s closed: %s chunk(s), %.1f s", local_id, rec.total_chunks,
                     (rec.duration_ms or 0) / 1000)
            self.notify()

    def _feed_until_end(self, source: AudioSource, stop: threading.Event, local_id: str,
                        chunker: OpusChunker, max_frames: int | None,
                        result: RecordResult) -> None:
        """Feed PCM until a reason to end this recording; ``result.ended_by`` is set when
        the whole ``record()`` should end (not for a rollover or a spool pause).

        Reads stop at every chunk boundary. There the chunk is complete inside the encoder
        (it is emitted with the next frame, or by ``finish()`` which also flushes the
        encoder's lookahead into it), so ending the recording at a boundary gives a last
        chunk of full length and no extra chunk."""
        fed = 0
        while True:
            if stop.is_set():
                result.ended_by = "stop"
                return
            complete = fed // self._chunk_frames
            if fed and fed % self._chunk_frames == 0:
                if not source.live:
                    self._wait_for_room(stop, local_id)  # a file waits: no gap, no split
                if self._should_end(local_id, complete):
                    return
            boundary = (complete + 1) * self._chunk_frames
            pcm = self._read(source, min(self._rate * READ_MS // 1000, boundary - fed),
                             max_frames, result)
            if not pcm:
                return
            fed += len(pcm) // self._bytes_per_frame
            for chunk in chunker.feed(pcm):
                self._store(local_id, chunk)

    def _should_end(self, local_id: str, complete: int) -> bool:
        """End the recording with its ``complete`` chunks? (max_chunks reached, or no room
        for the pending chunk plus one more.)"""
        rec = self.spool.recording(local_id)
        limit = min(self.cfg.max_chunks, rec.max_chunks or self.cfg.max_chunks)
        if complete >= limit:
            log.info("recording %s reached %d chunks: rolling over", local_id, complete)
            return True
        return self.spool_full(chunks_ahead=2)

    def _wait_for_room(self, stop: threading.Event, local_id: str) -> None:
        """Hold a file source at a chunk boundary until two more chunks fit (or stop)."""
        if not self.spool_full(chunks_ahead=2):
            return
        self.spool.set_state("capture", "waiting: spool full")
        log.warning("spool full: file input waits until uploads free space")
        while self.spool_full(chunks_ahead=2) and not stop.wait(0.5):
            pass
        self.spool.set_state("capture", f"recording {local_id}")
        log.info("spool has room again: file input continues")

    def _read(self, source: AudioSource, frames: int, max_frames: int | None,
              result: RecordResult) -> bytes:
        """Next PCM (carried-over frames first); b"" sets ``ended_by`` (duration or EOF)."""
        if max_frames is not None:
            frames = min(frames, max_frames - result.frames_read)
            if frames <= 0:
                result.ended_by = "duration"
                return b""
        want = frames * self._bytes_per_frame
        if not self._carry:
            self._carry = source.read(frames)
        pcm, self._carry = self._carry[:want], self._carry[want:]
        if not pcm:
            result.ended_by = "end_of_file"
            return b""
        pcm = pcm[: len(pcm) - len(pcm) % self._bytes_per_frame]
        result.frames_read += len(pcm) // self._bytes_per_frame
        return pcm

    def _store(self, local_id: str, chunk: EncodedChunk) -> None:
        row = self.spool.write_chunk(local_id, chunk.part, chunk.data, chunk.samples)
        log.info("spooled chunk %d of %s (%d bytes, %.2f s)", row.part, local_id, row.size,
                 samples_to_ms(row.samples) / 1000)
        overflows = int(getattr(self._source, "overflows", 0))
        if overflows > self._overflows_logged:
            log.warning("capture device reported %d input overflow(s) so far (audio lost "
                        "inside PortAudio)", overflows)
            self._overflows_logged = overflows
        self.notify()

    # -- spool full -----------------------------------------------------------------------
    def _pause(self, source: AudioSource, stop: threading.Event, max_frames: int | None,
               result: RecordResult) -> None:
        """Wait (discarding live audio, counting it) until three chunks fit in the spool
        (one more than the recording needs to go on, so it does not stop again at once)."""
        usage, limit = self.spool.usage_bytes(), self.spool.max_bytes
        state = f"paused: spool full ({usage} of {limit} bytes used)"
        self.spool.set_state("capture", state)
        log.error("capture %s; audio already captured is kept, new audio is NOT recorded "
                  "until uploads free space", state)
        dropped_before = result.frames_dropped
        started = time.monotonic()
        while self.spool_full(chunks_ahead=3) and not result.ended_by:
            if stop.is_set():
                result.ended_by = "stop"
            elif source.live:
                pcm = self._read(source, self._rate * READ_MS // 1000, max_frames, result)
                result.frames_dropped += len(pcm) // self._bytes_per_frame
            else:
                stop.wait(0.5)
        lost = (result.frames_dropped - dropped_before) / self._rate
        log.warning("capture resumed after %.1f s paused; %.1f s of live audio were not "
                    "recorded", time.monotonic() - started, lost)
