"""``GET /v1/recordings/{id}/audio`` (issue 21): the stitched audio through the gateway with
HTTP Range, same authorization as the download URL. Real gateway, SeaweedFS, Opus, worker."""

from __future__ import annotations

import hashlib
import io

from tapedeck.background.stitch import build_handler
from tapedeck.background.worker import Worker, queue_for
from tapedeck.oggopus import remux

from restkit import assert_error, client, create_streaming, put_chunk
from serverkit import RunningServer
from stitchkit import continuous_chunks


def chunks(seconds: float = 3.0) -> list[bytes]:
    return [c.data for c in continuous_chunks(seconds, 1_000)]


def run_stitch(server: RunningServer) -> str | None:
    runtime = server.app.runtime
    worker = Worker(queue_for(runtime), {"stitch": build_handler(runtime)}, "test")
    return worker.run_once()


def stitched(server: RunningServer) -> tuple[str, bytes]:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    datas = chunks()
    for part, data in enumerate(datas, start=1):
        assert put_chunk(rec["chunk_upload_url_template"], part, data).status_code in (200, 201)
    fin = c.post(f"/v1/recordings/{rec['id']}/finalize",
                 json={"total_chunks": len(datas), "final_duration_ms": 3_000})
    assert fin.status_code == 200, fin.text
    assert run_stitch(server) == "succeeded"
    out = io.BytesIO()
    remux([io.BytesIO(d) for d in datas], out)
    return rec["id"], out.getvalue()


def test_whole_file_and_ranges(server: RunningServer) -> None:
    rec_id, audio = stitched(server)
    c = client(server.http_url, server.api_key)
    url = f"/v1/recordings/{rec_id}/audio"
    whole = c.get(url)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/ogg"
    assert whole.headers["accept-ranges"] == "bytes"
    assert hashlib.md5(whole.content).digest() == hashlib.md5(audio).digest()
    n = len(audio)
    for header, first, last in (("bytes=0-99", 0, 99), ("bytes=100-", 100, n - 1),
                                ("bytes=-50", n - 50, n - 1), (f"bytes=10-{n + 999}", 10, n - 1)):
        part = c.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{n}"
        assert part.content == audio[first:last + 1], header
    bad = c.get(url, headers={"Range": f"bytes={n}-"})
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{n}"


def test_same_authorization_as_download(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    assert_error(client(server.http_url).get(f"/v1/recordings/{rec['id']}/audio"),
                 "unauthorized")
    assert_error(c.get(f"/v1/recordings/{rec['id']}/audio"), "invalid_state")
    assert_error(c.get("/v1/recordings/rec_nope/audio"), "recording_not_found")
