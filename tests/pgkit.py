"""A real PostgreSQL (Debian's ``postgresql`` 15) for tests and local clusters.

``TempPostgres(dir)`` runs ``initdb`` + ``pg_ctl start`` as the unprivileged ``postgres``
user (the server refuses root) on a free loopback port with trust auth for the superuser
``tapedeck``; ``fresh_database()`` creates an empty database and returns its URL;
``stop()`` stops the server (``pg_ctl stop -m immediate``). Used by the session fixture
``postgres`` in tests/conftest.py and by ``python tests/pgkit.py DIR`` (prints the URL and
waits until interrupted).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from tapedeck.infra.weed import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "tapedeck"


class PostgresUnavailable(RuntimeError):
    """Debian's postgresql is not installed (or cannot start here)."""


class TempPostgres:
    """One throwaway PostgreSQL server in ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        if not (BIN / "initdb").exists():
            raise PostgresUnavailable(f"{BIN}/initdb not found: apt-get install postgresql")
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.base_url = f"postgresql://{USER}@127.0.0.1:{self.port}"
        self._migrated: str | None = None

    def _run(self, *argv: str) -> None:
        cmd = [str(a) for a in argv]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(map(str, argv[:2]))} failed: "
                                      f"{(res.stderr or res.stdout).strip()[-500:]}")

    def start(self) -> TempPostgres:
        """initdb and start; ready when it returns."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", USER,
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        # Test servers: durability off (fsync) is a speed trade the tests can afford;
        # synchronous_commit stays on so commit semantics are the production ones.
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
                " -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB")
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                  str(self.data / "server.log"), "-w", "-t", "60", "start")
        return self

    def fresh_database(self, *, migrated: bool = True) -> str:
        """A new database, its URL: a copy of a database migrated once per server (fast),
        or empty (``migrated=False``)."""
        template = "template0"
        if migrated:
            if self._migrated is None:
                self._migrated = self._make_migrated_template()
            template = self._migrated
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return f"{self.base_url}/{name}"

    def _make_migrated_template(self) -> str:
        from tapedeck.infra.db import open_database

        url = self.fresh_database(migrated=False)
        open_database(url).close()
        return url.rsplit("/", 1)[1]

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (its connections are ended first)."""
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server and remove its data."""
        if self.data.exists():
            self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SHARED: TempPostgres | None = None


def shared_postgres() -> TempPostgres:
    """This process's one test PostgreSQL, started on first use and stopped at exit (the
    session fixture ``postgres`` and ``serverkit.make_settings`` on PostgreSQL share it)."""
    global _SHARED
    if _SHARED is None:
        import atexit
        import tempfile

        _SHARED = TempPostgres(Path(tempfile.mkdtemp(prefix="tapedeck-pg-"))).start()
        atexit.register(_SHARED.stop)
    return _SHARED


if __name__ == "__main__":  # pragma: no cover - manual use
    import tempfile
    import time

    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="pg-"))
    with TempPostgres(where) as pg:
        print(pg.fresh_database(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
