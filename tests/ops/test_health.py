"""Readiness follows the checks (issue 16, item 1): gRPC health and ``GET /readyz`` say
NOT_SERVING / 503 + Retry-After while a check fails (the database here) and recover after."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx

from tapedeck.gateway import GatewayServer, bind
from tapedeck.gateway.health import HealthEndpoints
from tapedeck.grpc_api.server import build_grpc_server
from tapedeck.infra.db import Database
from tapedeck.infra.health import Health, database_check
from tapedeck.v1 import recording_pb2  # noqa: F401  # the services the server registers

from grpc_health.v1 import health_pb2, health_pb2_grpc  # isort: skip

from serverkit import RunningServer


def test_readiness_follows_a_failing_database(server: RunningServer, tmp_path: Path) -> None:
    db = Database(tmp_path / "h.db")
    broken = {"now": False}

    def check() -> None:
        if broken["now"]:
            db.close()  # the next query reopens; here a real failure is simulated by closing
            raise RuntimeError("database is locked")
        database_check(db)()

    health = Health({"database": check}, interval_s=3600)
    health.run_once()
    grpc_server, port = build_grpc_server(server.app.domain, "127.0.0.1", 0, health=health)

    async def nothing(scope: object, receive: object, send: object) -> None:
        raise AssertionError("health answers never reach the app")

    gateway = GatewayServer(HealthEndpoints(nothing, health), bind("127.0.0.1", 0))  # type: ignore[arg-type]
    gateway.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    url = f"http://127.0.0.1:{gateway.port}/readyz"
    try:
        assert stub.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert httpx.get(url).json() == {"status": "ready", "checks": {"database": "ok"}}

        broken["now"] = True
        assert health.run_once() is False
        assert stub.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        down = httpx.get(url)
        assert down.status_code == 503 and int(down.headers["Retry-After"]) > 0
        assert down.json()["checks"]["database"].endswith("database is locked")

        broken["now"] = False
        assert health.run_once() is True
        assert stub.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert httpx.get(url).status_code == 200
    finally:
        channel.close()
        gateway.stop(1.0)
        grpc_server.stop(0)
        db.close()
