"""The OpenAPI document: served at /openapi.json (3.1), describing every route the gateway
serves, with a readable /docs page; and Schemathesis (positive and negative cases, stateful
sequences) against a running server: no 5xx, no answer the document does not allow."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from tapedeck.errors import ERRORS
from tapedeck.gateway import build_app, schemas

from serverkit import RunningServer

RECORDING_ROUTES = {
    ("post", "/v1/recordings"), ("get", "/v1/recordings"),
    ("get", "/v1/recordings/{recording_id}"), ("delete", "/v1/recordings/{recording_id}"),
    ("post", "/v1/recordings/{recording_id}/finalize"),
    ("get", "/v1/recordings/{recording_id}/chunks"),
    ("put", "/v1/recordings/{recording_id}/chunks/{part}"),
    ("post", "/v1/recordings/{recording_id}/upload-url"),
    ("post", "/v1/recordings/{recording_id}/upload-complete"),
    ("post", "/v1/recordings/{recording_id}/download-url"),
}
# Operations Schemathesis must not call: revoking keys would revoke the very key the run
# authenticates with (every later answer would be 401).
EXCLUDED = r"^/v1/keys/\{key_id\}/revoke$"
MAX_EXAMPLES = 25


def test_document_matches_the_routes(server: RunningServer) -> None:
    doc = httpx.get(f"{server.http_url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert ops >= RECORDING_ROUTES
    served = {(m.lower(), path) for r in build_app(server.app.domain).routes
              for path in [str(getattr(r, "path", ""))] if path.startswith("/v1/")
              for m in getattr(r, "methods", ())}
    assert served == ops  # nothing served undocumented, nothing documented unserved
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"400", "401", "403", "429", "500", "503"} <= codes, (method, path)
            assert "422" not in codes or "Validation Error" not in op["responses"]["422"][
                "description"]
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")):
                    enum = resp["content"]["application/json"]["schema"]["properties"][
                        "error"]["properties"]["type"]["enum"]
                    assert all(ERRORS[t].http_status == int(code) for t in enum)
            if method == "post":
                names = {p["name"] for p in op.get("parameters", [])}
                assert "Idempotency-Key" in names, path
    finalize = doc["paths"]["/v1/recordings/{recording_id}/finalize"]["post"]
    assert {"200", "404", "409", "413", "422"} <= set(finalize["responses"])
    body = doc["components"]["schemas"]["FinalizeRequest"]
    assert body["required"] == ["total_chunks", "final_duration_ms"]
    assert body["additionalProperties"] is False
    put = doc["paths"]["/v1/recordings/{recording_id}/chunks/{part}"]["put"]
    assert put["security"] == [{"uploadToken": []}, {"bearerAuth": []}]
    assert {"200", "201", "413", "422"} <= set(put["responses"])


def test_response_models_are_exactly_the_domain_shapes() -> None:
    """The documented response fields are the keys ``to_json`` produces (no drift)."""
    from tapedeck.domain import models

    expect: list[tuple[type[BaseModel], Any]] = [
        (schemas.FinalizeOut, models.FinalizeResult), (schemas.ChunkOut, models.Chunk),
        (schemas.UploadUrlOut, models.UploadUrl), (schemas.DownloadUrlOut, models.DownloadUrl)]
    for out, dom in expect:
        assert set(out.model_fields) == {f.name for f in dataclasses.fields(dom)}, out


def test_docs_page(server: RunningServer) -> None:
    resp = httpx.get(f"{server.http_url}/docs/plain")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "<script" not in page  # self-contained, works offline
    for method, path in RECORDING_ROUTES:
        assert f"{method.upper()}</span> <code>{path}</code>" in page
    assert "chunk_mismatch" in page and "Idempotency-Key" in page


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_violations(server: RunningServer, tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    cmd = [st, "run", f"{server.http_url}/openapi.json",
           "-H", f"Authorization: Bearer {server.api_key}",
           "--mode", "all", "--max-examples", str(MAX_EXAMPLES),
           "--seed", os.environ.get("TAPEDECK_ST_SEED", "20261129"),
           "--phases", "coverage,fuzzing,stateful",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--exclude-path-regex", EXCLUDED, "--request-timeout", "30",
           "--workers", "1", "--suppress-health-check", "all", "--warnings", "off",
           "--report", "junit", "--report-dir", str(tmp_path / "report")]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=280)
    tail = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert "No issues found" in run.stdout or " passed" in run.stdout, tail
