"""``tapedeck-agent``: record, upload FILE, sync, status, devices, retry.

Progress goes to standard error (log lines). ``record`` and ``upload`` end standard output
with one JSON line ``{"recording_id": "rec_..." | null, "status": "...", ...}`` describing
the last recording (``recordings`` lists all of them when capture rolled over).

Exit codes: 0 every recording finalized on the server; 75 audio safe in the spool but not
finalized yet (server unreachable or timeout; a later run or ``sync`` uploads it); 3 an
operator is needed (recording parked, token refused: see ``status``); 1 error (capture,
configuration); 2 usage.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from types import FrameType
from typing import Any

from tapedeck_agent import health
from tapedeck_agent.capture import (
    AudioSource,
    CaptureError,
    PacedSource,
    PortAudioSource,
    list_devices,
    open_file_source,
    open_portaudio,
)
from tapedeck_agent.config import AgentConfig, ConfigError, load_config
from tapedeck_agent.recorder import READ_MS, Recorder, RecordResult
from tapedeck_agent.service import Outcome, UploadService
from tapedeck_agent.spool import Spool, samples_to_ms

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_OPERATOR, EXIT_LATER = 0, 1, 2, 3, 75
log = logging.getLogger("tapedeck_agent")


class Signals:
    """SIGTERM/SIGINT: the first sets ``stop`` (finish the chunk, close, try to finalize
    within the grace period); a second sets ``abort`` (exit now, spool consistent)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.stopped_at: float | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.abort.set()
            return
        self.stopped_at = time.monotonic()
        log.info("received %s: finishing the current chunk", signal.Signals(signum).name)
        self.stop.set()


def _default(name: str) -> str:
    """``(default X)`` of an ``AgentConfig`` field, for flag help."""
    f = next(f for f in fields(AgentConfig) if f.name == name)
    value = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING \
        else f.default
    return f"(default {value!s})" if str(value) != "" else "(default: none)"


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: none)")
    p.add_argument("--server", help="host:port of the gRPC server ($TAPEDECK_AGENT_SERVER) "
                   + _default("server"))
    p.add_argument("--token", help="device token ($TAPEDECK_AGENT_TOKEN) " + _default("token"))
    p.add_argument("--spool-dir", type=Path, help="spool directory " + _default("spool_dir"))
    p.add_argument("--chunk-duration-ms", type=int,
                   help="audio per chunk " + _default("chunk_duration_ms"))
    p.add_argument("--max-spool-mb", type=float,
                   help="spool size limit, MB " + _default("max_spool_mb"))
    p.add_argument("--sample-rate", type=int, help="capture rate, Hz " + _default("sample_rate"))
    p.add_argument("--channels", type=int, help="capture channels " + _default("channels"))
    p.add_argument("--bitrate", type=int, help="Opus bitrate, bits/s " + _default("bitrate"))
    p.add_argument("--device", help="capture device index or name (default: the default input)")
    p.add_argument("--name", help="recording name (default: the start time, or the file name)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings and errors (default: info too)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapedeck-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="capture from the audio device, upload, finalize")
    rec.add_argument("--duration", type=float, help="seconds of audio to record "
                     "(default: until SIGTERM/SIGINT)")
    rec.add_argument("--input", type=Path, help="record this audio file in real time "
                     "instead of a capture device (testing, demos; default: the capture device)")
    rec.add_argument("--wait", type=float, help="seconds to wait for upload+finalize after "
                     "capture ends (default: shutdown_grace_s)")
    up = sub.add_parser("upload", help="encode an audio file to chunks, upload, finalize")
    up.add_argument("file", type=Path, help="audio file (WAV, or anything ffmpeg reads)")
    up.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for upload+finalize (default 600)")
    sync = sub.add_parser("sync", help="upload and finalize what the spool holds, then exit")
    sync.add_argument("--timeout", type=float, default=600.0,
                      help="seconds to wait for upload+finalize (default 600)")
    st = sub.add_parser("status", help="show the spool: recordings, chunks, states")
    st.add_argument("--json", action="store_true",
                    help="machine-readable output (default: a table)")
    st.add_argument("--all", action="store_true",
                    help="include finalized recordings (default: only unfinished ones)")
    sub.add_parser("devices", help="list PortAudio capture devices")
    retry = sub.add_parser("retry", help="put a parked recording back to work")
    retry.add_argument("local_id", help="the spool's id of the parked recording (see status)")
    retry.add_argument("--recreate", action="store_true",
                       help="upload to a NEW server recording (e.g. after recording_not_found; "
                       "default: the same one)")
    for p in (rec, up, sync, st, sub.choices["devices"], retry):
        _add_config_flags(p)
    return parser


def _config(args: argparse.Namespace) -> AgentConfig:
    flags = {k: getattr(args, k, None) for k in (
        "server", "token", "spool_dir", "chunk_duration_ms", "max_spool_mb", "sample_rate",
        "channels", "bitrate", "device", "name")}
    return load_config(flags, config_file=args.config)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")


def _open_spool(cfg: AgentConfig) -> Spool:
    return Spool(cfg.spool_dir, cfg.max_spool_bytes, keep_uploaded=cfg.keep_uploaded)


def _finish(service: UploadService, result: RecordResult, wait_s: float,
            signals: Signals) -> int:
    """Wait for the recordings to land, stop the uploader, print the JSON line."""
    if result.frames_dropped:
        log.error("%.1f s of live audio were not recorded because the spool was full",
                  result.frames_dropped / service.cfg.sample_rate)
    outcome = service.wait(result.local_ids, wait_s, signals.abort, signals.stop,
                           service.cfg.shutdown_grace_s)
    service.stop()
    return _report(outcome, result, service.cfg.sample_rate)


def _report(outcome: Outcome, result: RecordResult, rate: int) -> int:
    rows = [r for r in outcome.rows if r["status"] != "empty"] or outcome.rows
    last: dict[str, Any] = dict(rows[-1]) if rows else {"recording_id": None,
                                                        "status": "empty"}
    line = {"recording_id": last["recording_id"], "status": last["status"],
            "local_id": last.get("local_id"), "chunks": last.get("chunks"),
            "duration_ms": last.get("duration_ms"), "ended_by": result.ended_by}
    if len(rows) > 1:
        line["recordings"] = rows
    if result.frames_dropped:
        line["not_recorded_ms"] = result.frames_dropped * 1000 // rate
    print(json.dumps(line), flush=True)
    if outcome.needs_operator:
        return EXIT_OPERATOR
    return EXIT_OK if outcome.finalized else EXIT_LATER


def cmd_record(args: argparse.Namespace, cfg: AgentConfig) -> int:
    signals = Signals()
    spool = _open_spool(cfg)
    service = UploadService(cfg, spool)
    service.start()
    frames = None if args.duration is None else round(args.duration * cfg.sample_rate)
    try:
        source, origin = _live_source(cfg, args.input)
        log.info("capturing from %s at %d Hz x%d into %s", origin, cfg.sample_rate,
                 cfg.channels, spool.root)
        try:
            result = Recorder(cfg, spool, service.notify).record(
                source, signals.stop, origin=origin, max_frames=frames, name=cfg.name)
        finally:
            source.close()
        wait_s = cfg.shutdown_grace_s if args.wait is None else args.wait
        return _finish(service, result, wait_s, signals)
    finally:
        service.stop()


def _live_source(cfg: AgentConfig, path: Path | None) -> tuple[AudioSource, str]:
    """The capture device, or ``path`` paced in real time; with its origin label."""
    if path is not None:
        return PacedSource(open_file_source(path, cfg.sample_rate, cfg.channels)), \
            f"input:{path.name}"
    source = PortAudioSource(cfg.device, cfg.sample_rate, cfg.channels,
                             cfg.sample_rate * READ_MS // 1000)
    return source, f"capture:{source.device_name}"


def cmd_upload(args: argparse.Namespace, cfg: AgentConfig) -> int:
    signals = Signals()
    source = open_file_source(args.file, cfg.sample_rate, cfg.channels)
    spool = _open_spool(cfg)
    service = UploadService(cfg, spool)
    service.start()
    try:
        try:
            result = Recorder(cfg, spool, service.notify).record(
                source, signals.stop, origin=f"file:{args.file.name}",
                name=cfg.name or args.file.name)
        finally:
            source.close()
        return _finish(service, result, args.timeout, signals)
    finally:
        service.stop()


def cmd_sync(args: argparse.Namespace, cfg: AgentConfig) -> int:
    signals = Signals()
    spool = _open_spool(cfg)
    for line in spool.recover():
        log.warning("spool recovery: %s", line)
    service = UploadService(cfg, spool)
    service.start()
    ids = [r.local_id for r in spool.recordings(("closed", "capturing"))]
    outcome = service.wait(ids, args.timeout, signals.stop)
    service.stop()
    for row in outcome.rows:
        print(json.dumps(row), flush=True)
    if outcome.needs_operator:
        return EXIT_OPERATOR
    return EXIT_OK if outcome.finalized else EXIT_LATER


def fleet_status(spool: Spool, cfg: AgentConfig) -> dict[str, Any]:
    """Health (as the heartbeat reports it) and settings: configured, pushed by the server,
    and the version the current recording runs."""
    backlog = health.spool_backlog(spool)
    mb = 1024 * 1024
    return {
        "health": {"storage_used_mb": spool.usage_bytes() // mb,
                   "storage_total_mb": spool.max_bytes // mb,
                   "battery_percent": health.battery_percent(cfg.power_supply_dir),
                   "firmware_version": health.agent_version(),
                   "backlog": {"recordings": backlog.recordings, "chunks": backlog.chunks,
                               "bytes": backlog.bytes, "oldest_age_s": backlog.oldest_age_s}},
        "settings": {
            "configured": {"chunk_duration_ms": cfg.chunk_duration_ms, "bitrate": cfg.bitrate,
                           "dtx": cfg.dtx, "heartbeat_interval_s": cfg.heartbeat_interval_s},
            "apply_server_settings": cfg.apply_server_settings,
            "pushed": (p.to_json() if (p := health.load_pushed(spool)) else None),
            "running_version": health.running_version(spool)},
    }


def status_data(spool: Spool, include_all: bool,
                cfg: AgentConfig | None = None) -> dict[str, Any]:
    """The spool as JSON-able data (used by ``status``); with ``cfg`` also the device's
    health and settings (``fleet_status``)."""
    recs = []
    for rec in spool.recordings(limit=None if include_all else 50):
        if rec.state == "finalized" and not include_all:
            continue
        chunks = spool.chunks(rec.local_id)
        recs.append({
            "local_id": rec.local_id, "recording_id": rec.server_id, "state": rec.state,
            "server_status": rec.server_status, "source": rec.source, "name": rec.name,
            "started_at": rec.started_at, "chunks": len(chunks),
            "chunks_uploaded": sum(c.uploaded for c in chunks),
            "uploads": sum(c.uploads for c in chunks),
            "duplicate_uploads": sum(c.duplicates for c in chunks),
            "bytes": sum(c.size for c in chunks if not c.deleted),
            "duration_ms": rec.duration_ms or samples_to_ms(sum(c.samples for c in chunks)),
            "parked_reason": rec.parked_reason})
    return {"spool_dir": str(spool.root), "used_bytes": spool.usage_bytes(),
            "limit_bytes": spool.max_bytes,
            "agent": {k: {"value": v, "updated_at": t} for k, (v, t) in spool.states().items()
                      if k != health.PUSHED_KEY},
            **(fleet_status(spool, cfg) if cfg is not None else {}),
            "recordings": recs}


def cmd_status(args: argparse.Namespace, cfg: AgentConfig) -> int:
    spool = _open_spool(cfg)
    data = status_data(spool, args.all, cfg)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    mb = 1024 * 1024
    print(f"spool {data['spool_dir']}: {data['used_bytes'] / mb:.1f} MB of "
          f"{data['limit_bytes'] / mb:.0f} MB")
    for key, state in data["agent"].items():
        print(f"{key}: {state['value']} (since {state['updated_at']})")
    _print_fleet(data)
    print(f"{'LOCAL ID':34} {'SERVER ID':30} {'STATE':10} {'CHUNKS':>9} {'SECONDS':>8}  NOTE")
    for r in data["recordings"]:
        note = r["parked_reason"] or r["server_status"] or ""
        print(f"{r['local_id']:34} {r['recording_id'] or '-':30} {r['state']:10} "
              f"{r['chunks_uploaded']:>4}/{r['chunks']:<4} {r['duration_ms'] / 1000:8.1f}  {note}")
    return EXIT_OK


def _print_fleet(data: dict[str, Any]) -> None:
    h, s = data["health"], data["settings"]
    b = h["backlog"]
    age = "-" if b["oldest_age_s"] is None else f"{b['oldest_age_s']} s"
    battery = "not reported" if h["battery_percent"] is None else f"{h['battery_percent']} %"
    print(f"health: battery {battery}, {h['firmware_version']}; backlog {b['recordings']} "
          f"recording(s), {b['chunks']} chunk(s), {b['bytes']} bytes, oldest {age}")
    pushed = s["pushed"]
    shown = ("none" if pushed is None else f"version {pushed['version']} "
             + json.dumps({k: v for k, v in pushed.items() if k != "version" and v is not None}))
    print(f"settings: running version {s['running_version']}; configured "
          f"{json.dumps(s['configured'])}; from server {shown}"
          + ("" if s["apply_server_settings"] else " (ignored: apply_server_settings off)"))


def cmd_devices(args: argparse.Namespace, cfg: AgentConfig) -> int:
    pa = open_portaudio()
    try:
        devices = list_devices(pa)
        default = pa.get_default_input_device_info()["index"] if devices else None
    except OSError:
        default = None
    finally:
        pa.terminate()
    if not devices:
        print("no capture devices found")
        return EXIT_ERROR
    for d in devices:
        mark = "*" if d.index == default else " "
        print(f"{mark}{d.index:3}  {d.name}  ({d.host_api}, {d.max_input_channels} ch, "
              f"{d.default_sample_rate:.0f} Hz)")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, cfg: AgentConfig) -> int:
    spool = _open_spool(cfg)
    spool.unpark(args.local_id, recreate=args.recreate)
    print(f"{args.local_id} is back in the upload queue")
    return EXIT_OK


COMMANDS = {"record": cmd_record, "upload": cmd_upload, "sync": cmd_sync,
            "status": cmd_status, "devices": cmd_devices, "retry": cmd_retry}


def _version() -> str:
    try:
        return importlib.metadata.version("tapedeck")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _missing_connection(command: str, cfg: AgentConfig) -> str:
    """What ``upload``/``sync`` lack to reach a server at once (they would otherwise wait
    their whole timeout in silence); empty when nothing is missing."""
    if command not in ("upload", "sync"):
        return ""
    missing = []
    if not cfg.server:
        missing.append("a server: pass --server HOST:PORT or set TAPEDECK_AGENT_SERVER")
    if not cfg.token:
        missing.append("a device token: pass --token or set TAPEDECK_AGENT_TOKEN")
    return "; and ".join(missing)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tapedeck-agent`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        cfg = _config(args)
        missing = _missing_connection(args.command, cfg)
        if missing:
            print(f"tapedeck-agent: {args.command} needs {missing}", file=sys.stderr)
            return EXIT_USAGE
        return COMMANDS[args.command](args, cfg)
    except ConfigError as exc:
        print(f"tapedeck-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CaptureError, KeyError, ValueError) as exc:
        print(f"tapedeck-agent: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
