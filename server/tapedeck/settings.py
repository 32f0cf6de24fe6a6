"""Settings: command-line flags, then ``TAPEDECK_*`` environment variables, then defaults.

Every field of ``Settings`` is one setting; its environment variable is ``TAPEDECK_`` + the
field name in upper case (``data_dir`` → ``TAPEDECK_DATA_DIR``). The README lists them all
(``tapedeck settings`` prints them with their current values).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tapedeck.errors import invalid

#: The profiles ``whisper_decoding`` may name (``tapedeck.background.transcribe.whisper.PROFILES``).
WHISPER_DECODINGS = ("fast", "accurate")


@dataclass(frozen=True)
class Settings:
    """All server settings. Help text lives in each field's metadata."""

    data_dir: Path = field(default=Path("tapedeck-data"),
                           metadata={"help": "SQLite file, managed SeaweedFS data, secrets"})
    host: str = field(default="127.0.0.1", metadata={"help": "address gRPC and HTTP listen on"})
    grpc_port: int = field(default=50051, metadata={"help": "gRPC port (0 = any free port)"})
    http_port: int = field(default=8080, metadata={"help": "REST gateway port (0 = any free)"})
    public_url: str = field(default="", metadata={
        "help": "base URL devices use to reach the REST gateway (chunk upload URLs); "
                "default http://HOST:HTTP_PORT (https:// with TLS files)"})
    s3_endpoint: str = field(default="", metadata={
        "help": "host:port of an external S3 store; empty = start a managed SeaweedFS"})
    s3_access_key: str = field(default="", metadata={"help": "S3 access key"})
    s3_secret_key: str = field(default="", metadata={"help": "S3 secret key"})
    s3_bucket: str = field(default="tapedeck", metadata={"help": "bucket for all objects"})
    s3_secure: bool = field(default=False, metadata={"help": "use HTTPS for the S3 endpoint"})
    s3_region: str = field(default="", metadata={"help": "S3 region (empty = store default)"})
    max_chunks: int = field(default=100, metadata={"help": "highest chunk part accepted"})
    max_chunk_bytes: int = field(default=32 * 1024 * 1024,
                                 metadata={"help": "largest chunk accepted, bytes"})
    max_file_bytes: int = field(default=2 * 1024 * 1024 * 1024,
                                metadata={"help": "largest single-file upload, bytes"})
    streaming_ttl_s: int = field(default=4 * 3600, metadata={
        "help": "a streaming recording expires this long after creation (or twice its "
                "estimated duration, if longer) unless finalized"})
    expiry_auto_finalize: bool = field(default=True, metadata={
        "help": "when a streaming recording expires, stitch the contiguous chunks it holds "
                "(off: it just becomes expired)"})
    upload_url_ttl_s: int = field(default=3600, metadata={"help": "presigned URL lifetime"})
    rate_limit_per_s: int = field(default=20, metadata={
        "help": "requests per second per credential (bursts of twice that); 0 = no limit"})
    max_json_bytes: int = field(default=64 * 1024, metadata={
        "help": "largest JSON request body the REST gateway accepts, bytes"})
    workers: int = field(default=1, metadata={
        "help": "claim loops (threads) per job kind in a process running jobs (`serve`, "
                "`worker`): each kind has its own, so stitching never waits behind a "
                "transcription"})
    worker_lanes: str = field(default="", metadata={
        "help": "per-kind loop counts overriding `workers`, e.g. stitch:2,transcribe:1 "
                "(job_kinds still decides which kinds run)"})
    job_kinds: str = field(default="", metadata={
        "help": "job kinds this process runs, comma-separated (e.g. stitch); empty = every "
                "kind whose handler is installed"})
    job_lease_s: int = field(default=60, metadata={
        "help": "a job whose worker stops heartbeating is handed to another worker after this"})
    job_poll_ms: int = field(default=200, metadata={"help": "idle workers look for jobs this often"})
    job_max_attempts: int = field(default=12, metadata={
        "help": "a job failing transiently (store down) this many times fails for good"})
    job_retry_base_ms: int = field(default=2000, metadata={
        "help": "first retry delay; doubles per attempt (with ±25% jitter) up to job_retry_max_s"})
    job_retry_max_s: int = field(default=600, metadata={"help": "longest retry delay"})
    test_only_failpoints: str = field(default="", metadata={
        "help": "testing only: comma-separated stage names (e.g. stitch.uploading) where a "
                "worker logs `failpoint NAME` and hangs, so crash tests can kill it there"})
    whisper_model: str = field(default="", metadata={
        "help": "faster-whisper model name or directory; empty = bundled whisper-base"})
    whisper_threads: int = field(default=2, metadata={"help": "CPU threads for transcription"})
    live_transcription: bool = field(default=True, metadata={
        "help": "transcribe each chunk of a streaming recording as it lands (a low-priority "
                "`live_transcribe` lane), so the transcript is assembled seconds after "
                "stitching; off = the whole file is transcribed after stitching"})
    live_whisper_model: str = field(default="", metadata={
        "help": "model of the live_transcribe lane (name or directory); empty = whisper_model"})
    live_beam_size: int = field(default=1, metadata={
        "help": "beam size of the live_transcribe lane (1 = greedy, about twice as fast)"})
    diarize: bool = field(default=True, metadata={
        "help": "label transcript speakers (S1, S2, ...) unless a request turns it off; off: "
                "no transcript is diarized"})
    webhooks_allow_private: bool = field(default=False, metadata={
        "help": "let webhooks reach loopback/private addresses (development and tests only)"})
    webhooks_timeout_s: int = field(default=30, metadata={
        "help": "a webhook attempt (connect, TLS, request, response head) must finish within"})
    webhooks_workers: int = field(default=16, metadata={
        "help": "concurrent webhook attempts per dispatcher"})
    webhooks_per_endpoint: int = field(default=4, metadata={
        "help": "concurrent attempts per endpoint (a recording's events stay in order at any value)"})
    log_format: str = field(default="auto", metadata={
        "help": "json (one object per line), text, or auto (text on a terminal, else json)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    sweep_interval_ms: int = field(default=30_000, metadata={
        "help": "the sweeper (in `serve` and `worker`) expires overdue streaming recordings "
                "and applies chunk retention this often"})
    retention_chunks_s: int = field(default=0, metadata={
        "help": "chunk objects stitched into a verified audio file are deleted this long "
                "after it completed (0 = at the next sweep; -1 = keep forever)"})
    retention_failed_s: int = field(default=30 * 86400, metadata={
        "help": "chunk objects of failed recordings are deleted this long after the failure "
                "(-1 = keep forever)"})
    retention_expired_s: int = field(default=30 * 86400, metadata={
        "help": "chunk objects of expired recordings, and parts an expiry auto-finalize left "
                "out, are deleted this long after expiry (-1 = keep forever)"})
    retention_voice_profiles_s: int = field(default=-1, metadata={
        "help": "voice profiles (biometric embeddings) are deleted this long after they were "
                "enrolled (-1 = kept until the profile or its end user is deleted)"})
    metrics_port: int = field(default=0, metadata={
        "help": "serve /metrics on this port in processes without the HTTP role (worker, "
                "dispatcher); 0 = off. The HTTP role always serves /metrics"})
    shutdown_grace_s: int = field(default=10, metadata={
        "help": "on SIGTERM, running jobs, requests and webhook attempts get this long to "
                "finish; unfinished jobs are then handed back to the queue"})
    max_streaming_per_device: int = field(default=8, metadata={
        "help": "open streaming recordings one device may have at once (429 "
                "streaming_limit_exceeded beyond); 0 = no limit"})
    storage_quota_bytes: int = field(default=100 * 1024**3, metadata={
        "help": "bytes one project may store; at the quota new recordings and uploads get "
                "403 storage_quota_exceeded; 0 = no limit"})
    tls_cert_file: str = field(default="", metadata={
        "help": "PEM certificate (chain) for the gRPC and HTTP ports; with tls_key_file both "
                "speak TLS only, and changed files are picked up without a restart"})
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of tls_cert_file"})
    allow_plaintext: bool = field(default=False, metadata={
        "help": "serve plaintext on a non-loopback host (only behind a TLS-terminating "
                "proxy); without TLS files and this, such a host refuses to start"})
    device_offline_after_s: int = field(default=300, metadata={
        "help": "a device that sent heartbeats but none for this long is marked offline by "
                "the sweeper (event device.offline)"})
    device_storage_low_percent: int = field(default=80, metadata={
        "help": "a heartbeat with storage_used_mb at or above this percent of "
                "storage_total_mb raises device.storage_low"})
    device_backlog_alert_s: int = field(default=3600, metadata={
        "help": "a heartbeat whose oldest unacknowledged audio waited this long raises "
                "device.backlog"})
    check_chunks: bool = field(default=True, metadata={
        "help": "check each uploaded chunk's Ogg pages, CRCs and Opus headers as it arrives "
                "(422 invalid_audio, nothing stored); off only for placeholder test bytes"})
    http_header_timeout_s: int = field(default=10, metadata={
        "help": "a REST connection that has not sent a whole request head this long after "
                "connecting (or after its previous response) is closed"})
    http_body_timeout_s: int = field(default=30, metadata={
        "help": "a REST request body that pauses this long between two reads gets 408 "
                "request_timeout and its connection is closed"})
    store_restart_max_s: int = field(default=30, metadata={
        "help": "a managed SeaweedFS that dies is restarted at once, then after 0.5 s, 1 s, "
                "... up to this long between attempts"})
    secret_key: str = field(default="", metadata={
        "help": "at least 32 characters shared by every node of a deployment: the keys that "
                "sign chunk upload URLs and seal webhook secrets are derived from it (HKDF); "
                "empty = key files in the data dir (one-node default)"})
    secret_key_previous: str = field(default="", metadata={
        "help": "the secret key being rotated out: still accepted (upload URLs, sealed "
                "secrets), never used for new ones; see `tapedeck admin reseal-secrets`"})
    database_url: str = field(default="", metadata={
        "help": "postgresql://user:password@host:port/dbname to keep state in PostgreSQL "
                "(shared by every api, worker and dispatcher node); empty = the SQLite file "
                "in the data dir"})
    console: bool = field(default=True, metadata={
        "help": "serve the web console under /console (off: no console routes)"})
    whisper_decoding: str = field(default="fast", metadata={
        "help": "fast (greedy, no temperature fallback, speech windows batched 8 at a time) "
                "or accurate (beam 5 with fallback, one window at a time: the former default); "
                "see bench/transcribe_options.py"})

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "tapedeck.db"

    @property
    def database_target(self) -> str | Path:
        """What ``tapedeck.infra.db.open_database`` opens: ``database_url`` if set, else the SQLite
        file."""
        return self.database_url or self.db_path

    @property
    def gateway_url(self) -> str:
        """Base URL of the REST gateway as devices see it."""
        scheme = "https" if self.tls_cert_file else "http"
        return self.public_url.rstrip("/") or f"{scheme}://{self.host}:{self.http_port}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings: non-None ``flags`` win over ``TAPEDECK_*`` variables over defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("TAPEDECK_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        for name, value in (flags or {}).items():
            if value is not None:
                values[name] = value
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise invalid(name, f"TAPEDECK_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
