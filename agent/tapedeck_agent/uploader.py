"""The uploader: creates server recordings, uploads spooled chunks oldest first, reconciles
with the server after a restart, and finalizes.

One ``step()`` does one unit of work on the oldest recording that has any:
  1. no server id yet → find it (if an earlier create may have reached the server) or create;
  2. not reconciled by this process → ``ListChunks``: local chunks whose md5 the server
     already holds are marked uploaded (never sent twice), others are marked pending;
  3. a pending chunk → ``UploadChunk`` with its md5 (or, with ``upload_via = "rest"``, a PUT
     to the recording's ``chunk_upload_url_template`` with Content-MD5);
  4. closed and nothing pending → ``FinalizeRecording`` with total_chunks, final_duration_ms
     and checksum_md5 (MD5 of all chunk bytes in part order).

Errors (see ``client.ServerError.kind``):
  - transient (server down, connection refused, deadline, storage_unavailable …): ``run()``
    waits with exponential backoff and full jitter, then tries again;
  - credentials (unauthorized, forbidden): uploads stop until the agent restarts with a
    valid token (agent state ``uploader = blocked: …``); capture continues into the spool;
  - recording (recording_not_found, recording_expired, invalid_request …): that recording is
    parked for an operator (``tapedeck-agent retry``), its files kept; others go on;
  - ``chunk_mismatch`` on finalize → the missing parts are marked pending and re-uploaded;
    ``checksum_mismatch`` → a fresh ``ListChunks`` marks every part whose md5 differs pending.

Heartbeats: every ``heartbeat_interval_s``, and at once when the device state changes
(recording, uploading, idle, storage_full, error), ``run()`` sends DeviceService.SendHeartbeat
with the device's health (``heartbeat_fields()``: spool use, state, battery, agent version,
backlog, the settings version it runs). The answer's pushed settings are kept in the spool
for the next recording (``health.config_for_next_recording``); a pushed
``heartbeat_interval_s`` applies at once. A failed heartbeat is only logged; a server
without the method (UNIMPLEMENTED) gets no more.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from typing import Any

import grpc

from tapedeck_agent import health
from tapedeck_agent.client import AgentClient, ServerError, put_chunk_url
from tapedeck_agent.config import AgentConfig
from tapedeck_agent.spool import ChunkRow, RecordingRow, Spool

log = logging.getLogger("tapedeck_agent.uploader")
MAX_CHECKSUM_FAILURES = 5
MAX_FINALIZE_REPAIRS = 3
RECOVER_EVERY_S = 30.0


class Uploader:
    """Works through the spool with one ``AgentClient``. Call ``run()`` in a thread; only
    the process holding the spool's uploader lock should run one."""

    def __init__(self, cfg: AgentConfig, spool: Spool, client: AgentClient,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.client = client
        self.blocked: str | None = None
        self._rng = rng or random.Random()
        self._reconciled: set[str] = set()
        self._repairs: dict[str, int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0
        self._last_recover = 0.0
        self._last_heartbeat = -float("inf")
        self._heartbeats = True
        self._sent_state: str | None = None  # device_state of the last heartbeat sent
        self._pushed_interval: float | None = None

    # -- the loop -------------------------------------------------------------------------
    def notify(self) -> None:
        """New work (a chunk or a closed recording) is in the spool."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Upload until ``stop()``: back off after transient errors, sleep when idle."""
        self.spool.set_state("uploader", "running")
        while not self._stop.is_set():
            self._maybe_recover()
            self._maybe_heartbeat()
            try:
                worked = self.step()
            except ServerError as exc:
                self._back_off(exc)
                continue
            except OSError as exc:  # e.g. a DNS or socket error outside gRPC
                self._back_off(ServerError("rpc_error", str(exc)))
                continue
            except Exception as exc:  # a bug must not silently end all uploads
                log.exception("unexpected error in the uploader")
                self._back_off(ServerError("agent_error", repr(exc)))
                continue
            if self._failures:
                log.info("server reachable again after %d failed attempt(s)", self._failures)
                self.spool.set_state("uploader", "running")
                self._failures = 0
            if not worked:
                self._wake.wait(timeout=min(RECOVER_EVERY_S, self._heartbeat_every()))
                self._wake.clear()
        self.spool.set_state("uploader", self.blocked or "stopped")

    def _back_off(self, exc: ServerError) -> None:
        """Sleep min(max, initial·2^n) scaled by a random factor in [0.5, 1] (jitter)."""
        self._failures += 1
        ceiling = min(self.cfg.backoff_max_s,
                      self.cfg.backoff_initial_s * 2 ** min(self._failures - 1, 30))
        delay = ceiling * self._rng.uniform(0.5, 1.0)
        self.spool.set_state("uploader", f"retrying: {exc.type} ({exc.message})")
        log.warning("upload attempt failed (%s: %s); retry %d in %.1f s", exc.type,
                    exc.message, self._failures, delay)
        self._stop.wait(delay)

    def heartbeat_interval_s(self) -> float:
        """Seconds between heartbeats: the server's pushed interval, else the configured
        one (0 = no heartbeats at all: then nothing is pushed either)."""
        local = self.cfg.heartbeat_interval_s
        return self._pushed_interval if local > 0 and self._pushed_interval else local

    def _heartbeat_every(self) -> float:
        interval = self.heartbeat_interval_s()
        return interval if interval > 0 and self._heartbeats else RECOVER_EVERY_S

    def _maybe_heartbeat(self) -> None:
        """Send a heartbeat if one is due or the device state changed; never lets its
        failure affect uploads."""
        now = time.monotonic()
        interval = self.heartbeat_interval_s()
        if not self._heartbeats or interval <= 0 or self.blocked:
            return
        if now - self._last_heartbeat < interval and self.device_state() == self._sent_state:
            return
        self._last_heartbeat = now
        fields = self.heartbeat_fields()
        self._sent_state = str(fields["device_state"])
        try:
            pushed = self.client.send_heartbeat(**fields)
        except ServerError as exc:
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                log.info("the server takes no heartbeats; not sending any more")
                self._heartbeats = False
            else:
                log.info("heartbeat not sent (%s: %s)", exc.type, exc.message)
            self.spool.set_state("heartbeat", f"failed: {exc.type} ({exc.message})")
            return
        self._take_settings(pushed)
        self.spool.set_state("heartbeat", f"sent ({fields['device_state']}, settings "
                                          f"version {fields['settings_version']})")

    def _take_settings(self, pushed: dict[str, Any] | None) -> None:
        """Keep the server's settings for the next recording; apply its interval now."""
        if pushed is None or not self.cfg.apply_server_settings:
            return
        settings = health.PushedSettings.from_json(pushed)
        self._pushed_interval = (float(settings.heartbeat_interval_s)
                                 if settings.heartbeat_interval_s else None)
        if health.store_pushed(self.spool, settings):
            log.info("server settings version %d received; they apply from the next "
                     "recording: %s", settings.version, settings.to_json())

    def _maybe_recover(self) -> None:
        """Close recordings of dead capture processes, register orphan chunk files."""
        now = time.monotonic()
        if now - self._last_recover >= RECOVER_EVERY_S:
            self._last_recover = now
            for line in self.spool.recover():
                log.warning("spool recovery: %s", line)

    def idle(self) -> bool:
        """Nothing left that this uploader could do now."""
        if self.blocked:
            return True
        return not any(rec.state == "closed" or pending or rec.server_id is None
                       for rec, pending in self.spool.pending())

    # -- one unit of work -------------------------------------------------------------------
    def step(self) -> bool:
        """Do the next unit of work; False if there was none. Raises transient errors."""
        if self.blocked:
            return False
        for rec, pending in self.spool.pending():
            action = self._next_action(rec, pending)
            if action is None:
                continue
            try:
                action()
            except ServerError as exc:
                self._handle(rec, exc)
            return True
        return False

    def _next_action(self, rec: RecordingRow, pending: list[ChunkRow]) -> Any:
        if rec.server_id is None:
            return lambda: self._create(rec)
        if rec.local_id not in self._reconciled:
            return lambda: self._reconcile(rec, rec.server_id)
        if pending:
            return lambda: self._upload(rec, rec.server_id, pending[0])
        if rec.state == "closed":
            return lambda: self._finalize(rec, rec.server_id)
        return None

    def _handle(self, rec: RecordingRow, exc: ServerError) -> None:
        """Sort a non-transient error; re-raise transient ones for ``run()`` to back off."""
        kind = exc.kind
        if kind == "transient":
            raise exc
        if kind == "credentials":
            self.blocked = f"blocked: {exc.type} ({exc.message}); fix the token and restart"
            self.spool.set_state("uploader", self.blocked)
            log.error("uploads stopped: the server refused the device token (%s: %s); "
                      "capture continues into the spool", exc.type, exc.message)
            return
        reason = f"{exc.type}: {exc.message}"
        self.spool.park(rec.local_id, reason)
        log.error("recording %s (server %s) parked for an operator: %s", rec.local_id,
                  rec.server_id, reason)

    # -- actions ------------------------------------------------------------------------------
    def _create(self, rec: RecordingRow) -> None:
        remote = None
        if rec.create_attempted:  # an earlier attempt may have reached the server
            remote = self.client.find_recording(rec.create_key)
        if remote is None:
            self.spool.mark_create_attempted(rec.local_id)
            # The same body on every attempt, so the idempotency key replays, never conflicts.
            remote = self.client.create_recording(
                key=rec.create_key, name=rec.name, started_at=rec.started_at,
                chunk_duration_ms=rec.chunk_duration_ms,
                estimated_duration_ms=rec.estimated_duration_ms)
            self._reconciled.add(rec.local_id)  # a brand-new recording holds no chunks
        self.spool.set_server_id(rec.local_id, remote.id, remote.max_chunks,
                                 remote.chunk_url_template)
        log.info("recording %s is %s on the server (max %s chunks)", rec.local_id, remote.id,
                 remote.max_chunks)

    def _reconcile(self, rec: RecordingRow, server_id: str) -> None:
        on_server = self.client.list_chunks(server_id)
        changed = 0
        for chunk in self.spool.chunks(rec.local_id):
            held = on_server.get(chunk.part) == chunk.md5
            if bool(chunk.uploaded) != held:
                self.spool.set_uploaded(rec.local_id, chunk.part, held)
                changed += 1
        self._reconciled.add(rec.local_id)
        log.info("reconciled %s with %s: server holds %d chunk(s), %d manifest change(s)",
                 rec.local_id, server_id, len(on_server), changed)

    def _upload(self, rec: RecordingRow, server_id: str, chunk: ChunkRow) -> None:
        try:
            data = self.spool.read_chunk(rec.local_id, chunk.part)
        except FileNotFoundError:
            raise ServerError("local_chunk_missing",
                              f"chunk file {chunk.part} is gone from the spool") from None
        if hashlib.md5(data).hexdigest() != chunk.md5:
            raise ServerError("local_chunk_corrupt",
                              f"chunk file {chunk.part} no longer matches its md5")
        try:
            already = self._send(rec, server_id, chunk, data)
        except ServerError as exc:
            if exc.type == "checksum_mismatch":  # damaged in transit: retry, within reason
                failures = self.spool.record_checksum_failure(rec.local_id, chunk.part)
                if failures < MAX_CHECKSUM_FAILURES:
                    raise ServerError("storage_unavailable", str(exc), exc.code) from None
            raise
        self.spool.record_upload(rec.local_id, chunk.part, already)
        log.info("uploaded chunk %d of %s to %s (%d bytes%s)", chunk.part, rec.local_id,
                 server_id, chunk.size, ", already stored" if already else "")

    def _send(self, rec: RecordingRow, server_id: str, chunk: ChunkRow, data: bytes) -> bool:
        """One upload over the configured path; ``already_stored``. A recording found again
        after a lost create has no URL template and goes over gRPC."""
        if self.cfg.upload_via == "rest" and rec.chunk_url_template:
            return put_chunk_url(rec.chunk_url_template, chunk.part, data, chunk.md5,
                                 self.cfg.rpc_timeout_s, ca_file=self.cfg.ca_file)
        return self.client.upload_chunk(server_id, chunk.part, data, chunk.md5)

    def _finalize(self, rec: RecordingRow, server_id: str) -> None:
        chunks = self.spool.chunks(rec.local_id)
        checksum = self._checksum(rec, chunks)
        if checksum is None and not self._listing_matches(rec, server_id, chunks):
            return  # differing parts were marked pending; they go up first
        try:
            status = self.client.finalize(server_id, len(chunks), rec.duration_ms or 0,
                                          checksum or "")
        except ServerError as exc:
            if exc.kind != "mismatch":
                raise
            self._repair(rec, chunks, exc)
            return
        self.spool.mark_finalized(rec.local_id, status)
        log.info("finalized %s as %s: %d chunk(s), %d ms, md5 %s -> status %s", rec.local_id,
                 server_id, len(chunks), rec.duration_ms or 0, checksum or "(per chunk)",
                 status)

    def _checksum(self, rec: RecordingRow, chunks: list[ChunkRow]) -> str | None:
        """MD5 of all chunk bytes in part order; None if some chunk file was evicted."""
        md5 = hashlib.md5()
        try:
            for chunk in chunks:
                if chunk.deleted:
                    return None
                md5.update(self.spool.read_chunk(rec.local_id, chunk.part))
        except FileNotFoundError:
            return None
        return md5.hexdigest()

    def _listing_matches(self, rec: RecordingRow, server_id: str,
                         chunks: list[ChunkRow]) -> bool:
        """Without a whole-recording checksum (chunk files evicted): does the server hold
        every part with the md5 the manifest recorded? Differing parts are marked pending."""
        on_server = self.client.list_chunks(server_id)
        wrong = [c.part for c in chunks if on_server.get(c.part) != c.md5]
        for part in wrong:
            self.spool.set_uploaded(rec.local_id, part, False)
        if wrong:
            log.warning("server lacks or differs on parts %s of %s: re-sending them", wrong,
                        rec.local_id)
        return not wrong

    def _repair(self, rec: RecordingRow, chunks: list[ChunkRow], exc: ServerError) -> None:
        """After a refused finalize: mark what the server lacks (or holds wrongly) pending."""
        tries = self._repairs.get(rec.local_id, 0) + 1
        self._repairs[rec.local_id] = tries
        if tries > MAX_FINALIZE_REPAIRS:
            raise ServerError(exc.type, f"still refused after {tries - 1} repair(s): "
                              f"{exc.message}", exc.code, exc.details)
        unexpected = exc.details.get("unexpected_chunks") or []
        if unexpected:
            raise ServerError(exc.type, f"server holds parts {unexpected} beyond the "
                              f"{len(chunks)} this recording has", exc.code, exc.details)
        log.warning("finalize of %s refused (%s): re-checking chunks with the server",
                    rec.local_id, exc.type)
        missing = exc.details.get("missing_chunks") or []
        for part in missing:
            self.spool.set_uploaded(rec.local_id, int(part), False)
        if exc.type == "checksum_mismatch" or not missing:
            self._reconciled.discard(rec.local_id)

    # -- heartbeat hook ------------------------------------------------------------------------
    def device_state(self) -> str:
        """What the device is doing, as a heartbeat ``device_state``."""
        capture = self.spool.states().get("capture", ("idle", ""))[0]
        if capture.startswith("paused"):
            return "storage_full"
        if capture.startswith("recording"):
            return "recording"
        if self.blocked:
            return "error"
        return "idle" if self.idle() else "uploading"

    def heartbeat_fields(self) -> dict[str, Any]:
        """The body of a device heartbeat (spec: devices/{id|me}/heartbeat), from the spool
        and the platform: health, backlog and the settings version running."""
        total = self.spool.max_bytes // (1024 * 1024)
        return {"storage_used_mb": min(total, self.spool.usage_bytes() // (1024 * 1024)),
                "storage_total_mb": total, "device_state": self.device_state(),
                "pending_recordings": len(self.spool.recordings(("capturing", "closed"))),
                "battery_percent": health.battery_percent(self.cfg.power_supply_dir),
                "firmware_version": health.agent_version(),
                "settings_version": health.running_version(self.spool),
                **health.spool_backlog(self.spool).heartbeat_fields()}
