"""The job queue on a real SQLite file and a real PostgreSQL (every test runs on both,
through the ``database`` fixture of tests/conftest.py): atomic claims, leases, heartbeats, backoff, release.

Time is a ``ManualClock`` so leases and backoff move only when a test says so."""

from __future__ import annotations

import json
import random
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tapedeck.clock import ManualClock
from tapedeck.errors import error
from tapedeck.infra.db import Database, open_database
from tapedeck.infra.jobs import Job, JobFailed, JobQueue, LeaseLost, RetryPolicy, classify, enqueue


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(database: Database) -> Database:
    return database


def make_queue(db: Database, clock: ManualClock, **kw: object) -> JobQueue:
    kw.setdefault("lease_s", 30.0)
    kw.setdefault("retry", RetryPolicy(max_attempts=4, base_s=10.0, max_s=60.0, jitter=0.25))
    return JobQueue(db, clock, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def add(db: Database, clock: ManualClock, kind: str = "stitch", **kw: object) -> str:
    with db.write() as tx:
        return enqueue(tx, clock, kind, **kw)  # type: ignore[arg-type]


def status(db: Database, job_id: str) -> tuple[str, int]:
    row = db.read().execute("SELECT status, attempts FROM jobs WHERE id = ?", [job_id]).fetchone()
    return row[0], row[1]


def finish(queue: JobQueue, job: Job) -> None:
    with queue.db.write() as tx:
        queue.complete(tx, job)


def test_claims_due_jobs_oldest_first_and_only_registered_kinds(db: Database,
                                                              clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    first = add(db, clock, payload={"n": 1}, recording_id="rec_1")
    clock.advance(timedelta(seconds=1))
    later = add(db, clock, delay_s=60)
    other = add(db, clock, kind="transcribe")
    second = add(db, clock)
    assert first.startswith("job_stitcher_") and other.startswith("job_transcriber_")

    job = queue.claim("w", ["stitch"])
    assert job is not None
    assert (job.id, job.kind, job.recording_id, job.payload, job.attempts) == (
        first, "stitch", "rec_1", {"n": 1}, 1)
    assert job.owner.startswith("w/")
    job2 = queue.claim("w", ["stitch"])
    assert job2 is not None and job2.id == second
    assert queue.claim("w", ["stitch"]) is None  # `later` is not due, `other` not ours
    assert queue.claim("w", []) is None
    assert status(db, later) == ("queued", 0) and status(db, other) == ("queued", 0)
    finish(queue, job)
    finish(queue, job2)
    clock.advance(timedelta(seconds=60))
    due = [queue.claim("w", ["stitch", "transcribe"]) for _ in range(3)]
    assert [j.id if j else None for j in due] == [other, later, None]  # by run_after


def test_concurrent_claims_take_each_job_exactly_once(db_target: str | Path,
                                                      clock: ManualClock) -> None:
    setup = open_database(db_target)
    ids = set()
    with setup.write() as tx:
        for _ in range(200):
            ids.add(enqueue(tx, clock, "stitch"))
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        own = open_database(db_target)  # its own connections, like another process
        queue = make_queue(own, clock)
        while (job := queue.claim(f"w{n}", ["stitch"])) is not None:
            with lock:
                claimed.append(job.id)
            finish(queue, job)
        own.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    runs = setup.read().execute(
        "SELECT count(*), count(DISTINCT job_id) FROM job_runs WHERE outcome = 'succeeded'"
    ).fetchone()
    assert runs == (200, 200)
    setup.close()


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_finish(db: Database,
                                                                   clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    job_id = add(db, clock)
    old = queue.claim("dead", ["stitch"])
    assert old is not None
    clock.advance(timedelta(seconds=29))
    assert queue.claim("other", ["stitch"]) is None  # lease still valid
    clock.advance(timedelta(seconds=2))
    new = queue.claim("other", ["stitch"])
    assert new is not None and new.id == job_id and new.attempts == 2
    with pytest.raises(LeaseLost, match=re.escape(f"lease on {job_id} lost")):
        queue.heartbeat(old)
    with pytest.raises(LeaseLost, match=re.escape(f"lease on {job_id} lost")), db.write() as tx:
        queue.complete(tx, old)
        tx.execute("INSERT INTO events (id, project_id, type, created_at, data)"
                   " VALUES ('evt_x', 'p', 'x', 'now', '{}')")  # rolled back with it
    assert db.read().execute("SELECT count(*) FROM events").fetchone()[0] == 0
    finish(queue, new)
    assert status(db, job_id) == ("succeeded", 2)
    with pytest.raises(LeaseLost, match=re.escape(f"lease on {job_id} lost")):
        finish(queue, new)  # exactly once
    runs = db.read().execute("SELECT attempt, outcome FROM job_runs ORDER BY attempt").fetchall()
    assert runs == [(1, None), (2, "succeeded")]  # the dead run never reported


def test_heartbeat_keeps_the_lease(db: Database, clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    add(db, clock)
    job = queue.claim("w", ["stitch"])
    assert job is not None
    for _ in range(5):
        clock.advance(timedelta(seconds=25))
        queue.heartbeat(job)
        assert queue.claim("thief", ["stitch"]) is None
    finish(queue, job)


def test_retry_backs_off_exponentially_with_jitter_and_caps(db: Database,
                                                            clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    job_id = add(db, clock)
    failure = classify(error("storage_unavailable"))
    delays = []
    for attempt in range(1, 5):
        job = queue.claim("w", ["stitch"])
        assert job is not None and job.attempts == attempt
        assert queue.should_retry(job, failure) == (attempt < 4)
        due = queue.retry(job, failure)
        delay = (due - clock.now()).total_seconds()
        delays.append(delay)
        assert queue.claim("w", ["stitch"]) is None  # not before it is due
        clock.advance(timedelta(seconds=delay - 0.01))
        assert queue.claim("w", ["stitch"]) is None
        clock.advance(timedelta(seconds=0.02))
    for delay, nominal in zip(delays, [10, 20, 40, 60], strict=True):
        assert nominal * 0.75 <= delay <= nominal * 1.25
    assert len(set(delays)) == 4  # jittered
    row = queue.get(job_id)
    assert row is not None and row["status"] == "queued"
    assert json.loads(row["last_error"])["type"] == "storage_unavailable"


def test_release_hands_back_without_counting_the_attempt(db: Database,
                                                         clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    job_id = add(db, clock)
    job = queue.claim("w", ["stitch"])
    assert job is not None
    queue.release(job)
    assert status(db, job_id) == ("queued", 0)
    again = queue.claim("w2", ["stitch"])
    assert again is not None and again.attempts == 1
    with pytest.raises(LeaseLost, match=re.escape(f"lease on {job_id} lost")):
        finish(queue, job)


def test_fail_records_the_typed_reason(db: Database, clock: ManualClock) -> None:
    queue = make_queue(db, clock)
    job_id = add(db, clock)
    job = queue.claim("w", ["stitch"])
    assert job is not None
    failure = classify(JobFailed("invalid_audio", "Chunk 3 is not Ogg.", part=3))
    assert not queue.should_retry(job, failure)
    with db.write() as tx:
        queue.fail(tx, job, failure)
    row = queue.get(job_id)
    assert row is not None and row["status"] == "failed" and row["finished_at"]
    assert json.loads(row["last_error"]) == {"type": "invalid_audio",
                                             "message": "Chunk 3 is not Ogg.", "part": 3}
    assert queue.claim("w", ["stitch"]) is None


@pytest.mark.parametrize(("exc", "type_", "transient"), [
    (error("storage_unavailable"), "storage_unavailable", True),
    (ConnectionRefusedError("refused"), "storage_unavailable", True),
    (TimeoutError("slow"), "storage_unavailable", True),
    (JobFailed("invalid_audio", "bad"), "invalid_audio", False),
    (error("recording_not_found"), "recording_not_found", False),
    (KeyError("bug"), "internal_error", True),
])
def test_classify(exc: BaseException, type_: str, transient: bool) -> None:
    failure = classify(exc)
    assert (failure.type, failure.transient) == (type_, transient)
