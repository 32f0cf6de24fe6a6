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
  deliveries go oldest first (``next_attempt_at``, then creation order), so a healthy
  endpoint with ``per_endpoint=1`` receives events in order.
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

import sqlite_utils

from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.db import Database
from tapedeck.domain.webhooks import cancel_pending, insert_delivery
from tapedeck.ids import random_base62
from tapedeck.logs import request_context
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
    """Everything one attempt needs, loaded after the claim."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    url: str
    secret: str | None  # None: the sealed secret does not open (wrong key file)
    body: bytes


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
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._in_flight: set[str] = set()
        self._idle = threading.Condition()
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
        """Stop claiming, let in-flight attempts finish within ``grace`` seconds, then
        deregister (any lease still held becomes reclaimable at once)."""
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

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no attempt is in flight; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)

    def drain(self, max_rounds: int = 100_000) -> None:
        """Run rounds (fan-out, claim, send, wait) until nothing more is due now. For tests
        and tools driving the dispatcher with a ``ManualClock`` instead of ``start()``."""
        for _ in range(max_rounds):
            busy = self.step()
            self.wait_idle()
            if not busy:
                return
        raise RuntimeError("drain did not settle")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:
                log.exception("webhook dispatcher round failed")
                busy = 0
            if not busy:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def step(self) -> int:
        """One round: heartbeat (and reclaim dead dispatchers' leases) when due, fan out one
        batch, claim due deliveries for the free workers. Returns the work done (0 = idle)."""
        self._start_workers()
        self._heartbeat_if_due()
        fanned = self.fan_out()
        return fanned + self._claim_and_submit()

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

    def _reclaim(self, tx: sqlite_utils.Database, now: datetime) -> None:
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
    def _claim_and_submit(self) -> int:
        with self._idle:
            slots = self._workers - len(self._in_flight)
        if slots <= 0 or self._stop.is_set():
            return 0
        claimed = self._claim(slots)
        with self._idle:
            self._in_flight.update(claimed)
        for delivery_id in claimed:
            self._queue.put(delivery_id)
        return len(claimed)

    def _claim(self, slots: int) -> list[str]:
        """Lease up to ``slots`` due deliveries, at most ``per_endpoint`` per endpoint."""
        now = iso(self.clock.now())
        if self.db.read().execute(
                "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND"
                " next_attempt_at <= ? AND lease_owner IS NULL LIMIT 1", [now]).fetchone() is None:
            return []
        with self.db.write() as tx:
            busy = dict(tx.execute(
                "SELECT endpoint_id, count(*) FROM webhook_deliveries WHERE lease_owner IS NOT"
                " NULL AND status = 'pending' GROUP BY endpoint_id").fetchall())
            candidates: list[tuple[str, int, str]] = []
            for (endpoint_id,) in tx.execute(
                    "SELECT id FROM webhook_endpoints WHERE status = 'enabled'").fetchall():
                free = self.per_endpoint - busy.get(endpoint_id, 0)
                if free > 0:
                    candidates += tx.execute(
                        "SELECT next_attempt_at, seq, id FROM webhook_deliveries"
                        " WHERE endpoint_id = ? AND status = 'pending' AND lease_owner IS NULL"
                        " AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
                        [endpoint_id, now, free]).fetchall()
            chosen = [c[2] for c in sorted(candidates)[:slots]]
            for delivery_id in chosen:
                tx.execute("UPDATE webhook_deliveries SET lease_owner = ? WHERE id = ?",
                           [self.owner, delivery_id])
        return chosen

    # -- attempts -----------------------------------------------------------------------------
    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            t = threading.Thread(target=self._work, name=f"webhook-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while (delivery_id := self._queue.get()) is not None:
            try:
                self._attempt(delivery_id)
            except Exception:
                log.exception("webhook attempt for %s failed", delivery_id)
            finally:
                with self._idle:
                    self._in_flight.discard(delivery_id)
                    self._idle.notify_all()
                self._wake.set()

    def _attempt(self, delivery_id: str) -> None:
        """Send one attempt of a leased delivery and record its outcome, under the request id
        stored with its event (``tapedeck.logs``)."""
        job = self._load(delivery_id)
        if job is None:
            return
        row = self.db.read().execute("SELECT request_id FROM events WHERE id = ?",
                                     [job.event_id]).fetchone()
        with request_context(row[0] if row else None):
            self._send(job)

    def _send(self, job: _Job) -> None:
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
        self._record(job, attempted_at, outcome, latency_ms)

    def _load(self, delivery_id: str) -> _Job | None:
        """The leased delivery with its endpoint and event, or None if no longer ours."""
        row = self.db.read().execute(
            "SELECT d.endpoint_id, d.event_id, w.url, w.secret_sealed, e.type, e.created_at,"
            " e.data FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id"
            " JOIN events e ON e.id = d.event_id WHERE d.id = ? AND d.status = 'pending'"
            " AND d.lease_owner = ? AND w.status = 'enabled'",
            [delivery_id, self.owner]).fetchone()
        if row is None:
            return None
        endpoint_id, event_id, url, sealed, type_, created_at, data = row
        body = envelope(event_id, type_, created_at, json.loads(data))
        try:
            secret: str | None = self.box.open(sealed, endpoint_id)
        except ValueError:
            secret = None
        return _Job(delivery_id, endpoint_id, event_id, url, secret, body)

    def _record(self, job: _Job, attempted_at: datetime, outcome: _Outcome,
                latency_ms: int) -> None:
        """Log the attempt and move the delivery on, if we still hold its lease."""
        now = self.clock.now()
        with self.db.write() as tx:
            status, owner, attempts = tx.execute(
                "SELECT status, lease_owner, attempts FROM webhook_deliveries WHERE id = ?",
                [job.delivery_id]).fetchone()
            tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, endpoint_id, event_id, attempt,"
                " attempted_at, status_code, latency_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [job.delivery_id, job.endpoint_id, job.event_id, attempts + 1, iso(attempted_at),
                 outcome.status_code, latency_ms, outcome.error])
            if status != "pending" or owner != self.owner:
                return  # lease lost (we were presumed dead): the attempt is logged, that's all
            final = self._advance(tx, job, attempts + 1, outcome, now)
        log.info("webhook %s (event %s) attempt %d: %s", job.delivery_id, job.event_id,
                 attempts + 1, "delivered" if outcome.ok else outcome.error)
        if self.observe is not None:
            self.observe(_attempt_label(outcome), final)

    def _advance(self, tx: sqlite_utils.Database, job: _Job, attempt: int, outcome: _Outcome,
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


def _attempt_label(outcome: _Outcome) -> str:
    """The metrics label of an attempt: succeeded, gone (410), http_error or network_error."""
    if outcome.ok:
        return "succeeded"
    if outcome.gone:
        return "gone"
    return "http_error" if outcome.status_code is not None else "network_error"


def _endpoints_by_project(tx: sqlite_utils.Database, projects: set[str]
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


def _finish(tx: sqlite_utils.Database, delivery_id: str, status: str, attempt: int,
            outcome: _Outcome, now: datetime) -> None:
    tx.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, lease_owner = NULL,"
        " next_attempt_at = NULL, last_status_code = ?, last_error = ?, completed_at = ?,"
        " updated_at = ? WHERE id = ?",
        [status, attempt, outcome.status_code, outcome.error, iso(now), iso(now), delivery_id])


def _disable(tx: sqlite_utils.Database, endpoint_id: str, now: datetime) -> None:
    """410 Gone: the receiver asked us to stop. Disable the endpoint, cancel what is queued."""
    tx.execute("UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = ?,"
               " updated_at = ? WHERE id = ? AND status = 'enabled'",
               ["gone: the receiver answered 410", iso(now), endpoint_id])
    cancel_pending(tx, endpoint_id, iso(now), "endpoint disabled: the receiver answered 410")
    log.info("webhook endpoint %s disabled: its receiver answered 410", endpoint_id)

