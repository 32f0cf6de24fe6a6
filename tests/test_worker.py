"""Worker loops: handler registry, retries, shutdown hand-back, lease loss — and real
``tapedeck worker`` processes killed with SIGKILL mid-stitch, and two of them sharing 50
recordings, against the session's SeaweedFS and a real SQLite file."""

from __future__ import annotations

import json
import os
import queue as queue_mod
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tapedeck.background.stitch import audio_key, build_handler
from tapedeck.background.worker import JobRun, Worker, WorkerPool, load_handlers, parse_lanes, queue_for
from tapedeck.clock import ManualClock
from tapedeck.domain.expiry import Expiry
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import TapedeckError, error
from tapedeck.infra.db import Database, open_database
from tapedeck.infra.jobs import Failure, Job, JobFailed, JobQueue, JobSignals, RetryPolicy, enqueue
from tapedeck.infra.sql import Tx
from tapedeck.infra.store import ObjectStore
from tapedeck.infra.weed import ManagedWeed
from tapedeck.oggopus import probe
from tapedeck.settings import Settings

import waitkit
from serverkit import drop_bucket, make_settings
from stitchkit import (
    Project,
    continuous_chunks,
    jobs_of,
    open_project,
    recording_row,
    single_file_recording,
    streaming_recording,
)

# -- in-process loops with a test job kind ------------------------------------------------------


class Probe:
    """A test job kind whose behaviour comes from the job payload's ``action``:
    ``ok``, ``transient_once`` (storage_unavailable on attempt 1), ``permanent``, ``bug``,
    ``block`` (waits for ``release``), ``wait_lease`` (waits until the lease is lost)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []
        self.failures: list[tuple[str, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.lease_seen_lost = threading.Event()

    def run(self, run: JobRun) -> None:
        job = run.job
        self.runs.append((job.id, job.attempts))
        action = job.payload["action"]
        if action == "transient_once" and job.attempts == 1:
            raise error("storage_unavailable")
        if action == "permanent":
            raise JobFailed("invalid_audio", "Chunk 2 is not valid Ogg Opus.", part=2)
        if action == "bug":
            raise ZeroDivisionError("bug")
        if action == "block":
            self.started.set()
            self.release.wait(30)
        if action == "wait_lease":
            self.started.set()
            while not run.lost.is_set():
                time.sleep(0.01)
            self.lease_seen_lost.set()
            run.check()

    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        self.failures.append((job.id, failure.type))
        tx.execute("INSERT INTO events (id, project_id, type, created_at, data)"
                   " VALUES (?, 'p', 'probe.failed', 'now', ?)", [f"evt_{job.id}",
                                                                  failure.to_json()])


@pytest.fixture
def db(database: Database) -> Database:
    """Each test on both backends (``database``: SQLite, then PostgreSQL)."""
    return database


def add(db: Database, clock: Any, action: str, kind: str = "probe") -> str:
    with db.write() as tx:
        return enqueue(tx, clock, kind, payload={"action": action})


def job_status(db: Database, job_id: str) -> tuple[str, int]:
    row = db.read().execute("SELECT status, attempts FROM jobs WHERE id = ?", [job_id]).fetchone()
    return row[0], row[1]


def make_queue(db: Database, clock: Any, **kw: Any) -> JobQueue:
    kw.setdefault("retry", RetryPolicy(max_attempts=3, base_s=5.0, jitter=0.0))
    return JobQueue(db, clock, rng=random.Random(1), **kw)


def test_transient_failure_is_retried_after_backoff(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    worker = Worker(make_queue(db, clock), {"probe": handler}, "w")
    job_id = add(db, clock, "transient_once")
    assert worker.run_once() == "retry"
    assert worker.run_once() is None
    clock.advance(timedelta(seconds=5))
    assert worker.run_once() == "succeeded"
    assert job_status(db, job_id) == ("succeeded", 2)
    assert handler.runs == [(job_id, 1), (job_id, 2)] and handler.failures == []


def test_permanent_failure_fails_at_once_with_the_domain_hook(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    worker = Worker(make_queue(db, clock), {"probe": handler}, "w")
    job_id = add(db, clock, "permanent")
    assert worker.run_once() == "failed"
    assert job_status(db, job_id) == ("failed", 1)
    assert handler.failures == [(job_id, "invalid_audio")]
    data = db.read().execute("SELECT data FROM events WHERE type = 'probe.failed'").fetchone()
    assert json.loads(data[0])["part"] == 2


def test_unexpected_errors_are_retried_until_max_attempts(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    worker = Worker(make_queue(db, clock), {"probe": handler}, "w")
    job_id = add(db, clock, "bug")
    outcomes = []
    for _ in range(3):
        outcomes.append(worker.run_once())
        clock.advance(timedelta(minutes=10))
    assert outcomes == ["retry", "retry", "failed"]
    assert handler.failures == [(job_id, "internal_error")]
    assert worker.run_once() is None


def test_a_crash_looping_job_is_given_up(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    queue = make_queue(db, clock, lease_s=10)
    job_id = add(db, clock, "ok")
    for _ in range(3):  # three workers die holding it
        assert queue.claim("doomed", ["probe"]) is not None
        clock.advance(timedelta(seconds=11))
    assert Worker(queue, {"probe": handler}, "w").run_once() == "failed"
    assert handler.runs == []  # not run a fourth time
    assert handler.failures == [(job_id, "internal_error")]


def test_kinds_without_a_handler_stay_queued(db: Database, tmp_path: Path) -> None:
    clock = ManualClock()
    handlers = load_handlers(None, {"probe": "tests_no_such_module:build"})  # type: ignore[arg-type]
    assert handlers == {}
    job_id = add(db, clock, "ok")
    assert Worker(make_queue(db, clock), handlers, "w").run_once() is None
    assert Worker(make_queue(db, clock), {"other": Probe()}, "w").run_once() is None
    assert job_status(db, job_id) == ("queued", 0)


def test_pool_stop_hands_in_flight_jobs_back(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    queue = make_queue(db, clock)
    pool = WorkerPool(queue, {"probe": handler}, threads=2, poll_s=0.01, name="pool").start()
    job_id = add(db, clock, "block")
    pool.wake()
    assert handler.started.wait(30)
    pool.stop(grace=0.05)
    assert job_status(db, job_id) == ("queued", 0)  # handed back, attempt not counted
    handler.release.set()  # the abandoned run finishes late: it must not complete the job
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        outcome = db.read().execute("SELECT outcome FROM job_runs WHERE job_id = ?",
                                    [job_id]).fetchone()[0]
        if outcome == "lease_lost":
            break
        time.sleep(0.01)
    assert job_status(db, job_id) == ("queued", 0)
    assert outcome == "lease_lost"


def test_pool_runs_jobs_and_stops_idle(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    pool = WorkerPool(make_queue(db, clock), {"probe": handler}, threads=2, poll_s=0.01,
                      name="pool").start()
    ids = [add(db, clock, "ok") for _ in range(20)]
    wait_for(lambda: all(job_status(db, i)[0] == "succeeded" for i in ids))
    pool.stop(grace=5)
    assert sorted(i for i, _ in handler.runs) == sorted(ids)


def test_heartbeats_notice_a_lost_lease(db: Database) -> None:
    clock, handler = ManualClock(), Probe()
    queue = make_queue(db, clock, lease_s=0.3)  # heartbeat every 0.1 s (wall time)
    worker = Worker(queue, {"probe": handler}, "w")
    job_id = add(db, clock, "wait_lease")
    result: list[str | None] = []
    t = threading.Thread(target=lambda: result.append(worker.run_once()))
    t.start()
    assert handler.started.wait(30)
    clock.advance(timedelta(seconds=1))  # the lease expires on the queue's clock ...
    thief = queue.claim("thief", ["probe"])  # ... and another worker takes the job over
    assert thief is not None and thief.id == job_id
    t.join(30)
    assert result == ["lease_lost"] and handler.lease_seen_lost.is_set()
    assert job_status(db, job_id) == ("running", 2)


def test_each_kind_has_its_own_lane_woken_by_signals(db: Database) -> None:
    """One loop per kind: a ``fast`` job queued while the only ``slow`` loop is blocked runs
    at once — woken by the signal, since idle loops would otherwise sleep an hour."""
    clock, slow, fast, signals = ManualClock(), Probe(), Probe(), JobSignals()
    pool = WorkerPool(make_queue(db, clock), {"slow": slow, "fast": fast}, threads=1,
                      poll_s=3600, name="pool", signals=signals).start()
    try:
        assert pool.lanes == {"slow": 1, "fast": 1} and len(pool.workers) == 2
        blocked = add(db, clock, "block", kind="slow")
        signals.notify("slow")
        assert slow.started.wait(30)
        done = add(db, clock, "ok", kind="fast")
        signals.notify("fast")
        wait_for(lambda: job_status(db, done) == ("succeeded", 1), timeout=30)
        assert job_status(db, blocked) == ("running", 1)  # still running all along
        slow.release.set()
        wait_for(lambda: job_status(db, blocked) == ("succeeded", 1), timeout=30)
    finally:
        slow.release.set()
        pool.stop(grace=5)
    assert signals._listeners == []  # the stopped pool unsubscribed


def test_lane_counts_override_threads_per_kind(db: Database) -> None:
    pool = WorkerPool(make_queue(db, ManualClock()), {"a": Probe(), "b": Probe()}, threads=2,
                      poll_s=1, name="host:42", lanes={"a": 3})
    assert pool.lanes == {"a": 3, "b": 2}
    assert sorted(w.name for w in pool.workers) == [
        "host:42:a:0", "host:42:a:1", "host:42:a:2", "host:42:b:0", "host:42:b:1"]
    assert all(len(w.handlers) == 1 for w in pool.workers)


@pytest.mark.parametrize("spec", ["stitch", "stitch:0", "stitch:x", "nope:1", "stitch:1,stitch:2",
                                  "stitch:-1", ":1"])
def test_malformed_worker_lanes_are_rejected(spec: str) -> None:
    with pytest.raises(TapedeckError) as info:
        parse_lanes(spec, {"stitch", "transcribe"})
    assert info.value.type == "invalid_request" and info.value.details["field"] == "worker_lanes"


def test_worker_lanes_parse() -> None:
    known = {"stitch", "transcribe"}
    assert parse_lanes("", known) == {}
    assert parse_lanes(" stitch : 2 , transcribe:1, ", known) == {"stitch": 2, "transcribe": 1}


def wait_for(cond: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``cond`` until true (a liveness bound, not a timing assertion)."""
    waitkit.wait_for(cond, timeout, "condition reached", interval=0.05)


# -- the worker role in-process -----------------------------------------------------------------

def test_app_worker_role_stitches_after_finalize(weed: ManagedWeed, tmp_path: Path) -> None:
    settings = make_settings(weed, tmp_path / "data", job_poll_ms=20, workers=2,
                             job_kinds="stitch")
    project = open_project(settings)
    try:
        project.app.start(["worker"])
        ids = [streaming_recording(project, [c.data for c in continuous_chunks(6.0, 2_000)],
                                   6_000) for _ in range(3)]
        wait_for(lambda: all(recording_row(project, i)["status"] == "completed" for i in ids))
    finally:
        project.app.close(grace=5)
        drop_bucket(weed, settings.s3_bucket)


def test_stitching_runs_while_a_transcription_hangs_and_wakes_without_polling(
        weed: ManagedWeed, tmp_path: Path) -> None:
    """The default lanes (one stitch + one transcribe loop) with the real handlers: recording
    A is stitched and its transcription hangs at the ``transcribe.started`` failpoint;
    recording B, finalized afterwards, is still stitched. Idle loops poll once a minute, so
    every step within 30 s was started by an in-process wake-up (finalize → stitch,
    stitch completion → transcribe)."""
    settings = make_settings(weed, tmp_path / "data", job_poll_ms=60_000,
                             test_only_failpoints="transcribe.started")
    project = open_project(settings)
    try:
        project.app.start(["worker"])
        assert project.app.services[-1].lanes == {  # type: ignore[attr-defined]
            "stitch": 1, "transcribe": 1}
        chunks = [c.data for c in continuous_chunks(6.0, 2_000)]
        first = streaming_recording(project, chunks, 6_000)
        wait_for(lambda: transcription_job(project, first) == "running", timeout=30)
        second = streaming_recording(project, chunks, 6_000)
        wait_for(lambda: recording_row(project, second)["status"] == "completed", timeout=30)
        assert transcription_job(project, first) == "running"  # still hanging
        assert recording_row(project, first)["transcription_status"] == "processing"
    finally:
        project.app.close(grace=1)
        drop_bucket(weed, settings.s3_bucket)


def test_a_requested_transcription_wakes_the_transcribe_loop(weed: ManagedWeed,
                                                             tmp_path: Path) -> None:
    """On-demand transcription wakes the transcribe loop (idle loops poll once a minute).
    The model directory is empty, so every transcription fails at once, for real
    (``engine_unavailable``, one attempt): the first after stitching, then the requested one."""
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    settings = make_settings(weed, tmp_path / "data", job_poll_ms=60_000, job_max_attempts=1,
                             whisper_model=str(empty_model))
    project = open_project(settings)
    try:
        project.app.start(["worker"])
        rec_id = streaming_recording(project, [c.data for c in continuous_chunks(4.0, 2_000)],
                                     4_000)
        wait_for(lambda: recording_row(project, rec_id)["transcription_status"] == "failed",
                 timeout=30)
        transcriptions, p = project.app.domain.transcriptions, project.principal
        txn = transcriptions.request(p, rec_id)
        wait_for(lambda: transcriptions.get(p, txn.id).status == "failed", timeout=30)
        error = transcriptions.get(p, txn.id).error
        assert error is not None and error.get("reason") == "engine_unavailable", error
    finally:
        project.app.close(grace=1)
        drop_bucket(weed, settings.s3_bucket)


def test_signals_fire_after_the_enqueue_committed(weed: ManagedWeed, tmp_path: Path) -> None:
    """Every in-process enqueue notifies its kind, and only once the job is visible to
    another connection (a loop woken before the commit would find nothing and sleep):
    finalize, upload-complete, stitch completion (→ transcribe) and expiry auto-finalize."""
    clock = ManualClock()
    settings = make_settings(weed, tmp_path / "data")
    project = open_project(settings, clock=clock)
    other = open_database(settings.database_target)  # its own connections
    seen: list[tuple[str, int]] = []

    def listener(kind: str) -> None:
        count = other.read().execute("SELECT count(*) FROM jobs WHERE kind = ?",
                                     [kind]).fetchone()[0]
        seen.append((kind, count))

    runtime = project.app.runtime
    assert project.app.domain.ctx.job_signals is runtime.job_signals  # one per process
    runtime.job_signals.subscribe(listener)
    chunks = [c.data for c in continuous_chunks(4.0, 2_000)]
    stitcher = Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "t")
    try:
        streaming_recording(project, chunks, 4_000)
        single_file_recording(project, b"".join(chunks[:1]))
        assert stitcher.run_once() == stitcher.run_once() == "succeeded"
        domain, p = project.app.domain, project.principal
        left = domain.recordings.create(p, NewRecording(streaming=True, codec="opus",
                                                        chunk_duration_ms=2_000)).recording.id
        domain.chunks.upload(p, left, 1, [chunks[0]])
        clock.advance(timedelta(days=30))
        assert Expiry(domain.ctx).sweep() == {left: "finalized"}
        assert seen == [("stitch", 1), ("stitch", 2), ("transcribe", 1), ("transcribe", 2),
                        ("stitch", 3)]
    finally:
        stitcher.close()
        other.close()
        project.app.close(grace=1)
        drop_bucket(weed, settings.s3_bucket)


def transcription_job(project: Project, rec_id: str) -> str | None:
    """Status of the recording's ``transcribe`` job (None before it is queued)."""
    return next((j["status"] for j in jobs_of(project, rec_id) if j["kind"] == "transcribe"),
                None)


# -- real worker processes ----------------------------------------------------------------------

class Child:
    """``python -m tapedeck worker`` as a child process (settings in its environment, as
    ``serverkit.spawn_server`` does); every JSON line of its stdout is collected, because a
    failpoint may print before the ``listening`` line does."""

    def __init__(self, settings: Settings) -> None:
        env = dict(os.environ)
        for key, value in vars(settings).items():
            env["TAPEDECK_" + key.upper()] = str(int(value) if isinstance(value, bool) else value)
        self.proc = subprocess.Popen([sys.executable, "-m", "tapedeck", "worker"], env=env,
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue_mod.Queue[dict[str, Any]] = queue_mod.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                if line.startswith("{"):
                    self.lines.put(json.loads(line))

        threading.Thread(target=pump, daemon=True).start()

    def wait_failpoint(self, timeout: float = 120) -> dict[str, Any]:
        """The first failpoint line (``listening`` lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if "failpoint" in line:
                return line

    def kill(self) -> None:
        """SIGKILL, then reap."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


class KeyWatcher:
    """Lists a prefix continuously and records every (key, size) ever seen there."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.seen: set[tuple[str, int]] = set()
        self._store, self._prefix = store, prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            try:
                for info in self._store.list(self._prefix):
                    self.seen.add((info.key, info.size))
            except TapedeckError:  # the bucket is gone (test teardown)
                return

    def stop(self) -> set[tuple[str, int]]:
        self._stop.set()
        self._thread.join()
        return self.seen


@pytest.fixture(scope="module")
def big_chunks() -> list[bytes]:
    """6 minutes at 128 kbps in 12 chunks: the stitched file (~5.8 MB) needs two multipart
    parts, so a kill during the upload leaves a part uploaded but no object."""
    return [c.data for c in continuous_chunks(360.0, 30_000, bitrate=128_000, complexity=0)]


@pytest.fixture
def worker_settings(weed: ManagedWeed, tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(weed, tmp_path / "data", job_lease_s=5, job_poll_ms=50,
                             job_kinds="stitch", job_retry_base_ms=200)
    yield settings
    drop_bucket(weed, settings.s3_bucket)


@pytest.mark.parametrize("point", ["stitch.claimed", "stitch.stitching", "stitch.uploading",
                                   "stitch.uploaded"])
def test_kill_9_mid_stitch_then_restart_completes_exactly_once(
        point: str, big_chunks: list[bytes], worker_settings: Settings) -> None:
    project = open_project(worker_settings)
    children: list[Child] = []
    rec_id = streaming_recording(project, big_chunks, 360_000)
    key = audio_key(rec_id)
    watcher = KeyWatcher(project.app.store, f"recordings/{rec_id}/audio/")
    try:
        first = Child(worker_settings.replace(test_only_failpoints=point))
        children.append(first)
        assert first.wait_failpoint() == {"failpoint": point, "recording_id": rec_id,
                                          "job_id": recording_row(project, rec_id)[
                                              "stitching_job_id"]}
        visible = project.app.store.stat(key)
        assert (visible is not None) == (point == "stitch.uploaded")
        first.kill()
        assert recording_row(project, rec_id)["status"] in ("uploaded", "stitching")

        children.append(Child(worker_settings))  # restart, no failpoint
        wait_for(lambda: recording_row(project, rec_id)["status"] == "completed")
        row = recording_row(project, rec_id)
        final = project.app.store.stat(key)
        assert final is not None and final.size == row["file_size_bytes"]
        assert watcher.stop() <= {(key, final.size)}  # never a partial object under the key
        stream = project.app.store.open(key)
        try:
            assert probe(stream).duration_ms == 360_000 == row["duration_ms"]
        finally:
            stream.close()
        assert_completed_once(project, rec_id)
        runs = project.app.db.read().execute(
            "SELECT outcome FROM job_runs WHERE job_id = ? ORDER BY attempt",
            [row["stitching_job_id"]]).fetchall()
        assert runs == [(None,), ("succeeded",)]  # the killed run, then the one that finished
    finally:
        watcher.stop()
        for child in children:
            child.stop()
        project.app.close(grace=1)


def assert_completed_once(project: Project, rec_id: str) -> None:
    media = project.app.db.read().execute(
        "SELECT count(*) FROM media WHERE recording_id = ?", [rec_id]).fetchone()[0]
    kinds = sorted(j["kind"] for j in jobs_of(project, rec_id))
    assert (media, kinds) == (1, ["stitch", "transcribe"])
    assert recording_row(project, rec_id)["status"] == "completed"


def test_two_worker_processes_share_50_recordings(worker_settings: Settings) -> None:
    settings = worker_settings.replace(workers=2, job_lease_s=60)
    project = open_project(settings)
    variants = [[c.data for c in continuous_chunks(4.0, 1_000, start=i)] for i in range(5)]
    children: list[Child] = []
    try:
        children = [Child(settings), Child(settings)]
        ids = [streaming_recording(project, variants[i % 5], 4_000) for i in range(50)]
        wait_for(lambda: all(recording_row(project, i)["status"] == "completed" for i in ids),
                 timeout=300)
        for rec_id in ids:
            assert_completed_once(project, rec_id)
        by_job: dict[str, list[tuple[str, str]]] = {}
        for job_id, outcome, owner in project.app.db.read().execute(
                "SELECT job_id, outcome, owner FROM job_runs WHERE kind = 'stitch'"):
            by_job.setdefault(job_id, []).append((outcome, owner))
        assert len(by_job) == 50
        assert {(len(r), r[0][0]) for r in by_job.values()} == {(1, "succeeded")}
        processes = {r[0][1].split(":")[1] for r in by_job.values()}
        assert len(processes) == 2  # both processes did some of the work
    finally:
        for child in children:
            child.stop()
        project.app.close(grace=1)
