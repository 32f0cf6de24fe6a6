"""Issue 15 item 7: after DELETE of a recording its stored events are redacted once their
deliveries are done (real SQLite file, real store, real dispatcher and HTTP receiver)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tapedeck.background.sweeper import Sweeper
from tapedeck.clock import ManualClock
from tapedeck.domain.expiry import Expiry
from tapedeck.domain.recordings import NewRecording
from tapedeck.domain.redaction import EventRedaction
from tapedeck.domain.retention import Retention, RetentionPolicy
from tapedeck.infra.weed import ManagedWeed
from tapedeck.webhooks.dispatcher import Dispatcher, RetrySchedule
from tapedeck.webhooks.netguard import NetGuard, NetPolicy
from tapedeck.webhooks.secretbox import SecretBox
from tapedeck.webhooks.transport import GuardedTransport

from serverkit import drop_bucket, make_settings
from stitchkit import Project, open_project
from webhookkit import Receiver

SECRET = "Alice Example, session 3"


@pytest.fixture
def project(weed: ManagedWeed, tmp_path: Path) -> Iterator[Project]:
    proj = open_project(make_settings(weed, tmp_path / "data"), clock=ManualClock())
    try:
        yield proj
    finally:
        proj.app.close(grace=1.0)
        drop_bucket(weed, proj.app.settings.s3_bucket)


def dispatcher(project: Project) -> Dispatcher:
    app = project.app
    return Dispatcher(app.db, app.clock, SecretBox.from_data_dir(app.settings.data_dir),
                      GuardedTransport(NetGuard(NetPolicy(allow_private=True)), None),
                      timeout_s=5.0, rng=random.Random(7), schedule=RetrySchedule(jitter=0))


def event_data(project: Project, rec_id: str) -> dict[str, dict[str, object]]:
    rows = project.app.db.read().execute(
        "SELECT type, data FROM events WHERE recording_id = ?", [rec_id]).fetchall()
    return {t: json.loads(d) for t, d in rows}


def create(project: Project) -> str:
    domain, p = project.app.domain, project.principal
    return domain.recordings.create(p, NewRecording(
        name=SECRET, metadata={"patient": SECRET})).recording.id


def test_events_are_redacted_once_their_deliveries_are_done(project: Project) -> None:
    answers = iter([500, 200])
    receiver = Receiver(responder=lambda r: (next(answers, 200), {}, b""))
    domain, p, clock = project.app.domain, project.principal, project.app.clock
    assert isinstance(clock, ManualClock)
    try:
        domain.webhooks.create(p, receiver.url, ["recording.created", "recording.deleted"])
        rec_id = create(project)
        d = dispatcher(project)
        d.drain()  # the first attempt fails: the delivery stays pending (retry later)
        assert receiver.wait_for(lambda rs: len(rs) == 1)
        domain.recordings.delete(p, rec_id)
        redaction = EventRedaction(domain.ctx)
        assert redaction.sweep() == {rec_id: 0}  # still owed to the endpoint: kept whole
        assert event_data(project, rec_id)["recording.created"]["name"] == SECRET
        assert redaction.pending() == 1
        clock.advance(timedelta(hours=1))
        d.drain()  # the retry delivers the full event, then recording.deleted
        assert receiver.wait_for(lambda rs: len(rs) == 3)
        assert SECRET in receiver.requests[1].body.decode()
        assert redaction.sweep() == {rec_id: 1}
        data = event_data(project, rec_id)
        assert data["recording.created"] == {"id": rec_id, "status": "pending",
                                             "redacted": True}
        assert data["recording.deleted"] == {"id": rec_id, "deleted": True}
        assert redaction.pending() == 0 and redaction.sweep() == {}
        rows = project.app.db.read().execute("SELECT data FROM events").fetchall()
        assert rows and SECRET not in " ".join(str(r[0]) for r in rows)
    finally:
        receiver.close()


def test_events_nobody_waits_for_are_redacted_by_the_delete(project: Project) -> None:
    """No endpoint: once the dispatcher fanned the event out (to nobody), DELETE redacts it
    in its own transaction; not yet fanned out, the sweeper does it afterwards."""
    domain, p = project.app.domain, project.principal
    fanned, queued = create(project), create(project)
    d = dispatcher(project)
    d.drain()
    late = create(project)  # still in webhook_outbox when deleted
    for rec_id in (fanned, queued, late):
        domain.recordings.delete(p, rec_id)
    assert event_data(project, fanned)["recording.created"]["redacted"] is True
    assert event_data(project, queued)["recording.created"]["redacted"] is True
    assert event_data(project, late)["recording.created"]["name"] == SECRET
    d.drain()
    app = project.app
    sweeper = Sweeper(Expiry(app.domain.ctx), Retention(app.domain.ctx, RetentionPolicy.
                      from_settings(app.settings)), 1.0, redaction=EventRedaction(app.domain.ctx))
    assert sweeper.run_once().redacted == {late: 1}  # the sweeper role's round
    assert event_data(project, late)["recording.created"]["redacted"] is True
