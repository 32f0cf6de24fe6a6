"""Every setting is checked in one place (``tapedeck.validate.check_settings``), first thing
in ``App.open`` whatever the roles: one ``invalid_request`` naming the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tapedeck.app import App
from tapedeck.background.worker import HANDLER_FACTORIES
from tapedeck.errors import TapedeckError
from tapedeck.infra.jobs import JOB_KINDS
from tapedeck.settings import Settings
from tapedeck.validate import check_settings


def test_the_defaults_pass() -> None:
    assert check_settings(Settings()) is None  # loopback, no TLS files: plaintext


@pytest.mark.parametrize(("field", "value", "named"), [
    ("webhooks_timeout_s", 0, "webhooks_timeout_s"),
    ("webhooks_workers", 0, "webhooks_workers"),
    ("webhooks_per_endpoint", -1, "webhooks_per_endpoint"),
    ("worker_lanes", "stitch:0", "worker_lanes"),
    ("worker_lanes", "nosuchkind:1", "worker_lanes"),
    ("whisper_decoding", "quick", "whisper_decoding"),
    ("secret_key", "too short", "secret_key"),
    ("host", "0.0.0.0", "tls_cert_file"),  # plaintext off loopback
])
def test_an_unusable_setting_is_refused_by_name(field: str, value: Any, named: str) -> None:
    with pytest.raises(TapedeckError) as info:
        check_settings(Settings(**{field: value}))
    assert info.value.type == "invalid_request" and info.value.details["field"] == named


def test_whisper_decoding_names_the_choices_and_the_variable() -> None:
    with pytest.raises(TapedeckError, match=r"fast, accurate, not 'quick' \(TAPEDECK_WHISPER"):
        check_settings(Settings(whisper_decoding="quick"))


def test_every_handler_kind_may_be_named_in_worker_lanes() -> None:
    assert set(JOB_KINDS) == set(HANDLER_FACTORIES)
    check_settings(Settings(worker_lanes=",".join(f"{k}:1" for k in JOB_KINDS)))


def test_app_open_refuses_before_anything_starts(tmp_path: Path) -> None:
    """Even a setting only the dispatcher uses stops a process of any role, before the data
    directory (or a store, a database) is touched."""
    data_dir = tmp_path / "data"
    with pytest.raises(TapedeckError, match="TAPEDECK_WEBHOOKS_WORKERS must be at least 1"):
        App.open(Settings(data_dir=data_dir, webhooks_workers=0), roles=["worker"])
    assert not data_dir.exists()
