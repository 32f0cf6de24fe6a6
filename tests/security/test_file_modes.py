"""The data directory is 0700 and every state file in it 0600 (issue 15 item 4): the SQLite
database and its WAL/SHM, key files, and the managed SeaweedFS's data."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

from tapedeck.app import App
from tapedeck.auth import create_project, issue_device_token
from tapedeck.settings import Settings
from tapedeck.v1 import recording_pb2

from serverkit import RunningServer, auth, chunk_messages, make_settings, start_server


def _modes(root: Path) -> dict[str, int]:
    """Relative path → permission bits of every directory and regular file under root."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = Path(dirpath, name)
            st = full.lstat()
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                out[str(full.relative_to(root))] = stat.S_IMODE(st.st_mode)
    return out


def _assert_private(root: Path) -> None:
    """Directories 0700, files 0600; except SeaweedFS's ``.vif`` volume-info files (a
    version and a size, no audio) which weed chmods 0644 itself when it makes a volume
    (inside a 0700 directory, so other users cannot reach them either)."""
    modes = _modes(root)
    loose = {p: oct(m) for p, m in modes.items()
             if m != (0o700 if (root / p).is_dir() else 0o600)
             and not (p.endswith(".vif") and m == 0o644)}
    assert loose == {}, f"not private: {loose}"


def _record_one_chunk(srv: RunningServer) -> None:
    _, token = issue_device_token(srv.app.db, srv.app.clock, srv.project_id)
    rec = srv.recordings().CreateRecording(
        recording_pb2.CreateRecordingRequest(streaming=True, chunk_duration_ms=60_000),
        metadata=auth(token)).recording
    data = os.urandom(200_000)
    srv.chunks().UploadChunk(chunk_messages(rec.id, 1, data, md5=hashlib.md5(data).hexdigest()),
                             metadata=auth(token))


def test_embedded_default_keeps_everything_private(tmp_path: Path) -> None:
    """No external store: the managed weed's data is private too, while running."""
    data_dir = tmp_path / "data"
    srv = start_server(Settings(data_dir=data_dir, grpc_port=0, http_port=0,
                                check_chunks=False),  # placeholder chunk bytes
                       roles=("grpc", "http"))
    try:
        _record_one_chunk(srv)
        names = set(_modes(data_dir))
        assert {"tapedeck.db", "tapedeck.db-wal", "tapedeck.db-shm",
                "upload-signing.key", "seaweedfs", "seaweedfs/s3-credentials.json"} <= names
        assert sum(1 for n in names if n.startswith("seaweedfs/")) > 5
        _assert_private(data_dir)
    finally:
        srv.close()
    _assert_private(data_dir)


def test_an_older_world_readable_data_dir_is_tightened(weed: object, tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    db = sqlite3.connect(data_dir / "tapedeck.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE leftover (x)")
    db.close()
    (data_dir / "tapedeck.db").chmod(0o644)
    (data_dir / "notes").mkdir(mode=0o755)
    (data_dir / "notes").chmod(0o755)
    (data_dir / "notes" / "old.txt").write_text("x")
    (data_dir / "notes" / "old.txt").chmod(0o644)
    app = App.open(make_settings(weed, data_dir))
    try:
        create_project(app.db, app.clock)
        assert (data_dir / "tapedeck.db-wal").exists()
        _assert_private(data_dir)
    finally:
        app.close()
        from serverkit import drop_bucket

        drop_bucket(weed, app.settings.s3_bucket)


def test_the_cli_runs_under_a_private_umask(tmp_path: Path) -> None:
    """Admin commands create the database 0600 in a 0700 directory whatever the caller's
    umask (an operator's usual 022)."""
    import subprocess
    import sys

    data_dir = tmp_path / "cli"
    old = os.umask(0o022)
    try:
        subprocess.run([sys.executable, "-m", "tapedeck", "admin", "bootstrap",
                        "--data-dir", str(data_dir), "--create-database"], check=True, capture_output=True)
    finally:
        os.umask(old)
    assert (data_dir / "tapedeck.db").exists()
    _assert_private(data_dir)
