"""``tapedeck.infra.keyfile``: data-directory keys, created once, the same for every process."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tapedeck.infra.keyfile import load_or_create


def test_creates_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "k.key"
    key = load_or_create(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.key"]  # no temporary left


def test_a_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        load_or_create(path)


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "data" / "k.key"
    code = ("import sys; from pathlib import Path; from tapedeck.infra.keyfile import load_or_create;"
            "print(load_or_create(Path(sys.argv[1])).hex())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(8)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert keys == {path.read_bytes().hex()}
