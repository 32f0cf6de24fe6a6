"""The ``tapedeck`` command: a thin layer over ``App`` and the admin functions.

    tapedeck serve       everything in one process (the embedded default)
    tapedeck api         gRPC + REST only          tapedeck worker      job workers + sweeper
    tapedeck dispatcher  webhook delivery only     tapedeck admin ...   bootstrap, device-token, reindex,
                                                        reseal-secrets
    tapedeck admin migrate   apply schema migrations (SQLite, or TAPEDECK_DATABASE_URL's PostgreSQL)
    tapedeck admin migrate-to   copy the SQLite rows into TAPEDECK_TARGET_DATABASE_URL (verified)
    tapedeck settings    print every setting with its value and environment variable
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tapedeck.errors import TapedeckError
from tapedeck.startup import EXIT_DATABASE, EXIT_NO_DATABASE, StartupError

log = logging.getLogger("tapedeck.cli")

ROLE_COMMANDS = {
    "serve": ("grpc", "http", "worker", "dispatcher", "sweeper"),
    "api": ("grpc", "http"),
    "worker": ("worker", "sweeper"),
    "dispatcher": ("dispatcher",),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapedeck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ROLE_COMMANDS:
        p = sub.add_parser(name, help=f"run the {name} role(s)")
        _common(p)
        p.add_argument("--grpc-port", type=int, dest="grpc_port",
                       help="gRPC port, 0 = any free (default 50051; TAPEDECK_GRPC_PORT)")
        p.add_argument("--http-port", type=int, dest="http_port",
                       help="REST port, 0 = any free (default 8080; TAPEDECK_HTTP_PORT)")
        p.add_argument("--host", help="address to listen on (default 127.0.0.1; TAPEDECK_HOST)")
    admin = sub.add_parser("admin", help="administration").add_subparsers(dest="admin",
                                                                         required=True)
    boot = admin.add_parser("bootstrap", help="create a project and its first secret key")
    _common(boot)
    _create_flag(boot)
    tok = admin.add_parser("device-token", help="register a device and issue a device token")
    _common(tok)
    _create_flag(tok)
    tok.add_argument("--project-id", required=True, help="the project (prj_..., required)")
    tok.add_argument("--device-id", help="the device's id (default: a new dev_... id)")
    _common(admin.add_parser("reindex", help="rebuild the transcript search index from the "
                                             "transcripts"))
    _common(admin.add_parser("reseal-secrets", help="seal every webhook secret under the "
                                                    "current TAPEDECK_SECRET_KEY (after a rotation)"))
    cp = admin.add_parser("copy-objects", help="copy every stored object into another S3 "
                                               "store, verified (counts, MD5s), resumable")
    _common(cp)
    cp.add_argument("--to-endpoint", required=True, help="host:port of the target S3 store (required)")
    cp.add_argument("--to-bucket", default="tapedeck",
                    help="target bucket, made if missing (default tapedeck)")
    cp.add_argument("--to-secure", action="store_true", help="HTTPS to the target (default: plain HTTP)")
    cp.add_argument("--to-region", default="us-east-1", help="target region (default us-east-1)")
    # The target's keys come from the environment, never from the command line (ps shows it):
    # TAPEDECK_TARGET_S3_ACCESS_KEY and TAPEDECK_TARGET_S3_SECRET_KEY.
    mig = admin.add_parser("migrate", help="apply pending schema migrations (SQLite or "
                                           "TAPEDECK_DATABASE_URL) and print their names")
    _common(mig)
    _create_flag(mig)
    mt = admin.add_parser("migrate-to", help="copy this installation's SQLite rows into the "
                                             "PostgreSQL database TAPEDECK_TARGET_DATABASE_URL,"
                                             " verified (counts, checksums), resumable")
    _common(mt)
    mt.add_argument("--batch", type=int, default=500, help="rows per committed batch (default 500)")
    shown = sub.add_parser("settings", help="print every setting")
    _common(shown)
    shown.add_argument("--markdown", action="store_true",
                       help="print the defaults as the README's Markdown table "
                            "(default: the current values)")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", dest="data_dir",
                   help="data directory (default ./tapedeck-data; TAPEDECK_DATA_DIR)")


def _create_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--create-database", action="store_true", dest="create_database",
                   help="create the database if the data dir has none (default: refuse, so "
                        "a command run from the wrong folder does not make keys no server "
                        "knows)")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("tapedeck")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tapedeck`` console script."""
    args = _parser().parse_args(argv)
    from tapedeck.infra.private import private_umask

    private_umask()  # every file a server or admin command creates is 0600 (dirs 0700)
    from tapedeck.settings import Settings

    flags = {k: getattr(args, k, None) for k in ("data_dir", "grpc_port", "http_port", "host")}
    try:
        settings = Settings.load(flags)
        if args.command in ROLE_COMMANDS:
            return _run(settings, ROLE_COMMANDS[args.command])
        if args.command == "settings":
            if args.markdown:
                print(settings_markdown(), end="")
                return 0
            return _print_settings(settings)
        return _admin(settings, args)
    except TapedeckError as exc:
        print(json.dumps(exc.to_json()), file=sys.stderr)
        return 2
    except StartupError as exc:  # one line, no traceback; the code names the cause
        print(f"tapedeck: {exc.message}", file=sys.stderr)
        return exc.code


def _run(settings: Any, roles: Sequence[str]) -> int:
    from tapedeck.app import App
    from tapedeck.infra.logs import configure

    try:
        configure(settings.log_format, settings.log_level)
    except ValueError as exc:
        from tapedeck.errors import invalid

        raise invalid("log_format", f"{exc} (TAPEDECK_LOG_FORMAT, TAPEDECK_LOG_LEVEL)") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app = App.open(settings, roles=roles)
    try:
        app.start(roles)
        listening = {"roles": list(roles), "data_dir": str(settings.data_dir)}
        if app.grpc_port:
            listening["grpc"] = f"{settings.host}:{app.grpc_port}"
        if app.http_port:
            scheme = "https" if app.certificate else "http"
            listening["http"] = f"{scheme}://{settings.host}:{app.http_port}"
        if app.metrics_port:
            listening["metrics"] = f"http://{settings.host}:{app.metrics_port}/metrics"
        # One write call: a worker thread may print a failpoint line at the same moment.
        sys.stdout.write(json.dumps({"listening": listening}) + "\n")
        sys.stdout.flush()
        log.info("started %s", listening)
        stop.wait()
        log.info("stopping (grace %d s)", settings.shutdown_grace_s)
    finally:
        app.close(grace=float(settings.shutdown_grace_s))
    busy = _busy_threads()
    log.info("stopped")
    if busy:
        _leave_without_finalizing(busy)
    return 0


def _busy_threads() -> list[str]:
    """Names of the daemon threads still running after every role stopped: a job that
    outlived the shutdown grace (its lease was handed back by the worker pool)."""
    return sorted(t.name for t in threading.enumerate()
                  if t.daemon and t.is_alive() and t is not threading.current_thread())


def _leave_without_finalizing(busy: list[str]) -> None:
    """Exit 0 now, skipping interpreter finalization: a daemon thread inside native code
    (CTranslate2, onnxruntime) crashes the process with SIGSEGV/SIGABRT when the
    interpreter is torn down under it. Everything acknowledged is committed by now (the
    database is closed), so only the log and stdio buffers need flushing."""
    log.warning("exiting with %d thread(s) still busy after the grace period: %s",
                len(busy), ", ".join(busy))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _admin(settings: Any, args: argparse.Namespace) -> int:
    from tapedeck.app import open_database
    from tapedeck.auth import create_project, issue_device_token
    from tapedeck.clock import SystemClock
    from tapedeck.infra.db import redact_url

    if args.admin == "copy-objects":
        return _copy_objects(settings, args)
    if args.admin == "migrate-to":
        return _migrate_to(settings, args)

    target: str | Path = settings.database_url or settings.db_path.resolve()
    if (isinstance(target, Path) and not target.exists()
            and not getattr(args, "create_database", False)):
        raise StartupError(EXIT_NO_DATABASE, f"no database at {target}: run this with the "
                           "--data-dir (or TAPEDECK_DATA_DIR) of the server, or pass "
                           "--create-database to make a new one")
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    db = open_database(target)
    # Which database was used, on stderr (stdout stays one JSON object).
    print(f"tapedeck: using the database {redact_url(str(target))}", file=sys.stderr)
    try:
        if args.admin == "migrate":
            print(json.dumps({"applied": db.applied_migrations}))
        elif args.admin == "reindex":
            print(json.dumps(reindex(db)))
        elif args.admin == "reseal-secrets":
            print(json.dumps(reseal(db, settings)))
        elif args.admin == "bootstrap":
            project_id, key = create_project(db, SystemClock())
            print(json.dumps({"project_id": project_id, "api_key": key}))
        else:
            device_id, token = issue_device_token(db, SystemClock(), args.project_id,
                                                  args.device_id)
            print(json.dumps({"device_id": device_id, "device_token": token}))
    finally:
        db.close()
    return 0


def reindex(db: Any) -> dict[str, int]:
    """``tapedeck admin reindex``: recreate the search index (works while the server runs;
    search stays complete meanwhile). Prints ``{"transcriptions": N, "segments": M}``."""
    from tapedeck.domain.search_index import backend_for

    count = db.read().execute(
        "SELECT count(*) FROM transcriptions t JOIN recordings r ON r.transcription_id = t.id"
        " WHERE t.status = 'completed'").fetchone()[0]
    return {"transcriptions": int(count), "segments": backend_for(db).rebuild(db)}


def _copy_objects(settings: Any, args: argparse.Namespace) -> int:
    """``tapedeck admin copy-objects``: this installation's store (the embedded SeaweedFS is
    started for it; stop the server first) into the target; prints the ``CopyResult``."""
    from tapedeck.admin.copy_objects import copy_objects
    from tapedeck.app import App, checked_bucket
    from tapedeck.infra.store.s3 import S3Store

    target = S3Store(args.to_endpoint, os.environ.get("TAPEDECK_TARGET_S3_ACCESS_KEY", ""),
                     os.environ.get("TAPEDECK_TARGET_S3_SECRET_KEY", ""), args.to_bucket,
                     secure=args.to_secure, region=args.to_region)
    checked_bucket(target, args.to_endpoint)
    app = App.open(settings)
    try:
        result = copy_objects(app.store, target)
    finally:
        app.close(grace=1.0)
        target.close()
    print(json.dumps(result.to_json()))
    return 0 if result.source_digest == result.target_digest else 1


def _migrate_to(settings: Any, args: argparse.Namespace) -> int:
    """``tapedeck admin migrate-to``: the SQLite file of ``--data-dir`` into the PostgreSQL
    database named by ``TAPEDECK_TARGET_DATABASE_URL`` (from the environment, never the
    command line: ``ps`` shows that). A progress line per batch on stderr; one JSON line per
    table and a summary on stdout; exit 0 only if every table verified."""
    from tapedeck.admin.migrate_to import MigrateToError, describe, migrate_to
    from tapedeck.infra.db import is_postgres_url

    url = os.environ.get("TAPEDECK_TARGET_DATABASE_URL", "")
    if not is_postgres_url(url):
        raise StartupError(EXIT_DATABASE, "set TAPEDECK_TARGET_DATABASE_URL to the target"
                           " PostgreSQL database (postgresql://user:password@host/db)")
    source = settings.db_path.resolve()
    print(f"tapedeck: copying {source} into {describe(url)}", file=sys.stderr)
    try:
        reports = migrate_to(source, url, batch=max(1, args.batch), progress=lambda t, n: print(
            json.dumps({"copied": t, "rows": n}), file=sys.stderr, flush=True))
    except MigrateToError as exc:
        raise StartupError(EXIT_DATABASE, str(exc)) from exc
    for report in reports:
        print(json.dumps(report.to_json()))
    ok = all(r.ok for r in reports)
    print(json.dumps({"tables": len(reports), "rows": sum(r.target_rows for r in reports),
                      "ok": ok}))
    return 0 if ok else 1


def reseal(db: Any, settings: Any) -> dict[str, int]:
    """``tapedeck admin reseal-secrets``: every webhook secret re-sealed under the current
    key (``TAPEDECK_SECRET_KEY``); prints ``{"resealed": N, "current": M, "unreadable": K}``."""
    from tapedeck.domain.webhooks import reseal_secrets
    from tapedeck.server_keys import ServerKeys

    return reseal_secrets(db, ServerKeys.from_settings(settings).secret_box())


def settings_markdown() -> str:
    """Every setting, its environment variable, default and meaning, as a Markdown table
    (the README's Configuration section is this output; a test keeps them equal)."""
    from tapedeck.settings import Settings

    rows = ["| environment variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = getattr(Settings(), f.name)
        shown = f"`{default}`" if str(default) != "" else "(empty)"
        rows.append(f"| `TAPEDECK_{f.name.upper()}` | {shown} | {f.metadata.get('help', '')} |")
    return "\n".join(rows) + "\n"


def _print_settings(settings: Any) -> int:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if "secret" in f.name and value:
            value = "***"
        print(f"TAPEDECK_{f.name.upper():<26} {value!s:<24} {f.metadata.get('help', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
