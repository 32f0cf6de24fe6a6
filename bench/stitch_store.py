"""Benchmark: the stitch JOB from the store into the store vs a plain byte copy through it.

Run: ``.venv/bin/python bench/stitch_store.py [--runs N] [--minutes M]``

Starts its own SeaweedFS (``weed mini``) and SQLite file in a temporary directory, takes M
minutes (default 60) of real speech in 5-minute chunks at 24 kbps (encoded once by one
continuous encoder and cached under ``.cache/bench/``, shared with ``bench/stitch.py``), and
for each of N runs (default 7; median reported), interleaved:

* baseline, plain byte copy through the same store: GET every chunk, concatenate, PUT the
  result (one PutObject, as a naive stitcher would);
* stitch: one finalized recording's ``stitch`` job run by a real ``Worker`` — claim, status
  ``stitching``, GET + MD5-verify every chunk, remux into one logical Ogg Opus stream,
  stream it into the store (multipart), check its duration, commit (media row, recording
  ``completed``, transcription job queued).

Prints both times and the ratio (target: stitch <= 3x the byte copy, and under 1 s).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stitch import make_chunks  # noqa: E402

from tapedeck.app import App  # noqa: E402
from tapedeck.auth import Principal, create_project  # noqa: E402
from tapedeck.background.stitch import build_handler  # noqa: E402
from tapedeck.background.worker import Worker, queue_for  # noqa: E402
from tapedeck.domain.recordings import NewRecording  # noqa: E402
from tapedeck.infra.store import ObjectStore  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402


def finalized_recording(app: App, p: Principal, chunks: list[bytes], minutes: int) -> str:
    """A streaming recording with ``chunks`` uploaded and finalized (its stitch job queued)."""
    rec_id = app.domain.recordings.create(p, NewRecording(streaming=True,
                                                          chunk_duration_ms=300_000)).recording.id
    for part, data in enumerate(chunks, start=1):
        app.domain.chunks.upload(p, rec_id, part, [data], md5=hashlib.md5(data).hexdigest())
    checksum = hashlib.md5(b"".join(chunks)).hexdigest()
    app.domain.recordings.finalize(p, rec_id, len(chunks), minutes * 60_000, checksum)
    return rec_id


def byte_copy(store: ObjectStore, rec_id: str, parts: int, out_key: str) -> int:
    """Baseline: GET + concatenate + PUT (one PutObject) of the recording's chunks."""
    blobs = []
    for part in range(1, parts + 1):
        stream = store.open(f"recordings/{rec_id}/chunks/chunk_{part}.opus")
        try:
            blobs.append(stream.read())
        finally:
            stream.close()
    data = b"".join(blobs)
    store.put(out_key, io.BytesIO(data), len(data))
    return len(data)


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    chunks = [p.read_bytes() for p in make_chunks(args.minutes, args.cache)]
    with tempfile.TemporaryDirectory() as tmp:
        app = App.open(Settings(data_dir=Path(tmp)))  # starts its own weed mini
        try:
            run(app, chunks, args)
        finally:
            app.close()


def run(app: App, chunks: list[bytes], args: argparse.Namespace) -> None:
    _, key = create_project(app.db, app.clock)
    p = app.domain.auth.authenticate(f"Bearer {key}")
    print(f"uploading {args.runs + 1} recordings of {len(chunks)} chunks ...", flush=True)
    recs = [finalized_recording(app, p, chunks, args.minutes) for _ in range(args.runs + 1)]
    worker = Worker(queue_for(app.runtime), {"stitch": build_handler(app.runtime)}, "bench")
    # Warm-up (connections, page cache, imports), then check the result once.
    byte_copy(app.store, recs[0], len(chunks), "bench/copy-warmup")
    assert worker.run_once() == "succeeded"
    copy_s, stitch_s = [], []
    for rec_id in recs[1:]:
        copy_s.append(timed(lambda r=rec_id: byte_copy(app.store, r, len(chunks),
                                                       f"bench/copy-{r}")))
        stitch_s.append(timed(lambda: _stitch_one(worker)))
    rows = app.db.read().execute(
        "SELECT status, duration_ms, file_size_bytes FROM recordings WHERE id IN"
        f" ({','.join('?' * len(recs))})", recs).fetchall()
    assert {r[0] for r in rows} == {"completed"}, rows
    size = sum(len(c) for c in chunks)
    copy_m, stitch_m = statistics.median(copy_s), statistics.median(stitch_s)
    print(f"input: {len(chunks)} chunks, {size / 1e6:.2f} MB, {args.minutes} min; "
          f"stitched: {rows[0][1]} ms, {rows[0][2] / 1e6:.2f} MB")
    print(f"byte copy (GET+concat+PUT):     {copy_m * 1000:8.1f} ms "
          f"(median of {args.runs}: {_list(copy_s)})")
    print(f"stitch job (store -> store):    {stitch_m * 1000:8.1f} ms "
          f"(median of {args.runs}: {_list(stitch_s)})")
    print(f"ratio stitch / byte copy:       {stitch_m / copy_m:8.2f}x  (target <= 3x, < 1 s)")


def _stitch_one(worker: Worker) -> None:
    if worker.run_once() != "succeeded":
        raise RuntimeError("stitch job did not succeed")


def _list(times: list[float]) -> str:
    return ", ".join(f"{t * 1000:.0f}" for t in times)


if __name__ == "__main__":
    main()
