"""Structured logs: JSON lines (text on a real terminal), request ids recorded with jobs and
events in a real SQLite file, and redaction of every kind of Tapedeck secret."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tapedeck.auth import UploadTokens, hint, make_token
from tapedeck.clock import SystemClock
from tapedeck.domain.events import emit
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import enqueue
from tapedeck.infra.logs import (
    REDACTED,
    accept_request_id,
    build_handler,
    configure,
    redact,
    request_context,
    resolve_format,
)
from tapedeck.webhooks.signing import new_secret


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose only handler is ``build_handler('json')`` on a string buffer."""
    buf = io.StringIO()
    log = logging.getLogger("tapedeck.test-ops")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = build_handler("json", buf)
    log.addHandler(handler)
    try:
        yield log, buf
    finally:
        log.removeHandler(handler)
        log.propagate = True


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def all_secrets() -> list[str]:
    up = UploadTokens(os.urandom(32)).issue("prj_x", "rec_y", datetime.now(UTC) + timedelta(1))
    return [make_token("sk_test_"), make_token("sk_live_"), make_token("rk_test_"),
            make_token("dtok_live_"), up, new_secret()]


def test_json_lines_carry_the_request_id(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buf = logger
    log.info("outside %d", 1)
    with request_context("req-abc") as rid:
        log.warning("inside %s", "a request")
    assert rid == "req-abc"
    first, second = lines(buf)
    assert first["msg"] == "outside 1" and "request_id" not in first
    assert second == {**second, "level": "warning", "logger": "tapedeck.test-ops",
                      "msg": "inside a request", "request_id": "req-abc"}
    assert str(second["ts"]).endswith("Z")


def test_text_on_a_terminal_json_elsewhere(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty, (tmp_path / "f.log").open("w") as plain:
        assert resolve_format("auto", tty) == "text"
        assert resolve_format("auto", plain) == "json"
        assert resolve_format("auto", io.StringIO()) == "json"
        assert resolve_format("json", tty) == "json"
        log = logging.getLogger("tapedeck.test-tty")
        log.propagate = False
        handler = build_handler("auto", tty)
        log.addHandler(handler)
        try:
            with request_context("req-tty"):
                log.error("on a terminal")
            tty.flush()
        finally:
            log.removeHandler(handler)
            log.propagate = True
        out = os.read(master, 4096).decode()
    os.close(master)
    assert "ERROR" in out and "[req-tty] on a terminal" in out
    assert not out.lstrip().startswith("{")
    with pytest.raises(ValueError, match="log_format must be json, text or auto, not 'yaml'"):
        resolve_format("yaml", io.StringIO())


def test_every_kind_of_secret_is_redacted(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, buf = logger
    secrets = all_secrets()
    for secret in secrets:
        log.info("token in the message %s", secret)
        log.info("Authorization: Bearer " + secret.replace("_", "-"))  # not even prefix-shaped
        try:
            raise RuntimeError(f"failed with {secret}")
        except RuntimeError:
            log.exception("call failed")
    log.info("url %s", "http://h/v1/recordings/rec_1/chunks/3?token=abc.def&x=1")
    log.info("presigned %s", "http://s3/b/k?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=ab12")
    log.info("hints are safe: %s", hint(secrets[0]))
    text = buf.getvalue()
    for secret in secrets:
        assert secret not in text
        assert secret.replace("_", "-") not in text
        assert secret[-12:] not in text
    assert "abc.def" not in text and "AKIA" not in text and "ab12" not in text
    records = lines(buf)
    assert sum(REDACTED in str(r.get("exc", "")) for r in records) == len(secrets)
    assert records[-1]["msg"] == f"hints are safe: {hint(secrets[0])}"
    assert "sk_test_" + REDACTED in text and "whsec_" + REDACTED in text


def test_redact_leaves_ordinary_text_alone() -> None:
    ordinary = "recording rec_4f2a stitched: 12 chunks, job_stitcher_9x, set_up_done, up_to_date"
    assert redact(ordinary) == ordinary.replace("up_to_date", "up_" + REDACTED)
    assert redact("sk_live_ab") == "sk_live_ab"  # too short to be a credential


def test_incoming_request_ids_are_checked() -> None:
    assert accept_request_id("3f2c1a-client.42") == "3f2c1a-client.42"
    echoed = accept_request_id(None)
    assert accept_request_id(echoed) == echoed  # our own ids come back unchanged
    for bad in (None, "", "has space", "new\nline", "x" * 129, "quote\"d"):
        fresh = accept_request_id(bad)
        assert fresh.startswith("req_") and len(fresh) == 24
    assert accept_request_id(None) != accept_request_id(None)


def test_request_id_is_stored_with_jobs_and_events(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    clock = SystemClock()
    try:
        with request_context("req-finalize-7"), db.write() as tx:
            job_in = enqueue(tx, clock, "stitch", recording_id="rec_1")
            event_in = emit(tx, clock, "prj_1", "recording.uploaded", {}, "rec_1")
        with db.write() as tx:
            job_out = enqueue(tx, clock, "stitch", recording_id="rec_2")
            event_out = emit(tx, clock, "prj_1", "recording.created", {}, "rec_2")
        read = db.read()
        job_ids = dict(read.execute("SELECT id, request_id FROM jobs").fetchall())
        event_ids = dict(read.execute("SELECT id, request_id FROM events").fetchall())
        assert job_ids == {job_in: "req-finalize-7", job_out: None}
        assert event_ids == {event_in: "req-finalize-7", event_out: None}
    finally:
        db.close()


def test_configure_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    level = root.level
    before = list(root.handlers)
    try:
        first = configure("json", "warning", io.StringIO())
        second = configure("text", "info", io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert root.level == logging.INFO
    finally:
        root.removeHandler(second)
        root.setLevel(level)
    assert root.handlers == before
