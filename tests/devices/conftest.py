"""Fixtures of the device tests: one real server per test module (helpers in devicekit.py).

A module that steers time overrides ``clock`` with a module-scoped ``ManualClock``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tapedeck.clock import Clock
from tapedeck.infra.weed import ManagedWeed

from devicekit import World, serve
from serverkit import RunningServer


@pytest.fixture(scope="module")
def clock() -> Clock | None:
    """The module server's clock: None = the system clock."""
    return None


@pytest.fixture(scope="module")
def module_server(weed: ManagedWeed, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest,
                  clock: Clock | None) -> Iterator[RunningServer]:
    """A real server (gRPC, plus REST) shared by the module's tests."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    yield from serve(weed, tmp_path_factory.mktemp(name) / "data", clock)


@pytest.fixture(scope="module")
def world(module_server: RunningServer) -> World:
    return World.build(module_server)
