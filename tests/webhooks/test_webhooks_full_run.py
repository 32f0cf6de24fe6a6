"""A full recording run (create → chunks → finalize → stitch → transcribe) with the worker and
dispatcher roles running: a webhook endpoint receives, in order, recording.created,
recording.uploaded, transcription.queued, transcription.started, transcription.completed —
exactly one terminal transcription event.

The full test runs once the transcription job (``tapedeck.background.transcribe.job``) exists (skipped
before); the first three events are checked now with the stitch worker alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from serverkit import drop_bucket, make_settings
from stitchkit import continuous_chunks, duration_ms, open_project, streaming_recording
from webhookkit import Received, Receiver

NO_TRANSCRIBER = importlib.util.find_spec("tapedeck.background.transcribe.job") is None
TERMINAL = {"transcription.completed", "transcription.failed"}


def _about(req: Received, rec_id: str) -> bool:
    data = req.json()["data"]
    return rec_id in (data.get("id"), data.get("recording_id"))


def _run(weed: Any, tmp_path: Path, until: set[str]) -> list[str]:
    """Record, upload and finalize with worker + dispatcher running; the distinct event types
    the receiver got about the recording (first arrival order, every signature verified),
    once one of ``until`` arrived."""
    receiver = Receiver()
    project = open_project(make_settings(weed, tmp_path / "data"))
    app = project.app
    try:
        secret = app.domain.webhooks.create(project.principal, receiver.url, ["*"]).secret
        app.start(["worker", "dispatcher"])
        chunks = [c.data for c in continuous_chunks(12.0, 4000)]
        rec_id = streaming_recording(project, chunks, duration_ms(12.0))
        assert receiver.wait_for(lambda rs: any(
            r.json()["type"] in until and _about(r, rec_id) for r in rs), 600)
        first_arrivals: dict[str, Received] = {}
        for req in receiver.requests:
            if _about(req, rec_id):
                Webhook(secret).verify(req.body, req.headers)
                first_arrivals.setdefault(req.webhook_id, req)
        return [r.json()["type"] for r in first_arrivals.values()]
    finally:
        receiver.close()
        app.close(grace=2.0)
        drop_bucket(weed, app.settings.s3_bucket)


def test_upload_events_arrive_in_order(weed: Any, tmp_path: Path) -> None:
    types = _run(weed, tmp_path, {"transcription.queued"})
    assert types[:3] == ["recording.created", "recording.uploaded", "transcription.queued"]


@pytest.mark.skipif(NO_TRANSCRIBER, reason="the transcription job is not built yet")
def test_full_run_events_arrive_in_order(weed: Any, tmp_path: Path) -> None:
    types = _run(weed, tmp_path, TERMINAL)
    assert types == ["recording.created", "recording.uploaded", "transcription.queued",
                     "transcription.started", "transcription.completed"], types
    assert sum(t in TERMINAL for t in types) == 1
