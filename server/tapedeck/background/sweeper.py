"""The sweeper: a periodic loop (the ``sweeper`` role, started by ``tapedeck serve`` and
``tapedeck worker``) that expires overdue streaming recordings (``domain.expiry.Expiry``)
and then applies chunk retention (``tapedeck.domain.retention.Retention``), redacts the events
of deleted recordings whose deliveries are done (``domain.redaction.EventRedaction``), and
marks devices silent for ``device_offline_after_s`` offline
(``domain.fleet.Fleet.sweep_offline``, one ``device.offline`` event per transition).

Every round handles all due work in batches (bounded, so a stop is honoured between
batches). Each expired recording is handled under a fresh request id, which its stitching
job and events record, so the worker and dispatcher log lines about it share that id.

Any number of processes may run a sweeper against one database: ``Expiry.expire`` re-checks
the recording under ``BEGIN IMMEDIATE`` (a recording is expired exactly once) and retention
is idempotent with a compare-and-set on its state. A failing round (object store down) is
logged and counted, and the next round tries again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from tapedeck.domain.context import Context
from tapedeck.domain.expiry import Expiry
from tapedeck.domain.fleet import Fleet
from tapedeck.domain.redaction import EventRedaction
from tapedeck.domain.retention import Retention, RetentionPolicy
from tapedeck.domain.voice_profiles import ProfileRetention
from tapedeck.infra.failpoints import Failpoints
from tapedeck.infra.logs import request_context
from tapedeck.infra.metrics import Metrics
from tapedeck.runtime import Runtime

log = logging.getLogger("tapedeck.background.sweeper")

BATCH = 100
MAX_BATCHES = 50


@dataclass
class SweepReport:
    """What one round did: recording id → outcome, for expiry and for retention."""

    expired: dict[str, str] = field(default_factory=dict)
    cleaned: dict[str, str] = field(default_factory=dict)
    redacted: dict[str, int] = field(default_factory=dict)
    offline: list[str] = field(default_factory=list)  # devices marked offline
    voice_profiles_deleted: int = 0


class Sweeper:
    """Runs ``run_once`` every ``interval_s`` seconds in a background thread."""

    def __init__(self, expiry: Expiry, retention: Retention, interval_s: float,
                 metrics: Metrics | None = None,
                 redaction: EventRedaction | None = None,
                 fleet: Fleet | None = None,
                 profiles: ProfileRetention | None = None) -> None:
        self.expiry = expiry
        self.fleet = fleet
        self.retention = retention
        self.redaction = redaction
        self.profiles = profiles
        self.interval_s = interval_s
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> SweepReport:
        """Expire every due recording, then clean every recording whose retention ran out."""
        report = SweepReport()
        for _ in range(MAX_BATCHES):
            due = self.expiry.due(BATCH)
            for rec_id in due:
                report.expired[rec_id] = self._expire(rec_id)
            if len(due) < BATCH or self._stop.is_set():
                break
        for _ in range(MAX_BATCHES):
            batch = self.retention.due(BATCH)
            for rec_id, stage in batch:
                report.cleaned[rec_id] = self.retention.clean(rec_id, stage)
            if len(batch) < BATCH or self._stop.is_set():
                break
        if self.redaction is not None:
            report.redacted = self.redaction.sweep(BATCH * MAX_BATCHES)
        if self.fleet is not None:
            self._sweep_fleet(self.fleet, report)
        if self.profiles is not None:
            report.voice_profiles_deleted = self.profiles.run()
        return report

    def _sweep_fleet(self, fleet: Fleet, report: SweepReport) -> None:
        for _ in range(MAX_BATCHES):
            marked = fleet.sweep_offline(BATCH)
            report.offline += marked
            for device_id in marked:
                log.info("device %s is offline (no heartbeat for %d s)", device_id,
                         fleet.offline_after_s)
            if len(marked) < BATCH or self._stop.is_set():
                break

    def _expire(self, recording_id: str) -> str:
        with request_context(None):
            outcome = self.expiry.expire(recording_id)
            if outcome != "skipped":
                log.info("recording %s expired: %s", recording_id,
                         "auto-finalized from its contiguous chunks" if outcome == "finalized"
                         else "no chunk 1 to finalize" if outcome == "expired" else outcome)
                if self._metrics is not None:
                    self._metrics.expiry.labels(outcome).inc()
        return outcome

    # -- background loop ------------------------------------------------------------------------
    def start(self) -> Sweeper:
        """Start the loop (the first round runs at once)."""
        self._thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                outcome = "ok"
            except Exception as exc:  # the store or database is down: next round retries
                log.warning("sweep failed: %s: %s", type(exc).__name__, exc,
                            exc_info=not hasattr(exc, "type"))
                outcome = "error"
            if self._metrics is not None:
                self._metrics.sweeps.labels(outcome).inc()
            self._stop.wait(self.interval_s)

    def stop(self, grace: float) -> None:
        """Stop after the current batch (waits up to ``grace`` seconds; an unfinished round
        is safe to abandon: the next sweeper redoes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(grace, 0.1))


def start_sweeper(runtime: Runtime) -> Sweeper:
    """The ``sweeper`` role, started: expiry, retention, redaction, devices going offline
    and voice-profile retention every ``sweep_interval_ms``, on ``Context.of(runtime)`` (the
    process's job signals: an expiry's stitch job wakes this process's workers at once)."""
    s, ctx = runtime.settings, Context.of(runtime)
    retention = Retention(ctx, RetentionPolicy.from_settings(s),
                          failpoints=Failpoints(s.test_only_failpoints), metrics=runtime.metrics)
    sweeper = Sweeper(Expiry(ctx), retention, s.sweep_interval_ms / 1000,
                      metrics=runtime.metrics, redaction=EventRedaction(ctx), fleet=Fleet(ctx),
                      profiles=ProfileRetention(ctx, s.retention_voice_profiles_s))
    return sweeper.start()
