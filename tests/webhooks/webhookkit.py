"""Test kit for webhooks: a real HTTP receiver on 127.0.0.1, a recording connector, a fixed
resolver, and a database-backed environment (real SQLite file, real domain service, real
dispatcher) that tests drive with a ``ManualClock``.

Network rule: nothing here ever opens a socket to an address outside 127.0.0.0/8 or ::1.
``RecordingConnector`` records the address the dispatcher chose and then connects to a local
receiver instead, so "public" addresses never see a packet.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tapedeck.auth import Authenticator, Principal, UploadTokens, create_project
from tapedeck.clock import Clock, ManualClock
from tapedeck.domain.context import Context
from tapedeck.domain.events import emit
from tapedeck.domain.webhooks import Webhooks
from tapedeck.infra.db import Database, open_database
from tapedeck.settings import Settings
from tapedeck.webhooks.dispatcher import Dispatcher, RetrySchedule
from tapedeck.webhooks.netguard import (
    IPAddress,
    NetGuard,
    NetPolicy,
    ResolveFailed,
    Resolver,
    SystemConnector,
)
from tapedeck.webhooks.secretbox import SecretBox
from tapedeck.webhooks.transport import GuardedTransport

LOCAL = ipaddress.ip_network("127.0.0.0/8")


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]


class _Server(http.server.ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a listen backlog a dispatcher cannot overflow: the default
    (5) drops the SYNs of a 16-worker round on a loaded machine, and the dropped attempts
    then time out instead of reaching the receiver."""

    request_queue_size = 128


class Receiver:
    """A threaded ``http.server`` on 127.0.0.1 that records requests and answers with
    ``responder(request)`` (default 200). ``port`` may be fixed to come back on the same URL."""

    def __init__(self, port: int = 0,
                 responder: Callable[[Received], Answer] | None = None) -> None:
        self.requests: list[Received] = []
        self.responder = responder or (lambda r: (200, {}, b"ok"))
        self._cond = threading.Condition()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers speak it

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    self.close_connection = True
                    return
                req = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._cond:
                    receiver.requests.append(req)
                    receiver._cond.notify_all()
                status, headers, body = receiver.responder(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.requests), timeout)

    def ids(self) -> list[str]:
        with self._cond:
            return [r.webhook_id for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def dead_port() -> int:
    """A 127.0.0.1 port with nothing listening (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class FixedResolver:
    """Resolves names from a table (no DNS); unknown names fail to resolve."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self.table:
            raise ResolveFailed(f"{host} is not in the test table")
        return [ipaddress.ip_address(a) for a in self.table[host]]


class RecordingConnector:
    """Records every connection the transport asks for. Addresses in 127.0.0.0/8 are
    connected for real; any other address is routed to ``route_to`` (a local port), or
    refused if there is none. So no packet ever leaves the loopback interface."""

    def __init__(self, route_to: int | None = None) -> None:
        self.route_to = route_to
        self.attempts: list[tuple[str, int]] = []
        self._real = SystemConnector()

    def connect(self, ip: IPAddress, port: int, timeout_s: float) -> socket.socket:
        self.attempts.append((str(ip), port))
        if ip.version == 4 and ip in LOCAL:
            return self._real.connect(ip, port, timeout_s)
        if self.route_to is None:
            raise ConnectionRefusedError(f"test connector: {ip} is not reachable here")
        return self._real.connect(ipaddress.ip_address("127.0.0.1"), self.route_to, timeout_s)


@dataclass
class Env:
    """A webhook deployment on a real SQLite file: domain service, principal, dispatchers."""

    tmp: Path
    db: Database
    clock: Clock
    settings: Settings
    webhooks: Webhooks
    principal: Principal
    project_id: str
    api_key: str
    dispatchers: list[Dispatcher] = field(default_factory=list)

    def dispatcher(self, *, resolver: Resolver | None = None, connector: Any = None,
                   allow_private: bool = True, timeout_s: float = 5.0, seed: int = 7,
                   **kw: Any) -> Dispatcher:
        guard = NetGuard(NetPolicy(allow_private=allow_private), resolver)
        d = Dispatcher(self.db, self.clock, SecretBox.from_data_dir(self.settings.data_dir),
                       GuardedTransport(guard, connector), timeout_s=timeout_s,
                       rng=random.Random(seed), schedule=kw.pop("schedule", RetrySchedule()),
                       **kw)
        self.dispatchers.append(d)
        return d

    def emit(self, type: str = "recording.created", n: int = 1, project_id: str | None = None,
             data: dict[str, Any] | None = None) -> list[str]:
        """Append ``n`` events to the outbox in one transaction (as domain code does)."""
        with self.db.write() as tx:
            return [emit(tx, self.clock, project_id or self.project_id, type,
                         data if data is not None else {"n": i}, f"rec_test{i}")
                    for i in range(n)]

    def rows(self, sql: str, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.db.read().execute(sql, args or []).fetchall())

    def advance_to(self, t: datetime) -> None:
        assert isinstance(self.clock, ManualClock)
        self.clock.advance(t - self.clock.now())


@contextmanager
def make_env(tmp: Path, clock: Clock | None = None, target: str | Path | None = None,
             **settings: Any) -> Iterator[Env]:
    """An ``Env`` in ``tmp`` (a project with its secret key; loopback allowed unless
    ``webhooks_allow_private=False``) on the database ``target`` (the ``db_target``
    fixture: SQLite or PostgreSQL; default a SQLite file in ``tmp``)."""
    clock = clock or ManualClock()
    s = Settings(data_dir=tmp / "data", **{"webhooks_allow_private": True, **settings})
    s.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(target if target is not None else s.db_path)
    # The webhook service never touches the object store; there is none in these tests.
    ctx = Context(db=db, store=None, clock=clock, settings=s,  # type: ignore[arg-type]
                  locks=db)
    project_id, key = create_project(db, clock)
    principal = Authenticator(db, UploadTokens.from_data_dir(s.data_dir), clock) \
        .authenticate(key)
    env = Env(tmp, db, clock, s, Webhooks(ctx, SecretBox.from_data_dir(s.data_dir)), principal,
              project_id, key)
    try:
        yield env
    finally:
        for d in env.dispatchers:
            d.stop(grace=2.0)
        db.close()
