"""No plaintext secret in the SQLite file (and its WAL) or the logs after a full run (issue 8).

``tapedeck serve`` (every role) runs as a child process whose stdout and stderr are captured
to files. The run issues every kind of secret — secret and restricted keys, device tokens
(bind, ``tapedeck admin device-token``, refresh), upload tokens (streaming chunk URLs), a
webhook secret (with a signed delivery to a local receiver) — and uses them, including in failing requests
(mistyped, revoked, refreshed-away). Then the database files, read both while the server
runs and after it stopped, and the logs must contain none of those secrets, nor anything
shaped like a whole secret (hints such as ``rk_test_…abcd`` are fine).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tapedeck.auth import hash_token
from tapedeck.infra.weed import ManagedWeed
from tapedeck.settings import Settings
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import recording_pb2 as rpb

from devicekit import SECRET_RE, Stubs, drop_bucket, gateway_available, outcome
from serverkit import auth, chunk_messages, make_settings
from stitchkit import continuous_chunks

pytestmark = pytest.mark.skipif(not gateway_available(), reason="REST gateway not installed")


@dataclass
class Child:
    """``tapedeck serve`` with its output going to files."""

    proc: subprocess.Popen[bytes]
    listening: dict[str, Any]
    logs: list[Path]
    settings: Settings


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in vars(settings).items():
        env["TAPEDECK_" + key.upper()] = str(int(value) if isinstance(value, bool) else value)
    return env


def tapedeck(settings: Settings, *args: str) -> dict[str, Any]:
    """Run ``tapedeck ARGS`` to completion; its one JSON line of output."""
    out = subprocess.run([sys.executable, "-m", "tapedeck", *args], env=_env(settings),
                         capture_output=True, check=True, timeout=120)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


@pytest.fixture
def child(weed: ManagedWeed, tmp_path: Path) -> Iterator[Child]:
    settings = make_settings(weed, tmp_path / "data")
    out, err = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", "tapedeck", "serve"],
                                env=_env(settings), stdout=fout, stderr=ferr)
        try:
            yield Child(proc, _wait_listening(proc, out), [out, err], settings)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
            drop_bucket(weed, settings.s3_bucket)


def _wait_listening(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    """The ``{"listening": …}`` line (bounded by the child's own startup, not a clock:
    the loop ends when the line appears or the child exits)."""
    while proc.poll() is None:
        for line in out.read_text().splitlines():
            if line.startswith('{"listening"'):
                return dict(json.loads(line)["listening"])
        time.sleep(0.05)
    raise RuntimeError(f"tapedeck serve exited with {proc.returncode}")


@dataclass
class Run:
    """The full run's clients and every secret it saw."""

    http: str
    rpc: Stubs
    secrets: dict[str, str] = field(default_factory=dict)

    def keep(self, name: str, secret: str) -> str:
        self.secrets[name] = secret
        return secret

    def rest(self, method: str, path: str, token: str, json: Any = None,
             **headers: str) -> httpx.Response:
        return httpx.request(method, self.http + path, json=json, timeout=60.0,
                             headers={"Authorization": f"Bearer {token}", **headers})


def full_run(run: Run, settings: Settings, project_id: str, sk: str) -> None:
    """Every kind of secret issued and used over gRPC and REST (see module docstring)."""
    rk = run.keep("rk", run.rest("POST", "/v1/keys", sk, {"scopes": ["devices:write",
                                                                    "end_users:write"]},
                                 **{"Idempotency-Key": "k1"}).json()["secret"])
    eu = run.rest("POST", "/v1/end-users", rk, {"external_id": "u1"}).json()["id"]
    device_id = run.rest("POST", "/v1/devices", rk, {"serial_number": "S1"}).json()["id"]
    bound = run.rest("POST", f"/v1/devices/{device_id}/bind", sk, {"end_user_id": eu},
                     **{"Idempotency-Key": "b1"})
    old = run.keep("dtok_bind", bound.json()["device_token"])
    token = run.keep("dtok_refreshed", run.rpc.devices.RefreshDeviceToken(
        dpb.RefreshDeviceTokenRequest(id="me"), metadata=auth(old)).device_token)
    assert run.rest("POST", "/v1/devices/me/heartbeat", token,
                    {"battery_percent": 90, "device_state": "recording"}).status_code == 200
    admin = tapedeck(settings, "admin", "device-token", "--project-id", project_id)
    run.keep("dtok_admin", admin["device_token"])
    _streaming_upload(run, token)
    _failing_requests(run, old, token)
    _webhook(run, sk)
    run.rpc.devices.UnbindDevice(dpb.UnbindDeviceRequest(id=device_id), metadata=auth(rk))
    key_id = run.rest("GET", "/v1/keys", sk).json()["data"][0]["id"]
    assert run.rest("POST", f"/v1/keys/{key_id}/revoke", sk).status_code == 200


def _streaming_upload(run: Run, token: str) -> None:
    """A real Opus recording: chunk PUTs to the template URL (upload token in the query),
    one chunk over gRPC, finalize, then wait until the worker has stitched it."""
    chunks = [c.data for c in continuous_chunks(3.0, 1000)]
    created = run.rest("POST", "/v1/recordings", token, {"streaming": True,
                                                          "chunk_duration_ms": 1000}).json()
    template = created["chunk_upload_url_template"]
    run.keep("up", template.split("token=", 1)[1])
    for part, data in enumerate(chunks[:-1], start=1):
        assert httpx.put(template.replace("{part}", str(part)), content=data).status_code == 201
    run.rpc.chunks.UploadChunk(chunk_messages(created["id"], len(chunks), chunks[-1]),
                               metadata=auth(token))
    md5 = hashlib.md5(b"".join(chunks)).hexdigest()
    run.rpc.recordings.FinalizeRecording(rpb.FinalizeRecordingRequest(
        id=created["id"], total_chunks=len(chunks), final_duration_ms=3000, checksum_md5=md5),
        metadata=auth(token))
    for _ in range(600):  # the stitcher is a separate thread of the child: poll its result
        status = run.rest("GET", f"/v1/recordings/{created['id']}", token).json()["status"]
        if status in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert status == "completed"


def _failing_requests(run: Run, refreshed_away: str, token: str) -> None:
    """Requests that must fail, each carrying a secret the server must not echo or log."""
    typo = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (refreshed_away, typo):
        assert run.rest("GET", "/v1/recordings", bad).status_code == 401
        assert outcome(lambda b=bad: run.rpc.recordings.ListRecordings(  # type: ignore[misc]
            rpb.ListRecordingsRequest(), metadata=auth(b))) == "unauthorized"
    up = run.secrets["up"]
    assert run.rest("GET", "/v1/recordings", up).status_code == 401
    assert httpx.get(f"{run.http}/v1/recordings?token={up}").status_code == 401


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _webhook(run: Run, sk: str) -> None:
    """A webhook endpoint (``whsec_`` secret) on a local receiver; waits until the dispatcher
    has delivered (signed with the secret) one event to it."""
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        resp = run.rest("POST", "/v1/webhooks", sk, {
            "url": f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            "events": ["recording.created"]}, **{"Idempotency-Key": "w1"})
        assert resp.status_code == 201, resp.text
        run.keep("whsec", resp.json()["secret"])
        run.rest("POST", "/v1/recordings", sk, {"streaming": True})  # an event to deliver
        path = f"/v1/webhooks/{resp.json()['id']}/deliveries"
        for _ in range(600):  # the dispatcher is a separate thread of the child: poll
            done = [d for d in run.rest("GET", path, sk).json()["data"]
                    if d["status"] == "succeeded"]
            if done:
                break
            time.sleep(0.1)
        assert done, "the event was not delivered"
    finally:
        receiver.shutdown()


def assert_no_secrets(blob: bytes, secrets: dict[str, str], where: str) -> None:
    for name, secret in secrets.items():
        assert secret.encode() not in blob, f"{name} in {where}"
    found = SECRET_RE.search(blob)
    assert found is None, f"secret-shaped {found.group()[:12]!r}… in {where}"


def db_files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.glob("tapedeck.db*"))}


def test_no_plaintext_secret_in_sqlite_or_logs(child: Child) -> None:
    settings = child.settings
    if settings.database_url:
        pytest.skip("reads the SQLite files (TAPEDECK_TEST_BACKEND=postgresql)")
    boot = tapedeck(settings, "admin", "bootstrap")
    channel = grpc.insecure_channel(child.listening["grpc"])
    run = Run(http=child.listening["http"], rpc=Stubs.on(channel))
    sk = run.keep("sk", boot["api_key"])
    try:
        full_run(run, settings, boot["project_id"], sk)
    finally:
        channel.close()
    kinds = {name.split("_")[0] for name in run.secrets}
    assert {"sk", "rk", "dtok", "up", "whsec"} <= kinds
    running = db_files(settings.data_dir)
    assert running.get("tapedeck.db-wal"), "the WAL should hold this run's writes"
    assert hash_token(sk).encode() in b"".join(running.values())  # we read the right files
    for name, blob in running.items():
        assert_no_secrets(blob, run.secrets, f"{name} (server running)")
    child.proc.terminate()
    code = child.proc.wait(timeout=60)
    assert code == 0, (code, child.logs[-1].read_bytes()[-2000:])
    for name, blob in db_files(settings.data_dir).items():
        assert_no_secrets(blob, run.secrets, f"{name} (after shutdown)")
    logs = {p.name: p.read_bytes() for p in child.logs}
    assert b"tapedeck." in logs["serve.stderr"]  # the child did log (any log format)
    for name, blob in logs.items():
        assert_no_secrets(blob, run.secrets, name)
