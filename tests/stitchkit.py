"""Test kit for the job queue and the stitching worker: real apps (SQLite + the session's
SeaweedFS), real Opus chunks (libopus via the agent's ``OpusChunker``), recordings driven
through the domain exactly as the API does, and decoding/probing with opus-tools/ffprobe."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from tapedeck.app import App
from tapedeck.auth import Principal, create_project
from tapedeck.clock import Clock, SystemClock
from tapedeck.domain.recordings import NewRecording
from tapedeck.oggopus import GRANULE_RATE
from tapedeck.settings import Settings
from tapedeck_agent.encoder import EncodedChunk, OpusChunker

from audio import speech_pcm

RATE = 16_000


def encode_independent_chunks(
    pcm: bytes, *, chunk_duration_ms: int = 300_000, sample_rate: int = 16_000,
    channels: int = 1, **settings: Any,
) -> list[EncodedChunk]:
    """Cut ``pcm`` into ``chunk_duration_ms`` pieces and encode each with a FRESH encoder
    (each chunk a complete stream with its own lookahead pre-skip and end trimming).

    This is how a naive device would chunk (the agent never does): the input of the
    stitcher's independent-chunk path in tests. ``settings`` are passed to ``OpusChunker``
    (bitrate, frame_ms, complexity, ...).
    """
    step = sample_rate * chunk_duration_ms // 1000 * 2 * channels
    factor = GRANULE_RATE // sample_rate
    chunks = []
    for part, offset in enumerate(range(0, len(pcm), step), start=1):
        chunker = OpusChunker(sample_rate=sample_rate, channels=channels,
                              chunk_duration_ms=None, **settings)
        (chunk,) = chunker.feed(pcm[offset : offset + step]) + chunker.finish()
        shift = offset // (2 * channels) * factor
        chunks.append(replace(chunk, part=part, start_sample=chunk.start_sample + shift,
                              end_sample=chunk.end_sample + shift))
    return chunks


@dataclass
class Project:
    """An opened ``App`` (no roles started) with one project and its secret-key principal."""

    app: App
    principal: Principal

    @property
    def db_path(self) -> Path:
        return self.app.settings.db_path


def open_project(settings: Settings, clock: Clock | None = None) -> Project:
    app = App.open(settings, clock=clock or SystemClock())
    _, key = create_project(app.db, app.clock)
    return Project(app, app.domain.auth.authenticate(f"Bearer {key}"))


def project_principal(app: App) -> Principal:
    """A principal of a new project in ``app``'s database."""
    _, key = create_project(app.db, app.clock)
    return app.domain.auth.authenticate(f"Bearer {key}")


# -- audio ------------------------------------------------------------------------------------

@cache
def pcm(seconds: float, start: int = 0) -> bytes:
    """``seconds`` of real speech, 16 kHz mono int16."""
    return speech_pcm(seconds, RATE, start=start)


def continuous_chunks(seconds: float, chunk_ms: int, *, bitrate: int = 24_000,
                      complexity: int = 5, start: int = 0) -> list[EncodedChunk]:
    """One encoder over the whole recording, cut into chunk files with an 80 ms overlap."""
    chunker = OpusChunker(chunk_duration_ms=chunk_ms, bitrate=bitrate, complexity=complexity,
                          serial=0x5EED)
    return chunker.feed(pcm(seconds, start)) + chunker.finish()


def whole_encode(seconds: float, *, bitrate: int = 24_000, complexity: int = 5,
                 start: int = 0) -> bytes:
    """The same recording encoded as ONE stream (the reference for bit-exact stitching)."""
    chunker = OpusChunker(chunk_duration_ms=None, bitrate=bitrate, complexity=complexity,
                          serial=0x5EED)
    (chunk,) = chunker.feed(pcm(seconds, start)) + chunker.finish()
    return chunk.data


def independent_chunks(seconds: float, chunk_ms: int, *, start: int = 0) -> list[EncodedChunk]:
    """A fresh encoder per chunk (each with its own pre-skip and end trimming)."""
    return encode_independent_chunks(pcm(seconds, start), chunk_duration_ms=chunk_ms,
                                     complexity=5)


def duration_ms(seconds: float) -> int:
    return round(seconds * 1000)


# -- recordings through the domain -------------------------------------------------------------

def streaming_recording(project: Project, chunks: list[bytes], final_duration_ms: int, *,
                        checksum: bool = True) -> str:
    """Create a streaming recording, upload ``chunks`` as parts 1..N, finalize; return its id."""
    domain, p = project.app.domain, project.principal
    created = domain.recordings.create(p, NewRecording(streaming=True, codec="opus",
                                                       chunk_duration_ms=60_000))
    rec_id = created.recording.id
    for part, data in enumerate(chunks, start=1):
        domain.chunks.upload(p, rec_id, part, [data], md5=hashlib.md5(data).hexdigest())
    md5 = hashlib.md5(b"".join(chunks)).hexdigest() if checksum else None
    domain.recordings.finalize(p, rec_id, len(chunks), final_duration_ms, md5)
    return rec_id


def single_file_recording(project: Project, data: bytes, codec: str = "opus") -> str:
    """Create a non-streaming recording, PUT its file to the store, upload-complete."""
    domain, p = project.app.domain, project.principal
    rec_id = domain.recordings.create(p, NewRecording(streaming=False, codec=codec)).recording.id
    url = domain.recordings.create_upload_url(p, rec_id, content_type="audio/ogg")
    key = next(m.object_key for m in domain.recordings.get(p, rec_id).media
               if m.id == url.media_id)
    project.app.store.put(key, _bytes_io(data), len(data))
    domain.recordings.complete_upload(p, rec_id)
    return rec_id


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def recording_row(project: Project, rec_id: str) -> dict[str, Any]:
    cur = project.app.db.read().execute("SELECT * FROM recordings WHERE id = ?", [rec_id])
    return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))


def events(project: Project, rec_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = project.app.db.read().execute(
        "SELECT type, data FROM events WHERE recording_id = ? ORDER BY created_at, rowid",
        [rec_id]).fetchall()
    return [(t, json.loads(d)) for t, d in rows]


def jobs_of(project: Project, rec_id: str) -> list[dict[str, Any]]:
    cur = project.app.db.read().execute(
        "SELECT * FROM jobs WHERE recording_id = ? ORDER BY created_at", [rec_id])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# -- checking audio files ----------------------------------------------------------------------

def opusinfo(path: Path) -> str:
    """opusinfo's report; raises if it exits non-zero."""
    out = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def ffprobe_duration_s(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["format"]["duration"])


def ffmpeg_samples(path: Path) -> int:
    """Samples ffmpeg decodes from ``path`` (48 kHz mono, pre-skip and end trim applied)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
                          "-ar", "48000", "-"], capture_output=True, check=True)
    return len(out.stdout) // 2


def decode(path: Path) -> bytes:
    """libopus decoding (opusdec, 48 kHz float, no dither): pre-skip and end trim applied."""
    raw = path.with_suffix(".f32")
    subprocess.run(["opusdec", "--quiet", "--float", "--rate", "48000", str(path), str(raw)],
                   check=True, capture_output=True)
    return raw.read_bytes()
