"""Scale-out process roles against ONE data directory: ``tapedeck api`` + two
``tapedeck worker`` + ``tapedeck dispatcher`` (real child processes, real SQLite file, the
session's SeaweedFS) complete 20 concurrent streaming recordings end to end (REST create,
real Opus chunks, finalize, stitch, retention, webhooks). One worker is stopped with SIGTERM
while it holds a stitch job: the job is handed back at once (``released``, not left to a
lease expiry) and the other worker completes it. The children's logs are JSON lines that
carry each recording's request id from the API through the worker to the dispatcher, and
hold none of the secrets the run used.

Transcription is not part of this run (``job_kinds=stitch``): it has its own tests, and
whisper on 2 cores would dominate the time."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tapedeck.infra.db import Database
from tapedeck.infra.weed import free_port
from tapedeck.oggopus import probe
from tapedeck.oggopus.opus import GRANULE_RATE
from tapedeck.settings import Settings

from opskit import (
    Child,
    Receiver,
    delta,
    put_chunk,
    scrape,
    settings_env,
    spawn,
    stop_all,
    value,
    wait_until,
)
from serverkit import drop_bucket, make_settings
from stitchkit import continuous_chunks

RECORDINGS = 20
PARTS = 3


def _admin(settings: Settings, *args: str) -> dict[str, Any]:
    """``tapedeck admin ...`` as an operator runs it."""
    out = subprocess.run([sys.executable, "-m", "tapedeck", "admin", *args],
                         env=settings_env(settings), capture_output=True, text=True,
                         check=True, timeout=120)
    found: dict[str, Any] = json.loads(out.stdout)
    return found


class Run:
    """The recordings of one device fleet, sent through the API like devices do."""

    def __init__(self, http: str, api_key: str, tokens: list[str]) -> None:
        self.http, self.api_key, self.tokens = http, api_key, tokens
        self.templates: list[str] = []
        self.samples: dict[str, int] = {}

    def record(self, i: int) -> str:
        chunks = continuous_chunks(PARTS * 1.0, 1000, start=i)
        headers = {"Authorization": f"Bearer {self.tokens[i % len(self.tokens)]}"}
        with httpx.Client(base_url=self.http, headers=headers, timeout=120.0) as c:
            rec = c.post("/v1/recordings", json={"streaming": True, "chunk_duration_ms": 1000,
                                                 "name": f"ops {i}"}).json()
            self.templates.append(rec["chunk_upload_url_template"])
            for chunk in chunks:
                assert put_chunk(rec["chunk_upload_url_template"], chunk.part,
                                 chunk.data).status_code == 201
            whole = b"".join(c.data for c in chunks)
            fin = c.post(f"/v1/recordings/{rec['id']}/finalize",
                         headers={"x-request-id": f"ops-rec-{i}"},
                         json={"total_chunks": PARTS, "checksum_md5": hashlib.md5(whole)
                               .hexdigest(), "final_duration_ms": PARTS * 1000})
            assert fin.status_code == 200, fin.text
        self.samples[rec["id"]] = chunks[-1].end_sample - chunks[0].start_sample
        return str(rec["id"])


def _done(db: Database, rec_ids: list[str], receiver: Receiver) -> bool:
    rows = db.read().execute(
        f"SELECT status, chunks_retention FROM recordings WHERE id IN"
        f" ({', '.join('?' * len(rec_ids))})", rec_ids).fetchall()
    return len(rows) == len(rec_ids) and all(tuple(r) == ("completed", "purged") for r in rows) \
        and all(len(receiver.about(r)) == 3 for r in rec_ids)


def _check_audio(run: Run, rec_id: str) -> None:
    with httpx.Client(base_url=run.http, timeout=60.0,
                      headers={"Authorization": f"Bearer {run.api_key}"}) as c:
        rec = c.get(f"/v1/recordings/{rec_id}").json()
        url = c.post(f"/v1/recordings/{rec_id}/download-url").json()["download_url"]
    info = probe(io.BytesIO(httpx.get(url, timeout=60.0).content))
    expected_ms = round(run.samples[rec_id] * 1000 / GRANULE_RATE)
    assert info.duration_ms == rec["duration_ms"] == expected_ms


def _handed_back(db: Database, job_id: str, worker_a_pid: int) -> list[tuple[str, str]]:
    """(owner process, outcome) of each run of the job."""
    rows = db.read().execute("SELECT owner, outcome FROM job_runs WHERE job_id = ?"
                             " ORDER BY started_at, attempt", [job_id]).fetchall()
    return [("a" if f":{worker_a_pid}:" in owner else "b", outcome) for owner, outcome in rows]


def test_api_two_workers_and_a_dispatcher_on_one_data_directory(
        weed: Any, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    base = make_settings(weed, tmp_path / "data", job_kinds="stitch", sweep_interval_ms=200,
                         job_poll_ms=100, log_format="json", shutdown_grace_s=2)
    receiver, children = Receiver(), []
    try:
        children.append(spawn(base, "api", logs, "api"))
        api, http = children[0], children[0].listening["http"]
        worker_a = spawn(base.replace(test_only_failpoints="stitch.stitching", metrics_port=free_port()),
                         "worker", logs, "worker-a")
        children += [worker_a, spawn(base, "dispatcher", logs, "dispatcher")]
        project = _admin(base, "bootstrap")
        tokens = [_admin(base, "device-token", "--project-id", project["project_id"])
                  ["device_token"] for _ in range(2)]
        hook = httpx.post(f"{http}/v1/webhooks", json={"url": receiver.url, "events": ["*"]},
                          headers={"Authorization": f"Bearer {project['api_key']}"})
        assert hook.status_code == 201, hook.text
        before = scrape(f"{http}/metrics")

        run = Run(http, project["api_key"], tokens)
        with ThreadPoolExecutor(RECORDINGS) as pool:
            rec_ids = list(pool.map(run.record, range(RECORDINGS)))

        held = worker_a.wait_failpoint("stitch.stitching")  # worker A is mid-job
        # Worker B starts now, so A surely holds a job; both claim from the same queue.
        worker_b = spawn(base.replace(metrics_port=free_port()), "worker", logs, "worker-b")
        children.append(worker_b)
        assert worker_a.terminate() == 0  # SIGTERM: grace, then the job is handed back
        db = Database(base.db_path)
        try:
            wait_until(lambda: _done(db, rec_ids, receiver), timeout=300,
                       what="20 recordings stitched, cleaned up and announced")
            assert _handed_back(db, held["job_id"], worker_a.proc.pid) == [
                ("a", "released"), ("b", "succeeded")]
        finally:
            db.close()
        for rec_id in rec_ids:
            _check_audio(run, rec_id)
        _check_metrics(before, scrape(f"{http}/metrics"), worker_b)
        for child in [*children[1:], api]:
            if child.proc.poll() is None:
                assert child.terminate() == 0, child.command
        _check_logs(children, rec_ids, held["recording_id"])
        _check_no_secrets(children, [project["api_key"], *tokens, hook.json()["secret"],
                                     *run.templates, weed.secret_key])
    finally:
        receiver.close()
        stop_all(children)
        drop_bucket(weed, base.s3_bucket)


def _check_metrics(before: Any, after: Any, worker_b: Child) -> None:
    """The API process counted the requests; worker B (its own metrics port) the jobs."""
    route = "PUT /v1/recordings/{recording_id}/chunks/{part}"
    assert delta(before, after, "tapedeck_requests_total", transport="http", method=route,
                 outcome="ok") == RECORDINGS * PARTS
    assert delta(before, after, "tapedeck_chunks_ingested_total") == RECORDINGS * PARTS
    assert value(after, "tapedeck_jobs", kind="stitch", status="queued") == 0
    assert value(after, "tapedeck_jobs", kind="stitch", status="running") == 0
    jobs = scrape(worker_b.listening["metrics"])
    assert value(jobs, "tapedeck_job_runs_total", kind="stitch", outcome="succeeded") \
        == RECORDINGS


def _check_logs(children: list[Child], rec_ids: list[str], held_rec: str) -> None:
    """Every line is JSON; each recording's finalize request id shows up in the API's access
    log, in the log of the worker that stitched it, and in the dispatcher's log."""
    records = {c.stderr_path.stem: c.log_records() for c in children}
    for i in range(RECORDINGS):
        rid = f"ops-rec-{i}"
        for name in ("api", "worker-b", "dispatcher"):
            assert any(r.get("request_id") == rid for r in records[name]), (name, rid)
    held = rec_ids.index(held_rec)
    assert any(r.get("request_id") == f"ops-rec-{held}" and "started" in r["msg"]
               for r in records["worker-a"])
    # Worker A's job thread outlived the grace: it left without finalizing the interpreter
    # (which crashes a thread inside native code), after its last log lines were flushed.
    busy = [r["msg"] for r in records["worker-a"] if "still busy" in r["msg"]]
    assert len(busy) == 1 and "worker-" in busy[0], busy
    assert not any("still busy" in r["msg"] for r in records["worker-b"] + records["api"])


def _check_no_secrets(children: list[Child], secrets: list[str]) -> None:
    tokens = [s.split("?token=", 1)[1] if "?token=" in s else s for s in secrets]
    for child in children:
        text = child.stderr() + "\n".join(child.lines)
        assert text.strip()
        for token in tokens:
            assert token not in text, (child.command, token[:8])
