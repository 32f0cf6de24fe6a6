"""The durable job queue: rows of the SQLite ``jobs`` table, claimed with a lease.

Contract:

- ``enqueue(tx, …)`` adds a ``queued`` job inside the caller's write transaction, so a job
  exists exactly when the state change that needs it commits.
- ``claim`` atomically (one ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING``; SQLite:
  under ``BEGIN IMMEDIATE``; PostgreSQL: the subquery is ``FOR UPDATE SKIP LOCKED`` and the
  transaction takes no global lock, so claimers on any number of hosts never wait for each
  other nor for api writes) takes the oldest due job of the given kinds: ``queued`` with
  ``run_after <= now``, or ``running`` whose lease expired (its worker died or hung). It sets
  ``status='running'``, a fresh lease token in ``lease_owner``, ``lease_expires_at = now +
  lease`` and counts the attempt. Kinds nobody asks for are never claimed: they stay queued.
- ``heartbeat`` extends the lease; ``complete``/``fail`` run inside the transaction that records
  the job's result and first check that the caller still holds the lease (``lease_owner`` is
  its token and the job is still ``running``), raising ``LeaseLost`` otherwise — so a worker
  whose lease was taken over can never complete the job, and completion happens exactly once.
- ``retry`` puts the job back to ``queued`` with ``run_after = now + backoff`` (exponential,
  ±jitter, capped); ``release`` hands it back immediately (shutdown) without counting the
  attempt.
- On PostgreSQL, ``enqueue`` also sends ``NOTIFY tapedeck_jobs, '<kind>'`` in the caller's
  transaction (delivered at its commit), so idle workers of every host wake at once
  (``tapedeck.infra.wakeup``); polling every ``job_poll_ms`` stays as the fallback.
- Queue-only transactions (claim, heartbeat, retry, release, ``record_lost``) use
  ``write(lock="rows")``: each is a conditional UPDATE of the job's own row (lease token
  checked in its WHERE), which PostgreSQL re-checks after any row-lock wait.
- Every claim writes a ``job_runs`` row (job, attempt, lease token, start) whose ``outcome`` is
  set when the run ends; a worker killed mid-job leaves the outcome NULL.

Time comes from the injectable ``Clock``; all timestamps are ``clock.iso`` strings (fixed
width, so they compare correctly as text).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import urllib3.exceptions

from tapedeck.clock import Clock, iso
from tapedeck.errors import TapedeckError, invalid
from tapedeck.ids import new_id, random_base62
from tapedeck.infra.db import Database
from tapedeck.infra.sql import Tx, operational_errors

log = logging.getLogger("tapedeck.infra.jobs")

JOBS_CHANNEL = "tapedeck_jobs"  # NOTIFY channel of enqueue (payload: the job kind)

JOB_ID_PREFIXES = {"stitch": "job_stitcher_", "transcribe": "job_transcriber_",
                   "live_transcribe": "job_live_"}
JOB_KINDS = tuple(JOB_ID_PREFIXES)  # every kind a handler exists for (tapedeck.background.worker)


def parse_lanes(spec: str, known: Collection[str]) -> dict[str, int]:
    """``settings.worker_lanes`` (``"stitch:2,transcribe:1"``) as kind → loop count; empty
    → {}. ``invalid_request`` naming ``worker_lanes`` for a malformed item, a count below 1,
    a repeated kind or a kind not in ``known``."""
    lanes: dict[str, int] = {}
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        kind, _, count = (part.strip() for part in item.partition(":"))
        if (kind not in known or kind in lanes or not (count.isascii() and count.isdigit())
                or int(count) < 1):
            raise invalid("worker_lanes",
                          f"worker_lanes item {item!r} is not KIND:THREADS with a known kind "
                          f"({', '.join(sorted(known))}), listed once, and THREADS >= 1.")
        lanes[kind] = int(count)
    return lanes


@dataclass(frozen=True)
class Job:
    """A claimed job. ``owner`` is this claim's lease token; ``attempts`` counts this one."""

    id: str
    kind: str
    recording_id: str | None
    payload: dict[str, Any]
    attempts: int
    owner: str


@dataclass(frozen=True)
class Failure:
    """Why a run did not succeed: a typed reason, and whether trying again may help."""

    type: str
    message: str
    transient: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "message": self.message, **self.details})


class LeaseLost(Exception):
    """The caller no longer holds the job's lease (expired and reclaimed, or released)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease on {job_id} lost")
        self.job_id = job_id


class JobFailed(Exception):
    """A permanent failure raised by a handler: retrying cannot help (corrupt input, …)."""

    def __init__(self, type: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.details = details


def classify(exc: BaseException) -> Failure:
    """Map an exception from a handler to a ``Failure``.

    Permanent: ``JobFailed`` and every ``TapedeckError`` except ``storage_unavailable``.
    Transient: ``storage_unavailable``, OS/connection/timeout errors, urllib3 errors, a busy
    SQLite, and anything unexpected (reported as ``internal_error``; bounded by max attempts).
    """
    if isinstance(exc, JobFailed):
        return Failure(exc.type, exc.message, False, exc.details)
    if isinstance(exc, TapedeckError):
        return Failure(exc.type, exc.message, exc.type == "storage_unavailable", exc.details)
    if isinstance(exc, (OSError, urllib3.exceptions.HTTPError, *operational_errors())):
        return Failure("storage_unavailable", f"{type(exc).__name__}: {exc}", True)
    return Failure("internal_error", f"{type(exc).__name__}: {exc}", True)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base_s * 2**(attempt-1)`` capped at ``max_s``, times
    a uniform factor in ``[1-jitter, 1+jitter]``; at most ``max_attempts`` runs in all."""

    max_attempts: int = 12
    base_s: float = 2.0
    max_s: float = 600.0
    jitter: float = 0.25

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempts``-th failed run."""
        raw = min(self.max_s, self.base_s * 2.0 ** max(0, attempts - 1))
        return raw * (1.0 + rng.uniform(-self.jitter, self.jitter))


def enqueue(tx: Tx, clock: Clock, kind: str, *,
            recording_id: str | None = None, payload: dict[str, Any] | None = None,
            job_id: str | None = None, delay_s: float = 0.0) -> str:
    """Insert a ``queued`` job inside the caller's write transaction; return its id."""
    now = clock.now()
    job_id = job_id or new_id(JOB_ID_PREFIXES.get(kind, "job_"))
    tx.execute(
        "INSERT INTO jobs (id, kind, recording_id, status, payload, run_after, created_at,"
        " updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        [job_id, kind, recording_id, json.dumps(payload or {}),
         iso(now + timedelta(seconds=delay_s)), iso(now), iso(now)])
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_notify(?, ?)", [JOBS_CHANNEL, kind])
    return job_id


class JobQueue:
    """Claim, heartbeat, complete, retry, fail and release jobs of one database."""

    def __init__(self, db: Database, clock: Clock, *, lease_s: float = 60.0,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None) -> None:
        self.db = db
        self.clock = clock
        self.lease_s = lease_s
        self.retry_policy = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    # -- claiming ----------------------------------------------------------------------------
    def claim(self, worker: str, kinds: Collection[str]) -> Job | None:
        """Take the oldest due job of ``kinds`` (or one whose lease expired); None if idle."""
        if not kinds:
            return None
        now = iso(self.clock.now())
        marks = ", ".join("?" * len(kinds))
        due = (f"kind IN ({marks}) AND ((status = 'queued' AND run_after <= ?)"
               " OR (status = 'running' AND lease_expires_at < ?))")
        args = [*kinds, now, now]
        # A cheap read first, so idle workers do not take the write lock on every poll.
        if self.db.read().execute(f"SELECT 1 FROM jobs WHERE {due} LIMIT 1", args).fetchone() \
                is None:
            return None
        owner = f"{worker}/{random_base62(12)}"
        with self.db.write(lock="rows") as tx:
            skip = " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgresql" else ""
            row = tx.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ("
                f" SELECT id FROM jobs WHERE {due} ORDER BY run_after, created_at LIMIT 1{skip})"
                " RETURNING id, kind, recording_id, payload, attempts",
                [owner, self._lease_end(), now, *args]).fetchone()
            if row is None:
                return None
            job = Job(id=row[0], kind=row[1], recording_id=row[2],
                      payload=json.loads(row[3] or "{}"), attempts=row[4], owner=owner)
            tx.execute("INSERT INTO job_runs (job_id, attempt, kind, owner, started_at)"
                       " VALUES (?, ?, ?, ?, ?)", [job.id, job.attempts, job.kind, owner, now])
        return job

    def _lease_end(self) -> str | None:
        return iso(self.clock.now() + timedelta(seconds=self.lease_s))

    # -- while running -----------------------------------------------------------------------
    def heartbeat(self, job: Job) -> None:
        """Extend the lease by ``lease_s`` from now; ``LeaseLost`` if it is no longer ours."""
        with self.db.write(lock="rows") as tx:
            cur = tx.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?"
                " AND status = 'running'", [self._lease_end(), job.id, job.owner])
            if cur.rowcount != 1:
                raise LeaseLost(job.id)

    def _take(self, tx: Tx, job: Job, status: str, *,
              error: str | None = None, run_after: str | None = None,
              attempts_delta: int = 0) -> None:
        """Move our running job to ``status`` in ``tx`` (lease checked; lease cleared)."""
        now = iso(self.clock.now())
        finished = now if status in ("succeeded", "failed") else None
        cur = tx.execute(
            "UPDATE jobs SET status = ?, lease_owner = NULL, lease_expires_at = NULL,"
            " last_error = COALESCE(?, last_error), run_after = COALESCE(?, run_after),"
            " attempts = attempts + ?, updated_at = ?, finished_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running'",
            [status, error, run_after, attempts_delta, now, finished, job.id, job.owner])
        if cur.rowcount != 1:
            raise LeaseLost(job.id)

    # -- outcomes ----------------------------------------------------------------------------
    def complete(self, tx: Tx, job: Job) -> None:
        """Mark the job ``succeeded`` inside the caller's transaction (``LeaseLost`` if not ours:
        the caller must then roll back, so its result is recorded by the lease holder only)."""
        self._take(tx, job, "succeeded")
        self._end_run(tx, job, "succeeded")

    def fail(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Mark the job ``failed`` for good inside the caller's transaction (lease checked)."""
        self._take(tx, job, "failed", error=failure.to_json())
        self._end_run(tx, job, "failed", failure.to_json())

    def should_retry(self, job: Job, failure: Failure) -> bool:
        """True when ``failure`` is transient and attempts remain."""
        return failure.transient and job.attempts < self.retry_policy.max_attempts

    def retry(self, job: Job, failure: Failure) -> datetime:
        """Queue the job again after the backoff delay; return when it becomes due."""
        with self._rng_lock:
            delay = self.retry_policy.delay(job.attempts, self._rng)
        due = self.clock.now() + timedelta(seconds=delay)
        with self.db.write(lock="rows") as tx:
            self._take(tx, job, "queued", error=failure.to_json(), run_after=iso(due))
            self._end_run(tx, job, "retry", failure.to_json())
        return due

    def release(self, job: Job) -> None:
        """Hand the job back now (worker shutting down); the attempt is not counted."""
        with self.db.write(lock="rows") as tx:
            self._take(tx, job, "queued", run_after=iso(self.clock.now()), attempts_delta=-1)
            self._end_run(tx, job, "released")

    def record_lost(self, job: Job) -> None:
        """Note in ``job_runs`` that this run ended without its lease."""
        with self.db.write(lock="rows") as tx:
            self._end_run(tx, job, "lease_lost")

    def _end_run(self, tx: Tx, job: Job, outcome: str,
                 error: str | None = None) -> None:
        tx.execute("UPDATE job_runs SET finished_at = ?, outcome = ?, error = ?"
                   " WHERE job_id = ? AND attempt = ? AND owner = ?",
                   [iso(self.clock.now()), outcome, error, job.id, job.attempts, job.owner])

    # -- inspection --------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's row as a dict (operators, tests), or None."""
        cur = self.db.read().execute("SELECT * FROM jobs WHERE id = ?", [job_id])
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))


class JobSignals:
    """In-process wake-ups for job loops, so a job queued by this process starts at once
    instead of at the next poll.

    Whoever commits an ``enqueue`` calls ``notify(kind)`` AFTER the transaction commits (a
    loop woken earlier would not see the job yet). Worker pools of this process
    ``subscribe`` a listener taking the kind; with no listener ``notify`` does nothing, and
    other processes find the job at their next poll. Listeners must be quick and must not
    raise (they only set events). One instance per domain ``Context``; no global state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(kind)`` on every ``notify``; returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def notify(self, kind: str) -> None:
        """A ``kind`` job was just committed: wake this process's idle loops of that kind."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(kind)
