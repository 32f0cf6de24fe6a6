"""The managed object store is supervised (issue 16, item 1 and the Must-show kill and restart
loop tests): a killed ``weed`` comes back by itself, health follows it, devices are told 503
with ``Retry-After`` meanwhile and no acknowledged chunk is lost; a killed ``tapedeck serve``
can be started again at once, every time."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from minio import Minio

from tapedeck.infra.metrics import Metrics
from tapedeck.infra.supervise import WeedSupervisor
from tapedeck.infra.weed import ManagedWeed, find_weed_binary
from tapedeck.settings import Settings

from opskit import Child, md5_b64, spawn, stop_all, wait_until
from serverkit import RunningServer, start_server
from stitchkit import continuous_chunks

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _client(weed: ManagedWeed) -> Minio:
    return Minio(weed.endpoint, weed.access_key, weed.secret_key, secure=False,
                 region="us-east-1")


def test_supervisor_restarts_a_killed_weed_and_counts_it(tmp_path: Path) -> None:
    metrics = Metrics()
    with ManagedWeed(tmp_path / "w") as weed:
        client = _client(weed)
        client.make_bucket("kept")
        client.put_object("kept", "k", io.BytesIO(b"acknowledged"), 12)
        sup = WeedSupervisor(weed, metrics, poll_s=0.05).start()
        try:
            first = weed.pid
            assert first is not None and sup.up
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: sup.restarts == 1 and weed.running, 60, "the restart")
            assert weed.pid != first and sup.up
            assert _client(weed).get_object("kept", "k").read() == b"acknowledged"
            assert metrics.registry.get_sample_value(
                "tapedeck_store_restarts_total", {"outcome": "ok"}) == 1.0
        finally:
            sup.stop()


def test_failed_restarts_back_off_and_are_counted_until_one_works(tmp_path: Path) -> None:
    """A weed that cannot start (here: a wrapper that refuses while a flag file exists) is
    retried with backoff, each failure counted, until it starts again."""
    flag = tmp_path / "broken"
    wrapper = tmp_path / "weed"
    wrapper.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then echo 'disk on fire'; exit 3; fi\n"
                       f"exec {find_weed_binary()} \"$@\"\n")
    wrapper.chmod(0o755)
    metrics = Metrics()
    with ManagedWeed(tmp_path / "w", binary=str(wrapper)) as weed:
        sup = WeedSupervisor(weed, metrics, poll_s=0.05, max_backoff_s=1.0).start()
        try:
            flag.write_text("")
            os.kill(weed.pid or 0, signal.SIGKILL)

            def failed() -> float:
                return metrics.registry.get_sample_value(
                    "tapedeck_store_restarts_total", {"outcome": "failed"}) or 0.0

            wait_until(lambda: failed() >= 2, 60, "two failed restarts")
            assert not sup.up and sup.restarts == 0
            flag.unlink()
            wait_until(lambda: sup.restarts == 1 and sup.up, 60, "the restart")
        finally:
            sup.stop()


def test_a_stale_weed_of_a_killed_owner_is_ended_not_fatal(tmp_path: Path) -> None:
    """A weed whose Tapedeck died still holds weed.lock: the next start waits for it or ends
    it (its pid is recorded) instead of failing."""
    data = tmp_path / "w"
    # An owner process that starts weed without die-with-parent, then is SIGKILLed.
    code = ("import sys, time\nfrom tapedeck.infra.weed import ManagedWeed\n"
            f"w = ManagedWeed({str(data)!r}, die_with_parent=False)\nw.start()\n"
            "print(w.pid, flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    stale = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    assert Path(f"/proc/{stale}").exists()  # still alive, still holding the lock
    with ManagedWeed(data, stale_wait=2.0) as again:
        assert again.running and again.pid != stale
    assert not _alive(stale)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[RunningServer]:
    """An in-process Tapedeck with its OWN managed store (not the session's)."""
    settings = Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, max_chunks=1000)
    srv = start_server(settings, roles=("grpc", "http"))
    try:
        yield srv
    finally:
        srv.close()


class HealthWatch:
    """Every status the gRPC health service streams (``Watch``), in order."""

    def __init__(self, target: str) -> None:
        self.statuses: list[int] = []
        self._channel = grpc.insecure_channel(target)
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for resp in self._stream:
                self.statuses.append(resp.status)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


def test_kill_the_managed_store_under_load(managed: RunningServer) -> None:
    srv = managed
    assert srv.app.weed is not None and srv.app.supervisor is not None
    watch = HealthWatch(srv.grpc_target)
    auth = {"Authorization": f"Bearer {srv.api_key}"}
    rec = httpx.post(f"{srv.http_url}/v1/recordings", json={"streaming": True},
                     headers=auth).json()
    chunks = continuous_chunks(20.0, 500)
    acked: dict[int, str] = {}
    refusals: list[httpx.Response] = []
    readiness: list[int] = []
    killed = threading.Event()

    def upload() -> None:
        with httpx.Client(timeout=60.0) as c:
            for part, chunk in enumerate(chunks, start=1):
                url = rec["chunk_upload_url_template"].replace("{part}", str(part))
                while True:
                    resp = c.put(url, content=chunk.data,
                                 headers={"Content-MD5": md5_b64(chunk.data)})
                    if resp.status_code in (200, 201):
                        acked[part] = resp.json()["md5"]
                        break
                    refusals.append(resp)
                    readiness.append(c.get(f"{srv.http_url}/readyz").status_code)
                    killed.wait(0.05)
                if part == 5:
                    os.kill(srv.app.weed.pid or 0, signal.SIGKILL)  # type: ignore[union-attr]
                    killed.set()

    uploader = threading.Thread(target=upload)
    uploader.start()
    uploader.join(180)
    assert not uploader.is_alive()
    wait_until(lambda: watch.statuses and watch.statuses[-1] == SERVING, 60, "SERVING again")
    watch.close()

    assert srv.app.supervisor.restarts == 1
    # Health: SERVING, NOT_SERVING while the store was down, SERVING after.
    assert watch.statuses[0] == SERVING and NOT_SERVING in watch.statuses
    assert watch.statuses.index(NOT_SERVING) < len(watch.statuses) - 1
    # Devices were told to come back later, with Retry-After.
    assert refusals, "no request hit the outage"
    for resp in refusals:
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["type"] == "storage_unavailable"
        assert int(resp.headers["Retry-After"]) > 0
    assert 503 in readiness
    assert httpx.get(f"{srv.http_url}/readyz").json()["status"] == "ready"
    # No acknowledged chunk lost: the store lists every one with the acknowledged MD5.
    listing = httpx.get(f"{srv.http_url}/v1/recordings/{rec['id']}/chunks", headers=auth).json()
    stored = {c["part"]: c["md5"] for c in listing["data"]}
    assert stored == acked and len(acked) == len(chunks)
    assert all(stored[i + 1] == hashlib.md5(c.data).hexdigest() for i, c in enumerate(chunks))


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    stop_all(started)


def test_restart_loop_sigkill_and_start_again_at_once(tmp_path: Path,
                                                      children: list[Child]) -> None:
    """SIGKILL ``tapedeck serve`` (its weed is still shutting down, holding the data dir's
    lock) and start it again at once, 20 times: every start succeeds."""
    settings = Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, log_format="json")
    pids: list[int] = []
    for attempt in range(20):
        child = spawn(settings, "serve", tmp_path / "logs", f"serve-{attempt}")
        children.append(child)
        ready = httpx.get(f"{child.listening['http']}/readyz", timeout=30.0)
        assert ready.status_code == 200, (attempt, ready.text)
        owner = (settings.data_dir / "seaweedfs" / "weed.owner.json").read_text()
        pids.append(int(json.loads(owner)["pid"]))
        child.kill()
    wait_until(lambda: not any(_alive(p) for p in pids), 60, "every weed to exit")
    assert len(set(pids)) == 20

