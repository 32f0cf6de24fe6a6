"""Every REST route x every kind of credential: the exact outcome (issue 8), from the same
table as the gRPC test (``devicekit.ACCESS``): one HTTP status per error type, with the
error envelope of ``api.md``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tapedeck.errors import ERRORS

from devicekit import ACCESS, Target, World, cases, credential, gateway_available

pytestmark = pytest.mark.skipif(not gateway_available(), reason="REST gateway not installed")


@dataclass(frozen=True)
class Route:
    """One REST request: method, path template (as declared by the gateway), body."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    content: bytes | None = None
    part: int = 2
    stream: bool = False  # an endless response (SSE): the status and an error body only

    def send(self, w: World, t: Target, token: str) -> httpx.Response:
        path = self.path.format(recording_id=t.recording_id, device_id=t.device_id,
                                end_user_id=t.end_user_id, key_id=t.key_id, part=self.part,
                                transcription_id=t.transcription_id,
                                webhook_id=t.webhook_id, profile_id="vp_missing")
        json = {k: (w.end_user_id if v == "$end_user" else t.device_id if v == "$device"
                    else v) for k, v in self.json.items()} if self.json is not None else None
        headers = {"Authorization": f"Bearer {token}"}
        if self.stream:
            with httpx.stream(self.method, w.srv.http_url + path, timeout=60.0,
                              headers=headers) as resp:
                if not resp.is_success:
                    resp.read()
                return resp
        return httpx.request(self.method, w.srv.http_url + path, json=json,
                             content=self.content, timeout=60.0, headers=headers)


REC = "/v1/recordings/{recording_id}"
DEV = "/v1/devices/{device_id}"
ROUTES: dict[str, Route] = {
    "CreateRecording": Route("POST", "/v1/recordings", {"device_id": "$device",
                                                        "streaming": True}),
    "GetRecording": Route("GET", REC),
    "ListRecordings": Route("GET", "/v1/recordings"),
    "FinalizeRecording": Route("POST", REC + "/finalize",
                               {"total_chunks": 1, "final_duration_ms": 900}),
    "DeleteRecording": Route("DELETE", REC),
    "CreateUploadUrl": Route("POST", REC + "/upload-url", {"type": "audio", "part": 2}),
    "CompleteUpload": Route("POST", REC + "/upload-complete", {}),
    "CreateDownloadUrl": Route("POST", REC + "/download-url", {}),
    "GetRecordingAudio": Route("GET", REC + "/audio"),
    "RestitchRecording": Route("POST", REC + "/stitch", {}),
    "UploadChunk": Route("PUT", REC + "/chunks/{part}", content=b"second chunk"),
    "ListChunks": Route("GET", REC + "/chunks"),
    "DeleteChunk": Route("DELETE", REC + "/chunks/{part}", part=1),
    "CreateWebhook": Route("POST", "/v1/webhooks", {"url": "https://hooks.example.com/a",
                                                    "events": ["*"]}),
    "GetWebhook": Route("GET", "/v1/webhooks/{webhook_id}"),
    "ListWebhooks": Route("GET", "/v1/webhooks"),
    "DeleteWebhook": Route("DELETE", "/v1/webhooks/{webhook_id}"),
    "ListWebhookDeliveries": Route("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    "ReplayWebhookEvents": Route("POST", "/v1/webhooks/{webhook_id}/replay",
                                 {"since": "2023-11-14T22:13:20Z"}),
    "CreateDevice": Route("POST", "/v1/devices", {"serial_number": "SN-9"}),
    "GetDevice": Route("GET", DEV),
    "BindDevice": Route("POST", DEV + "/bind", {"end_user_id": "$end_user"}),
    "UnbindDevice": Route("POST", DEV + "/unbind", {}),
    "RefreshDeviceToken": Route("POST", DEV + "/token/refresh", {}),
    "SendHeartbeat": Route("POST", DEV + "/heartbeat", {"battery_percent": 50}),
    "ListDevices": Route("GET", "/v1/devices"),
    "GetDeviceSettings": Route("GET", DEV + "/settings"),
    "UpdateDeviceSettings": Route("PUT", DEV + "/settings", {"bitrate": 16000}),
    "CreateEndUser": Route("POST", "/v1/end-users", {"name": "Grace"}),
    "GetEndUser": Route("GET", "/v1/end-users/{end_user_id}"),
    "CreateVoiceProfile": Route("POST", "/v1/end-users/{end_user_id}/voice-profiles",
                                {"recording_id": "rec_missing", "start_ms": 0, "end_ms": 5000}),
    "ListVoiceProfiles": Route("GET", "/v1/end-users/{end_user_id}/voice-profiles"),
    "DeleteVoiceProfile": Route("DELETE", "/v1/end-users/{end_user_id}/voice-profiles/{profile_id}"),
    "DeleteEndUser": Route("DELETE", "/v1/end-users/{end_user_id}"),
    "CreateKey": Route("POST", "/v1/keys", {"scopes": ["recordings:read"]}),
    "ListKeys": Route("GET", "/v1/keys"),
    "RevokeKey": Route("POST", "/v1/keys/{key_id}/revoke", {}),
}
if importlib.util.find_spec("tapedeck.gateway.transcriptions") is not None:
    ROUTES["CreateTranscription"] = Route("POST", REC + "/transcribe", {})
    ROUTES["GetTranscription"] = Route("GET", "/v1/transcriptions/{transcription_id}")
    ROUTES["WatchTranscription"] = Route("GET", "/v1/transcriptions/{transcription_id}/events",
                                         stream=True)
    ROUTES["SearchTranscripts"] = Route("GET", "/v1/search?q=hello")
CASES = cases(ROUTES)


def rest_outcome(resp: httpx.Response) -> str:
    """``ok`` for a 2xx answer, else the error type (checked against the table's status)."""
    if resp.is_success:
        return "ok"
    err = resp.json()["error"]
    assert resp.status_code == ERRORS[err["type"]].http_status, (resp.status_code, err)
    assert isinstance(err["message"], str) and err["message"]
    return str(err["type"])


@pytest.mark.parametrize(("op", "kind", "expected"), CASES,
                         ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_access(world: World, op: str, kind: str, expected: str) -> None:
    access = ACCESS[op]
    target = access.setup(world)
    token = credential(world, kind, access, target)
    assert rest_outcome(ROUTES[op].send(world, target, token)) == expected


def test_every_route_is_in_the_table(world: World) -> None:
    """Every route under recordings, devices, end users and keys has a row (the chunk upload
    URL of gRPC is ``upload-url`` with a ``part`` in REST)."""
    from tapedeck.gateway import build_app

    covered = ("/v1/recordings", "/v1/transcriptions", "/v1/webhooks", "/v1/devices",
               "/v1/end-users", "/v1/keys", "/v1/search")
    declared = {(method, route.path) for route in build_app(world.srv.app.domain).routes
                if isinstance(route, APIRoute) and route.path.startswith(covered)
                for method in route.methods or ()}
    tabled = {(r.method, r.path.partition("?")[0]) for r in ROUTES.values()}
    assert declared == tabled, (
        f"routes without a row in devicekit.ACCESS / ROUTES here: {sorted(declared - tabled)}; "
        f"rows without a route: {sorted(tabled - declared)}")
    assert set(ROUTES) <= set(ACCESS) - {"CreateChunkUploadUrl"}
