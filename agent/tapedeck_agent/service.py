"""The background upload service of one agent process, and waiting for recordings to land.

Only one process uploads a spool at a time (the holder of ``locks/uploader.lock``); in any
other process ``UploadService`` runs no thread and ``wait()`` just watches the manifest the
uploading process updates.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tapedeck_agent.client import AgentClient
from tapedeck_agent.config import AgentConfig
from tapedeck_agent.spool import ProcessLock, Spool
from tapedeck_agent.uploader import Uploader

log = logging.getLogger("tapedeck_agent.service")
DONE_STATES = ("finalized", "parked", "empty")


@dataclass(frozen=True)
class Outcome:
    """Where the recordings of one command stand when it exits."""

    finalized: bool  # every recording finalized (or empty)
    needs_operator: bool  # a recording is parked or the token was refused
    rows: list[dict[str, object]]


class UploadService:
    """Starts the uploader thread if this process gets the uploader lock (and a server and
    token are configured)."""

    def __init__(self, cfg: AgentConfig, spool: Spool) -> None:
        self.cfg = cfg
        self.spool = spool
        self.uploader: Uploader | None = None
        self._client: AgentClient | None = None
        self._thread: threading.Thread | None = None
        self._lock: ProcessLock | None = None
        self._stopped = False

    def start(self) -> None:
        if not (self.cfg.server and self.cfg.token):
            log.warning("no server/token configured: recordings stay in the spool (%s)",
                        self.spool.root)
            return
        lock = self.spool.uploader_lock()
        if not lock.try_acquire():
            log.info("another agent process is uploading this spool; it will upload ours")
            return
        self._lock = lock
        self._client = AgentClient(self.cfg.server, self.cfg.token, tls=self.cfg.tls,
                                   ca_file=self.cfg.ca_file,
                                   timeout_s=self.cfg.rpc_timeout_s,
                                   reconnect_max_s=min(10.0, self.cfg.backoff_max_s))
        self.uploader = Uploader(self.cfg, self.spool, self._client)
        self._thread = threading.Thread(target=self.uploader.run, name="uploader",
                                        daemon=True)
        self._thread.start()

    def notify(self) -> None:
        if self.uploader is not None:
            self.uploader.notify()

    def stop(self) -> None:
        """Stop the uploader between two calls and release the lock (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self.uploader is not None and self._thread is not None:
            self.uploader.stop()
            self._thread.join(timeout=self.cfg.rpc_timeout_s + 5)
        if self._client is not None:
            self._client.close()
        if self._lock is not None:
            self._lock.release()

    def blocked(self) -> bool:
        return self.uploader is not None and self.uploader.blocked is not None

    def wait(self, local_ids: list[str], timeout_s: float,
             abort: threading.Event | None = None, stop: threading.Event | None = None,
             grace_s: float = 0.0) -> Outcome:
        """Wait until every recording is finalized/parked/empty, the token is refused, the
        timeout passes or ``abort`` is set; once ``stop`` is set, wait ``grace_s`` more at
        most."""
        deadline = time.monotonic() + timeout_s
        shortened = False
        while time.monotonic() < deadline and not (abort and abort.is_set()):
            if stop is not None and stop.is_set() and not shortened:
                deadline, shortened = min(deadline, time.monotonic() + grace_s), True
            states = [self.spool.recording(i).state for i in local_ids]
            if all(s in DONE_STATES for s in states) or self.blocked():
                break
            time.sleep(0.1)
        return self.outcome(local_ids)

    def outcome(self, local_ids: list[str]) -> Outcome:
        rows: list[dict[str, object]] = []
        for local_id in local_ids:
            rec = self.spool.recording(local_id)
            status = rec.server_status if rec.state == "finalized" else (
                "parked" if rec.state == "parked" else
                "empty" if rec.state == "empty" else "spooled")
            rows.append({"local_id": local_id, "recording_id": rec.server_id,
                         "status": status, "chunks": rec.total_chunks,
                         "duration_ms": rec.duration_ms, "parked_reason": rec.parked_reason})
        finalized = all(r["status"] not in ("parked", "spooled") for r in rows)
        parked = any(r["status"] == "parked" for r in rows) or self.blocked()
        return Outcome(finalized and not self.blocked(), parked, rows)
