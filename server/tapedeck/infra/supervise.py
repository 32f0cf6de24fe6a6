"""Keeps the managed ``weed`` alive: a supervisor thread that restarts it when it dies.

``WeedSupervisor(weed, metrics)`` wraps a started ``ManagedWeed`` (it never changes how weed
is launched). Contract:

- It checks every ``poll_s`` whether the child is alive. When it is not, it logs an error
  (with the exit code), counts ``tapedeck_store_restarts_total{outcome}`` (``ok`` or
  ``failed`` per attempt) and calls ``weed.start()`` again: at once, then with a doubling
  backoff (0.5 s, 1 s, 2 s … up to ``max_backoff_s``) while attempts fail.
- ``up`` is False from the moment the death is noticed until a restart succeeded; the
  health checks (``tapedeck.infra.health``) read it, so readiness drops without waiting for a
  probe to time out.
- ``stop()`` ends the thread (a restart in progress finishes first); the caller then stops
  the weed itself. ``weed.start()`` runs in this thread, so the child's die-with-parent
  signal follows this thread: it lives until ``stop()``, which is what ``App.close`` wants.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter

from tapedeck.infra.metrics import Metrics
from tapedeck.infra.weed import ManagedWeed

log = logging.getLogger("tapedeck.infra.supervise")

FIRST_BACKOFF_S = 0.5


class WeedSupervisor:
    """Restarts a managed ``weed`` that died (see the module docstring)."""

    def __init__(self, weed: ManagedWeed, metrics: Metrics, *, max_backoff_s: float = 30.0,
                 poll_s: float = 0.2) -> None:
        self.weed = weed
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.restarts = 0
        self._down = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = Counter("tapedeck_store_restarts",
                                "restarts of the managed object store, by outcome",
                                ["outcome"], registry=metrics.registry)

    @property
    def up(self) -> bool:
        """True while the managed store is believed alive (not dead, not restarting)."""
        return not self._down.is_set() and self.weed.running

    def start(self) -> WeedSupervisor:
        """Start watching (the weed must already be started)."""
        self._thread = threading.Thread(target=self._run, name="weed-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 0.0) -> None:
        """Stop watching; waits for a restart in progress (``grace`` is unused: nothing to
        drain)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if not self.weed.running:
                self._recover()

    def _recover(self) -> None:
        """Restart until it works or ``stop()`` is called; backoff doubles per failure."""
        self._down.set()
        log.error("the managed SeaweedFS (pid %s) died with code %s; restarting it",
                  self.weed.pid, self.weed.returncode)
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                self.weed.start()
            except Exception as exc:  # any failure: try again later
                self._counter.labels("failed").inc()
                log.error("restarting the managed SeaweedFS failed (next try in %.1f s): %s",
                          backoff, str(exc).splitlines()[0])
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            self._counter.labels("ok").inc()
            log.warning("the managed SeaweedFS is back (pid %s, restart %d)", self.weed.pid,
                        self.restarts)
            self._down.clear()
            return
