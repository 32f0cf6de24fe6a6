"""Job workers: claim loops that run job handlers, with heartbeats, retries and a clean stop.

Handlers plug in by kind, without touching the loop: ``HANDLER_FACTORIES`` maps a job kind to
``"module:function"``; the function takes the process's ``tapedeck.runtime.Runtime`` and
returns a ``JobHandler`` (or None when the kind cannot run in this process). A kind whose
module is absent is simply not registered, and a worker only claims kinds it has a handler
for, so such jobs stay ``queued`` until a worker that can run them appears. Its kinds are
``tapedeck.infra.jobs.JOB_KINDS`` (what ``worker_lanes`` may name, checked at startup).

Handler contract (``JobHandler``):
- ``run(run)`` does the job. It records its result and calls ``run.complete(tx)`` in ONE write
  transaction, so the result exists exactly when the job is ``succeeded`` (if another worker
  took the lease over, ``complete`` raises ``LeaseLost`` and the transaction rolls back). It
  may call ``run.check()`` between steps to stop early once the lease is lost. Raising
  ``JobFailed`` (or any ``TapedeckError`` but ``storage_unavailable``) fails the job for good;
  ``storage_unavailable``, connection errors and unexpected exceptions are retried with backoff
  until ``max_attempts``. Handlers must be safe to run again from scratch: a worker killed
  mid-job leaves the job to be reclaimed once its lease expires.
- ``on_failure(tx, job, failure)`` records a permanent failure in the domain (recording
  ``failed``, events, …) inside the transaction that marks the job ``failed``.

Lanes: a ``WorkerPool`` gives every job kind its own claim loops (``settings.workers`` per
kind, ``settings.worker_lanes`` overrides per kind), and a loop only claims its kind, so a
stitch job (under a second) is claimed at once even while a transcription (minutes) runs.
Idle loops poll every ``job_poll_ms``; a job this process enqueues wakes the idle loops of
its kind at once through the domain's ``JobSignals`` (the pool subscribes while running).

While a handler runs, a heartbeat thread extends the lease every ``lease_s / 3`` seconds.
``WorkerPool.stop(grace)`` lets running jobs finish for ``grace`` seconds, then hands the rest
back to the queue (``release``), so another worker picks them up at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from tapedeck.infra.db import Database
from tapedeck.infra.jobs import (
    Failure,
    Job,
    JobQueue,
    JobSignals,
    LeaseLost,
    RetryPolicy,
    classify,
    parse_lanes,
)
from tapedeck.infra.logs import request_context
from tapedeck.infra.sql import Tx
from tapedeck.runtime import Runtime

log = logging.getLogger("tapedeck.background.worker")

HANDLER_FACTORIES: Mapping[str, str] = {
    "stitch": "tapedeck.background.stitch:build_handler",
    "transcribe": "tapedeck.background.transcribe.job:build_handler",
    "live_transcribe": "tapedeck.background.transcribe.live_job:build_handler",
}


class JobRun:
    """A claimed job while its handler runs: lease state and completion."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self.queue = queue
        self.job = job
        self.lost = threading.Event()
        self.completed = False

    def check(self) -> None:
        """Raise ``LeaseLost`` if a heartbeat found the lease taken over (or it was released)."""
        if self.lost.is_set():
            raise LeaseLost(self.job.id)

    def heartbeat(self) -> None:
        """Extend the lease now (the background heartbeat also does this periodically)."""
        try:
            self.queue.heartbeat(self.job)
        except LeaseLost:
            self.lost.set()
            raise

    def complete(self, tx: Tx) -> None:
        """Mark the job succeeded inside ``tx`` (which records the job's result)."""
        self.queue.complete(tx, self.job)
        self.completed = True


JobObserver = Callable[[str, str, float], None]
"""Called after every run with (kind, outcome, seconds): ``Metrics.observe_job``."""


def job_request_id(db: Database, job_id: str) -> str | None:
    """The request id recorded with the job when it was queued (migration m0007)."""
    row = db.read().execute("SELECT request_id FROM jobs WHERE id = ?", [job_id]).fetchone()
    return None if row is None else row[0]


class JobHandler(Protocol):
    """Runs one kind of job (see the module docstring for the contract)."""

    def run(self, run: JobRun) -> None:
        """Do the job and complete it in the transaction that records its result."""
        ...

    def on_failure(self, tx: Tx, job: Job, failure: Failure) -> None:
        """Record a permanent failure, inside the transaction that fails the job."""
        ...


class _Heartbeat:
    """One thread per ``Worker``, for its lifetime: every ``interval`` seconds it extends the
    lease of the run being watched, if any (one long-lived thread, so one SQLite connection,
    however many jobs the worker runs). A lost lease sets the run's ``lost`` event."""

    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._name = name
        self._lock = threading.Lock()
        self._run: JobRun | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, run: JobRun) -> Iterator[None]:
        """Heartbeat ``run`` while the block runs."""
        with self._lock:
            self._run = run
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"heartbeat-{self._name}")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._run = None

    def close(self) -> None:
        """Stop the thread (it ends within one interval)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                run = self._run
            if run is None or run.lost.is_set():
                continue
            try:
                run.heartbeat()
            except LeaseLost:
                if self._run is run:
                    log.warning("job %s: lease lost", run.job.id)
            except Exception:  # a busy database must not kill the heartbeat
                log.exception("job %s: heartbeat failed; retrying", run.job.id)


class Worker:
    """One claim loop's logic: claim a job of a registered kind, run it, record the outcome."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, JobHandler], name: str,
                 observe: JobObserver | None = None) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.name = name
        self.observe = observe
        self.current: JobRun | None = None
        self._heartbeat = _Heartbeat(max(0.05, queue.lease_s / 3), name)

    def close(self) -> None:
        """Stop the worker's heartbeat thread (call when done with the worker)."""
        self._heartbeat.close()

    def run_once(self) -> str | None:
        """Run at most one job; return its outcome (``succeeded``, ``retry``, ``failed``,
        ``lease_lost``) or None when no job was due."""
        job = self.queue.claim(self.name, self.handlers.keys())
        if job is None:
            return None
        run = JobRun(self.queue, job)
        self.current = run
        started = time.monotonic()
        outcome = "error"  # recording the outcome itself failed (database unavailable)
        try:
            # The job runs under the request id stored with it (tapedeck.infra.logs).
            with request_context(job_request_id(self.queue.db, job.id)):
                outcome = self._execute(run, self.handlers[job.kind])
            return outcome
        finally:
            self.current = None
            if self.observe is not None:
                self.observe(job.kind, outcome, time.monotonic() - started)

    def _execute(self, run: JobRun, handler: JobHandler) -> str:
        job = run.job
        limit = self.queue.retry_policy.max_attempts
        if job.attempts > limit:  # earlier runs died mid-job (crash loop)
            return self._fail(run, handler, Failure(
                "internal_error", f"Gave up after {limit} interrupted attempts.", False))
        log.info("job %s (%s) attempt %d started by %s", job.id, job.kind, job.attempts,
                 job.owner)
        try:
            with self._heartbeat.watch(run):
                handler.run(run)
                if not run.completed:
                    with self.queue.db.write() as tx:
                        run.complete(tx)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
            self.queue.record_lost(job)
            return "lease_lost"
        except Exception as exc:
            failure = classify(exc)
            if self.queue.should_retry(job, failure):
                log.warning("job %s: %s (%s); retrying", job.id, failure.type, failure.message,
                            exc_info=failure.type == "internal_error")
                return self._retry(run, failure)
            log.warning("job %s failed: %s (%s)", job.id, failure.type, failure.message,
                        exc_info=failure.type == "internal_error")
            return self._fail(run, handler, failure)
        log.info("job %s (%s) succeeded", job.id, job.kind)
        return "succeeded"

    def _retry(self, run: JobRun, failure: Failure) -> str:
        try:
            due = self.queue.retry(run.job, failure)
        except LeaseLost:
            self.queue.record_lost(run.job)
            return "lease_lost"
        log.info("job %s: next attempt at %s", run.job.id, due.isoformat())
        return "retry"

    def _fail(self, run: JobRun, handler: JobHandler, failure: Failure) -> str:
        try:
            with self.queue.db.write() as tx:
                self.queue.fail(tx, run.job, failure)
                handler.on_failure(tx, run.job, failure)
        except LeaseLost:
            self.queue.record_lost(run.job)
            return "lease_lost"
        return "failed"


class WorkerPool:
    """Claim loops over one queue, in lanes: every kind in ``handlers`` gets its own loops
    (``lanes[kind]`` of them, else ``threads``), each claiming only that kind, so a long job
    of one kind never delays another kind's jobs. Idle loops poll every ``poll_s`` seconds,
    or look at once after ``wake(kind)``; with ``signals``, the pool is subscribed to them
    while it runs (``start`` … ``stop``)."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, JobHandler], *, threads: int,
                 poll_s: float, name: str, observe: JobObserver | None = None,
                 lanes: Mapping[str, int] | None = None,
                 signals: JobSignals | None = None) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.lanes = {kind: max(1, (lanes or {}).get(kind, threads)) for kind in handlers}
        self.workers = [Worker(queue, {kind: handlers[kind]}, f"{name}:{kind}:{i}", observe)
                        for kind, count in self.lanes.items() for i in range(count)]
        self._stop = threading.Event()
        self._wake = {kind: threading.Event() for kind in self.lanes}
        self._threads: list[threading.Thread] = []
        self._signals = signals
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> WorkerPool:
        """Start one thread per worker (and listen to ``signals``)."""
        if self._signals is not None:
            self._unsubscribe = self._signals.subscribe(self.wake)
        for worker in self.workers:
            (kind,) = worker.handlers
            t = threading.Thread(target=self._loop, args=(worker, self._wake[kind]),
                                 daemon=True, name=f"worker-{worker.name}")
            t.start()
            self._threads.append(t)
        log.info("job workers started, loops per kind: %s", self.lanes)
        return self

    def wake(self, kind: str | None = None) -> None:
        """Make idle loops of ``kind`` (None: of every kind) look for jobs now; call after
        committing an enqueue. Kinds this pool does not run are ignored."""
        if kind is None:
            for event in self._wake.values():
                event.set()
        elif kind in self._wake:
            self._wake[kind].set()

    def _loop(self, worker: Worker, wake: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                outcome = worker.run_once()
            except Exception:  # the database was busy or closed: wait and try again
                log.exception("worker %s: claim loop error", worker.name)
                outcome = None
            if outcome is None and not self._stop.is_set():
                # Cleared before the next claim, so a wake-up after that claim's read is kept.
                wake.wait(self.poll_s)
                wake.clear()

    def stop(self, grace: float) -> None:
        """Stop claiming; let running jobs finish for ``grace`` s, then hand the rest back."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + grace
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for worker, t in zip(self.workers, self._threads, strict=True):
            worker.close()
            run = worker.current
            if t.is_alive() and run is not None:
                run.lost.set()
                try:
                    self.queue.release(run.job)
                    log.info("job %s handed back at shutdown", run.job.id)
                except LeaseLost:
                    pass


def load_handlers(runtime: Runtime, factories: Mapping[str, str] = HANDLER_FACTORIES,
                  kinds: Collection[str] = ()) -> dict[str, JobHandler]:
    """Build the handler of every kind whose module is installed (see the module docstring);
    with ``kinds``, only of those (the others are not even imported)."""
    handlers: dict[str, JobHandler] = {}
    for kind, spec in factories.items():
        if kinds and kind not in kinds:
            continue
        module_name, _, func = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            log.info("no %s handler in this process (%s)", kind, exc)
            continue
        handler = getattr(module, func)(runtime)
        if handler is not None:
            handlers[kind] = handler
    return handlers


def queue_for(runtime: Runtime) -> JobQueue:
    """The job queue configured by the runtime's settings."""
    s = runtime.settings
    policy = RetryPolicy(max_attempts=s.job_max_attempts, base_s=s.job_retry_base_ms / 1000,
                         max_s=float(s.job_retry_max_s))
    return JobQueue(runtime.db, runtime.clock, lease_s=float(s.job_lease_s), retry=policy)


def start_workers(runtime: Runtime,
                  handlers: Mapping[str, JobHandler] | None = None) -> WorkerPool:
    """Start this process's job loops (the ``worker`` role): for every kind in
    ``settings.job_kinds`` (default: all installed), ``settings.worker_lanes[kind]`` loops,
    else ``settings.workers``; subscribed to ``runtime.job_signals`` for wake-ups."""
    s, queue = runtime.settings, queue_for(runtime)
    if handlers is None:
        kinds = [k.strip() for k in s.job_kinds.split(",") if k.strip()]
        handlers = load_handlers(runtime, kinds=kinds)
    lanes = parse_lanes(s.worker_lanes, {*HANDLER_FACTORIES, *handlers})
    pool = WorkerPool(queue, handlers,
                      threads=s.workers, poll_s=s.job_poll_ms / 1000,
                      name=f"{socket.gethostname()}:{os.getpid()}",
                      observe=runtime.metrics.observe_job, lanes=lanes,
                      signals=runtime.job_signals)
    return pool.start()
