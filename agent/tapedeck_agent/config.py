"""Agent configuration: command-line flags, then ``TAPEDECK_AGENT_*`` environment variables,
then a TOML file, then defaults.

Every field of ``AgentConfig`` is one setting. Its environment variable is
``TAPEDECK_AGENT_`` + the field name in upper case (``spool_dir`` → ``TAPEDECK_AGENT_SPOOL_DIR``)
and its TOML key is the field name, at the top level of the file or under an ``[agent]`` table.
The file is ``--config PATH``, else ``$TAPEDECK_AGENT_CONFIG``, else ``/etc/tapedeck-agent.toml``
when it exists.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = Path("/etc/tapedeck-agent.toml")
ENV_PREFIX = "TAPEDECK_AGENT_"


class ConfigError(ValueError):
    """A setting has a value of the wrong type or out of range; the message names it."""


def default_spool_dir() -> Path:
    """``$STATE_DIRECTORY/spool`` under systemd, else ``~/.local/state/tapedeck-agent/spool``."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "spool"
    return Path.home() / ".local" / "state" / "tapedeck-agent" / "spool"


@dataclass(frozen=True)
class AgentConfig:
    """All agent settings. Help text lives in each field's metadata."""

    server: str = field(default="", metadata={"help": "host:port of the Tapedeck gRPC server"})
    token: str = field(default="", metadata={"help": "device token (dtok_...)"})
    tls: bool = field(default=False, metadata={"help": "use TLS (system roots) for gRPC"})
    ca_file: str = field(default="", metadata={
        "help": "PEM file of the CA(s) that verify the server, instead of the system roots "
                "(implies tls; also for chunk PUTs to https URLs)"})
    upload_via: str = field(default="grpc", metadata={
        "help": "chunk uploads: grpc (ChunkService.UploadChunk) or rest (PUT to the "
                "recording's chunk_upload_url_template)"})
    device: str = field(default="", metadata={
        "help": "capture device: PortAudio index or (part of) its name; empty = default input"})
    sample_rate: int = field(default=16000, metadata={"help": "capture sample rate, Hz"})
    channels: int = field(default=1, metadata={"help": "capture channels (1 or 2)"})
    bitrate: int = field(default=24000, metadata={"help": "Opus bitrate, bits/s"})
    complexity: int = field(default=5, metadata={"help": "Opus encoder complexity 0..10"})
    chunk_duration_ms: int = field(default=60_000, metadata={
        "help": "audio per chunk; also the most audio a power cut can cost"})
    max_chunks: int = field(default=100, metadata={
        "help": "chunks per recording before rolling over to a new one (the server's "
                "max_chunks wins if smaller)"})
    spool_dir: Path = field(default_factory=default_spool_dir, metadata={
        "help": "where chunks wait for upload (manifest.db + recordings/)"})
    max_spool_mb: float = field(default=2048.0, metadata={
        "help": "spool size limit, MB; near it, chunk files the server already holds are "
                "deleted early; at it, capture pauses (reported) and nothing captured is "
                "dropped"})
    name: str = field(default="", metadata={"help": "recording name (default: the start time)"})
    rpc_timeout_s: float = field(default=30.0, metadata={"help": "deadline of one gRPC call"})
    backoff_initial_s: float = field(default=1.0, metadata={"help": "first retry delay"})
    backoff_max_s: float = field(default=60.0, metadata={"help": "longest retry delay"})
    shutdown_grace_s: float = field(default=20.0, metadata={
        "help": "on stop, how long to keep uploading/finalizing before exiting"})
    heartbeat_interval_s: float = field(default=60.0, metadata={
        "help": "seconds between device heartbeats (0 = none)"})
    keep_uploaded: bool = field(default=False, metadata={
        "help": "keep chunk files after the server accepted the finalize"})
    dtx: bool = field(default=True, metadata={
        "help": "Opus discontinuous transmission: silence and steady low noise cost a small "
                "fraction of speech; the timeline stays exact"})
    apply_server_settings: bool = field(default=True, metadata={
        "help": "apply the device settings the server pushes in heartbeat answers (chunk "
                "duration, bitrate, dtx from the next recording; heartbeat interval at once)"})
    power_supply_dir: Path = field(default=Path("/sys/class/power_supply"), metadata={
        "help": "where the kernel reports batteries (battery_percent in heartbeats)"})

    @property
    def max_spool_bytes(self) -> int:
        """The spool limit in bytes."""
        return int(self.max_spool_mb * 1024 * 1024)

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> AgentConfig:
        """Range checks; raises ``ConfigError`` naming the setting. Returns ``self``."""
        checks = [
            ("sample_rate", self.sample_rate in (8000, 12000, 16000, 24000, 48000),
             "one of 8000, 12000, 16000, 24000, 48000 (Opus input rates)"),
            ("channels", self.channels in (1, 2), "1 or 2"),
            ("upload_via", self.upload_via in ("grpc", "rest"), "grpc or rest"),
            ("bitrate", 6000 <= self.bitrate <= 510_000, "between 6000 and 510000"),
            ("complexity", 0 <= self.complexity <= 10, "between 0 and 10"),
            ("chunk_duration_ms", self.chunk_duration_ms >= 1000
             and self.chunk_duration_ms % 20 == 0, "at least 1000 and a multiple of 20"),
            ("max_chunks", self.max_chunks >= 1, "at least 1"),
            ("max_spool_mb", self.max_spool_mb > 0, "positive"),
            ("rpc_timeout_s", self.rpc_timeout_s > 0, "positive"),
            ("backoff_initial_s", self.backoff_initial_s > 0, "positive"),
            ("backoff_max_s", self.backoff_max_s >= self.backoff_initial_s,
             "at least backoff_initial_s"),
        ]
        if self.ca_file:
            checks.append(("ca_file", os.path.isfile(self.ca_file), "a readable PEM file"))
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be {rule}")
        return self


def _convert(name: str, kind: str, raw: Any) -> Any:
    """Turn a string (environment) or TOML value into the field's type."""
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(str(raw)).expanduser()
        return str(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file (top level, or its ``[agent]`` table)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    section = data.get("agent", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [agent] must be a table")
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(section) - known - {"agent"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return {k: v for k, v in section.items() if k != "agent"}


def load_config(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                config_file: Path | None = None) -> AgentConfig:
    """Build the configuration: non-None ``flags`` > environment > file > defaults."""
    env = os.environ if environ is None else environ
    path = config_file
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    raw: dict[str, Any] = read_config_file(path) if path is not None else {}
    for f in fields(AgentConfig):
        value = env.get(ENV_PREFIX + f.name.upper())
        if value is not None and value != "":
            raw[f.name] = value
    for name, value in (flags or {}).items():
        if value is not None:
            raw[name] = value
    kinds = {f.name: str(f.type) for f in fields(AgentConfig)}
    values = {name: _convert(name, kinds[name], value) for name, value in raw.items()}
    return AgentConfig(**values).validate()
