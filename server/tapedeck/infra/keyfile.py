"""Server-side secret keys kept as files in the data directory (never in SQLite).

``load_or_create`` is safe when several processes (``tapedeck api`` and ``tapedeck worker``
on one data directory) start at once: the key file appears only complete (written under a
temporary name, fsynced, then hard-linked into place), and every process reads the one key
that got there first.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create(path: Path, size: int = 32) -> bytes:
    """The ``size``-byte key in ``path``; when there is none, a new random one written there
    first (mode 0600). ``ValueError`` if the file holds anything but ``size`` bytes."""
    if not path.exists():
        _create(path, size)
    key = path.read_bytes()
    if len(key) != size:
        raise ValueError(f"{path} holds {len(key)} bytes, not a {size}-byte key")
    return key


def _create(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(size))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process published its key first: use that one
            return
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
