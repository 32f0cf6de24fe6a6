"""PostgreSQL only: the job queue leases with ``FOR UPDATE SKIP LOCKED`` without the global
write lock, and ``LISTEN/NOTIFY`` wakes idle workers of another process (``tapedeck.infra.wakeup``).

"Another process" is a second ``PostgresDatabase`` on the same database (its own pools and
connections, exactly what a second host would have); the locks are taken on a raw psycopg
connection, as another node's transaction would hold them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tapedeck.background.worker import JobRun, WorkerPool
from tapedeck.clock import ManualClock
from tapedeck.infra.db_postgres import WRITE_LOCK, PostgresDatabase
from tapedeck.infra.jobs import JOBS_CHANNEL, JobQueue, enqueue
from tapedeck.infra.sql import Tx
from tapedeck.infra.wakeup import PgWakeups, listen_for_wakeups


@pytest.fixture
def pg_url(postgres: Any) -> Iterator[str]:
    url = postgres.fresh_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
def db(pg_url: str) -> Iterator[PostgresDatabase]:
    d = PostgresDatabase(pg_url)
    try:
        yield d
    finally:
        d.close()


def in_thread(fn: Any) -> Any:
    """``fn()`` on another thread; its result, or a failure if it blocks for 30 s (it would
    block forever if the claim waited for the locks this test holds)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(30)
    assert out, "blocked behind a lock another transaction holds"
    return out[0]


def test_claim_skips_a_locked_job_and_ignores_the_write_lock(db: PostgresDatabase,
                                                             pg_url: str) -> None:
    clock = ManualClock()
    with db.write() as tx:
        first = enqueue(tx, clock, "stitch")
        clock.advance(timedelta(seconds=1))
        second = enqueue(tx, clock, "stitch")
    clock.advance(timedelta(seconds=1))
    q = JobQueue(db, clock)
    with psycopg.connect(pg_url) as other:  # another node, mid-transaction
        other.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", [first])
        job = in_thread(lambda: q.claim("w1", ["stitch"]))
        assert job is not None and job.id == second  # the locked oldest one is skipped
        q.heartbeat(job)  # lease work never waits for api writes either
        assert in_thread(lambda: q.claim("w2", ["stitch"])) is None  # first: still locked
        other.rollback()
    job1 = q.claim("w2", ["stitch"])
    assert job1 is not None and job1.id == first


def test_an_enqueue_notifies_at_commit_with_its_kind(db: PostgresDatabase,
                                                     pg_url: str) -> None:
    got: queue.SimpleQueue[str] = queue.SimpleQueue()
    listener = PgWakeups(pg_url, {JOBS_CHANNEL: got.put}).start()
    try:
        assert listener.connected.wait(30)
        assert got.get(timeout=30) == ""  # the "look at everything" after connecting
        with db.write() as tx:
            enqueue(tx, ManualClock(), "transcribe")
            # Not before COMMIT: a worker woken now could not see the job yet.
            with pytest.raises(queue.Empty):
                got.get(timeout=0.3)
        assert got.get(timeout=30) == "transcribe"
    finally:
        listener.stop(1.0)


class _Recorder:
    """A job handler that completes the job and reports its id."""

    def __init__(self) -> None:
        self.done: queue.SimpleQueue[str] = queue.SimpleQueue()

    def run(self, run: JobRun) -> None:
        with run.queue.db.write() as tx:
            run.complete(tx)
        self.done.put(run.job.id)

    def on_failure(self, tx: Tx, job: Any, failure: Any) -> None:
        raise AssertionError(failure)


def test_an_idle_pool_on_another_node_wakes_on_notify_not_on_its_poll(pg_url: str) -> None:
    """The pool polls once an hour; a job enqueued through another node's database object
    is run anyway, because the NOTIFY of the enqueue wakes it."""
    api, worker_db = PostgresDatabase(pg_url), PostgresDatabase(pg_url)
    handler = _Recorder()
    pool = WorkerPool(JobQueue(worker_db, ManualClock()), {"stitch": handler}, threads=1,
                      poll_s=3600.0, name="node-b")
    pool.start()
    wake = listen_for_wakeups(worker_db, {JOBS_CHANNEL: lambda kind: pool.wake(kind or None)})
    try:
        assert isinstance(wake, PgWakeups) and wake.connected.wait(30)
        for _ in range(3):
            with api.write() as tx:
                job_id = enqueue(tx, ManualClock(), "stitch")
            assert handler.done.get(timeout=60) == job_id
    finally:
        wake.stop(1.0)
        pool.stop(5.0)
        api.close()
        worker_db.close()


def test_shared_writes_run_side_by_side_but_never_beside_a_global_one(
        db: PostgresDatabase, pg_url: str) -> None:
    """``lock="shared"`` (chunk ledger upserts of different recordings) does not wait for
    another shared writer, and waits for a global writer (every other rule still sees a
    quiescent database)."""
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT pg_advisory_xact_lock_shared(%s)", [WRITE_LOCK])

        def shared_write() -> bool:
            with db.write(lock="shared") as tx:
                tx.execute("SELECT 1")
            return True

        assert in_thread(shared_write)  # beside another shared writer: no wait
        other.rollback()
        other.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])  # a global writer
        done = threading.Event()
        t = threading.Thread(target=lambda: (shared_write(), done.set()), daemon=True)
        t.start()
        assert not done.wait(1.0)  # waits for the global one ...
        other.rollback()
        assert done.wait(30)  # ... and goes on once it committed
