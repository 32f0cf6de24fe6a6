"""The ``stitch`` job: a finalized recording's chunks become ONE Ogg Opus file in the store.

Streaming recordings (``uploaded`` → ``stitching`` → ``completed`` | ``failed``):
1. Chunks 1..N are streamed from the store in order, from exactly the objects finalize
   pinned (``chunks.object_key``: versioned create-only keys that no upload can
   overwrite), with memory bounded by a constant. Each must still have the size and MD5
   snapshotted at finalize (``chunks`` table; the MD5 check is skipped for multipart ETags),
   and, when the device sent ``checksum_md5``, all bytes in part order must hash to it —
   else ``checksum_mismatch`` naming the part. A missing chunk fails with ``chunk_missing``.
2. ``tapedeck.oggopus.remux`` joins them into one logical stream (no re-encoding); a chunk
   that is not valid Ogg Opus fails the recording with ``invalid_audio`` naming the part.
3. The output is streamed into the store under ``audio_key(id)`` with ``put(length=-1)``
   (S3 multipart; chunks are below the 5 MiB compose minimum). Every check above and the
   duration check run BEFORE the upload's last read returns, so any failure aborts the
   upload: an object appears under the final key only complete and verified.
4. Duration: the stitched duration must be within ``duration_tolerance_ms`` of
   ``final_duration_ms``: max(100 ms, one packet per chunk boundary) — what independent
   chunks (a fresh encoder each) may lose or gain at every boundary. Else
   ``duration_mismatch``.
5. ONE transaction: job ``succeeded`` (lease checked), a ``media`` row (audio, ready, size,
   MD5), the recording ``completed`` with ``duration_ms`` (the stitched, exact value),
   ``file_size_bytes`` and ``audio_key``, and the ``transcribe`` job enqueued for the
   transcription row queued at finalize. api.md has no event for these transitions.

Single-file recordings (``uploaded`` → ``completed`` | ``failed``, no stitching): the
uploaded object must still match the MD5 recorded at upload-complete, then it is validated
in place — Ogg Opus (codec ``opus``, and ``ogg`` files that are Opus) fully with
``oggopus.probe``; other codecs by demuxing every packet with PyAV when it is installed
(container readable, an audio stream, its duration), else accepted unprobed with
``duration_ms`` unset. The media row becomes ``ready`` and the same completion follows.

Failures (permanent, or transient ones after the last attempt) set the recording ``failed``
with ``failure.type``/``message``, fail its queued transcription with the same error (its one
terminal transcription outcome) and emit ``recording.failed`` and ``transcription.failed``.

Crash safety: the handler holds no state between attempts; a re-run stitches from scratch
(deterministic output: chunk 1's serial number) and overwrites the same key with the same
bytes; completion is exactly once because it commits with the job's lease check.

The package, one module a part: ``handler`` (``StitchHandler``: the job, the streaming
stitch and its duration check; ``build_handler``, the factory), ``chunks`` (the pinned
chunks read back, verified as they stream), ``upload`` (the remux streamed into the store:
``stitch_into_store``), ``single`` (single-file validation and probing), ``transition``
(the recording's status changes and outcome rows, steps 5 and Failures).
"""

from tapedeck.background.stitch.chunks import ChunkRecord, read_object, verified_chunks
from tapedeck.background.stitch.handler import audio_key, build_handler

__all__ = ["ChunkRecord", "audio_key", "build_handler", "read_object", "verified_chunks"]
