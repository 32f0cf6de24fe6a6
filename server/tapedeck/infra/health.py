"""Readiness of one Tapedeck process: does its object store answer, does its database?

``Health(checks)`` runs every check every ``interval_s`` in one background thread and keeps
the last result, so answering a health request never waits on the store or the database
(a health check keeps answering while slow clients or a dead store hold everything else).
Contract:

- A check is a callable that returns on success and raises on failure; ``ready`` is True
  only when the last run of every check succeeded. Before the first run, nothing is ready.
- ``watch(listener)`` calls ``listener(ready)`` at once and on every change (the gRPC
  health service and the log use it). ``snapshot()`` gives each check's state for
  ``GET /readyz``.
- ``store_check`` and ``database_check`` build the two standard checks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from tapedeck.infra.db import Database
from tapedeck.infra.store import ObjectStore

log = logging.getLogger("tapedeck.infra.health")

Check = Callable[[], None]
Listener = Callable[[bool], None]
PROBE_KEY = "health/probe"


def store_check(store: ObjectStore, alive: Callable[[], bool] | None = None) -> Check:
    """Fails when ``alive()`` says the managed store is down, or a HEAD of a probe key
    does not get an answer (absent is fine: the store answered)."""
    def check() -> None:
        if alive is not None and not alive():
            raise RuntimeError("the managed object store is not running")
        store.stat(PROBE_KEY)
    return check


def database_check(db: Database) -> Check:
    """Fails when the database cannot answer a query."""
    def check() -> None:
        db.read().execute("SELECT 1").fetchone()
    return check


class Health:
    """Periodic checks and their last results (see the module docstring)."""

    def __init__(self, checks: Mapping[str, Check], *, interval_s: float = 0.5) -> None:
        self._checks = dict(checks)
        self.interval_s = interval_s
        self._state: dict[str, str] = {name: "unknown" for name in self._checks}
        self._ready = False
        self._runs = 0
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """True when the last run of every check succeeded."""
        return self._ready

    def snapshot(self) -> dict[str, Any]:
        """``{"ready": bool, "checks": {name: "ok" | "<error>"}}`` of the last run."""
        with self._lock:
            return {"ready": self._ready, "checks": dict(self._state)}

    def watch(self, listener: Listener) -> None:
        """Call ``listener(ready)`` now and after every change."""
        with self._lock:
            self._listeners.append(listener)
            ready = self._ready
        listener(ready)

    def run_once(self) -> bool:
        """Run every check now; returns (and publishes) the new readiness."""
        state: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                check()
                state[name] = "ok"
            except Exception as exc:  # a failed check is a state, not an error
                state[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ready = all(v == "ok" for v in state.values())
        with self._lock:
            first, changed = self._runs == 0, ready != self._ready
            self._state, self._ready = state, ready
            self._runs += 1
            listeners = list(self._listeners)
        if changed:
            failing = {k: v for k, v in state.items() if v != "ok"}
            if not ready:
                log.warning("not ready: %s", failing)
            elif not first:  # becoming ready at startup is the normal case
                log.warning("ready again: every health check passes")
            for listener in listeners:
                listener(ready)
        return ready

    def start(self) -> Health:
        """Run the checks once now, then every ``interval_s`` in a thread."""
        self.run_once()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def stop(self, grace: float = 0.0) -> None:
        """Stop the checks (the last state stays readable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
