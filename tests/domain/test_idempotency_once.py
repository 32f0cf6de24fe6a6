"""``Idempotency.once``, the one entry point REST and gRPC run idempotent requests through,
on the in-process domain (MemoryStore + ManualClock)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tapedeck.auth import Principal
from tapedeck.domain.idempotency import SEALED_FIELD, StoredResponse, fingerprint, scope_of
from tapedeck.errors import TapedeckError

from domainkit import World

FP = fingerprint("test.op", {"n": 1})


def counting(status: int = 201, **extra: str) -> tuple[list[int], Callable[[], StoredResponse]]:
    runs: list[int] = []

    def call() -> StoredResponse:
        runs.append(1)
        return StoredResponse(status, {"run": len(runs), **extra})

    return runs, call


def stored_bodies(w: World) -> list[str]:
    return [r[0] for r in w.db.read().execute(
        "SELECT response_body FROM idempotency_keys WHERE response_body IS NOT NULL")]


def test_without_a_key_it_just_runs_and_stores_nothing(domain_world: World) -> None:
    w = domain_world
    runs, call = counting(token="tok_clear")
    for _ in range(2):
        outcome = w.domain.idempotency.once(w.principal(), None, FP, call,
                                            secret_field="token")
        assert outcome.replayed is False
    assert outcome.response == StoredResponse(201, {"run": 2, "token": "tok_clear"})
    assert runs == [1, 1]
    assert w.db.read().execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0] == 0


def test_first_call_runs_and_the_same_request_replays(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    runs, call = counting()
    first = w.domain.idempotency.once(p, "k-1", FP, call)
    again = w.domain.idempotency.once(p, "k-1", FP, call)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.response == first.response == StoredResponse(201, {"run": 1})
    assert runs == [1]
    _, other = w.device()  # another credential: its own key namespace
    assert w.domain.idempotency.once(other, "k-1", FP, call).replayed is False


def test_the_key_with_another_request_is_reused(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    runs, call = counting()
    w.domain.idempotency.once(p, "k-1", FP, call)
    with pytest.raises(TapedeckError) as info:
        w.domain.idempotency.once(p, "k-1", fingerprint("test.op", {"n": 2}),
                                  call)
    assert (info.value.type, info.value.kind.http_status) == ("idempotency_key_reused", 422)
    assert runs == [1]


def test_the_key_while_its_first_request_runs_conflicts(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    seen: list[str] = []

    def outer() -> StoredResponse:
        with pytest.raises(TapedeckError) as info:
            w.domain.idempotency.once(p, "k-1", FP, lambda: StoredResponse(200, {}))
        seen.append(info.value.type)
        assert info.value.kind.http_status == 409
        return StoredResponse(200, {"outer": True})

    assert w.domain.idempotency.once(p, "k-1", FP, outer).replayed is False
    assert seen == ["idempotency_conflict"]
    assert w.domain.idempotency.once(p, "k-1", FP, outer).response.body == {"outer": True}


@pytest.mark.parametrize("field", ["Idempotency-Key", "idempotency_key"])
def test_a_malformed_key_is_invalid_on_the_transport_s_field(domain_world: World,
                                                             field: str) -> None:
    w = domain_world
    runs, call = counting()
    for bad in ("", "has space", "x" * 256, "é"):
        with pytest.raises(TapedeckError) as info:
            w.domain.idempotency.once(w.principal(), bad, FP, call,
                                      key_field=field)
        assert (info.value.type, info.value.details["field"]) == ("invalid_request", field)
    assert runs == []


def test_a_secret_is_sealed_at_rest_and_opened_on_replay(domain_world: World) -> None:
    w = domain_world
    p: Principal = w.principal()
    made: list[str] = []

    def create_key() -> StoredResponse:
        created = w.domain.keys.create(p, scopes=["recordings:read"])
        made.append(created.secret)
        return StoredResponse(201, created.to_json())

    fp = fingerprint("keys.create", {"scopes": ["recordings:read"]})
    first = w.domain.idempotency.once(p, "k-secret", fp, create_key, secret_field="secret")
    again = w.domain.idempotency.once(p, "k-secret", fp, create_key, secret_field="secret")
    assert made and len(made) == 1
    secret = made[0]
    assert (first.replayed, again.replayed) == (False, True)
    assert first.response == again.response
    assert first.response.body["secret"] == secret

    [raw] = stored_bodies(w)
    assert secret not in raw
    at_rest = json.loads(raw)
    assert "secret" not in at_rest
    # The stored format (field name, binding) is the one rows written earlier use.
    bound_to = f"idempotency:{scope_of(p)}:k-secret"
    assert w.domain.secret_box.open(at_rest[SEALED_FIELD], bound_to) == secret
    assert w.principal(again.response.body["secret"]).credential_id == \
        first.response.body["id"]


def test_a_sealed_secret_opens_only_for_its_credential_and_key(domain_world: World) -> None:
    w = domain_world
    p = w.principal()
    def call() -> StoredResponse:
        return StoredResponse(200, {"token": "dtok_secret", "id": "dev_1"})

    for replayed in (False, True):
        outcome = w.domain.idempotency.once(p, "k-1", FP, call, secret_field="token")
        assert outcome.replayed is replayed
        # the secret comes last, fresh or replayed, as the REST routes always answered it
        assert list(outcome.response.body.items()) == [("id", "dev_1"), ("token", "dtok_secret")]
    [raw] = stored_bodies(w)
    sealed = json.loads(raw)[SEALED_FIELD]
    with pytest.raises(ValueError, match="sealed secret does not open with this key"):
        w.domain.secret_box.open(sealed, f"idempotency:{scope_of(p)}:k-2")
