"""``App.open`` builds the process's one ``Runtime`` and binds the HTTP socket before the
domain: settings never change afterwards, and a port 0 is already the bound one wherever
settings are read (the domain's chunk upload URLs included)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapedeck.app import App
from tapedeck.auth import create_project
from tapedeck.domain.recordings import NewRecording
from tapedeck.settings import Settings

from serverkit import drop_bucket, make_settings


@pytest.fixture
def settings(weed: Any, tmp_path: Path) -> Iterator[Settings]:
    s = make_settings(weed, tmp_path / "data")
    yield s
    drop_bucket(weed, s.s3_bucket)


def test_the_bound_http_port_is_in_the_settings_the_domain_holds(settings: Settings) -> None:
    app = App.open(settings, roles=["http"])
    try:
        port = app.settings.http_port
        assert port != 0 and app.http_socket is not None
        assert app.http_socket.getsockname()[1] == port
        assert app.domain.ctx.settings is app.runtime.settings
        assert app.domain.ctx.job_signals is app.runtime.job_signals
        app.start(["http"])
        assert app.http_port == port and app.settings is app.runtime.settings
        _, key = create_project(app.db, app.clock)
        p = app.domain.authenticate(f"Bearer {key}")
        created = app.domain.recordings.create(p, NewRecording(streaming=True))
        assert (created.chunk_upload_url_template or "").startswith(f"http://127.0.0.1:{port}/")
    finally:
        app.close(grace=1.0)


def test_http_needs_its_socket_from_open_and_an_unused_one_is_closed(
        settings: Settings) -> None:
    app = App.open(settings)
    try:
        assert app.http_socket is None and app.settings.http_port == 0
        with pytest.raises(ValueError, match="roles="):
            app.start(["http"])
    finally:
        app.close(grace=1.0)
    app = App.open(settings, roles=["http"])
    port = app.settings.http_port
    app.close(grace=1.0)  # never started: the socket is closed all the same
    with socket.create_server(("127.0.0.1", port)):
        pass
