"""Single-file recordings (no stitching, package docstring): ``validate_single`` checks the
uploaded object against the MD5 recorded at upload-complete and probes it in place;
``probe_audio`` is that probe (Ogg Opus fully with ``oggopus.probe``, other codecs by
demuxing every packet with PyAV when it is installed, else unprobed)."""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any, BinaryIO

from tapedeck.background.stitch.chunks import READ_BLOCK
from tapedeck.background.stitch.transition import Audio
from tapedeck.domain.models import Recording
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import JobFailed
from tapedeck.infra.store import MD5_HEX, ObjectNotFound, ObjectStore
from tapedeck.oggopus import InvalidAudio, probe


def validate_single(db: Database, store: ObjectStore, rec: Recording) -> Audio:
    """The recording's uploaded file, unchanged since upload-complete and valid audio, as the
    ``Audio`` to publish (its existing media row); else ``JobFailed``."""
    media = next((m for m in reversed(rec.media) if m.status == "uploaded"), None)
    if media is None:
        raise JobFailed("missing_audio", "The recording has no uploaded file.")
    snapshot = db.read().execute("SELECT md5 FROM media WHERE id = ?",
                                 [media.id]).fetchone()[0] or ""
    with tempfile.TemporaryFile() as spool:
        size, digest = _download(store, media.object_key, spool)
        if MD5_HEX.match(snapshot) and digest != snapshot:
            raise JobFailed("checksum_mismatch",
                            "The uploaded file changed after upload-complete.")
        spool.seek(0)
        duration = probe_audio(spool, rec.codec)
    return Audio(media.object_key, size, digest, duration, media.id)


def _download(store: ObjectStore, key: str, spool: BinaryIO) -> tuple[int, str]:
    try:
        stream = store.open(key)
    except ObjectNotFound:
        raise JobFailed("missing_audio", "The uploaded file is no longer in the store.",
                        ) from None
    md5, size = hashlib.md5(), 0
    try:
        while block := stream.read(READ_BLOCK):
            md5.update(block)
            size += len(block)
            spool.write(block)
    finally:
        stream.close()
    return size, md5.hexdigest()


def probe_audio(stream: BinaryIO, codec: str) -> int | None:
    """Validate an uploaded file; return its duration in ms (None if it cannot be probed
    here). Raises ``JobFailed('invalid_audio')`` for unreadable audio."""
    if codec in ("opus", "ogg"):
        try:
            return probe(stream).duration_ms
        except InvalidAudio as exc:
            if codec == "opus":
                raise JobFailed("invalid_audio", f"The file is not valid Ogg Opus: {exc.reason}",
                                ) from exc
            stream.seek(0)  # an Ogg file of another codec (Vorbis, FLAC): probe generically
    return _probe_with_av(stream)


def _probe_with_av(stream: BinaryIO) -> int | None:
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(stream, mode="r") as container:
            audio = next((s for s in container.streams if s.type == "audio"), None)
            if audio is None:
                raise JobFailed("invalid_audio", "The file has no audio stream.")
            return _demuxed_ms(container, audio)
    except av.FFmpegError as exc:
        raise JobFailed("invalid_audio", f"The file is not readable audio: {exc}") from exc


def _demuxed_ms(container: Any, audio: Any) -> int:
    """Duration of ``audio`` by demuxing every packet (validates the container as it goes)."""
    end = 0.0
    packets = 0
    for packet in container.demux(audio):
        if packet.pts is None or packet.duration is None:
            continue
        packets += 1
        end = max(end, float((packet.pts + packet.duration) * packet.time_base))
    if packets == 0:
        raise JobFailed("invalid_audio", "The file holds no audio packets.")
    start = float(audio.start_time * audio.time_base) if audio.start_time is not None else 0.0
    return round((end - start) * 1000)
