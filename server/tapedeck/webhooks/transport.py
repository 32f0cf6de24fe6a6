"""HTTP POST of one webhook attempt, through the ``NetGuard``, over kept-alive connections.

Contract of ``Transport.post``: returns the receiver's ``Response`` (any status; the caller
decides what counts as success) or raises ``DeliveryFailure`` with a short ``kind``:
``address_refused``, ``dns_error``, ``connection_refused``, ``connection_error``,
``timeout``, ``tls_error`` or ``protocol_error``. ``post`` may be called from many threads.

``GuardedTransport`` resolves and checks the host BEFORE any connection is opened, then
connects to the checked IP itself (TLS verifies the certificate against the host name from
the URL). Redirects are never followed: a 3xx is returned like any other status, so a
receiver cannot bounce a delivery to an internal address. The whole attempt (connect, TLS,
send, response head and up to 4 KiB of body) must finish within ``timeout_s``; a watchdog
shuts the socket down at the deadline, so a receiver trickling bytes cannot hold it longer.

Keep-alive (HTTP/1.1): after a complete exchange the connection goes back to an idle pool
keyed by (scheme, host, port) for up to ``keepalive_s`` seconds, unless the receiver said
``Connection: close`` or its body was longer than what we read. A kept connection stays
pinned to the address that was checked when it was opened (it is never redirected to another
address); a new connection is checked again. A kept connection the receiver closed while it
was idle is detected before use (readable socket) or, if the request fails on it before any
response byte, the attempt is retried once on a fresh connection (webhooks are
at-least-once, with the same ``webhook-id``, so a receiver sees at most a duplicate).
``keepalive_s=0`` closes every connection after its attempt.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from tapedeck.webhooks.netguard import (
    AddressRefused,
    Connector,
    IPAddress,
    NetGuard,
    ResolveFailed,
    SystemConnector,
)

USER_AGENT = "Tapedeck-Webhooks/1.0"
MAX_BODY_READ = 4096
MAX_IDLE_PER_ORIGIN = 64

Origin = tuple[str, str, int]  # scheme, host, port


@dataclass(frozen=True)
class Response:
    """What the receiver answered: status, headers (lower-case names), start of the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class DeliveryFailure(Exception):
    """An attempt that got no HTTP response; ``kind`` classifies why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Transport(Protocol):
    """Sends one webhook request."""

    def post(self, url: str, headers: Mapping[str, str], body: bytes,
             timeout_s: float) -> Response:
        """POST ``body`` to ``url``; ``DeliveryFailure`` if no response arrived."""
        ...


class _Stale(Exception):
    """A kept-alive connection turned out closed before any response byte arrived."""


@dataclass(eq=False)
class _Conn:
    """One open connection: its ``http.client`` object, the checked address it is pinned
    to, and when it was last put back idle."""

    http: http.client.HTTPConnection
    ip: IPAddress
    idle_since: float = 0.0
    reused: bool = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.http.close()


@dataclass(order=True)
class _Alarm:
    deadline: float
    seq: int
    sock: socket.socket | None = field(compare=False)


class _Watchdog:
    """One thread that shuts sockets down at their deadlines (instead of a timer thread
    per attempt). ``arm`` returns an alarm; ``disarm`` cancels it."""

    def __init__(self) -> None:
        self._heap: list[_Alarm] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, sock: socket.socket) -> _Alarm:
        alarm = _Alarm(deadline, next(self._seq), sock)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webhook-watchdog",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, alarm)
            if self._heap[0] is alarm:
                self._cond.notify()
        return alarm

    def retarget(self, alarm: _Alarm, sock: socket.socket) -> None:
        """Shut ``sock`` (e.g. the TLS socket wrapping the armed one) at the deadline."""
        with self._cond:
            if alarm.sock is not None:
                alarm.sock = sock

    def disarm(self, alarm: _Alarm) -> None:
        with self._cond:
            alarm.sock = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0].sock is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0].deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(self._heap)
                sock, alarm.sock = alarm.sock, None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class GuardedTransport:
    """The production transport: policy-checked addresses, pinned kept-alive connections,
    no redirects."""

    def __init__(self, guard: NetGuard, connector: Connector | None = None,
                 ssl_context: ssl.SSLContext | None = None, *,
                 keepalive_s: float = 30.0) -> None:
        self.guard = guard
        self.connector: Connector = connector or SystemConnector()
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.keepalive_s = keepalive_s
        self._idle: dict[Origin, list[_Conn]] = {}
        self._lock = threading.Lock()
        self._watchdog = _Watchdog()

    def post(self, url: str, headers: Mapping[str, str], body: bytes,
             timeout_s: float) -> Response:
        deadline = time.monotonic() + timeout_s
        parts = urlsplit(url)
        host, scheme = parts.hostname or "", parts.scheme.lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise DeliveryFailure("protocol_error", f"bad port in {url!r}") from None
        origin = (scheme, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = self._checkout(origin)
        if kept is not None:
            try:
                return self._exchange(kept, origin, path, headers, body, deadline)
            except _Stale:
                pass  # closed by the receiver while idle: one fresh connection
        conn = self._open(origin, deadline)
        try:
            return self._exchange(conn, origin, path, headers, body, deadline)
        except _Stale:
            raise DeliveryFailure("connection_error",
                                  "the receiver closed the connection without answering"
                                  ) from None

    def close(self) -> None:
        """Close every idle kept-alive connection."""
        with self._lock:
            conns = [c for lst in self._idle.values() for c in lst]
            self._idle.clear()
        for conn in conns:
            conn.close()

    # -- pool ---------------------------------------------------------------------------------
    def _checkout(self, origin: Origin) -> _Conn | None:
        """An idle connection to ``origin`` that is still open, else None."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                conn = idle.pop()
            if now - conn.idle_since < self.keepalive_s and _still_open(conn):
                conn.reused = True
                return conn
            conn.close()

    def _checkin(self, origin: Origin, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    # -- connect ------------------------------------------------------------------------------
    def _open(self, origin: Origin, deadline: float) -> _Conn:
        """Resolve, check, connect to the first checked address that accepts, TLS."""
        scheme, host, port = origin
        try:
            addresses = self.guard.addresses(host, port)
        except AddressRefused as exc:
            raise DeliveryFailure("address_refused", str(exc)) from None
        except ResolveFailed as exc:
            raise DeliveryFailure("dns_error", str(exc)) from None
        sock, ip = self._connect(addresses, port, deadline)
        alarm = self._watchdog.arm(deadline, sock)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            if scheme == "https":
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host,
                                                    do_handshake_on_connect=False)
                self._watchdog.retarget(alarm, sock)  # the TCP socket object is detached
                sock.do_handshake()
        except ssl.SSLError as exc:
            sock.close()
            raise _late(deadline) or DeliveryFailure("tls_error", str(exc)) from None
        except TimeoutError:
            sock.close()
            raise DeliveryFailure("timeout", "no TLS handshake before the deadline") from None
        except OSError as exc:
            sock.close()
            raise _late(deadline) or DeliveryFailure(
                "connection_error", f"{type(exc).__name__}: {exc}") from None
        finally:
            self._watchdog.disarm(alarm)
        conn = http.client.HTTPConnection(host, port)
        conn.sock = sock
        return _Conn(conn, ip)

    def _connect(self, addresses: list[IPAddress], port: int,
                 deadline: float) -> tuple[socket.socket, IPAddress]:
        last: DeliveryFailure | None = None
        for ip in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self.connector.connect(ip, port, remaining), ip
            except ConnectionRefusedError:
                last = DeliveryFailure("connection_refused", f"{ip}:{port} refused the connection")
            except TimeoutError:
                last = DeliveryFailure("timeout", f"connecting to {ip}:{port} timed out")
            except OSError as exc:
                last = DeliveryFailure("connection_error", f"{ip}:{port}: {exc}")
        raise last or DeliveryFailure("timeout", "no time left to connect")

    # -- exchange -----------------------------------------------------------------------------
    def _exchange(self, conn: _Conn, origin: Origin, path: str, headers: Mapping[str, str],
                  body: bytes, deadline: float) -> Response:
        """The request and the response head (and up to 4 KiB of body) before ``deadline``;
        the connection goes back to the pool if it can carry another request."""
        sock = conn.http.sock
        assert sock is not None
        alarm = self._watchdog.arm(deadline, sock)
        keep = False
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            conn.http.request("POST", path, body=body, headers={
                "content-type": "application/json", "user-agent": USER_AGENT,
                **({} if self.keepalive_s > 0 else {"connection": "close"}), **headers})
            resp = conn.http.getresponse()
            data = resp.read(MAX_BODY_READ)
            keep = self.keepalive_s > 0 and resp.isclosed() and conn.http.sock is not None
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if conn.reused and time.monotonic() < deadline:
                raise _Stale() from None
            raise _late(deadline) or DeliveryFailure(
                "connection_error", "the receiver closed the connection without answering"
            ) from None
        except ssl.SSLError as exc:
            raise _late(deadline) or DeliveryFailure("tls_error", str(exc)) from None
        except TimeoutError:
            raise DeliveryFailure("timeout", "no response before the deadline") from None
        except (http.client.HTTPException, OSError) as exc:
            kind = "protocol_error" if isinstance(exc, http.client.HTTPException) \
                else "connection_error"
            raise _late(deadline) or DeliveryFailure(kind, f"{type(exc).__name__}: {exc}") \
                from None
        finally:
            self._watchdog.disarm(alarm)
            if keep and time.monotonic() < deadline:
                self._checkin(origin, conn)
            else:
                conn.close()


def _still_open(conn: _Conn) -> bool:
    """An idle connection is usable if the receiver has sent nothing (no EOF, no stray
    bytes) since its last response."""
    sock = conn.http.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _late(deadline: float) -> DeliveryFailure | None:
    """A timeout failure if the deadline has passed (the watchdog cut the socket)."""
    if time.monotonic() >= deadline:
        return DeliveryFailure("timeout", "no response before the deadline")
    return None
