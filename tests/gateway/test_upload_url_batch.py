"""``POST …/upload-url {parts: [...]}``: presigned URLs for several chunk parts in one call
(then one PUT each straight to the store), its errors, and the durable marker that makes a
later streamed upload of such a part compare against what the URL wrote."""

from __future__ import annotations

import hashlib

import httpx

from restkit import assert_error, client, create_streaming, put_chunk
from serverkit import RunningServer


def test_a_batch_of_urls_stores_each_part(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    resp = c.post(f"/v1/recordings/{rec['id']}/upload-url", json={"parts": [3, 1, 2]})
    assert resp.status_code == 200, resp.text
    urls = resp.json()["data"]
    assert [u["part"] for u in urls] == [3, 1, 2]
    assert len({u["upload_url"] for u in urls}) == 3
    assert all(u["method"] == "PUT" and u["media_id"] is None for u in urls)
    bodies = {u["part"]: f"chunk {u['part']}".encode() * 100 for u in urls}
    for u in urls:
        put = httpx.put(u["upload_url"], content=bodies[u["part"]], headers=u["headers"])
        assert put.status_code == 200, put.text
    listed = c.get(f"/v1/recordings/{rec['id']}/chunks").json()
    assert [(ch["part"], ch["md5"]) for ch in listed["data"]] == [
        (n, hashlib.md5(bodies[n]).hexdigest()) for n in (1, 2, 3)]
    assert listed["missing_chunks"] == []


def test_a_part_written_through_a_batch_url_is_compared_by_a_later_upload(
        server: RunningServer) -> None:
    """The presigned PUT bypassed the ledger; the marker written when its URL was issued
    makes the streamed PUT of the same bytes find it (``already_stored``, one object)."""
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    url = c.post(f"/v1/recordings/{rec['id']}/upload-url",
                   json={"parts": [1]}).json()["data"][0]
    data = b"the same bytes" * 1000
    assert httpx.put(url["upload_url"], content=data, headers=url["headers"]).status_code == 200
    again = put_chunk(rec["chunk_upload_url_template"], 1, data)
    assert again.status_code == 200 and again.json()["already_stored"] is True, again.text
    assert len(list(server.app.store.list(f"recordings/{rec['id']}/chunks/"))) == 1
    fresh = put_chunk(rec["chunk_upload_url_template"], 2, data)  # no marker, no ledger row
    assert fresh.status_code == 201 and fresh.json()["already_stored"] is False, fresh.text


def test_bad_batches_are_typed_errors_and_issue_nothing(server: RunningServer) -> None:
    c = client(server.http_url, server.api_key)
    rec = create_streaming(c)
    above = rec["max_chunks"] + 1
    path = f"/v1/recordings/{rec['id']}/upload-url"
    for body, field in (({"parts": []}, "parts"), ({"parts": [1, 1]}, "parts"),
                        ({"parts": [1], "part": 2}, "parts"),
                        ({"parts": [1], "size_bytes": 10}, "parts"),
                        ({"parts": [1, above]}, "part"), ({"parts": [0]}, "parts")):
        err = assert_error(c.post(path, json=body), "invalid_request")
        assert err.get("field", "").startswith(field), (body, err)
    single = c.post("/v1/recordings", json={"streaming": False}).json()
    err = assert_error(c.post(f"/v1/recordings/{single['id']}/upload-url",
                              json={"parts": [1]}), "invalid_request")
    assert err["field"] == "parts"
