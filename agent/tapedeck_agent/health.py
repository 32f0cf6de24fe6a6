"""Device health for heartbeats and ``status``, and the settings pushed by the server.

- Backlog: audio recorded and not yet acknowledged by the server. Recordings that are
  capturing, closed or parked (not finalized), their chunks not yet uploaded (and their
  bytes), and the age of the oldest unacknowledged audio: the time since the oldest
  un-uploaded chunk was spooled, or since a recording whose chunks are all up ended, if its
  finalize is still missing (chunk times come from the recording's start plus the samples
  before the chunk's end).
- Battery: the ``capacity`` of the first ``type = Battery`` entry of the kernel's power
  supply class (``/sys/class/power_supply``); ``None`` where the platform has none.
- Pushed settings: the heartbeat answer's settings are kept in the spool (agent state
  ``server_settings``, JSON) so that the recorder, in this process or the next, applies them
  from its NEXT recording (``config_for_next_recording``), never in the middle of one; the
  version a recording runs is kept as ``settings_running`` and reported in heartbeats.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tapedeck_agent.config import AgentConfig, ConfigError
from tapedeck_agent.spool import GRANULE_RATE, Spool

log = logging.getLogger("tapedeck_agent.health")
PUSHED_KEY = "server_settings"
RUNNING_KEY = "settings_running"
#: Pushed fields the agent applies per recording (``heartbeat_interval_s`` applies at once).
RECORDING_FIELDS = ("chunk_duration_ms", "bitrate", "dtx")
BACKLOG_STATES = ("capturing", "closed", "parked")


@dataclass(frozen=True)
class Backlog:
    """What waits on the device for the server."""

    recordings: int
    chunks: int
    bytes: int
    oldest_age_s: int | None  # None: nothing waits

    def heartbeat_fields(self) -> dict[str, int]:
        """The heartbeat's ``backlog_*`` fields (age 0 when nothing waits)."""
        return {"backlog_recordings": self.recordings, "backlog_chunks": self.chunks,
                "backlog_bytes": self.bytes, "backlog_oldest_age_s": self.oldest_age_s or 0}


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def spool_backlog(spool: Spool, now: datetime | None = None) -> Backlog:
    """The spool's backlog at ``now`` (default: the current time)."""
    now = now or datetime.now(UTC)
    recordings = chunks = size = 0
    oldest: datetime | None = None
    for rec in spool.recordings(BACKLOG_STATES):
        start, done, waiting_since = _parse(rec.started_at), 0, None
        rows = spool.chunks(rec.local_id)
        for chunk in rows:
            done += chunk.samples
            if not chunk.uploaded:
                chunks, size = chunks + 1, size + chunk.size
                at = start + timedelta(seconds=done / GRANULE_RATE)
                waiting_since = at if waiting_since is None else min(waiting_since, at)
        if waiting_since is None and rec.state != "capturing" and rows:
            waiting_since = start + timedelta(seconds=done / GRANULE_RATE)  # finalize due
        if rows or rec.state != "capturing":
            recordings += 1
        if waiting_since is not None:
            oldest = waiting_since if oldest is None else min(oldest, waiting_since)
    age = None if oldest is None else max(0, int((now - oldest).total_seconds()))
    return Backlog(recordings, chunks, size, age)


def agent_version() -> str:
    """``tapedeck-agent <version>`` (the firmware a heartbeat reports)."""
    try:
        return f"tapedeck-agent {importlib.metadata.version('tapedeck')}"
    except importlib.metadata.PackageNotFoundError:
        return "tapedeck-agent dev"


def battery_percent(root: Path) -> int | None:
    """Charge of the first battery under ``root`` (``type`` Battery, ``capacity`` 0..100)."""
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    for supply in supplies:
        try:
            if (supply / "type").read_text().strip() != "Battery":
                continue
            value = int((supply / "capacity").read_text().strip())
        except (OSError, ValueError):
            continue
        if 0 <= value <= 100:
            return value
    return None


@dataclass(frozen=True)
class PushedSettings:
    """Settings the server pushed (``None``: not set there; the agent keeps its own)."""

    version: int = 0
    chunk_duration_ms: int | None = None
    bitrate: int | None = None
    dtx: bool | None = None
    heartbeat_interval_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PushedSettings:
        def opt(name: str, kind: type) -> Any:
            value = data.get(name)
            return value if isinstance(value, kind) else None

        return cls(int(data.get("version") or 0), opt("chunk_duration_ms", int),
                   opt("bitrate", int), opt("dtx", bool), opt("heartbeat_interval_s", int))


def store_pushed(spool: Spool, pushed: PushedSettings) -> bool:
    """Keep ``pushed`` for the next recording; True if it differs from what was kept."""
    if load_pushed(spool) == pushed:
        return False
    spool.set_state(PUSHED_KEY, json.dumps(pushed.to_json(), sort_keys=True))
    return True


def load_pushed(spool: Spool) -> PushedSettings | None:
    raw = spool.states().get(PUSHED_KEY)
    if raw is None:
        return None
    try:
        return PushedSettings.from_json(json.loads(raw[0]))
    except (ValueError, TypeError):
        return None


def running_version(spool: Spool) -> int:
    """The settings version the current (or last) recording runs; 0 = none pushed."""
    raw = spool.states().get(RUNNING_KEY)
    try:
        return int(raw[0]) if raw else 0
    except ValueError:
        return 0


def config_for_next_recording(cfg: AgentConfig, spool: Spool) -> tuple[AgentConfig, int]:
    """``cfg`` with the pushed recording settings applied (unless ``apply_server_settings``
    is off), and their version; pushed values the agent cannot use are logged and skipped.
    Records the version as ``settings_running``."""
    pushed = load_pushed(spool) if cfg.apply_server_settings else None
    if pushed is None:
        return cfg, 0
    changes = {k: getattr(pushed, k) for k in RECORDING_FIELDS if getattr(pushed, k) is not None}
    try:
        applied = cfg.replace(**changes).validate()
    except ConfigError as exc:
        log.warning("server settings version %d not applied: %s", pushed.version, exc)
        return cfg, running_version(spool)
    if str(pushed.version) != (spool.states().get(RUNNING_KEY) or ("",))[0]:
        spool.set_state(RUNNING_KEY, str(pushed.version))
        log.info("recording with server settings version %d: %s", pushed.version,
                 ", ".join(f"{k}={v}" for k, v in changes.items()) or "no changes")
    return applied, pushed.version
