"""Assembles a running Tapedeck from ``Settings``: store, database, domain and the process
roles (gRPC API, REST gateway, job workers, webhook dispatcher, sweeper).

Nothing is created at import time; ``App.open`` builds every client from settings, and
``App.start(roles)`` starts the requested roles. ``tapedeck serve`` starts them all.
Each ``App`` has its own ``Metrics`` registry; the store it hands out is a ``MeteredStore``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tapedeck.clock import Clock, SystemClock
from tapedeck.db import Database, redact_url
from tapedeck.db import open_database as connect_database
from tapedeck.domain import Domain
from tapedeck.errors import TapedeckError
from tapedeck.health import Health, database_check, store_check
from tapedeck.metrics import MeteredStore, Metrics, MetricsServer
from tapedeck.private import private_dir, tighten_tree
from tapedeck.server_keys import check_secret_key
from tapedeck.settings import Settings
from tapedeck.sql import database_errors
from tapedeck.startup import (
    EXIT_DATA_DIR,
    EXIT_DATA_DIR_IN_USE,
    EXIT_DATABASE,
    EXIT_STORE,
    StartupError,
    first_line,
)
from tapedeck.store import ObjectStore
from tapedeck.store.s3 import S3Store
from tapedeck.supervise import WeedSupervisor
from tapedeck.tls import ServerCertificate, check_transport
from tapedeck.weed import ManagedWeed, WeedDirInUse, WeedStartError

log = logging.getLogger("tapedeck.app")
ROLES = ("grpc", "http", "worker", "dispatcher", "sweeper")


class Service(Protocol):
    """A long-running part of the process (server, worker pool, dispatcher)."""

    def stop(self, grace: float) -> object:
        """Stop accepting work, finish or hand back in-flight work within ``grace`` s."""
        ...


@dataclass
class App:
    """One Tapedeck process: shared clients plus the services it runs."""

    settings: Settings
    db: Database
    store: ObjectStore
    domain: Domain
    clock: Clock
    weed: ManagedWeed | None = None
    metrics: Metrics = field(default_factory=Metrics)
    services: list[Service] = field(default_factory=list)
    grpc_port: int | None = None
    http_port: int | None = None
    metrics_port: int | None = None
    certificate: ServerCertificate | None = None  # TLS for gRPC and HTTP (None: plaintext)

    supervisor: WeedSupervisor | None = None
    health: Health | None = None

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> App:
        """Connect to (or start) the store, open the database, build the domain. Every
        failure of these checks is a one-line ``StartupError`` (see ``tapedeck.startup``);
        the managed store is then supervised and readiness checks start."""
        clock = clock or SystemClock()
        certificate = check_transport(settings)  # before anything starts: a one-line refusal
        check_secret_key(settings)  # likewise (exit code 2)
        metrics = Metrics()
        checked_data_dir(settings.data_dir)
        private_dir(settings.data_dir)
        tighten_tree(settings.data_dir)  # 0700/0600 also for a data dir made before
        weed = start_managed_weed(settings) if not settings.s3_endpoint else None
        try:
            if weed is not None:
                endpoint, access, secret = weed.endpoint, weed.access_key, weed.secret_key
            else:
                endpoint, access, secret = (settings.s3_endpoint, settings.s3_access_key,
                                            settings.s3_secret_key)
            s3 = S3Store(endpoint=endpoint, access_key=access, secret_key=secret,
                         bucket=settings.s3_bucket, secure=settings.s3_secure,
                         region=settings.s3_region or "us-east-1")
            checked_bucket(s3, endpoint)
            store = MeteredStore(s3, metrics)
            db = open_database(settings.database_target)
        except BaseException:
            if weed is not None:
                weed.stop()
            raise
        metrics.watch(db, clock)
        domain = Domain.build(db, store, clock, settings)
        app = cls(settings=settings, db=db, store=store, domain=domain, clock=clock, weed=weed,
                  metrics=metrics, certificate=certificate)
        app._watch(s3)
        return app

    def _watch(self, s3: ObjectStore) -> None:
        """Supervise the managed store; run the store and database readiness checks."""
        alive = None
        if self.weed is not None:
            self.supervisor = WeedSupervisor(
                self.weed, self.metrics,
                max_backoff_s=float(self.settings.store_restart_max_s)).start()
            alive = lambda: self.supervisor is not None and self.supervisor.up  # noqa: E731
        self.health = Health({"store": store_check(s3, alive),
                              "database": database_check(self.db)}).start()

    def start(self, roles: Iterable[str]) -> None:
        """Start the given roles (see ``ROLES``)."""
        roles = set(roles)
        if "grpc" in roles:
            from tapedeck.grpc_api.observe import ObservingInterceptor
            from tapedeck.grpc_api.server import (
                ClosingHealthServicer,
                GrpcService,
                build_grpc_server,
            )

            servicer = ClosingHealthServicer()
            server, self.grpc_port = build_grpc_server(
                self.domain, self.settings.host, self.settings.grpc_port,
                interceptors=[ObservingInterceptor(self.metrics)], health=self.health,
                health_servicer=servicer,
                credentials=self.certificate.grpc_credentials() if self.certificate else None)
            self.services.append(GrpcService(server, servicer))
        if "http" in roles:
            from tapedeck.gateway import start_gateway

            self.services.append(start_gateway(self))
        if "worker" in roles:
            from tapedeck.jobs import JOBS_CHANNEL
            from tapedeck.wakeup import listen_for_wakeups
            from tapedeck.worker import start_workers

            pool = start_workers(self)  # PostgreSQL: enqueues on any host wake it (NOTIFY)
            self.services.append(listen_for_wakeups(
                self.db, {JOBS_CHANNEL: lambda kind: pool.wake(kind or None)}))
            self.services.append(pool)
        if "dispatcher" in roles:
            from tapedeck.wakeup import listen_for_wakeups
            from tapedeck.webhooks.role import start_dispatcher

            dispatcher = start_dispatcher(self)  # PostgreSQL: new events wake it (NOTIFY)
            self.services.append(listen_for_wakeups(
                self.db, {"tapedeck_outbox": lambda _payload: dispatcher.wake()}))
            self.services.append(dispatcher)
        if "sweeper" in roles:
            from tapedeck.sweeper import start_sweeper

            self.services.append(start_sweeper(self))
        if "http" not in roles and self.settings.metrics_port:
            exporter = MetricsServer(self.metrics, self.settings.host,
                                     self.settings.metrics_port)
            self.metrics_port = exporter.port
            self.services.append(exporter)
        # Each role's module is imported only when that role runs in this process.
        # Contract: start_X(app) -> Service, started; it may set app.http_port.

    def close(self, grace: float = 10.0) -> None:
        """Stop every service (newest first), then the database and the managed store."""
        while self.services:
            stopped = self.services.pop().stop(grace)
            if isinstance(stopped, threading.Event):  # grpc.Server.stop: in-flight RPCs end
                stopped.wait(grace + 1.0)
        if self.health is not None:
            self.health.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        self.db.close()
        if self.weed is not None:
            self.weed.stop()



# -- startup checks (rob): each failure is one line and its own exit code -------------------


def checked_data_dir(path: Path) -> None:
    """Create the data dir if needed and check that it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(EXIT_DATA_DIR, f"cannot use data dir {path}: {exc.strerror or exc}; "
                           "fix its permissions or pass another --data-dir") from None


def start_managed_weed(settings: Settings) -> ManagedWeed:
    """Start the embedded SeaweedFS of ``settings.data_dir`` (a stale one left by a killed
    Tapedeck is waited for or ended; a live owner is ``EXIT_DATA_DIR_IN_USE``)."""
    weed = ManagedWeed(settings.data_dir / "seaweedfs")
    try:
        weed.start()
    except WeedDirInUse as exc:
        raise StartupError(EXIT_DATA_DIR_IN_USE, f"data dir {settings.data_dir.resolve()} is "
                           f"in use: {first_line(exc)}") from None
    except WeedStartError as exc:
        raise StartupError(EXIT_STORE, f"the managed SeaweedFS did not start: "
                           f"{first_line(exc)} (see {weed.log_path})") from None
    return weed


def checked_bucket(s3: S3Store, endpoint: str) -> None:
    """Make sure the bucket exists; an unreachable or refusing store is ``EXIT_STORE``."""
    try:
        s3.ensure_bucket()
    except TapedeckError as exc:
        raise StartupError(EXIT_STORE, f"the object store at {endpoint} does not answer "
                           f"({exc.details.get('reason', exc.type)}: {exc.message}); check "
                           "TAPEDECK_S3_ENDPOINT and its credentials") from None


def open_database(path: Path | str) -> Database:
    """Open (and migrate) the database (SQLite file or PostgreSQL URL); failures are
    ``EXIT_DATABASE``."""
    failures: tuple[type[BaseException], ...] = (*database_errors(), OSError)
    try:
        return connect_database(path)
    except failures as exc:
        shown = redact_url(str(path))
        raise StartupError(EXIT_DATABASE, f"cannot open the database {shown}: "
                           f"{first_line(exc)}") from None
