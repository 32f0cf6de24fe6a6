"""The webhook dispatcher: fan-out of outbox events into deliveries, and their delivery.

Durability contract (SQLite is the only state; any number of dispatcher processes):

- Fan-out: the ``events_webhook_outbox`` trigger queues every new event in
  ``webhook_outbox`` in the event's own transaction. ``fan_out`` takes a batch of queued
  events, inserts one ``pending`` delivery per enabled endpoint of the event's project that
  subscribes to its type and was created before it, and deletes the batch, all in ONE write
  transaction: a crash leaves either nothing or everything done, so no event is skipped and
  none is fanned out twice (a partial unique index backs this up).
- Claim: a delivery is leased by writing this dispatcher's ``owner`` into ``lease_owner``.
  At most ``per_endpoint`` deliveries of one endpoint are leased at a time (by all
  dispatchers together), and a pool of ``workers`` threads sends them, so a slow or dead
  endpoint holds at most ``per_endpoint`` workers and never delays other endpoints. Due
  deliveries go oldest first (``next_attempt_at``, then creation order), and the claim never
  leases a delivery whose recording (else device) already has one leased on that endpoint,
  so a healthy endpoint receives each recording's events in order at any ``per_endpoint``.
  Each round records the finished attempts and leases the next ones in ONE write
  transaction (``_acknowledge_batch`` and ``claim_deliveries`` hold that SQL). That
  transaction is committed WITHOUT an fsync (``db.write(durable=False)``: SQLite
  ``synchronous=NORMAL`` in WAL, PostgreSQL ``synchronous_commit=off``). It only holds
  attempt bookkeeping (attempt log, lease, delivery status), never client data, and it is
  still atomic and ordered: an OS crash or power loss can only drop the newest such commits
  as a whole (any later durable commit, e.g. an event, syncs them too), which puts the
  deliveries back to "pending, not leased", so they are sent again with the same
  ``webhook-id``: a duplicate, which at-least-once delivery allows, never a loss. A process
  crash loses nothing (the commit is in the WAL).
- Liveness: each dispatcher heartbeats its ``webhook_dispatchers`` row. Leases of an owner
  whose row is gone, whose heartbeat is older than ``stale_s``, or whose process is known
  dead (same kernel boot and PID namespace, PID no longer running with the same start time)
  are released, so the deliveries are sent again: at-least-once, with the same
  ``webhook-id``. A dispatcher that was killed mid-request therefore causes at most one
  duplicate per in-flight delivery, never a loss.
- Attempt: body = the event envelope; Standard Webhooks headers signed with the endpoint's
  secret and the attempt time. A 2xx answer succeeds. 410 fails the delivery, disables the
  endpoint and cancels its pending deliveries. Anything else (other statuses, redirects,
  refused address, DNS, connect, TLS, timeout) fails the attempt: the next one is due after
  the ``RetrySchedule`` delay (immediately, then 1 min, 5 min, 30 min, 2 h, 8 h, each plus
  0-10 % jitter), or after ``Retry-After`` if the receiver asks for longer; after the last one the
  delivery is ``failed`` (replay can queue it again). Every attempt is logged in
  ``webhook_attempts`` (time, status code, latency, error).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.domain.webhooks import cancel_pending, insert_delivery
from tapedeck.ids import random_base62
from tapedeck.infra.db import Database
from tapedeck.infra.logs import request_context
from tapedeck.infra.sql import Tx
from tapedeck.webhooks.models import subscribed
from tapedeck.webhooks.secretbox import SecretBox
from tapedeck.webhooks.signing import envelope, signed_headers
from tapedeck.webhooks.transport import DeliveryFailure, Response, Transport

log = logging.getLogger("tapedeck.webhooks")

DEFAULT_DELAYS_S = (60.0, 300.0, 1800.0, 7200.0, 28800.0)
_SNIPPET = 200


@dataclass(frozen=True)
class RetrySchedule:
    """When attempt n+1 is due after attempt n failed: ``delays_s[n-1]`` times a uniform factor
    in ``[1, 1 + jitter]`` (jitter only ever delays, so no retry comes sooner than the table
    says and the last one never before 10 h 36 min), or the receiver's ``Retry-After`` if that
    is longer (capped at ``max_retry_after_s``). ``len(delays_s) + 1`` attempts in all."""

    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    jitter: float = 0.1
    max_retry_after_s: float = 24 * 3600.0

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def next_delay(self, attempts_made: int, retry_after_s: float | None,
                   rng: random.Random) -> float | None:
        """Seconds until the next attempt, or None when no attempt is left."""
        if attempts_made >= self.max_attempts:
            return None
        delay = self.delays_s[attempts_made - 1] * rng.uniform(1.0, 1.0 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` named by a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (when - now).total_seconds()) if when.tzinfo else None


# -- process identity (fast detection of dead dispatchers on the same machine) -------------------
@dataclass(frozen=True)
class ProcessIdentity:
    """Where a dispatcher runs: a key of (kernel boot, PID namespace), its PID and start time."""

    host_key: str
    pid: int
    pid_start: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(_host_key(), pid, proc_start(pid) or random_base62(12))


def _host_key() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "unknown:" + random_base62(12)  # never equal to another process's key


def proc_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a running, non-zombie ``pid``, else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass(frozen=True)
class _Job:
    """Everything one attempt needs, loaded by the claim."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    url: str
    secret: str | None  # None: the sealed secret does not open (wrong key file)
    body: bytes
    request_id: str | None


@dataclass(frozen=True)
class _Outcome:
    """The result of one attempt as the log records it."""

    status_code: int | None
    error: str | None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


@dataclass(frozen=True)
class _Result:
    """A finished attempt waiting to be acknowledged (logged, delivery moved on)."""

    job: _Job
    attempted_at: datetime
    outcome: _Outcome
    latency_ms: int


@dataclass(frozen=True)
class _Candidate:
    """A due, unleased delivery as the claim sees it."""

    next_attempt_at: str
    seq: int
    delivery_id: str
    endpoint_id: str
    event_id: str
    order_key: str | None  # deliveries with the same key go one at a time, in order
    type: str
    created_at: str
    data: str
    request_id: str | None


class Dispatcher:
    """Fans out events and delivers them; see the module docstring for the contract."""

    def __init__(self, db: Database, clock: Clock, box: SecretBox, transport: Transport, *,
                 schedule: RetrySchedule | None = None, timeout_s: float = 30.0,
                 workers: int = 8, per_endpoint: int = 1, poll_s: float = 0.25,
                 heartbeat_s: float = 2.0, stale_s: float = 20.0, fanout_batch: int = 500,
                 rng: random.Random | None = None,
                 observe: Callable[[str, str | None], None] | None = None) -> None:
        self.db, self.clock, self.box, self.transport = db, clock, box, transport
        self.observe = observe  # (attempt outcome, final status or None): Metrics.observe_webhook
        self.schedule = schedule or RetrySchedule()
        self.timeout_s, self.per_endpoint, self.poll_s = timeout_s, per_endpoint, poll_s
        self.heartbeat_s, self.stale_s, self.fanout_batch = heartbeat_s, stale_s, fanout_batch
        self.owner = "dsp_" + random_base62(16)
        self.identity = ProcessIdentity.current()
        self._workers = workers
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._in_flight: set[str] = set()  # leased by us: running or awaiting acknowledgement
        self._running = 0
        self._finished: list[_Result] = []
        self._idle = threading.Condition()
        self._ack_lock = threading.Lock()
        self._secrets: dict[tuple[str, str], str | None] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._last_beat: datetime | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the fan-out/claim loop and the worker pool in background threads."""
        self._start_workers()
        self._loop_thread = threading.Thread(target=self._loop, name="webhook-dispatcher",
                                             daemon=True)
        self._loop_thread.start()

    def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight attempts finish within ``grace`` seconds and record
        them, then deregister (any lease still held becomes reclaimable at once)."""
        self._stop.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=max(grace, 1.0))
        self.wait_idle(grace)
        for _ in self._threads:
            self._queue.put(None)
        with self.db.write() as tx:
            tx.execute("UPDATE webhook_deliveries SET lease_owner = NULL WHERE lease_owner = ?",
                       [self.owner])
            tx.execute("DELETE FROM webhook_dispatchers WHERE owner = ?", [self.owner])
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def wake(self) -> None:
        """Run a round now instead of at the next poll (a ``NOTIFY`` of a new event)."""
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no attempt is running, then record every finished one; False on
        timeout."""
        with self._idle:
            done = self._idle.wait_for(lambda: self._running == 0, timeout)
        self._acknowledge()
        return done

    def drain(self, max_rounds: int = 100_000) -> None:
        """Run rounds (acknowledge, fan-out, claim, send, wait) until nothing more is due now.
        For tests and tools driving the dispatcher with a ``ManualClock`` instead of
        ``start()``."""
        for _ in range(max_rounds):
            busy = self.step()
            with self._idle:
                self._idle.wait_for(lambda: self._running == 0)
            if not busy:
                self._acknowledge()
                return
        raise RuntimeError("drain did not settle")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the round: a wake-up during it is not lost
            try:
                busy = self.step()
            except Exception:
                log.exception("webhook dispatcher round failed")
                busy = 0
            if not busy:
                self._wake.wait(self.poll_s)

    def step(self) -> int:
        """One round: heartbeat (and reclaim dead dispatchers' leases) when due, acknowledge
        the attempts finished since the last round, fan out one batch, claim due deliveries
        for the free workers. Returns the work done (0 = idle)."""
        self._start_workers()
        self._heartbeat_if_due()
        fanned = self.fan_out()
        return fanned + self._acknowledge(claim=True)

    # -- liveness -----------------------------------------------------------------------------
    def _heartbeat_if_due(self) -> None:
        now = self.clock.now()
        if self._last_beat is not None and \
                (now - self._last_beat).total_seconds() < self.heartbeat_s:
            return
        with self.db.write() as tx:
            tx.execute(
                "INSERT INTO webhook_dispatchers (owner, host_key, pid, pid_start, started_at,"
                " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE"
                " SET heartbeat_at = excluded.heartbeat_at",
                [self.owner, self.identity.host_key, self.identity.pid,
                 self.identity.pid_start, iso(now), iso(now)])
            self._reclaim(tx, now)
        self._last_beat = now

    def _reclaim(self, tx: Tx, now: datetime) -> None:
        """Release leases of dead dispatchers, and our own leases no thread is working on."""
        owners = {r[0]: r[1:] for r in tx.execute(
            "SELECT owner, host_key, pid, pid_start, heartbeat_at FROM webhook_dispatchers")}
        holders = [r[0] for r in tx.execute(
            "SELECT DISTINCT lease_owner FROM webhook_deliveries WHERE lease_owner IS NOT NULL")]
        dead = {o for o in {*owners, *holders}
                if o != self.owner and self._is_dead(owners.get(o), now)}
        for owner in dead:
            tx.execute("UPDATE webhook_deliveries SET lease_owner = NULL WHERE lease_owner = ?",
                       [owner])
            tx.execute("DELETE FROM webhook_dispatchers WHERE owner = ?", [owner])
        if dead:
            log.info("released the webhook leases of %d stopped dispatcher(s)", len(dead))
        with self._idle:
            mine = list(self._in_flight)
        tx.execute("UPDATE webhook_deliveries SET lease_owner = NULL WHERE lease_owner = ?"
                   f" AND id NOT IN ({', '.join('?' * len(mine))})", [self.owner, *mine])

    def _is_dead(self, row: tuple[Any, ...] | None, now: datetime) -> bool:
        if row is None:
            return True
        host_key, pid, pid_start, heartbeat_at = row
        beat = parse_iso(heartbeat_at)
        if beat is None or (now - beat).total_seconds() > self.stale_s:
            return True
        return bool(host_key == self.identity.host_key and proc_start(pid) != pid_start)

    # -- fan-out ------------------------------------------------------------------------------
    def fan_out(self) -> int:
        """Turn one batch of queued events into deliveries; returns the events taken."""
        if self.db.read().execute("SELECT 1 FROM webhook_outbox LIMIT 1").fetchone() is None:
            return 0
        now = iso(self.clock.now())
        with self.db.write() as tx:
            rows = tx.execute(
                "SELECT o.seq, o.event_id, e.project_id, e.type FROM webhook_outbox o"
                " LEFT JOIN events e ON e.id = o.event_id ORDER BY o.seq LIMIT ?",
                [self.fanout_batch]).fetchall()
            if not rows:
                return 0
            targets = _endpoints_by_project(tx, {r[2] for r in rows if r[2] is not None})
            for seq, event_id, project_id, type_ in rows:
                for endpoint_id, events, start_after in targets.get(project_id, []):
                    if seq > start_after and subscribed(events, type_):
                        insert_delivery(tx, endpoint_id, event_id, project_id, "fanout", now)
            tx.execute("DELETE FROM webhook_outbox WHERE seq <= ?", [rows[-1][0]])
        return len(rows)

    # -- claim --------------------------------------------------------------------------------
    def _job(self, c: _Candidate, url: str, sealed: str) -> _Job:
        body = envelope(c.event_id, c.type, c.created_at, json.loads(c.data))
        return _Job(c.delivery_id, c.endpoint_id, c.event_id, url,
                    self._secret(c.endpoint_id, sealed), body, c.request_id)

    def _secret(self, endpoint_id: str, sealed: str) -> str | None:
        """The endpoint's plaintext secret (kept per sealed value), None if it won't open."""
        key = (endpoint_id, sealed)
        if key not in self._secrets:
            try:
                self._secrets[key] = self.box.open(sealed, endpoint_id)
            except ValueError:
                self._secrets[key] = None
        return self._secrets[key]

    # -- attempts -----------------------------------------------------------------------------
    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            t = threading.Thread(target=self._work, name=f"webhook-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            result: _Result | None = None
            try:
                with request_context(job.request_id):
                    result = self._send(job)
            except Exception:
                log.exception("webhook attempt for %s failed", job.delivery_id)
            finally:
                with self._idle:
                    self._running -= 1
                    if result is None:
                        self._in_flight.discard(job.delivery_id)
                    else:
                        self._finished.append(result)
                    self._idle.notify_all()
                self._wake.set()

    def _send(self, job: _Job) -> _Result:
        """One attempt of a leased delivery (the request id of its event is the log context,
        see ``tapedeck.infra.logs``)."""
        attempted_at = self.clock.now()
        started = time.perf_counter()
        if job.secret is None:
            outcome = _Outcome(None, "internal_error: the endpoint secret does not decrypt"
                                     " (was webhook-secrets.key replaced?)")
        else:
            headers = signed_headers(job.secret, job.event_id, int(attempted_at.timestamp()),
                                     job.body)
            try:
                outcome = _classify(
                    self.transport.post(job.url, headers, job.body, self.timeout_s),
                    self.clock.now())
            except DeliveryFailure as exc:
                outcome = _Outcome(None, str(exc))
        latency_ms = round((time.perf_counter() - started) * 1000)
        return _Result(job, attempted_at, outcome, latency_ms)

    # -- acknowledgement ----------------------------------------------------------------------
    def _acknowledge(self, claim: bool = False) -> int:
        """Record every finished attempt and (``claim``) lease due deliveries for the free
        workers, in ONE write transaction, so a round costs one commit; returns the work done.
        A crash before the commit loses no delivery: the finished ones are still leased to us
        and are sent again once the lease is reclaimed."""
        with self._ack_lock:
            with self._idle:
                batch, self._finished = self._finished, []
                slots = self._workers - len(self._in_flight) + len(batch)
            now = self.clock.now()
            # A round that records attempts writes anyway: it claims without asking first.
            claim = claim and slots > 0 and not self._stop.is_set() and \
                (bool(batch) or self._due(now))
            if not batch and not claim:
                return 0
            try:  # not fsynced: a lost commit only means a redelivery (module docstring)
                with self.db.write(durable=False) as tx:
                    acked = self._acknowledge_batch(tx, batch, now)
                    claimed = claim_deliveries(tx, self.owner, iso(now) or "", slots,
                                               self.per_endpoint) if claim else []
            except BaseException:
                with self._idle:
                    self._finished[:0] = batch  # try again next round
                raise
            with self._idle:
                self._in_flight.difference_update(r.job.delivery_id for r in batch)
                self._in_flight.update(c.delivery_id for c, _, _ in claimed)
                self._running += len(claimed)
                self._idle.notify_all()
        for candidate, url, sealed in claimed:
            self._queue.put(self._job(candidate, url, sealed))
        for r, (attempt, ours, final) in zip(batch, acked, strict=True):
            if not ours:
                continue
            if log.isEnabledFor(logging.INFO):
                self._log_attempt(r, attempt)
            if self.observe is not None:
                self.observe(_attempt_label(r.outcome), final)
        return len(batch) + len(claimed)

    @staticmethod
    def _log_attempt(r: _Result, attempt: int) -> None:
        """One log line per recorded attempt, in its event's request context."""
        with request_context(r.job.request_id):
            log.info("webhook %s (event %s) attempt %d: %s", r.job.delivery_id,
                     r.job.event_id, attempt, "delivered" if r.outcome.ok else r.outcome.error)

    def _due(self, now: datetime) -> bool:
        """Is any unleased delivery due (a read, so an idle round writes nothing)?"""
        return self.db.read().execute(
            "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND"
            " next_attempt_at <= ? AND lease_owner IS NULL LIMIT 1", [iso(now)]
        ).fetchone() is not None

    def _acknowledge_batch(self, tx: Tx, batch: list[_Result],
                           now: datetime) -> list[tuple[int, bool, str | None]]:
        """THE acknowledgement SQL: log each attempt and move its delivery on if we still
        hold its lease. Per result: (attempt number, lease still ours, final status).
        A handful of statements per round, whatever its size: one read of the batch's
        deliveries, one multi-row insert into the attempt log, one update per answered
        status code of the successes; only failures (rare) move on one by one. A delivery
        whose row is gone (deleted meanwhile) is neither logged nor ours."""
        if not batch:
            return []
        ids = [r.job.delivery_id for r in batch]
        state: dict[str, tuple[str, str | None, int]] = {
            row[0]: (row[1], row[2], row[3]) for row in tx.execute(
                "SELECT id, status, lease_owner, attempts FROM webhook_deliveries WHERE id IN"
                f" ({', '.join('?' * len(ids))})", ids).fetchall()}
        present = [r for r in batch if r.job.delivery_id in state]
        _log_attempts(tx, [(r, state[r.job.delivery_id][2] + 1) for r in present])
        out: list[tuple[int, bool, str | None]] = []
        succeeded: dict[int, list[str]] = {}
        for r in batch:
            status, owner, attempts = state.get(r.job.delivery_id, ("gone", None, 0))
            if status != "pending" or owner != self.owner:
                out.append((attempts + 1, False, None))  # lease lost: the attempt is logged
            elif r.outcome.ok:
                succeeded.setdefault(r.outcome.status_code or 200, []).append(
                    r.job.delivery_id)
                out.append((attempts + 1, True, "succeeded"))
            else:
                out.append((attempts + 1, True,
                            self._advance(tx, r.job, attempts + 1, r.outcome, now)))
        for code, done in succeeded.items():
            tx.execute(
                "UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1,"
                " lease_owner = NULL, next_attempt_at = NULL, last_status_code = ?,"
                " last_error = NULL, completed_at = ?, updated_at = ? WHERE id IN"
                f" ({', '.join('?' * len(done))})", [code, iso(now), iso(now), *done])
        return out

    def _advance(self, tx: Tx, job: _Job, attempt: int, outcome: _Outcome,
                 now: datetime) -> str | None:
        """Move the delivery on; returns its final status if it ended."""
        if outcome.ok or outcome.gone:
            final = "succeeded" if outcome.ok else "failed"
            _finish(tx, job.delivery_id, final, attempt, outcome, now)
            if outcome.gone:
                _disable(tx, job.endpoint_id, now)
            return final
        with self._rng_lock:
            delay = self.schedule.next_delay(attempt, outcome.retry_after_s, self._rng)
        if delay is None:
            _finish(tx, job.delivery_id, "failed", attempt, outcome, now)
            log.info("webhook delivery %s failed after %d attempts", job.delivery_id, attempt)
            return "failed"
        tx.execute(
            "UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?, lease_owner = NULL,"
            " last_status_code = ?, last_error = ?, updated_at = ? WHERE id = ?",
            [attempt, iso(now + timedelta(seconds=delay)), outcome.status_code, outcome.error,
             iso(now), job.delivery_id])
        return None


def claim_deliveries(tx: Tx, owner: str, now: str, slots: int,
                     per_endpoint: int) -> list[tuple[_Candidate, str, str]]:
    """THE claim (lease) SQL, inside the caller's write transaction: lease up to ``slots``
    due deliveries to ``owner``, oldest due first (``next_attempt_at``, then creation order),
    with at most ``per_endpoint`` leased per endpoint by all dispatchers together, and never
    a delivery whose order key (its recording, else its device) already has a leased
    delivery on that endpoint or an earlier one in this claim: so a healthy endpoint gets
    each recording's events one at a time, in order. Returns (delivery, url, sealed secret).
    """
    busy: dict[str, int] = {}
    held: dict[str, set[str]] = {}
    for endpoint_id, recording_id, type_, data in tx.execute(
            "SELECT d.endpoint_id, e.recording_id, e.type, e.data FROM webhook_deliveries d"
            " JOIN events e ON e.id = d.event_id"
            " WHERE d.lease_owner IS NOT NULL AND d.status = 'pending'").fetchall():
        busy[endpoint_id] = busy.get(endpoint_id, 0) + 1
        if (key := _order_key(recording_id, type_, data)) is not None:
            held.setdefault(endpoint_id, set()).add(key)
    candidates: list[tuple[_Candidate, str, str]] = []
    for endpoint_id, url, sealed in tx.execute(
            "SELECT id, url, secret_sealed FROM webhook_endpoints WHERE status = 'enabled'"
            ).fetchall():
        free = min(per_endpoint - busy.get(endpoint_id, 0), slots)
        if free > 0:
            candidates += [(c, url, sealed) for c in _due(tx, endpoint_id, now, free,
                                                           held.get(endpoint_id, set()))]
    chosen = sorted(candidates, key=lambda c: (c[0].next_attempt_at, c[0].seq))[:slots]
    if chosen:
        tx.execute(f"UPDATE webhook_deliveries SET lease_owner = ? WHERE id IN"
                   f" ({', '.join('?' * len(chosen))})",
                   [owner, *(c.delivery_id for c, _, _ in chosen)])
    return chosen


def _due(tx: Tx, endpoint_id: str, now: str, free: int,
         held: set[str]) -> list[_Candidate]:
    """Up to ``free`` due unleased deliveries of one endpoint, oldest first, at most one per
    order key and none of a key in ``held``. PostgreSQL: the rows are locked ``FOR UPDATE
    SKIP LOCKED`` (a delivery another transaction is leasing or acknowledging is passed over,
    never waited for)."""
    skip = " FOR UPDATE OF d SKIP LOCKED" if tx.dialect == "postgresql" else ""
    taken, out = set(held), []
    for row in tx.execute(
            "SELECT d.next_attempt_at, d.seq, d.id, d.endpoint_id, d.event_id, e.recording_id,"
            " e.type, e.created_at, e.data, e.request_id FROM webhook_deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.endpoint_id = ? AND"
            " d.status = 'pending' AND d.lease_owner IS NULL AND d.next_attempt_at <= ?"
            f" ORDER BY d.next_attempt_at, d.seq LIMIT ?{skip}",
            [endpoint_id, now, free * 8 + 8]).fetchall():
        key = _order_key(row[5], row[6], row[8])
        if key is not None:
            if key in taken:
                continue
            taken.add(key)
        out.append(_Candidate(row[0], row[1], row[2], row[3], row[4], key, *row[6:]))
        if len(out) == free:
            break
    return out


def _order_key(recording_id: str | None, type_: str, data: str) -> str | None:
    """What a delivery's order is kept within: its recording, else (``device.*`` events)
    its device, else nothing."""
    if recording_id:
        return "rec:" + recording_id
    if type_.startswith("device."):
        device = json.loads(data).get("device_id")
        return f"dev:{device}" if device else None
    return None


_ATTEMPT_ROWS = 100  # attempt log rows per INSERT (8 parameters each)


def _log_attempts(tx: Tx, attempts: list[tuple[_Result, int]]) -> None:
    """Append (result, attempt number) pairs to the attempt log, many rows per INSERT."""
    for i in range(0, len(attempts), _ATTEMPT_ROWS):
        rows = attempts[i:i + _ATTEMPT_ROWS]
        tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, endpoint_id, event_id, attempt,"
            " attempted_at, status_code, latency_ms, error) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows)),
            [v for r, n in rows for v in (
                r.job.delivery_id, r.job.endpoint_id, r.job.event_id, n,
                iso(r.attempted_at), r.outcome.status_code, r.latency_ms, r.outcome.error)])


def _attempt_label(outcome: _Outcome) -> str:
    """The metrics label of an attempt: succeeded, gone (410), http_error or network_error."""
    if outcome.ok:
        return "succeeded"
    if outcome.gone:
        return "gone"
    return "http_error" if outcome.status_code is not None else "network_error"


def _endpoints_by_project(tx: Tx, projects: set[str]
                          ) -> dict[str, list[tuple[str, tuple[str, ...], int]]]:
    """Enabled endpoints of ``projects``: (id, subscribed types, start_after_seq)."""
    out: dict[str, list[tuple[str, tuple[str, ...], int]]] = {}
    if projects:
        for endpoint_id, project_id, events, start_after in tx.execute(
                "SELECT id, project_id, events, start_after_seq FROM webhook_endpoints WHERE"
                f" status = 'enabled' AND project_id IN ({', '.join('?' * len(projects))})",
                list(projects)).fetchall():
            out.setdefault(project_id, []).append(
                (endpoint_id, tuple(json.loads(events)), start_after))
    return out


def _classify(resp: Response, now: datetime) -> _Outcome:
    """Success, or the error text the log shows for a non-2xx answer."""
    code = resp.status
    if 200 <= code < 300:
        return _Outcome(code, None)
    if 300 <= code < 400:
        where = resp.headers.get("location", "?")
        return _Outcome(code, f"redirect_not_followed: HTTP {code} to {where[:_SNIPPET]}")
    snippet = resp.body[:_SNIPPET].decode("utf-8", "replace").strip()
    error = f"http_error: HTTP {code}" + (f": {snippet}" if snippet else "")
    return _Outcome(code, error, parse_retry_after(resp.headers.get("retry-after"), now))


def _finish(tx: Tx, delivery_id: str, status: str, attempt: int,
            outcome: _Outcome, now: datetime) -> None:
    tx.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, lease_owner = NULL,"
        " next_attempt_at = NULL, last_status_code = ?, last_error = ?, completed_at = ?,"
        " updated_at = ? WHERE id = ?",
        [status, attempt, outcome.status_code, outcome.error, iso(now), iso(now), delivery_id])


def _disable(tx: Tx, endpoint_id: str, now: datetime) -> None:
    """410 Gone: the receiver asked us to stop. Disable the endpoint, cancel what is queued."""
    tx.execute("UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = ?,"
               " updated_at = ? WHERE id = ? AND status = 'enabled'",
               ["gone: the receiver answered 410", iso(now), endpoint_id])
    cancel_pending(tx, endpoint_id, iso(now), "endpoint disabled: the receiver answered 410")
    log.info("webhook endpoint %s disabled: its receiver answered 410", endpoint_id)

