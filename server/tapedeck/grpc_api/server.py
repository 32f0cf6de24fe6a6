"""Builds the gRPC server: services, health checking and reflection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tapedeck.domain import Domain
from tapedeck.grpc_api import devices
from tapedeck.grpc_api import transcriptions as transcription_api
from tapedeck.grpc_api import webhooks as webhook_api
from tapedeck.grpc_api.decode import DecodeGuard
from tapedeck.grpc_api.servicers import ChunkServicer, RecordingServicer
from tapedeck.infra.health import Health
from tapedeck.startup import EXIT_GRPC_PORT, StartupError
from tapedeck.v1 import chunk_pb2, chunk_pb2_grpc, recording_pb2, recording_pb2_grpc

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SERVICE_NAMES = (
    recording_pb2.DESCRIPTOR.services_by_name["RecordingService"].full_name,
    chunk_pb2.DESCRIPTOR.services_by_name["ChunkService"].full_name,
    *webhook_api.SERVICES,
    *devices.SERVICES,
    *transcription_api.SERVICES,
)


def build_grpc_server(domain: Domain, host: str, port: int, max_workers: int = 16,
                      interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
                      credentials: grpc.ServerCredentials | None = None,
                      health: Health | None = None,
                      health_servicer: ClosingHealthServicer | None = None
                      ) -> tuple[grpc.Server, int]:
    """A started gRPC server bound to ``host:port`` (0 = any free port); returns the port.
    ``credentials`` (``tapedeck.infra.tls``) make the port TLS-only; None = plaintext.
    ``interceptors`` wrap every call (``tapedeck.grpc_api.observe``: request ids, metrics);
    innermost, ``DecodeGuard`` refuses undecodable messages with ``invalid_request``.
    ``health`` drives the gRPC health service (SERVING only while it is ready; without it,
    always SERVING). The port is bound exclusively (``grpc.so_reuseport=0``: grpcio would
    otherwise share it with another server); a taken port raises ``StartupError``.
    ``health_servicer``: the health service to register (``GrpcService`` ends its watches
    at shutdown); a new one by default."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[*interceptors, DecodeGuard()],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])
    recording_pb2_grpc.add_RecordingServiceServicer_to_server(RecordingServicer(domain), server)
    chunk_pb2_grpc.add_ChunkServiceServicer_to_server(ChunkServicer(domain), server)
    webhook_api.add_to_server(domain, server)
    devices.add_to_server(domain, server)
    transcription_api.add_to_server(domain, server)
    health_servicer = health_servicer or ClosingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    def publish(ready: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in (*SERVICE_NAMES, ""):
            health_servicer.set(name, status)

    if health is None:
        publish(True)
    else:
        health.watch(publish)
    reflection.enable_server_reflection((*SERVICE_NAMES, grpc_health.SERVICE_NAME,
                                         reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = 0
    if port == 0 or _port_free(host, port):  # checked first: grpc would log a C++ error line
        try:
            bound = (server.add_insecure_port(address) if credentials is None
                     else server.add_secure_port(address, credentials))
        except RuntimeError:  # grpcio raises instead of returning 0 when the port is taken
            bound = 0
    if bound == 0:
        raise StartupError(EXIT_GRPC_PORT, f"cannot listen for gRPC on {host}:{port}: the port "
                           "is taken (another Tapedeck?); stop it or pass another --grpc-port")
    server.start()
    return server, bound


def _port_free(host: str, port: int) -> bool:
    """True if a listener could bind ``host:port`` now (SO_REUSEADDR, as grpc binds, so only a
    live listener counts; never SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ClosingHealthServicer(grpc_health.HealthServicer):
    """The standard health service, plus ``shutdown()``: NOT_SERVING for every service, then
    every open ``Watch`` stream ends (an open-ended stream is not work a graceful stop must
    wait for). A watch ends when its response callback gets None (both the blocking and the
    non-blocking form of ``HealthServicer.Watch``)."""

    def shutdown(self) -> None:
        self.enter_graceful_shutdown()
        with self._lock:
            callbacks = [cb for cbs in self._send_response_callbacks.values() for cb in cbs]
            self._send_response_callbacks.clear()
        for callback in callbacks:
            callback(None)


class GrpcService:
    """A started gRPC server as an ``App`` service: ``stop(grace)`` first ends health
    watches, then lets in-flight RPCs finish for up to ``grace`` s (returns grpc's event,
    set as soon as the last RPC ended)."""

    def __init__(self, server: grpc.Server, health_servicer: ClosingHealthServicer) -> None:
        self.server = server
        self.health_servicer = health_servicer

    def stop(self, grace: float) -> threading.Event:
        self.health_servicer.shutdown()
        return self.server.stop(grace)
