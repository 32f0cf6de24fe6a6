"""The assembly waits for the live lane's running piece instead of decoding the chunk a
second time (real job queue on real SQLite and PostgreSQL, ``ManualClock`` leases)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tapedeck.background.transcribe.live_job import live_piece_running, wait_for_live_piece
from tapedeck.clock import ManualClock
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import Job, JobQueue, LeaseLost, enqueue

REC = "rec_livewait"


def _running_piece(db: Database, clock: ManualClock, part: int) -> tuple[JobQueue, Job]:
    with db.write() as tx:
        enqueue(tx, clock, "live_transcribe", recording_id=REC,
                payload={"recording_id": REC, "part": part})
    queue = JobQueue(db, clock, lease_s=30.0)
    job = queue.claim("live-lane", ["live_transcribe"])
    assert job is not None and job.payload["part"] == part
    return queue, job


def test_only_a_running_job_of_that_part_under_a_live_lease_counts(database: Database) -> None:
    clock = ManualClock()
    assert not live_piece_running(database, clock, REC, 3)  # no job at all
    with database.write() as tx:  # queued, not running: the assembly does the piece itself
        enqueue(tx, clock, "live_transcribe", recording_id=REC,
                payload={"recording_id": REC, "part": 4})
    assert not live_piece_running(database, clock, REC, 4)
    queue = JobQueue(database, clock, lease_s=30.0)
    job = queue.claim("live-lane", ["live_transcribe"])
    assert job is not None
    assert live_piece_running(database, clock, REC, 4)
    assert not live_piece_running(database, clock, REC, 3)
    assert not live_piece_running(database, clock, "rec_other", 4)
    clock.advance(timedelta(seconds=31))  # its worker died: the lease ran out
    assert not live_piece_running(database, clock, REC, 4)
    assert not wait_for_live_piece(database, clock, REC, 4, None)


def test_wait_ends_when_the_live_job_completes(database: Database) -> None:
    clock = ManualClock()
    queue, job = _running_piece(database, clock, 2)
    result: list[bool] = []
    checks = threading.Event()

    def check() -> None:
        checks.set()

    waiter = threading.Thread(
        target=lambda: result.append(wait_for_live_piece(database, clock, REC, 2, check)))
    waiter.start()
    assert checks.wait(30)  # it is waiting (and checking its own lease meanwhile)
    assert result == []
    with database.write() as tx:
        queue.complete(tx, job)
    waiter.join(30)
    assert not waiter.is_alive()
    assert result == [True]
    assert not wait_for_live_piece(database, clock, REC, 2, check)  # nothing left to wait for


def test_a_lost_lease_of_the_assembly_stops_the_wait(database: Database) -> None:
    clock = ManualClock()
    _running_piece(database, clock, 5)

    def check() -> None:
        raise LeaseLost("job_transcribe")

    with pytest.raises(LeaseLost, match=r"^lease on job_transcribe lost$"):
        wait_for_live_piece(database, clock, REC, 5, check)
