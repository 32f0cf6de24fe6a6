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
from typing import Protocol

from tapedeck.clock import Clock, SystemClock
from tapedeck.db import Database
from tapedeck.domain import Domain
from tapedeck.metrics import MeteredStore, Metrics, MetricsServer
from tapedeck.private import private_dir, tighten_tree
from tapedeck.settings import Settings
from tapedeck.store import ObjectStore
from tapedeck.store.s3 import S3Store
from tapedeck.tls import ServerCertificate, check_transport
from tapedeck.weed import ManagedWeed

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

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> App:
        """Connect to (or start) the store, open the database, build the domain."""
        clock = clock or SystemClock()
        certificate = check_transport(settings)  # before anything starts: a one-line refusal
        private_dir(settings.data_dir)
        tighten_tree(settings.data_dir)  # 0700/0600 also for a data dir made before
        weed = None
        if settings.s3_endpoint:
            endpoint, access, secret = (settings.s3_endpoint, settings.s3_access_key,
                                        settings.s3_secret_key)
        else:
            weed = ManagedWeed(settings.data_dir / "seaweedfs")
            weed.start()
            endpoint, access, secret = weed.endpoint, weed.access_key, weed.secret_key
        s3 = S3Store(endpoint=endpoint, access_key=access, secret_key=secret,
                     bucket=settings.s3_bucket, secure=settings.s3_secure,
                     region=settings.s3_region or "us-east-1")
        s3.ensure_bucket()
        metrics = Metrics()
        store = MeteredStore(s3, metrics)
        db = Database(settings.db_path)
        metrics.watch(db, clock)
        domain = Domain.build(db, store, clock, settings)
        return cls(settings=settings, db=db, store=store, domain=domain, clock=clock, weed=weed,
                   metrics=metrics, certificate=certificate)

    def start(self, roles: Iterable[str]) -> None:
        """Start the given roles (see ``ROLES``)."""
        roles = set(roles)
        if "grpc" in roles:
            from tapedeck.grpc_api.observe import ObservingInterceptor
            from tapedeck.grpc_api.server import build_grpc_server

            server, self.grpc_port = build_grpc_server(
                self.domain, self.settings.host, self.settings.grpc_port,
                interceptors=[ObservingInterceptor(self.metrics)],
                credentials=self.certificate.grpc_credentials() if self.certificate else None)
            self.services.append(server)
        if "http" in roles:
            from tapedeck.gateway import start_gateway

            self.services.append(start_gateway(self))
        if "worker" in roles:
            from tapedeck.worker import start_workers

            self.services.append(start_workers(self))
        if "dispatcher" in roles:
            from tapedeck.webhooks import start_dispatcher

            self.services.append(start_dispatcher(self))
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
        self.db.close()
        if self.weed is not None:
            self.weed.stop()

