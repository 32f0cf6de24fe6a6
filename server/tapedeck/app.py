"""Assembles a running Tapedeck from ``Settings``: store, database, domain and the process
roles (gRPC API, REST gateway, job workers, webhook dispatcher, sweeper).

Nothing is created at import time; ``App.open`` builds every client from settings, binds
the sockets of the roles that listen, and bundles the clients in the process's ``Runtime``
(``tapedeck.runtime``); ``App.start(roles)`` starts the requested roles, each given the
runtime and what else it needs, never the ``App``. ``tapedeck serve`` starts them all.
Each ``App`` has its own ``Metrics`` registry; the store it hands out is a ``MeteredStore``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tapedeck.clock import Clock, SystemClock
from tapedeck.domain import Domain
from tapedeck.errors import TapedeckError
from tapedeck.infra.db import Database, redact_url
from tapedeck.infra.db import open_database as connect_database
from tapedeck.infra.health import Health, database_check, store_check
from tapedeck.infra.jobs import JobSignals
from tapedeck.infra.metrics import MeteredStore, Metrics, MetricsServer
from tapedeck.infra.private import private_dir, tighten_tree
from tapedeck.infra.sql import database_errors
from tapedeck.infra.store import ObjectStore
from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.supervise import WeedSupervisor
from tapedeck.infra.tls import ServerCertificate
from tapedeck.infra.weed import ManagedWeed, WeedDirInUse, WeedStartError
from tapedeck.runtime import Runtime
from tapedeck.settings import Settings
from tapedeck.startup import (
    EXIT_DATA_DIR,
    EXIT_DATA_DIR_IN_USE,
    EXIT_DATABASE,
    EXIT_STORE,
    StartupError,
    first_line,
)
from tapedeck.validate import check_settings

log = logging.getLogger("tapedeck.app")
ROLES = ("grpc", "http", "worker", "dispatcher", "sweeper")


class Service(Protocol):
    """A long-running part of the process (server, worker pool, dispatcher)."""

    def stop(self, grace: float) -> object:
        """Stop accepting work, finish or hand back in-flight work within ``grace`` s."""
        ...


@dataclass
class App:
    """One Tapedeck process: its ``Runtime`` (the clients its roles share), the domain, and
    the services it runs. ``settings``, ``db``, ``store``, ``clock`` and ``metrics`` are the
    runtime's."""

    runtime: Runtime
    domain: Domain
    weed: ManagedWeed | None = None
    services: list[Service] = field(default_factory=list)
    grpc_port: int | None = None  # set once the role serves (the bound port)
    http_port: int | None = None
    metrics_port: int | None = None
    certificate: ServerCertificate | None = None  # TLS for gRPC and HTTP (None: plaintext)

    supervisor: WeedSupervisor | None = None
    health: Health | None = None
    http_socket: socket.socket | None = None  # bound by ``open``; the http role takes it

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def store(self) -> ObjectStore:
        return self.runtime.store

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None,
             roles: Iterable[str] = ()) -> App:
        """Check every setting (``tapedeck.validate``), connect to (or start) the store, open
        the database, bind the HTTP socket if ``roles`` (those ``start`` will be given)
        include ``http``, then build the runtime and the domain on settings naming the bound
        port (``http_port`` 0 → the real one; chunk upload URLs name it). Every failure of
        these checks is a one-line ``StartupError`` or ``invalid_request`` (see
        ``tapedeck.startup``) and undoes what was started; the managed store is then
        supervised and readiness checks start."""
        clock = clock or SystemClock()
        certificate = check_settings(settings)  # before anything starts: a one-line refusal
        metrics = Metrics()
        checked_data_dir(settings.data_dir)
        private_dir(settings.data_dir)
        tighten_tree(settings.data_dir)  # 0700/0600 also for a data dir made before
        with ExitStack() as undo:
            weed = start_managed_weed(settings) if not settings.s3_endpoint else None
            if weed is not None:
                undo.callback(weed.stop)
            s3 = open_store(settings, weed, clock)
            db = open_database(settings.database_target)
            undo.callback(db.close)
            sock = listen_http(settings) if "http" in set(roles) else None
            if sock is not None:
                undo.callback(sock.close)
                settings = settings.replace(http_port=sock.getsockname()[1])
            metrics.watch(db, clock)
            runtime = Runtime(settings=settings, db=db, store=MeteredStore(s3, metrics),
                              clock=clock, metrics=metrics, job_signals=JobSignals())
            domain = Domain.build(db, runtime.store, clock, settings,
                                  signals=runtime.job_signals)
            undo.pop_all()
        app = cls(runtime=runtime, domain=domain, weed=weed, certificate=certificate,
                  http_socket=sock)
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
        """Start the given roles (see ``ROLES``); ``http`` only if ``open`` was given it.
        Each role's module is imported only when that role runs in this process. Contract:
        ``start_X(runtime, what else it needs) -> Service``, started."""
        roles = set(roles)
        if "grpc" in roles:
            self._start_grpc()
        if "http" in roles:
            self._start_http()
        if "worker" in roles:
            self._start_workers()
        if "dispatcher" in roles:
            self._start_dispatcher()
        if "sweeper" in roles:
            from tapedeck.background.sweeper import start_sweeper

            self.services.append(start_sweeper(self.runtime))
        if "http" not in roles and self.settings.metrics_port:
            exporter = MetricsServer(self.metrics, self.settings.host,
                                     self.settings.metrics_port)
            self.metrics_port = exporter.port
            self.services.append(exporter)

    def _start_grpc(self) -> None:
        from tapedeck.grpc_api.observe import ObservingInterceptor
        from tapedeck.grpc_api.server import ClosingHealthServicer, GrpcService, build_grpc_server

        servicer = ClosingHealthServicer()
        server, self.grpc_port = build_grpc_server(
            self.domain, self.settings.host, self.settings.grpc_port,
            interceptors=[ObservingInterceptor(self.metrics)], health=self.health,
            health_servicer=servicer,
            credentials=self.certificate.grpc_credentials() if self.certificate else None)
        self.services.append(GrpcService(server, servicer))

    def _start_http(self) -> None:
        from tapedeck.gateway import start_gateway

        if self.http_socket is None:
            raise ValueError("the http role serves the socket App.open binds: pass "
                             "roles=[..., 'http'] to App.open")
        sock, self.http_socket = self.http_socket, None
        server = start_gateway(self.runtime, self.domain, sock, health=self.health,
                               certificate=self.certificate)
        self.services.append(server)
        self.http_port = server.port

    def _start_workers(self) -> None:
        from tapedeck.background.worker import start_workers
        from tapedeck.infra.jobs import JOBS_CHANNEL
        from tapedeck.infra.wakeup import listen_for_wakeups

        pool = start_workers(self.runtime)  # PostgreSQL: enqueues on any host wake it (NOTIFY)
        self.services.append(listen_for_wakeups(
            self.db, {JOBS_CHANNEL: lambda kind: pool.wake(kind or None)}))
        self.services.append(pool)

    def _start_dispatcher(self) -> None:
        from tapedeck.infra.wakeup import listen_for_wakeups
        from tapedeck.webhooks.role import start_dispatcher

        # PostgreSQL: new events wake it (NOTIFY)
        dispatcher = start_dispatcher(self.runtime, self.domain.secret_box)
        self.services.append(listen_for_wakeups(
            self.db, {"tapedeck_outbox": lambda _payload: dispatcher.wake()}))
        self.services.append(dispatcher)

    def close(self, grace: float = 10.0) -> None:
        """Stop every service (newest first), then the database and the managed store."""
        while self.services:
            stopped = self.services.pop().stop(grace)
            if isinstance(stopped, threading.Event):  # grpc.Server.stop: in-flight RPCs end
                stopped.wait(grace + 1.0)
        if self.http_socket is not None:  # bound but never served
            self.http_socket.close()
            self.http_socket = None
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


def open_store(settings: Settings, weed: ManagedWeed | None, clock: Clock) -> S3Store:
    """The S3 store of ``settings`` (the managed ``weed`` when given), its bucket checked;
    presigned URLs are signed at ``clock``'s time (the store checks their expiry itself)."""
    if weed is not None:
        endpoint, access, secret = weed.endpoint, weed.access_key, weed.secret_key
    else:
        endpoint, access, secret = (settings.s3_endpoint, settings.s3_access_key,
                                    settings.s3_secret_key)
    s3 = S3Store(endpoint=endpoint, access_key=access, secret_key=secret,
                 bucket=settings.s3_bucket, secure=settings.s3_secure,
                 region=settings.s3_region or "us-east-1", clock=clock.now)
    checked_bucket(s3, endpoint)
    return s3


def listen_http(settings: Settings) -> socket.socket:
    """The REST gateway's socket on ``host:http_port`` (``tapedeck.gateway.listen``)."""
    from tapedeck.gateway import listen

    return listen(settings.host, settings.http_port)


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
