"""The REST schemas' enumerations (which document the API in OpenAPI) equal the domain's."""

from __future__ import annotations

from typing import get_args

from tapedeck.auth import ALL_SCOPES
from tapedeck.domain.devices import DEVICE_STATES
from tapedeck.gateway import devices


def test_device_states_match_the_domain() -> None:
    assert get_args(devices.DeviceState) == DEVICE_STATES


def test_scopes_match_auth() -> None:
    assert set(get_args(devices.Scope)) == ALL_SCOPES
    assert len(get_args(devices.Scope)) == len(ALL_SCOPES)
