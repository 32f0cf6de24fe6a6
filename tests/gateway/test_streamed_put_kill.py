"""Issue 17: SIGKILL of the server in the middle of a streamed REST chunk PUT (the body is on
its way to the store while it arrives; the gRPC twin is
tests/grpc_api/test_streamed_upload_kill.py). Afterwards no object of the interrupted part is
visible in the store, every acknowledged chunk is intact, and the device carries on."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tapedeck.auth import create_project
from tapedeck.clock import SystemClock
from tapedeck.infra.db import Database
from tapedeck.infra.store.s3 import S3Store

from serverkit import drop_bucket, make_settings, spawn_server

CHUNK = 1024 * 1024


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def half_sent_put(base_url: str, path: str, key: str, data: bytes) -> socket.socket:
    """A PUT of ``data`` to ``path`` whose head and first half are sent, the rest never."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(data)}\r\nContent-MD5: {md5_b64(data)}\r\n\r\n")
    sock.sendall(head.encode() + data[:len(data) // 2])
    return sock


def part_objects(store: S3Store, rec_id: str) -> dict[int, list[str]]:
    """The ETags (MD5s) of every stored object of each part of ``rec_id``."""
    found: dict[int, list[str]] = {}
    for obj in store.list(f"recordings/{rec_id}/chunks/"):
        part = int(obj.key.rsplit("/", 1)[1].split(".")[0].removeprefix("chunk_"))
        found.setdefault(part, []).append(obj.etag)
    return found


@pytest.mark.slow  # two server starts and a kill
def test_kill_mid_streamed_put_loses_nothing_acknowledged(weed: Any, tmp_path: Path) -> None:
    settings = make_settings(weed, tmp_path / "data")
    db = Database(settings.db_path)
    _, key = create_project(db, SystemClock())
    db.close()
    datas = [bytes([i]) * CHUNK for i in range(1, 5)]
    store = S3Store(weed.endpoint, weed.access_key, weed.secret_key, settings.s3_bucket)
    child = spawn_server(settings, "api")
    sock: socket.socket | None = None
    try:
        base = str(child.listening["http"])
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as rest:
            created = rest.post("/v1/recordings", json={"streaming": True}).json()
            rec_id, template = created["id"], created["chunk_upload_url_template"]
            for part, data in enumerate(datas[:3], start=1):  # acknowledged
                resp = rest.put(template.replace("{part}", str(part)), content=data,
                                headers={"Content-MD5": md5_b64(data)})
                assert resp.status_code == 201, resp.text
                assert resp.json()["md5"] == hashlib.md5(data).hexdigest()
        path = urlsplit(template.replace("{part}", "4"))
        sock = half_sent_put(base, path.path + (f"?{path.query}" if path.query else ""), key,
                             datas[3])
        time.sleep(0.5)  # let the server pass the first half on to the store
        child.kill()
        assert sock.recv(1024) == b""  # no answer: the interrupted PUT was not acknowledged

        expected = {part: [hashlib.md5(d).hexdigest()] for part, d in enumerate(datas[:3], 1)}
        assert part_objects(store, rec_id) == expected  # nothing of part 4, 1..3 intact

        child = spawn_server(settings.replace(grpc_port=0, http_port=0), "api")
        with httpx.Client(base_url=str(child.listening["http"]),
                          headers={"Authorization": f"Bearer {key}"}, timeout=60) as rest:
            listing = rest.get(f"/v1/recordings/{rec_id}/chunks").json()
            assert [c["part"] for c in listing["data"]] == [1, 2, 3]
            assert listing["missing_chunks"] == []
            resp = rest.put(f"/v1/recordings/{rec_id}/chunks/4", content=datas[3],
                            headers={"Content-MD5": md5_b64(datas[3])})
            assert resp.status_code == 201, resp.text
            fin = rest.post(f"/v1/recordings/{rec_id}/finalize", json={
                "total_chunks": 4, "final_duration_ms": 4_000,
                "checksum_md5": hashlib.md5(b"".join(datas)).hexdigest()})
            assert fin.status_code == 200, fin.text
            assert fin.json()["chunks_received"] == 4
    finally:
        if sock is not None:
            sock.close()
        child.terminate()
        store.close()
        drop_bucket(weed, settings.s3_bucket)
