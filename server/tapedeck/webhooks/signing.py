"""Standard Webhooks signing (https://www.standardwebhooks.com).

Contract:

- A secret is ``whsec_`` + base64 (standard alphabet, no padding needed) of 24 random bytes;
  the HMAC key is the base64-decoded part after the prefix, exactly as the reference
  libraries read it.
- The signed content is ``f"{webhook_id}.{timestamp}.{body}"`` where ``timestamp`` is integer
  seconds since the epoch and ``body`` the exact bytes sent; the signature header is
  ``v1,<base64 HMAC-SHA256>``.
- ``webhook-id`` is the event id (``evt_…``): the same on every retry and replay, so a
  receiver can de-duplicate; ``webhook-timestamp`` is the time of the attempt.

Verifying is the receiver's side: use a Standard Webhooks library (the tests check every
signature with ``standardwebhooks``, which also enforces the 5-minute timestamp tolerance).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 24


def new_secret() -> str:
    """A fresh signing secret (``whsec_`` + 32 base64 characters)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: its base64 part decoded. ValueError if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secrets start with whsec_")
    raw = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError("webhook secret is not base64") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def secret_hint(secret: str) -> str:
    """A safe reminder of a secret: ``whsec_…`` and its last four characters."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }


def envelope(event_id: str, type: str, created_at: str, data: dict[str, Any]) -> bytes:
    """The request body: ``{"id", "type", "created_at", "data"}`` as compact JSON bytes.

    Deterministic for a given event, so every retry and replay sends identical bytes."""
    return json.dumps({"id": event_id, "type": type, "created_at": created_at, "data": data},
                      separators=(",", ":"), ensure_ascii=False).encode()
