"""Private state on disk: the data directory is 0700 and every file in it 0600.

The data directory holds the SQLite database (device and end-user records, event payloads),
secret keys and the managed store's objects, so nothing in it may be readable by other users:

- ``private_umask()`` is the umask server processes (and the ``weed`` they start) run under,
  so every file and directory they create is private from the start;
- ``private_dir`` creates a directory 0700 (or tightens an existing one);
- ``private_file`` creates an empty file 0600 when missing and tightens an existing one
  (SQLite gives ``-wal``/``-shm`` the permissions of the database file, so creating the
  database 0600 before SQLite opens it makes all three private);
- ``tighten_tree`` fixes a directory made by an older version: directories 0700, regular
  files 0600 (symlinks and sockets are left alone).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_umask() -> int:
    """The umask for server processes (0o077); returns the one it replaced."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as an existing directory with mode 0700 (parents made 0700 too)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` as an existing regular file with mode 0600 (created empty when missing)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
        path.chmod(FILE_MODE)
    return path


def tighten_tree(root: Path) -> int:
    """Make ``root`` and every directory under it 0700 and every regular file 0600.
    Returns how many modes it changed. Files vanishing meanwhile are skipped."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))):
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            want = (DIR_MODE if stat.S_ISDIR(st.st_mode)
                    else FILE_MODE if stat.S_ISREG(st.st_mode) else None)
            if want is not None and stat.S_IMODE(st.st_mode) != want:
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(name, want)
                    changed += 1
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return changed


def private_database(path: Path) -> None:
    """Before SQLite opens ``path``: its directory 0700 when made here, the database file
    created 0600 (SQLite copies its mode to ``-wal``/``-shm``), and existing ``-wal``/``-shm``
    files of an older version tightened to 0600."""
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(side.stat().st_mode) != FILE_MODE:
                side.chmod(FILE_MODE)
