"""HTTP POST of one webhook attempt, through the ``NetGuard``.

Contract of ``Transport.post``: returns the receiver's ``Response`` (any status; the caller
decides what counts as success) or raises ``DeliveryFailure`` with a short ``kind``:
``address_refused``, ``dns_error``, ``connection_refused``, ``connection_error``,
``timeout``, ``tls_error`` or ``protocol_error``.

``GuardedTransport`` resolves and checks the host BEFORE any connection is opened, then
connects to the checked IP itself (TLS verifies the certificate against the host name from
the URL). Redirects are never followed: a 3xx is returned like any other status, so a
receiver cannot bounce a delivery to an internal address. The whole attempt (connect, TLS,
send, response head and up to 4 KiB of body) must finish within ``timeout_s``; a watchdog
shuts the socket down at the deadline, so a receiver trickling bytes cannot hold it longer.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
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


class GuardedTransport:
    """The production transport: policy-checked addresses, pinned connections, no redirects."""

    def __init__(self, guard: NetGuard, connector: Connector | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.guard = guard
        self.connector: Connector = connector or SystemConnector()
        self.ssl_context = ssl_context or ssl.create_default_context()

    def post(self, url: str, headers: Mapping[str, str], body: bytes,
             timeout_s: float) -> Response:
        deadline = time.monotonic() + timeout_s
        parts = urlsplit(url)
        host, scheme = parts.hostname or "", parts.scheme.lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise DeliveryFailure("protocol_error", f"bad port in {url!r}") from None
        try:
            addresses = self.guard.addresses(host, port)
        except AddressRefused as exc:
            raise DeliveryFailure("address_refused", str(exc)) from None
        except ResolveFailed as exc:
            raise DeliveryFailure("dns_error", str(exc)) from None
        sock = self._connect(addresses, port, deadline)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _exchange(sock, host, port, scheme, path, headers, body, deadline,
                         self.ssl_context)

    def _connect(self, addresses: list[IPAddress], port: int,
                 deadline: float) -> socket.socket:
        """Connect to the first checked address that accepts."""
        last: DeliveryFailure | None = None
        for ip in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self.connector.connect(ip, port, remaining)
            except ConnectionRefusedError:
                last = DeliveryFailure("connection_refused", f"{ip}:{port} refused the connection")
            except TimeoutError:
                last = DeliveryFailure("timeout", f"connecting to {ip}:{port} timed out")
            except OSError as exc:
                last = DeliveryFailure("connection_error", f"{ip}:{port}: {exc}")
        raise last or DeliveryFailure("timeout", "no time left to connect")


def _exchange(sock: socket.socket, host: str, port: int, scheme: str, path: str,
              headers: Mapping[str, str], body: bytes, deadline: float,
              ssl_context: ssl.SSLContext) -> Response:
    """TLS (for https), then the request and the response head, all before ``deadline``."""
    current = [sock]  # the watchdog must shut the TLS socket once it wraps the TCP one
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, [current])
    watchdog.daemon = True
    watchdog.start()
    conn = http.client.HTTPConnection(host, port)
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        if scheme == "https":
            sock = current[0] = ssl_context.wrap_socket(sock, server_hostname=host)
        conn.sock = sock
        conn.request("POST", path, body=body, headers={
            "content-type": "application/json", "user-agent": USER_AGENT,
            "connection": "close", **headers})
        resp = conn.getresponse()
        data = resp.read(MAX_BODY_READ)
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    except ssl.SSLError as exc:
        raise _late(deadline) or DeliveryFailure("tls_error", str(exc)) from None
    except TimeoutError:
        raise DeliveryFailure("timeout", "no response before the deadline") from None
    except (http.client.HTTPException, OSError) as exc:
        kind = "protocol_error" if isinstance(exc, http.client.HTTPException) \
            else "connection_error"
        raise _late(deadline) or DeliveryFailure(kind, f"{type(exc).__name__}: {exc}") from None
    finally:
        watchdog.cancel()
        conn.close()
        sock.close()


def _late(deadline: float) -> DeliveryFailure | None:
    """A timeout failure if the deadline has passed (the watchdog cut the socket)."""
    if time.monotonic() >= deadline:
        return DeliveryFailure("timeout", "no response before the deadline")
    return None


def _shut(current: list[socket.socket]) -> None:
    with contextlib.suppress(OSError):
        current[0].shutdown(socket.SHUT_RDWR)
