"""SIGTERM stops as soon as nothing is running (issue 16, item 7): the grace period bounds
unfinished work, it is not a delay. The grace here is an hour; the wait below only bounds a
hang (a server that sat out its grace would fail it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from opskit import spawn
from serverkit import drop_bucket, make_settings


def test_sigterm_after_work_stops_without_waiting_the_grace(weed: Any, tmp_path: Path) -> None:
    settings = make_settings(weed, tmp_path / "data", shutdown_grace_s=3600, log_format="json")
    child = spawn(settings, "serve", tmp_path / "logs")
    try:
        http = httpx.Client(base_url=child.listening["http"])  # a kept-alive connection
        assert http.get("/readyz").status_code == 200
        channel = grpc.insecure_channel(child.listening["grpc"])
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest())  # an open-ended stream
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        assert child.terminate(timeout=120) == 0
        seen = [r.status for r in watch]  # the stream ended (told NOT_SERVING first)
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
        messages = [r["msg"] for r in child.log_records()]
        assert "stopped" in messages
        http.close()
        channel.close()
    finally:
        if child.proc.poll() is None:
            child.kill()
        drop_bucket(weed, settings.s3_bucket)
