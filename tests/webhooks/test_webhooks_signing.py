"""Signatures verify with the `standardwebhooks` reference library; tampering, a wrong
secret or a stale timestamp do not. Secrets are shown once and never stored in clear."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tapedeck.clock import SystemClock
from tapedeck.webhooks import signing
from tapedeck.webhooks.secretbox import KEY_FILE, SecretBox

from webhookkit import Receiver, make_env


def test_secret_format_is_what_reference_libraries_read() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32
    assert signing.secret_key(secret) == base64.b64decode(secret[6:])
    assert len(signing.secret_key(secret)) == 24
    assert signing.new_secret() != secret
    with pytest.raises(ValueError, match="webhook secret is not base64"):
        signing.secret_key("whsec_not base64!")


def test_delivered_request_verifies_with_reference_library(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        with make_env(tmp_path, clock=SystemClock()) as env:
            created = env.webhooks.create(env.principal, receiver.url, ["recording.created"])
            [event_id] = env.emit("recording.created", data={"id": "rec_1", "name": "Ünïcode"})
            env.dispatcher().drain()
            assert receiver.wait_for(lambda r: len(r) == 1, 10)
            req = receiver.requests[0]
            hook = Webhook(created.secret)
            payload = hook.verify(req.body, req.headers)
            assert payload == {"id": event_id, "type": "recording.created",
                               "created_at": payload["created_at"],
                               "data": {"id": "rec_1", "name": "Ünïcode"}}
            assert req.headers["webhook-id"] == event_id
            assert req.headers["content-type"] == "application/json"
            sig = req.headers["webhook-signature"]
            assert sig.startswith("v1,")

            tampered = req.body.replace(b"rec_1", b"rec_2")
            with pytest.raises(WebhookVerificationError, match="No matching signature found"):
                hook.verify(tampered, req.headers)
            with pytest.raises(WebhookVerificationError, match="No matching signature found"):
                Webhook(signing.new_secret()).verify(req.body, req.headers)
            with pytest.raises(WebhookVerificationError, match="No matching signature found"):
                hook.verify(req.body, {**req.headers, "webhook-id": "evt_other"})
    finally:
        receiver.close()


@pytest.mark.parametrize(("age_s", "ok"), [(-290, True), (290, True), (-310, False),
                                           (310, False), (3600, False)])
def test_timestamp_tolerance_is_five_minutes(age_s: int, ok: bool) -> None:
    """A correctly signed message whose timestamp is off by more than 5 min is rejected."""
    secret = signing.new_secret()
    body = signing.envelope("evt_x", "recording.created", "2026-01-01T00:00:00.000Z", {"a": 1})
    headers = signing.signed_headers(secret, "evt_x", int(time.time()) - age_s, body)
    hook = Webhook(secret)
    if ok:
        assert hook.verify(body, headers)["id"] == "evt_x"
    else:
        too = "old" if age_s > 0 else "new"
        with pytest.raises(WebhookVerificationError, match=f"Message timestamp too {too}"):
            hook.verify(body, headers)


def test_our_signature_equals_reference_signature() -> None:
    from datetime import UTC, datetime

    secret = signing.new_secret()
    body = b'{"id":"evt_1"}'
    ours = signing.signature(secret, "evt_1", 1767225600, body)
    ref = Webhook(secret).sign("evt_1", datetime.fromtimestamp(1767225600, UTC), body.decode())
    assert ours == ref


def test_secret_shown_once_and_never_stored_in_clear(tmp_path: Path) -> None:
    with make_env(tmp_path) as env:
        created = env.webhooks.create(env.principal, "https://hooks.example.com/x",
                                      ["recording.uploaded"])
        secret = created.secret
        assert created.to_json()["secret"] == secret
        fetched = env.webhooks.get(env.principal, created.endpoint.id)
        assert "secret" not in fetched.to_json()
        assert fetched.secret_hint == "whsec_…" + secret[-4:]
        listed = env.webhooks.list(env.principal).to_json()
        assert secret not in json.dumps(listed)
        env.db.read().execute("PRAGMA wal_checkpoint(FULL)")
        data_dir = env.settings.data_dir
        raw = b"".join(p.read_bytes() for p in data_dir.iterdir()
                       if p.name.startswith("tapedeck.db"))
        key_part = secret[len("whsec_"):]
        assert secret.encode() not in raw and key_part.encode() not in raw
        assert signing.secret_key(secret) not in raw
        sealed = env.rows("SELECT secret_sealed FROM webhook_endpoints")[0][0]
        assert sealed.startswith("v1.")
        key_file = data_dir / KEY_FILE
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        box = SecretBox.from_data_dir(data_dir)
        assert box.open(sealed, created.endpoint.id) == secret
        # bound to its endpoint id
        with pytest.raises(ValueError, match="sealed secret does not open with this key"):
            box.open(sealed, "wh_other")
        # and to this deployment's key
        with pytest.raises(ValueError, match="sealed secret does not open with this key"):
            SecretBox(os.urandom(32)).open(sealed, created.endpoint.id)
