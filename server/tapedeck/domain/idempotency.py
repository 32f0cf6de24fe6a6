"""``Idempotency-Key``: one stored response per (credential, key), shared by REST and gRPC.

Contract (``api.md``):

- A request carrying a key the caller has not used in the last 24 h runs normally; if it
  succeeds, its response (status and JSON body) is stored under the key.
- The same key with the same request (same ``fingerprint``) within 24 h → the stored response,
  replayed, with no new work.
- The same key with a different request → ``idempotency_key_reused`` (422).
- The same key while the first request is still running → ``idempotency_conflict`` (409).
  A running claim is a lease (``LEASE``): if its process died, the key is free again later.

Only responses of requests that took effect are stored: a request that fails (any error)
releases its key, because domain errors change nothing (every write is one transaction), so
the caller can fix the cause and retry with the same key. Keys are scoped to the caller's
credential (``scope_of``), so two devices can never see each other's responses.

The fingerprint is computed from the *operation* and its *normalized arguments*
(``fingerprint``), not from transport bytes, so JSON key order, whitespace or an explicit
default do not make two identical requests "different".

``Idempotency.once`` is the one entry point: REST routes and gRPC servicers call it the same
way and only translate its ``Outcome`` (HTTP: ``Idempotent-Replayed: true``; gRPC: the
message rebuilt from the stored body). A response that carries a secret shown once (a device
token, an API key or webhook secret) names it (``secret_field``): the stored response holds
it only sealed (``SecretBox``, bound to the scope and key, under ``SEALED_FIELD``), so a
replay returns the same secret while no plaintext secret ever reaches the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tapedeck.auth import Principal
from tapedeck.clock import Clock, iso
from tapedeck.domain.recordings import NewRecording
from tapedeck.errors import error, invalid
from tapedeck.infra.db import Database
from tapedeck.webhooks.secretbox import SecretBox

TTL = timedelta(hours=24)
LEASE = timedelta(minutes=10)
MAX_KEY_LENGTH = 255
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Where a stored response holds its sealed secret (stored rows use it: never rename).
SEALED_FIELD = "sealed_secret"


@dataclass(frozen=True)
class StoredResponse:
    """A response as first sent: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What ``Idempotency.once`` (and ``IdempotencyStore.run``) returns: the response and
    whether it is a replay."""

    response: StoredResponse
    replayed: bool


def check_key(key: str, field: str = "Idempotency-Key") -> str:
    """A valid key (1..255 visible ASCII characters), else ``invalid_request``."""
    if not _KEY_RE.match(key):
        raise invalid(field, f"{field} must be 1 to {MAX_KEY_LENGTH} visible ASCII characters.")
    return key


def scope_of(p: Principal) -> str:
    """The key namespace of a credential (upload tokens: per recording)."""
    return f"{p.project_id}/{p.kind}/{p.credential_id}/{p.recording_id or ''}"


def fingerprint(operation: str, args: Mapping[str, Any]) -> str:
    """SHA-256 of the operation and its arguments, canonically JSON-encoded."""
    canonical = json.dumps({"op": operation, "args": args}, sort_keys=True,
                           separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_fingerprint(req: NewRecording) -> str:
    """The fingerprint of a create-recording request, the same over REST and gRPC (so a key
    first used over one transport is replayed, not "reused", over the other)."""
    return fingerprint("recordings.create", dataclasses.asdict(req))


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


class Idempotency:
    """Requests run at most once per ``Idempotency-Key``, for every transport."""

    def __init__(self, store: IdempotencyStore, box: SecretBox) -> None:
        self.store = store
        self._box = box

    def once(self, p: Principal, key: str | None, fp: str,
             call: Callable[[], StoredResponse], *, secret_field: str | None = None,
             key_field: str = "Idempotency-Key") -> Outcome:
        """Run ``call`` for ``p``: without a ``key``, just run it; with one (checked:
        ``invalid_request`` on ``key_field``), at most once per credential and key (module
        docstring). ``secret_field``: the body field holding a secret, sealed at rest."""
        if key is None:
            return Outcome(call(), replayed=False)
        checked, scope = check_key(key, key_field), scope_of(p)
        if secret_field is None:
            return self.store.run(scope, checked, fp, call)
        field, bound_to = secret_field, f"idempotency:{scope}:{checked}"

        def sealed() -> StoredResponse:
            result = call()
            body = dict(result.body)
            body[SEALED_FIELD] = self._box.seal(body.pop(field), bound_to)
            return StoredResponse(result.status, body)

        outcome = self.store.run(scope, checked, fp, sealed)
        body = dict(outcome.response.body)
        body[field] = self._box.open(body.pop(SEALED_FIELD), bound_to)
        return Outcome(StoredResponse(outcome.response.status, body), outcome.replayed)


class IdempotencyStore:
    """Idempotency records in SQLite (table ``idempotency_keys``)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def run(self, scope: str, key: str, fp: str,
            call: Callable[[], StoredResponse]) -> Outcome:
        """Run ``call`` at most once per (scope, key) within ``TTL`` (see module docstring)."""
        claim = self.begin(scope, key, fp)
        if isinstance(claim, StoredResponse):
            return Outcome(claim, replayed=True)
        try:
            response = call()
        except BaseException:
            self.release(scope, key, claim)
            raise
        self.finish(scope, key, claim, response)
        return Outcome(response, replayed=False)

    def begin(self, scope: str, key: str, fp: str) -> StoredResponse | str:
        """Claim the key and return the claim id (the caller runs the request), or return
        the stored response; raise ``idempotency_key_reused`` / ``idempotency_conflict``."""
        now = self._clock.now()
        claim = secrets.token_hex(8)
        with self._db.write() as tx:
            tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", [iso(now - TTL)])
            row = tx.execute(
                "SELECT fingerprint, state, response_status, response_body, lease_until"
                " FROM idempotency_keys WHERE scope = ? AND key = ?", [scope, key]).fetchone()
            if row is not None:
                stored = _existing(row, fp, now)
                if stored is not None:
                    return stored
                tx.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?",
                           [scope, key])
            tx.execute(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, state, claim,"
                " created_at, lease_until) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                [scope, key, fp, claim, iso(now), iso(now + LEASE)])
        return claim

    def finish(self, scope: str, key: str, claim: str, response: StoredResponse) -> None:
        """Store the response of a successful request under the key it still holds."""
        with self._db.write() as tx:
            tx.execute(
                "UPDATE idempotency_keys SET state = 'done', response_status = ?,"
                " response_body = ?, lease_until = NULL"
                " WHERE scope = ? AND key = ? AND claim = ?",
                [response.status, json.dumps(response.body), scope, key, claim])

    def release(self, scope: str, key: str, claim: str) -> None:
        """Forget the claim of a request that failed (nothing happened; the key is free)."""
        with self._db.write() as tx:
            tx.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND claim = ?"
                       " AND state = 'running'", [scope, key, claim])


def _existing(row: tuple[Any, ...], fp: str, now: datetime) -> StoredResponse | None:
    """The stored response of a live record; None if the record is an abandoned claim
    (its lease ran out: the process that held it died), which the caller takes over."""
    stored_fp, state, status, body, lease_until = row
    if state == "running" and (lease_until is None or lease_until <= iso(now)):
        return None
    if stored_fp != fp:
        raise error("idempotency_key_reused",
                    "This Idempotency-Key was already used with a different request.")
    if state == "done":
        return StoredResponse(int(status), json.loads(body))
    raise error("idempotency_conflict",
                "A request with this Idempotency-Key is still running; retry later.")
