"""The chunk upload URL: upload-token checks (tampered, expired, other recording — nothing
stored), Content-MD5, and a 200 MB body refused without the server's memory growing by it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tapedeck.auth import create_project
from tapedeck.clock import ManualClock, SystemClock
from tapedeck.infra.db import open_database
from tapedeck.infra.weed import ManagedWeed

from restkit import assert_error, client, create_streaming, md5_b64, put_chunk, zeros
from serverkit import RunningServer, drop_bucket, make_settings, spawn_server, start_server

MiB = 1024 * 1024


def stored_parts(srv: RunningServer, rec_id: str) -> list[int]:
    """The parts the store holds, asked directly (not through the API)."""
    return [int(o.key.rsplit("_", 1)[1].split(".")[0])
            for o in srv.app.store.list(f"recordings/{rec_id}/chunks/")]


def token_of(template: str) -> str:
    return template.split("token=", 1)[1]


def with_token(template: str, token: str) -> str:
    return template.split("token=", 1)[0] + "token=" + token


def test_tampered_tokens_are_401_and_store_nothing(server: RunningServer) -> None:
    rec = create_streaming(client(server.http_url, server.api_key))
    tpl, tok = rec["chunk_upload_url_template"], token_of(rec["chunk_upload_url_template"])
    body, sig = tok.removeprefix("up_").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    later = dict(claims, e=claims["e"] + 86400)  # extend the expiry, keep the signature
    forged = base64.urlsafe_b64encode(json.dumps(later, separators=(",", ":")).encode())
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    for bad in (f"up_{body}.{flipped}", f"up_{forged.decode().rstrip('=')}.{sig}",
                f"up_{body}", "up_", "garbage", ""):
        assert_error(put_chunk(with_token(tpl, bad), 1, b"evil"), "unauthorized")
    assert stored_parts(server, rec["id"]) == []
    assert put_chunk(tpl, 1, b"good").status_code == 201
    assert stored_parts(server, rec["id"]) == [1]


def test_other_recordings_token_is_403(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    a, b = create_streaming(c), create_streaming(c)
    url = with_token(b["chunk_upload_url_template"], token_of(a["chunk_upload_url_template"]))
    err = assert_error(put_chunk(url, 1, b"wrong place"), "forbidden")
    assert "another recording" in err["message"]
    assert stored_parts(server, a["id"]) == [] and stored_parts(server, b["id"]) == []


def test_upload_token_is_only_for_chunks(server: RunningServer) -> None:
    rec = create_streaming(client(server.http_url, server.api_key))
    up = client(server.http_url, token_of(rec["chunk_upload_url_template"]))
    assert_error(up.get(f"/v1/recordings/{rec['id']}"), "unauthorized")
    assert_error(up.post(f"/v1/recordings/{rec['id']}/finalize",
                         json={"total_chunks": 1, "final_duration_ms": 1}), "unauthorized")
    assert_error(up.delete(f"/v1/recordings/{rec['id']}"), "unauthorized")
    # ... but as a bearer header on the chunk route it is fine.
    url = rec["chunk_upload_url_template"].split("?")[0].replace("{part}", "1")
    assert up.put(url, content=b"ok").status_code == 201


def test_content_md5_mismatch_stores_nothing(server: RunningServer) -> None:
    rec = create_streaming(client(server.http_url, server.api_key))
    tpl = rec["chunk_upload_url_template"]
    err = assert_error(put_chunk(tpl, 1, b"corrupted", headers={"Content-MD5": md5_b64(b"x")}),
                       "checksum_mismatch")
    assert err["expected"] != err["actual"]
    assert stored_parts(server, rec["id"]) == []
    assert put_chunk(tpl, 1, b"corrupted").status_code == 201


@pytest.fixture
def clocked(weed: ManagedWeed, tmp_path: Path) -> Iterator[tuple[RunningServer, ManualClock]]:
    clock = ManualClock()
    srv = start_server(make_settings(weed, tmp_path / "data"), roles=("grpc", "http"),
                       clock=clock)
    try:
        yield srv, clock
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def test_expired_token_is_401_and_stores_nothing(
        clocked: tuple[RunningServer, ManualClock]) -> None:
    srv, clock = clocked
    rec = create_streaming(client(srv.http_url, srv.api_key))
    tpl = rec["chunk_upload_url_template"]
    assert put_chunk(tpl, 1, b"in time").status_code == 201
    clock.advance(timedelta(hours=4, seconds=1))  # streaming_ttl_s = 4 h
    err = assert_error(put_chunk(tpl, 2, b"too late"), "unauthorized")
    assert "expired" in err["message"]
    assert stored_parts(srv, rec["id"]) == [1]


# -- 200 MB ----------------------------------------------------------------------------
def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_200_mb_put_is_refused_without_buffering(weed: ManagedWeed, tmp_path: Path) -> None:
    """A child-process server; its peak RSS must not grow by anything near the body size,
    whether the client declares the length (refused before reading) or streams it chunked
    (refused after max_chunk_bytes, the rest discarded)."""
    settings = make_settings(weed, tmp_path / "data")
    db = open_database(settings.database_target)
    _, key = create_project(db, SystemClock())
    db.close()
    child = spawn_server(settings, "api")
    try:
        c = client(str(child.listening["http"]), key)
        rec = create_streaming(c)
        tpl = rec["chunk_upload_url_template"]
        assert put_chunk(tpl, 1, bytes(2 * MiB)).status_code == 201  # warm up the path
        body = 200 * MiB
        results: list[tuple[int, dict[str, Any]]] = []
        for headers in ({}, {"Content-Length": str(body)}):
            _reset_peak(child.proc.pid)
            before = _memory(child.proc.pid)["VmRSS"]
            resp = httpx.put(tpl.replace("{part}", "2"), content=zeros(body), headers=headers,
                             timeout=120)
            peak = _memory(child.proc.pid)["VmHWM"]
            assert_error(resp, "payload_too_large")
            results.append((peak - before, resp.json()))
            assert peak - before < 40 * MiB, f"server grew by {(peak - before) / MiB:.1f} MiB"
        listing = c.get(f"/v1/recordings/{rec['id']}/chunks").json()
        assert [ch["part"] for ch in listing["data"]] == [1]
        print("peak RSS growth per 200 MiB PUT (MiB):", [round(g / MiB, 1) for g, _ in results])
    finally:
        child.terminate()
        drop_bucket(weed, settings.s3_bucket)
