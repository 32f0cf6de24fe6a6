"""``domain.cursors``: page cursors round-trip, and anything else is ``invalid_request``."""

from __future__ import annotations

import base64
import json

import pytest

from tapedeck.domain import cursors
from tapedeck.errors import TapedeckError


def _raw(data: object, separators: tuple[str, str] = (",", ":")) -> str:
    text = json.dumps(data, separators=separators).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def test_position_round_trip() -> None:
    cursor = cursors.encode_position("2026-03-01T09:00:00.000Z", "key_abc")
    assert "=" not in cursor
    assert cursors.decode_position(cursor) == ("2026-03-01T09:00:00.000Z", "key_abc")


def test_key_round_trip_keeps_the_type() -> None:
    assert cursors.decode_key(cursors.encode_key("wh_1"), str) == "wh_1"
    assert cursors.decode_key(cursors.encode_key(42), int) == 42


def test_cursors_issued_with_spaced_json_still_decode() -> None:
    assert cursors.decode_key(_raw({"k": 7}, (", ", ": ")), int) == 7


@pytest.mark.parametrize("cursor", [
    "garbage!", "", _raw([1, 2]), _raw("k"), _raw({"k": "7"}), _raw({"x": 7}),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
])
def test_not_a_key_cursor(cursor: str) -> None:
    with pytest.raises(TapedeckError) as caught:
        cursors.decode_key(cursor, int)
    assert caught.value.type == "invalid_request"
    assert caught.value.details == {"field": "cursor"}


@pytest.mark.parametrize("cursor", [
    _raw({"c": "yesterday", "i": "key_1"}), _raw({"c": 5, "i": "key_1"}),
    _raw({"c": "2026-03-01T09:00:00.000Z", "i": 5}), _raw({"c": "2026-03-01T09:00:00.000Z"}),
    cursors.encode_key("key_1"),
])
def test_not_a_position_cursor(cursor: str) -> None:
    with pytest.raises(TapedeckError) as caught:
        cursors.decode_position(cursor)
    assert caught.value.details == {"field": "cursor"}
