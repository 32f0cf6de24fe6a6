"""The REST schemas' enumerations (which document the API in OpenAPI) equal the domain's.

(``gateway.schemas`` and ``gateway.webhooks`` also assert theirs at import time; asserts do
not run under ``python -O``, these tests always do.)
"""

from __future__ import annotations

from typing import get_args

from tapedeck.auth import ALL_SCOPES
from tapedeck.domain.devices import DEVICE_STATES
from tapedeck.domain.models import CODECS, RECORDING_STATUSES, TRANSCRIPTION_STATUSES
from tapedeck.gateway import devices, schemas, webhooks
from tapedeck.webhooks.models import ALL_EVENTS, DELIVERY_STATUSES, EVENT_TYPES


def test_device_states_match_the_domain() -> None:
    assert get_args(devices.DeviceState) == DEVICE_STATES


def test_scopes_match_auth() -> None:
    assert set(get_args(devices.Scope)) == ALL_SCOPES
    assert len(get_args(devices.Scope)) == len(ALL_SCOPES)


def test_recording_enumerations_match_the_domain() -> None:
    assert get_args(schemas.Codec) == CODECS
    assert get_args(schemas.RecordingStatus) == RECORDING_STATUSES
    assert get_args(schemas.TranscriptionStatus) == TRANSCRIPTION_STATUSES


def test_webhook_enumerations_match_the_domain() -> None:
    assert get_args(webhooks.EventType) == (ALL_EVENTS, *EVENT_TYPES)
    assert get_args(webhooks.DeliveryStatus) == DELIVERY_STATUSES
