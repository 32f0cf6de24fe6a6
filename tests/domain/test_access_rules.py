"""Who may see and do what, idempotency keys, and webhook endpoint rules, on the in-process
domain (MemoryStore + ManualClock)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tapedeck.auth import create_project
from tapedeck.domain.idempotency import LEASE, TTL, StoredResponse
from tapedeck.errors import TapedeckError

from domainkit import World, open_world


def test_device_tokens_see_only_their_devices_recordings(domain_world: World) -> None:
    w = domain_world
    _, dev_a = w.device()
    _, dev_b = w.device()
    mine = w.streaming(dev_a)
    w.streaming(dev_b)
    assert [r.id for r in w.domain.recordings.list(dev_a).data] == [mine.id]
    with pytest.raises(TapedeckError, match="Recording not found") as info:
        w.domain.recordings.get(dev_b, mine.id)  # not found, never "forbidden"
    assert info.value.details == {"recording_id": mine.id}
    with pytest.raises(TapedeckError, match="Recording not found"):
        w.domain.chunks.upload(dev_b, mine.id, 1, [b"not yours"])
    assert len(w.domain.recordings.list(w.principal()).data) == 2  # the secret key sees all


def test_another_projects_recordings_do_not_exist(domain_world: World) -> None:
    w = domain_world
    rec = w.streaming()
    _, other_key = create_project(w.db, w.clock, "other")
    other = w.principal(other_key)
    with pytest.raises(TapedeckError, match="Recording not found"):
        w.domain.recordings.get(other, rec.id)
    assert w.domain.recordings.list(other).data == []


def test_restricted_keys_hold_only_their_scopes(domain_world: World) -> None:
    w = domain_world
    admin = w.principal()
    reader = w.principal(w.domain.keys.create(admin, scopes=["recordings:read"]).secret)
    rec = w.streaming()
    assert w.domain.recordings.get(reader, rec.id).id == rec.id
    with pytest.raises(TapedeckError, match="lacks the recordings:write scope") as info:
        w.domain.recordings.finalize(reader, rec.id, 1, 1, None)
    assert (info.value.type, info.value.details) == ("forbidden", {"scope": "recordings:write"})
    with pytest.raises(TapedeckError, match="Only a secret key can manage API keys"):
        w.domain.keys.create(reader, scopes=["recordings:read"])
    with pytest.raises(TapedeckError, match="Unknown scopes: everything") as bad:
        w.domain.keys.create(admin, scopes=["everything"])
    assert bad.value.details["unknown_scopes"] == ["everything"]


def test_revoked_key_is_unauthorized(domain_world: World) -> None:
    w = domain_world
    admin = w.principal()
    made = w.domain.keys.create(admin, scopes=["recordings:read"])
    w.domain.keys.revoke(admin, made.key.id)
    with pytest.raises(TapedeckError) as info:
        w.principal(made.secret)
    assert info.value.type == "unauthorized"


def test_idempotency_replays_refuses_reuse_and_expires(domain_world: World) -> None:
    w = domain_world
    store = w.domain.idempotency.store
    runs: list[int] = []

    def call() -> StoredResponse:
        runs.append(1)
        return StoredResponse(201, {"n": len(runs)})

    first = store.run("scope", "key", "fp-1", call)
    again = store.run("scope", "key", "fp-1", call)
    assert (first.replayed, again.replayed, again.response) == (False, True, first.response)
    with pytest.raises(TapedeckError) as reused:
        store.run("scope", "key", "fp-2", call)
    assert reused.value.type == "idempotency_key_reused"
    assert store.run("other scope", "key", "fp-2", call).replayed is False  # per credential
    w.clock.advance(TTL + timedelta(seconds=1))
    assert store.run("scope", "key", "fp-2", call).replayed is False  # forgotten after 24 h
    assert len(runs) == 3


def test_idempotency_running_claim_conflicts_until_its_lease_ends(domain_world: World) -> None:
    w = domain_world
    store = w.domain.idempotency.store
    claim = store.begin("scope", "key", "fp")
    assert isinstance(claim, str)
    with pytest.raises(TapedeckError) as running:
        store.begin("scope", "key", "fp")
    assert running.value.type == "idempotency_conflict"
    w.clock.advance(LEASE)  # the first process died: its lease ran out
    assert isinstance(store.begin("scope", "key", "fp"), str)


def test_a_failed_request_frees_its_key(domain_world: World) -> None:
    store = domain_world.domain.idempotency.store

    def fails() -> StoredResponse:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.run("scope", "key", "fp", fails)
    assert store.run("scope", "key", "fp",
                     lambda: StoredResponse(200, {})).replayed is False


@pytest.mark.parametrize(("url", "match"), [
    ("ftp://hooks.example.com/", "absolute http"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("https://hooks.example.com/#frag", "credentials or a #fragment"),
    ("https://hooks.example.com:99999/", "invalid port"),
    ("", "non-empty URL"),
])
def test_webhook_urls_are_checked(domain_world: World, url: str, match: str) -> None:
    w = domain_world
    with pytest.raises(TapedeckError, match=match) as info:
        w.domain.webhooks.create(w.principal(), url, ["*"])
    assert info.value.details["field"] == "url"
    assert w.domain.webhooks.list(w.principal()).data == []


def test_webhook_private_addresses_refused_by_policy(tmp_path: Path,
                                                     migrated_sqlite: Path) -> None:
    with open_world(tmp_path / "d", migrated_sqlite, webhooks_allow_private=False) as w:
        with pytest.raises(TapedeckError, match=r"points to a .* address") as info:
            w.domain.webhooks.create(w.principal(), "http://127.0.0.1:9/x", ["*"])
        assert info.value.details["reason"]


def test_webhook_events_secret_and_soft_delete(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    with pytest.raises(TapedeckError, match="Unknown event types: nope") as unknown:
        w.domain.webhooks.create(p, "https://hooks.example.com/", ["nope"])
    assert unknown.value.details["unknown_events"] == ["nope"]
    made = w.domain.webhooks.create(p, "https://hooks.example.com/",
                                    ["recording.created", "recording.created"])
    assert made.secret.startswith("whsec_")
    assert list(made.endpoint.events) == ["recording.created"]
    stored = w.db.read().execute("SELECT * FROM webhook_endpoints").fetchone()
    assert made.secret not in repr(stored)  # sealed at rest, never stored in the clear
    w.domain.webhooks.delete(p, made.endpoint.id)
    with pytest.raises(TapedeckError) as gone:
        w.domain.webhooks.get(p, made.endpoint.id)
    assert gone.value.type == "webhook_not_found"
