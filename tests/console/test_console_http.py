"""Issue 21: the console's sessions, CSRF, inert rendering, and the gateway audio route with
HTTP Range. Real gateway, real SeaweedFS, real Opus stitched by the real stitch job; one
server for the module."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for

from serverkit import RunningServer, drop_bucket, make_settings, start_server
from stitchkit import continuous_chunks

EVIL = '<script>alert(1)</script>'
EVIL2 = '"><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def srv(weed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(make_settings(weed, tmp_path_factory.mktemp("console") / "data"),
                     roles=["grpc", "http"])
    try:
        yield s
    finally:
        s.close()
        drop_bucket(weed, s.app.settings.s3_bucket)


@pytest.fixture(scope="module")
def stitched(srv: RunningServer) -> dict[str, Any]:
    """A completed 3 s streaming recording with hostile metadata: its id and audio bytes."""
    c = client(srv.http_url, srv.api_key)
    rec = create_streaming(c, name="kitchen", metadata={"note": EVIL, "tag": EVIL2})
    datas = [ch.data for ch in continuous_chunks(3.0, 1_000)]
    for i, data in enumerate(datas, 1):
        assert put_chunk(rec["chunk_upload_url_template"], i, data).status_code == 201
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize",
                 json={"total_chunks": len(datas), "final_duration_ms": 3000})
    assert fin.status_code == 200, fin.text
    runtime = srv.app.runtime
    Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test").run_once()
    assert c.get(f"/v1/recordings/{rec['id']}").json()["status"] in ("completed", "uploaded")
    url = c.post(f"/v1/recordings/{rec['id']}/download-url").json()["download_url"]
    return {"id": rec["id"], "audio": httpx.get(url, timeout=30).content}


def client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def create_streaming(c: httpx.Client, **extra: Any) -> dict[str, Any]:
    resp = c.post("/v1/recordings", json={"streaming": True, **extra})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def put_chunk(template: str, part: int, data: bytes) -> httpx.Response:
    return httpx.put(template.replace("{part}", str(part)), content=data, timeout=30)


def signed_in(srv: RunningServer, key: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=srv.http_url, timeout=30)
    resp = c.post("/console/login", data={"api_key": key or srv.api_key})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/recordings"
    return c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def test_sign_in_sets_a_strict_httponly_expiring_cookie_without_the_key(
        srv: RunningServer) -> None:
    resp = httpx.post(f"{srv.http_url}/console/login", data={"api_key": srv.api_key})
    assert resp.status_code == 303
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Max-Age=" in cookie and srv.api_key not in cookie


def test_wrong_key_is_refused_with_a_message(srv: RunningServer) -> None:
    resp = httpx.post(f"{srv.http_url}/console/login", data={"api_key": "sk_test_nope"})
    assert resp.status_code == 401 and "set-cookie" not in resp.headers
    assert "malformed" in resp.text


def test_pages_without_a_session_go_to_sign_in(srv: RunningServer, stitched: dict[str, Any],
                                               ) -> None:
    for path in ("/console/recordings", f"/console/recordings/{stitched['id']}"):
        resp = httpx.get(srv.http_url + path)
        assert resp.status_code == 303 and resp.headers["location"] == "/console", path
    assert httpx.get(f"{srv.http_url}/console/recordings/{stitched['id']}/audio"
                     ).status_code == 401
    forged = httpx.get(f"{srv.http_url}/console/recordings",
                       cookies={"tapedeck_console": "AAAA" + "x" * 60})
    assert forged.status_code == 303


def test_hostile_metadata_renders_as_text(srv: RunningServer, stitched: dict[str, Any]) -> None:
    c = signed_in(srv)
    resp = c.get(f"/console/recordings/{stitched['id']}")
    assert resp.status_code == 200
    assert EVIL not in resp.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in resp.text
    assert "<img" not in resp.text and "&lt;img src=x onerror=alert(2)&gt;" in resp.text
    assert "script-src" not in resp.headers["content-security-policy"]  # default-src 'self'


def test_list_filters_by_status(srv: RunningServer, stitched: dict[str, Any]) -> None:
    c = signed_in(srv)
    create_streaming(client(srv.http_url, srv.api_key), name="still-streaming")
    done = c.get("/console/recordings", params={"status": "completed"}).text
    live = c.get("/console/recordings", params={"status": "streaming"}).text
    assert stitched["id"] in done and "still-streaming" not in done
    assert "still-streaming" in live and stitched["id"] not in live
    assert c.get("/console/recordings", params={"status": "bogus"}).status_code == 400


def test_logout_needs_the_csrf_token(srv: RunningServer) -> None:
    c = signed_in(srv)
    page = c.get("/console/recordings")
    assert c.post("/console/logout", data={}).status_code == 403
    assert c.post("/console/logout", data={"csrf": "wrong"}).status_code == 403
    assert c.get("/console/recordings").status_code == 200  # still signed in
    out = c.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert c.get("/console/recordings").status_code == 303


def test_revoked_key_ends_its_session(srv: RunningServer) -> None:
    c = client(srv.http_url, srv.api_key)
    made = c.post("/v1/keys", json={"kind": "restricted", "scopes": ["recordings:read"]})
    assert made.status_code in (200, 201), made.text
    body = made.json()
    s = signed_in(srv, body["secret"])
    assert s.get("/console/recordings").status_code == 200
    assert c.post(f"/v1/keys/{body['id']}/revoke").status_code == 200
    assert s.get("/console/recordings").status_code == 303


def test_audio_route_serves_ranges(srv: RunningServer, stitched: dict[str, Any],
                                   tmp_path: Path) -> None:
    c = client(srv.http_url, srv.api_key)
    audio, url = stitched["audio"], f"/v1/recordings/{stitched['id']}/audio"
    whole = c.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/ogg"
    assert whole.headers["accept-ranges"] == "bytes"
    assert hashlib.md5(whole.content).digest() == hashlib.md5(audio).digest()
    part = c.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == audio[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(audio)}"
    tail = c.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == audio[-50:]
    bad = c.get(url, headers={"Range": f"bytes={len(audio)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(audio)}"
    assert httpx.get(srv.http_url + url).json()["error"]["type"] == "unauthorized"
    out = tmp_path / "a.opus"
    out.write_bytes(whole.content)
    info = subprocess.run(["opusinfo", str(out)], capture_output=True, text=True, check=True)
    assert "Playback length: 0m:03" in info.stdout, info.stdout


def test_console_player_uses_the_session(srv: RunningServer, stitched: dict[str, Any]) -> None:
    c = signed_in(srv)
    page = c.get(f"/console/recordings/{stitched['id']}").text
    assert f'src="/console/recordings/{stitched["id"]}/audio"' in page
    part = c.get(f"/console/recordings/{stitched['id']}/audio", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == stitched["audio"][:10]
    assert part.content.startswith(b"OggS")


def test_console_setting_off_removes_the_routes(weed: Any, tmp_path: Path) -> None:
    s = start_server(make_settings(weed, tmp_path / "d", console=False), roles=["http"])
    try:
        assert httpx.get(f"http://127.0.0.1:{s.app.http_port}/console").status_code == 404
    finally:
        s.close()
        drop_bucket(weed, s.app.settings.s3_bucket)


def test_streaming_rows_are_marked_for_live_refresh(srv: RunningServer) -> None:
    create_streaming(client(srv.http_url, srv.api_key), name="live-one")
    page = signed_in(srv).get("/console/recordings", params={"status": "streaming"}).text
    assert 'data-status="streaming"' in page and "/console/static/console.js" in page
    js = httpx.get(f"{srv.http_url}/console/static/console.js").text
    assert "/console/live/recordings" in js and '"streaming"' in js


def test_rerun_needs_csrf_and_is_refused_while_a_transcription_is_in_flight(
        srv: RunningServer, stitched: dict[str, Any]) -> None:
    c = signed_in(srv)
    page = c.get(f"/console/recordings/{stitched['id']}")
    url = f"/console/recordings/{stitched['id']}/retranscribe"
    assert c.post(url, data={}).status_code == 403
    queued = c.post(url, data={"csrf": csrf_of(page.text)})  # stitched: its one is queued
    assert queued.status_code == 409 and "still queued" in queued.text, queued.text
    assert httpx.post(srv.http_url + url, data={}).status_code == 303  # no session
