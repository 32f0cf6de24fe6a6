"""TLS for the gRPC and HTTP ports from ``TAPEDECK_TLS_CERT_FILE``/``TAPEDECK_TLS_KEY_FILE``,
reloaded without a restart when the files change.

- ``ServerCertificate(cert_file, key_file)`` reads the PEM pair (a chain is fine) and checks
  that it loads; ``current()`` re-reads it when either file's (mtime, size, inode) changed
  and the new pair loads, else keeps serving the last good pair (a half-rotated pair —
  new certificate, old key — is retried at the next handshake and logged once).
- gRPC: ``grpc_credentials()`` is ``grpc.dynamic_ssl_server_credentials`` whose fetcher
  runs before every new connection's handshake.
- HTTP (uvicorn): ``ssl_context()`` is a server ``SSLContext`` whose ``sni_callback`` (called
  on every ClientHello, with or without SNI) swaps in the context of the current pair.
- ``check_transport(settings)``: plaintext only on a loopback host, unless
  ``allow_plaintext`` (a TLS-terminating proxy in front); else a one-line error at start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from tapedeck.errors import invalid
from tapedeck.settings import Settings

log = logging.getLogger("tapedeck.infra.tls")


@dataclass(frozen=True)
class _Pair:
    signature: tuple[tuple[int, int, int], ...]
    cert_pem: bytes
    key_pem: bytes
    context: ssl.SSLContext


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class ServerCertificate:
    """The server's certificate and key files, re-read when they change (module doc)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._lock = threading.Lock()
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        try:
            self._pair = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise invalid("tls_cert_file", f"cannot load TLS_CERT_FILE={self.cert_file} with "
                          f"TLS_KEY_FILE={self.key_file}: {exc}") from None
        self.reloads = 0

    def _load(self) -> _Pair:
        signature = _signature(self.cert_file, self.key_file)
        cert_pem, key_pem = self.cert_file.read_bytes(), self.key_file.read_bytes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)  # raises on a mismatch
        if signature != _signature(self.cert_file, self.key_file):
            raise ValueError("the files changed while being read")
        return _Pair(signature, cert_pem, key_pem, context)

    def current(self) -> _Pair:
        """The pair in force, reloaded first if the files changed and load."""
        with self._lock:
            try:
                signature = _signature(self.cert_file, self.key_file)
            except OSError:
                return self._pair  # mid-rotation (a file briefly missing): keep the old one
            if signature == self._pair.signature or signature == self._failed:
                return self._pair
            try:
                self._pair = self._load()
                self.reloads += 1
                self._failed = None
                log.info("reloaded the TLS certificate from %s", self.cert_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._failed = signature
                log.warning("TLS certificate files changed but do not load (%s); still "
                            "serving the previous certificate", exc)
            return self._pair

    # -- gRPC --------------------------------------------------------------------------
    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up a changed pair before each new connection."""
        first = self.current()
        served = [first.signature]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            pair = self.current()
            if pair.signature == served[0]:
                return None
            served[0] = pair.signature
            return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)])

        initial = grpc.ssl_server_certificate_configuration([(first.key_pem, first.cert_pem)])
        # None from the fetcher means "no change" (grpc docs); the stub does not allow it.
        return grpc.dynamic_ssl_server_credentials(initial, fetch)  # type: ignore[arg-type]

    # -- HTTP --------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """A server context that hands each handshake to the current pair's context."""
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        base.load_cert_chain(self.cert_file, self.key_file)

        def swap(sock: ssl.SSLObject | ssl.SSLSocket, _name: str | None,
                 _ctx: ssl.SSLContext) -> None:
            sock.context = self.current().context

        base.sni_callback = swap
        return base


def server_certificate(settings: Settings) -> ServerCertificate | None:
    """The configured certificate (None: plaintext); ``invalid_request`` when only one of
    the two files is set or they do not load."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "tls_key_file" if cert else "tls_cert_file"
        raise invalid(missing, "Set both TAPEDECK_TLS_CERT_FILE and TAPEDECK_TLS_KEY_FILE.")
    return ServerCertificate(Path(cert), Path(key))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(settings: Settings) -> ServerCertificate | None:
    """The certificate to serve with, or None for plaintext, which only a loopback host (or
    ``allow_plaintext``) gets; raises a one-line ``invalid_request`` otherwise."""
    certificate = server_certificate(settings)
    if certificate is None and not is_loopback(settings.host) and not settings.allow_plaintext:
        raise invalid("tls_cert_file",
                      f"Refusing to serve plaintext on {settings.host}: set "
                      "TAPEDECK_TLS_CERT_FILE and TAPEDECK_TLS_KEY_FILE, or "
                      "TAPEDECK_ALLOW_PLAINTEXT=true behind a TLS-terminating proxy.")
    return certificate


__all__ = ["ServerCertificate", "check_transport", "is_loopback",
           "server_certificate"]
