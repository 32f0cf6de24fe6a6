"""``grpc_api._convert``: the shared enum and page-size decoding of every servicer."""

from __future__ import annotations

import pytest

from tapedeck.errors import TapedeckError
from tapedeck.grpc_api import _convert as cv
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import webhook_pb2 as wpb


def test_enum_name_strips_prefix_and_maps_unspecified_to_none() -> None:
    state = dpb.DeviceState.Value("DEVICE_STATE_LOW_BATTERY")
    assert cv.enum_name(dpb.DeviceState.DESCRIPTOR, "DEVICE_STATE_", state,
                        "device_state") == "low_battery"
    assert cv.enum_name(wpb.DeliveryStatus.DESCRIPTOR, "DELIVERY_STATUS_", 0, "status") is None


def test_unknown_enum_number_is_invalid_request_naming_the_field() -> None:
    with pytest.raises(TapedeckError) as caught:
        cv.enum_name(dpb.DeviceState.DESCRIPTOR, "DEVICE_STATE_", 999, "device_state")
    assert caught.value.type == "invalid_request"
    assert caught.value.details == {"field": "device_state"}
    assert caught.value.message == "Unknown device_state 999."


def test_codec_and_status_defaults() -> None:
    assert cv.codec_name(0) == "opus"
    assert cv.status_name(0) is None
    with pytest.raises(TapedeckError) as caught:
        cv.codec_name(999)
    assert caught.value.details == {"field": "codec"}


def test_page_limit() -> None:
    assert cv.page_limit(0) == 25
    assert cv.page_limit(7) == 7
    with pytest.raises(TapedeckError) as caught:
        cv.page_limit(-1)
    assert caught.value.details == {"field": "page_size"}
