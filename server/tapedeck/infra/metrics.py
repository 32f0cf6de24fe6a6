"""Prometheus metrics of one Tapedeck process, on a registry of its own (never the global
default registry; nothing here is module-level state).

``Metrics`` holds the process's counters and histograms; ``App.open`` builds one and
``watch(db, clock)`` adds ``QueueCollector``, which reads SQLite at scrape time, so the
queue gauges describe the whole deployment whichever process is scraped. The REST gateway
serves ``render()`` at ``GET /metrics``; a process without the HTTP role can serve it on
``settings.metrics_port`` (``MetricsServer``).

Process-local series (they count what THIS process did):
  tapedeck_requests_total{transport,method,outcome}   outcome = ok | the error type
  tapedeck_request_duration_seconds{transport,method} histogram
  tapedeck_chunks_ingested_total, tapedeck_chunk_bytes_ingested_total
  tapedeck_job_runs_total{kind,outcome}               succeeded | retry | failed | lease_lost
  tapedeck_job_duration_seconds{kind}                 histogram of every run
  tapedeck_webhook_attempts_total{outcome}            succeeded | http_error | gone | network_error
  tapedeck_webhook_deliveries_total{outcome}          deliveries finished: succeeded | failed
  tapedeck_store_errors_total{operation}              storage_unavailable from the object store
  tapedeck_expiry_total{outcome}                      finalized | expired
  tapedeck_retention_objects_deleted_total{reason}    stitched | leftover | failed | expired
  tapedeck_sweeps_total{outcome}                      ok | error
Deployment-wide gauges, from SQLite at scrape time:
  tapedeck_jobs{kind,status}                          queued | running | failed
  tapedeck_job_queue_oldest_age_seconds{kind}         how long the oldest due job has waited
  tapedeck_recordings{status}                         streaming | uploaded | stitching
  tapedeck_recordings_overdue                         streaming past expires_at (sweeper lag)
  tapedeck_webhook_deliveries_by_status{status}       pending | failed
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tapedeck.clock import Clock, iso, parse_iso
from tapedeck.errors import TapedeckError
from tapedeck.infra.db import Database
from tapedeck.infra.sql import database_errors
from tapedeck.infra.store import CAPABILITY_METHODS, ObjectInfo, ObjectStore

log = logging.getLogger("tapedeck.infra.metrics")

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
QUEUE_GAUGE_STATUSES = ("queued", "running", "failed")
RECORDING_GAUGE_STATUSES = ("streaming", "uploaded", "stitching")


class Metrics:
    """The metrics of one process (see the module docstring for the series)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tapedeck_requests", "API requests by transport, method "
                                "(gRPC method or REST route) and outcome (ok or error type)",
                                ["transport", "method", "outcome"], registry=r)
        self.request_seconds = Histogram("tapedeck_request_duration_seconds",
                                         "API request latency", ["transport", "method"],
                                         buckets=REQUEST_BUCKETS, registry=r)
        self.chunks = Counter("tapedeck_chunks_ingested", "chunk parts stored", registry=r)
        self.chunk_bytes = Counter("tapedeck_chunk_bytes_ingested", "bytes of chunk parts stored",
                                   registry=r)
        self.job_runs = Counter("tapedeck_job_runs", "job runs by kind and outcome",
                                ["kind", "outcome"], registry=r)
        self.job_seconds = Histogram("tapedeck_job_duration_seconds", "job run duration",
                                     ["kind"], buckets=JOB_BUCKETS, registry=r)
        self.webhook_attempts = Counter("tapedeck_webhook_attempts",
                                        "webhook delivery attempts by outcome", ["outcome"],
                                        registry=r)
        self.webhook_deliveries = Counter("tapedeck_webhook_deliveries",
                                          "webhook deliveries finished, by outcome", ["outcome"],
                                          registry=r)
        self.store_errors = Counter("tapedeck_store_errors",
                                    "object store calls that failed (storage_unavailable)",
                                    ["operation"], registry=r)
        self.expiry = Counter("tapedeck_expiry", "streaming recordings expired, by outcome",
                              ["outcome"], registry=r)
        self.retention_deleted = Counter("tapedeck_retention_objects_deleted",
                                         "chunk objects deleted by retention, by reason",
                                         ["reason"], registry=r)
        self.sweeps = Counter("tapedeck_sweeps", "expiry + retention sweeps, by outcome",
                              ["outcome"], registry=r)

    # -- recording ----------------------------------------------------------------------------
    def observe_request(self, transport: str, method: str, outcome: str, seconds: float) -> None:
        """One finished API request."""
        self.requests.labels(transport, method, outcome).inc()
        self.request_seconds.labels(transport, method).observe(seconds)

    def observe_job(self, kind: str, outcome: str, seconds: float) -> None:
        """One finished job run (``tapedeck.background.worker.Worker`` calls this)."""
        self.job_runs.labels(kind, outcome).inc()
        self.job_seconds.labels(kind).observe(seconds)

    def observe_webhook(self, attempt: str, finished: str | None) -> None:
        """One webhook attempt; ``finished`` is the delivery's final status if it ended."""
        self.webhook_attempts.labels(attempt).inc()
        if finished is not None:
            self.webhook_deliveries.labels(finished).inc()

    # -- exposition ---------------------------------------------------------------------------
    def watch(self, db: Database, clock: Clock) -> None:
        """Add the deployment-wide gauges read from ``db`` at scrape time."""
        self.registry.register(QueueCollector(db, clock))

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (runs the SQLite collector)."""
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST


class QueueCollector(Collector):
    """Deployment-wide gauges from SQLite, computed at each scrape (indexed queries)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time only; no names to check up front

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except database_errors():
            log.warning("metrics: the database could not be read", exc_info=True)
            return []

    def _collect(self) -> Iterator[Metric]:
        db, now = self._db.read(), self._clock.now()
        jobs = GaugeMetricFamily("tapedeck_jobs", "jobs by kind and status", labels=["kind",
                                                                                      "status"])
        for status in QUEUE_GAUGE_STATUSES:
            for kind, count in db.execute("SELECT kind, count(*) FROM jobs WHERE status = ?"
                                          " GROUP BY kind", [status]).fetchall():
                jobs.add_metric([kind, status], count)
        yield jobs
        age = GaugeMetricFamily("tapedeck_job_queue_oldest_age_seconds",
                                "seconds the oldest due queued job has waited", labels=["kind"])
        for kind, oldest in db.execute(
                "SELECT kind, min(run_after) FROM jobs WHERE status = 'queued' AND run_after <= ?"
                " GROUP BY kind", [iso(now)]).fetchall():
            due = parse_iso(oldest)
            age.add_metric([kind], max(0.0, (now - due).total_seconds()) if due else 0.0)
        yield age
        yield from self._recordings(db, now)
        (backlog,) = db.execute("SELECT count(*) FROM jobs WHERE kind = 'live_transcribe'"
                                " AND status IN ('queued', 'running')").fetchone()
        yield GaugeMetricFamily("tapedeck_live_transcription_backlog",
                                "chunks waiting for (or in) live transcription", value=backlog)
        deliveries = GaugeMetricFamily("tapedeck_webhook_deliveries_by_status",
                                       "webhook deliveries pending or failed", labels=["status"])
        for status in ("pending", "failed"):
            (count,) = db.execute("SELECT count(*) FROM webhook_deliveries WHERE status = ?",
                                  [status]).fetchone()
            deliveries.add_metric([status], count)
        yield deliveries

    def _recordings(self, db: Any, now: Any) -> Iterator[Metric]:
        recs = GaugeMetricFamily("tapedeck_recordings", "recordings not yet done, by status",
                                 labels=["status"])
        for status in RECORDING_GAUGE_STATUSES:
            (count,) = db.execute("SELECT count(*) FROM recordings WHERE status = ?",
                                  [status]).fetchone()
            recs.add_metric([status], count)
        yield recs
        (overdue,) = db.execute("SELECT count(*) FROM recordings WHERE status = 'streaming'"
                                " AND expires_at <= ?", [iso(now)]).fetchone()
        yield GaugeMetricFamily("tapedeck_recordings_overdue",
                                "streaming recordings past expires_at not yet expired",
                                value=overdue)


_CAPABILITY_OPERATIONS = {"abort_incomplete_uploads": "abort"}
"""``tapedeck_store_errors_total`` operation label of a capability method (default: its name)."""

class MeteredStore:
    """An ``ObjectStore`` that counts what passes through it: chunk parts stored (and their
    bytes) and ``storage_unavailable`` failures by operation. Everything else is delegated
    unchanged, so it can stand wherever the wrapped store does."""

    def __init__(self, inner: ObjectStore, metrics: Metrics) -> None:
        # Lazy: importing the domain's key layout at module level would make every user of
        # Metrics (tapedeck.runtime included) load the whole domain package.
        from tapedeck.domain.objects import CHUNK_KEY_RE

        self.inner = inner
        self._m = metrics
        self._is_chunk = CHUNK_KEY_RE.match
        # The optional StreamingPut capability, exactly when the wrapped store has it.
        self.put_stream: Callable[..., ObjectInfo] | None = (
            self._put_stream if hasattr(inner, "put_stream") else None)

    def _failed(self, operation: str, exc: TapedeckError) -> None:
        if exc.type == "storage_unavailable":
            self._m.store_errors.labels(operation).inc()

    def put(self, key: str, data: BinaryIO, length: int = -1, *,
            content_type: str = "application/octet-stream",
            content_md5_b64: str | None = None, if_absent: bool = False) -> ObjectInfo:
        try:
            info = self.inner.put(key, data, length, content_type=content_type,
                                  content_md5_b64=content_md5_b64, if_absent=if_absent)
        except TapedeckError as exc:
            self._failed("put", exc)
            raise
        if self._is_chunk(key):
            self._m.chunks.inc()
            self._m.chunk_bytes.inc(info.size)
        return info

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        try:
            return self.inner.open(key, offset, length)
        except TapedeckError as exc:
            self._failed("get", exc)
            raise

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            return self.inner.stat(key)
        except TapedeckError as exc:
            self._failed("stat", exc)
            raise

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            return self.inner.list(prefix)
        except TapedeckError as exc:
            self._failed("list", exc)
            raise

    def delete(self, key: str) -> None:
        try:
            self.inner.delete(key)
        except TapedeckError as exc:
            self._failed("delete", exc)
            raise

    def _put_stream(self, key: str, blocks: Iterable[bytes], length: int,
                    **options: Any) -> ObjectInfo:
        try:
            info: ObjectInfo = self.inner.put_stream(  # type: ignore[attr-defined]
                key, blocks, length, **options)
        except TapedeckError as exc:
            self._failed("put", exc)
            raise
        if self._is_chunk(key):
            self._m.chunks.inc()
            self._m.chunk_bytes.inc(info.size)
        return info

    def __getattr__(self, name: str) -> Any:
        """The optional capabilities of the wrapped store (``tapedeck.infra.store.CAPABILITY_METHODS``)
        and only those it has, so ``isinstance(metered, Presigning)`` holds exactly when it
        holds for ``inner``; their ``storage_unavailable`` failures are counted too."""
        if name not in CAPABILITY_METHODS:
            raise AttributeError(name)
        method = getattr(self.inner, name)
        operation = _CAPABILITY_OPERATIONS.get(name, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except TapedeckError as exc:
                self._failed(operation, exc)
                raise

        return counted


class MetricsServer:
    """``GET /metrics`` of a registry on its own port (processes without the HTTP role)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host,
                                                       registry=metrics.registry)
        self.port: int = self._server.server_port

    def stop(self, grace: float) -> None:
        """Stop serving (scrapes are instant: ``grace`` is not needed)."""
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(max(grace, 1.0))
        self._server.server_close()
