"""Builds the gRPC server: services, health checking and reflection."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tapedeck.domain import Domain
from tapedeck.grpc_api import devices
from tapedeck.grpc_api import transcriptions as transcription_api
from tapedeck.grpc_api import webhooks as webhook_api
from tapedeck.grpc_api.decode import DecodeGuard
from tapedeck.grpc_api.servicers import ChunkServicer, RecordingServicer
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
                      ) -> tuple[grpc.Server, int]:
    """A started gRPC server bound to ``host:port`` (0 = any free port); returns the port.
    ``credentials`` (``tapedeck.tls``) make the port TLS-only; None = plaintext.
    ``interceptors`` wrap every call (``tapedeck.grpc_api.observe``: request ids, metrics);
    innermost, ``DecodeGuard`` refuses undecodable messages with ``invalid_request``."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[*interceptors, DecodeGuard()],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    recording_pb2_grpc.add_RecordingServiceServicer_to_server(RecordingServicer(domain), server)
    chunk_pb2_grpc.add_ChunkServiceServicer_to_server(ChunkServicer(domain), server)
    webhook_api.add_to_server(domain, server)
    devices.add_to_server(domain, server)
    transcription_api.add_to_server(domain, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME,
                                         reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = (server.add_insecure_port(address) if credentials is None
             else server.add_secure_port(address, credentials))
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return server, bound
