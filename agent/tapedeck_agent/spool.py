"""The durable spool: chunk files plus a SQLite manifest of what exists and what was uploaded.

Layout under the spool directory::

    manifest.db                       recordings, chunks, agent state (WAL, synchronous=FULL)
    recordings/<local_id>/chunk_000001.opus
    locks/uploader.lock               held (flock) by the one process that uploads
    locks/owner-<uuid>.lock           held by each capturing process while it lives

Contracts:
- A chunk exists once its file is renamed into place: the bytes are written to a ``.tmp`` file,
  fsynced, renamed, and the directory fsynced; only then is the manifest row inserted. A crash
  between rename and insert leaves a complete file without a row; ``recover()`` adds the row.
  ``.tmp`` files are incomplete by definition and ``recover()`` deletes them.
- Parts of one recording are written in order 1, 2, 3 …, so the files are always 1..n.
- A recording is ``capturing`` while its owner process lives; ``closed`` once its last chunk
  is written (``total_chunks`` and ``duration_ms`` fixed); ``finalized`` once the server
  accepted the finalize (its chunk files are then deleted unless ``keep_uploaded``);
  ``parked`` after a permanent error, waiting for an operator (``tapedeck-agent retry``);
  ``empty`` if it ended before its first chunk. A ``capturing`` recording whose owner died
  (kill -9, power cut) is closed by ``recover()`` with the chunks it has.
- Audio sample counts are in 48 kHz units (the Ogg Opus granule unit).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

GRANULE_RATE = 48_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    local_id TEXT NOT NULL UNIQUE,
    server_id TEXT,
    state TEXT NOT NULL,
    owner TEXT,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    started_at TEXT NOT NULL,
    sample_rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    chunk_duration_ms INTEGER NOT NULL,
    estimated_duration_ms INTEGER,
    max_chunks INTEGER,
    chunk_url_template TEXT,
    total_chunks INTEGER,
    duration_ms INTEGER,
    create_attempted INTEGER NOT NULL DEFAULT 0,
    create_generation INTEGER NOT NULL DEFAULT 0,
    server_status TEXT,
    parked_reason TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    local_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    samples INTEGER NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0,
    uploads INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    checksum_failures INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (local_id, part)
);
CREATE TABLE IF NOT EXISTS agent_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
ACTIVE_STATES = ("capturing", "closed")


def now_iso() -> str:
    """The current UTC time as ISO-8601 with ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def samples_to_ms(samples: int) -> int:
    """48 kHz samples to milliseconds, rounded half up."""
    return (samples * 1000 + GRANULE_RATE // 2) // GRANULE_RATE


@dataclass(frozen=True)
class RecordingRow:
    """One recording of the manifest."""

    seq: int
    local_id: str
    server_id: str | None
    state: str
    owner: str | None
    source: str
    name: str
    started_at: str
    sample_rate: int
    channels: int
    chunk_duration_ms: int
    estimated_duration_ms: int | None
    max_chunks: int | None
    chunk_url_template: str | None
    total_chunks: int | None
    duration_ms: int | None
    create_attempted: int
    create_generation: int
    server_status: str | None
    parked_reason: str | None
    updated_at: str

    @property
    def create_key(self) -> str:
        """Idempotency key (and metadata tag) of the server create: the local id, plus
        ``#n`` after the n-th ``retry --recreate``."""
        gen = self.create_generation
        return self.local_id if gen == 0 else f"{self.local_id}#{gen}"


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of the manifest. ``uploads`` counts upload calls the server acknowledged
    as newly stored; ``duplicates`` counts acknowledged uploads of bytes it already had."""

    local_id: str
    part: int
    size: int
    md5: str
    samples: int
    uploaded: int
    uploads: int
    duplicates: int
    checksum_failures: int
    deleted: int


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash the file is either absent or whole:
    write ``path.tmp``, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    fsync_dir(path.parent)


def new_local_id() -> str:
    """A sortable local recording id: ``loc_<UTC time>_<random>``."""
    return f"loc_{datetime.now(UTC):%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"


class ProcessLock:
    """An exclusive ``flock`` on a file, held for the life of this object (or process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        if self._file is not None:
            return True
        f = self.path.open("ab")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        return True

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Spool:
    """The spool directory and its manifest. Thread-safe within a process (one connection
    behind a lock); safe across processes through SQLite's own locking."""

    def __init__(self, root: Path, max_bytes: int, keep_uploaded: bool = False) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.keep_uploaded = keep_uploaded
        (root / "recordings").mkdir(parents=True, exist_ok=True)
        (root / "locks").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(root / "manifest.db", timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT), serialized in this process."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def recording_dir(self, local_id: str) -> Path:
        return self.root / "recordings" / local_id

    def chunk_path(self, local_id: str, part: int) -> Path:
        return self.recording_dir(local_id) / f"chunk_{part:06d}.opus"

    def new_owner(self) -> tuple[str, ProcessLock]:
        """A fresh owner name and its held lock, identifying this live capturing process."""
        owner = f"owner-{uuid.uuid4().hex}"
        lock = ProcessLock(self.root / "locks" / f"{owner}.lock")
        if not lock.try_acquire():
            raise RuntimeError("could not lock a fresh owner file")
        return owner, lock

    def owner_alive(self, owner: str) -> bool:
        """True while the process that created ``owner`` still holds its lock."""
        path = self.root / "locks" / f"{owner}.lock"
        if not path.exists():
            return False
        probe = ProcessLock(path)
        if probe.try_acquire():
            probe.release()
            return False
        return True

    def uploader_lock(self) -> ProcessLock:
        """The lock that makes one process at a time the uploader of this spool."""
        return ProcessLock(self.root / "locks" / "uploader.lock")

    # -- recordings -----------------------------------------------------------------------
    def new_recording(self, *, source: str, name: str, sample_rate: int, channels: int,
                      chunk_duration_ms: int, estimated_duration_ms: int | None,
                      owner: str) -> str:
        """Register a recording that is starting to capture; returns its local id."""
        local_id = new_local_id()
        self.recording_dir(local_id).mkdir(parents=True)
        fsync_dir(self.root / "recordings")
        started = now_iso()
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO recordings (local_id, state, owner, source, name, started_at,"
                " sample_rate, channels, chunk_duration_ms, estimated_duration_ms, updated_at)"
                " VALUES (?, 'capturing', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (local_id, owner, source, name or started, started, sample_rate, channels,
                 chunk_duration_ms, estimated_duration_ms, started))
        return local_id

    def recording(self, local_id: str) -> RecordingRow:
        rows = self._query("SELECT * FROM recordings WHERE local_id = ?", (local_id,))
        if not rows:
            raise KeyError(local_id)
        return RecordingRow(**dict(rows[0]))

    def recordings(self, states: tuple[str, ...] | None = None,
                   limit: int | None = None) -> list[RecordingRow]:
        """Recordings oldest first, optionally only in ``states``."""
        sql, args = "SELECT * FROM recordings", ()  # type: tuple[str, tuple[Any, ...]]
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(states)
        sql += " ORDER BY seq"
        rows = [RecordingRow(**dict(r)) for r in self._query(sql, args)]
        return rows[-limit:] if limit else rows

    def _update(self, local_id: str, **values: Any) -> None:
        values["updated_at"] = now_iso()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as tx:
            tx.execute(f"UPDATE recordings SET {cols} WHERE local_id = ?",
                       (*values.values(), local_id))

    def close_recording(self, local_id: str) -> RecordingRow:
        """Capture of ``local_id`` ended: fix total_chunks and duration from its chunks
        (``empty`` and its directory removed if it has none; a parked recording stays
        parked). Idempotent."""
        chunks = self.chunks(local_id)
        parked = self.recording(local_id).state == "parked"
        if not chunks:
            self._update(local_id, state="empty", total_chunks=0, duration_ms=0, owner=None)
            shutil.rmtree(self.recording_dir(local_id), ignore_errors=True)
        else:
            total = sum(c.samples for c in chunks)
            self._update(local_id, state="parked" if parked else "closed",
                         total_chunks=len(chunks),
                         duration_ms=samples_to_ms(total), owner=None)
        return self.recording(local_id)

    def set_server_id(self, local_id: str, server_id: str, max_chunks: int | None,
                      chunk_url_template: str | None = None) -> None:
        self._update(local_id, server_id=server_id, max_chunks=max_chunks,
                     chunk_url_template=chunk_url_template)

    def mark_create_attempted(self, local_id: str) -> None:
        self._update(local_id, create_attempted=1)

    def mark_finalized(self, local_id: str, server_status: str) -> None:
        """The server accepted the finalize: record it and free the chunk files."""
        self._update(local_id, state="finalized", server_status=server_status)
        if not self.keep_uploaded:
            with self._tx() as tx:
                tx.execute("UPDATE chunks SET deleted = 1 WHERE local_id = ?", (local_id,))
            shutil.rmtree(self.recording_dir(local_id), ignore_errors=True)

    def park(self, local_id: str, reason: str) -> None:
        """Stop working on ``local_id`` until an operator runs ``retry`` (files are kept)."""
        self._update(local_id, state="parked", parked_reason=reason)

    def unpark(self, local_id: str, recreate: bool = False) -> None:
        """Back to work: ``closed`` (or ``capturing`` if it never closed). ``recreate``
        forgets the server recording so the chunks go to a new one."""
        rec = self.recording(local_id)
        if rec.state != "parked":
            raise ValueError(f"{local_id} is {rec.state}, not parked")
        state = "closed" if rec.total_chunks is not None else "capturing"
        changes: dict[str, Any] = {"state": state, "parked_reason": None}
        if recreate:
            changes.update(server_id=None, max_chunks=None, chunk_url_template=None,
                           create_attempted=0,
                           create_generation=rec.create_generation + 1)
            with self._tx() as tx:
                tx.execute("UPDATE chunks SET uploaded = 0 WHERE local_id = ?", (local_id,))
        self._update(local_id, **changes)

    # -- chunks ---------------------------------------------------------------------------
    def write_chunk(self, local_id: str, part: int, data: bytes, samples: int) -> ChunkRow:
        """Store chunk ``part`` durably, then record it in the manifest."""
        write_durably(self.chunk_path(local_id, part), data)
        md5 = hashlib.md5(data).hexdigest()
        with self._tx() as tx:
            tx.execute("INSERT INTO chunks (local_id, part, size, md5, samples) VALUES (?,?,?,?,?)",
                       (local_id, part, len(data), md5, samples))
        return self.chunk(local_id, part)

    def chunk(self, local_id: str, part: int) -> ChunkRow:
        rows = self._query("SELECT * FROM chunks WHERE local_id = ? AND part = ?",
                           (local_id, part))
        if not rows:
            raise KeyError((local_id, part))
        return ChunkRow(**dict(rows[0]))

    def chunks(self, local_id: str) -> list[ChunkRow]:
        rows = self._query("SELECT * FROM chunks WHERE local_id = ? ORDER BY part", (local_id,))
        return [ChunkRow(**dict(r)) for r in rows]

    def read_chunk(self, local_id: str, part: int) -> bytes:
        return self.chunk_path(local_id, part).read_bytes()

    def set_uploaded(self, local_id: str, part: int, uploaded: bool) -> None:
        """Reconciliation result: the server holds (or lacks) this chunk's exact bytes."""
        with self._tx() as tx:
            tx.execute("UPDATE chunks SET uploaded = ? WHERE local_id = ? AND part = ?",
                       (int(uploaded), local_id, part))

    def record_upload(self, local_id: str, part: int, already_stored: bool) -> None:
        """The server acknowledged an upload of this chunk."""
        column = "duplicates" if already_stored else "uploads"
        with self._tx() as tx:
            tx.execute(f"UPDATE chunks SET uploaded = 1, {column} = {column} + 1"
                       " WHERE local_id = ? AND part = ?", (local_id, part))

    def record_checksum_failure(self, local_id: str, part: int) -> int:
        """The server refused this chunk's bytes as not matching its md5; returns the count."""
        with self._tx() as tx:
            tx.execute("UPDATE chunks SET checksum_failures = checksum_failures + 1"
                       " WHERE local_id = ? AND part = ?", (local_id, part))
        return self.chunk(local_id, part).checksum_failures

    def evict_uploaded(self, target_bytes: int) -> int:
        """Delete files of chunks the server acknowledged, oldest first, until the spool
        uses at most ``target_bytes``; returns the bytes freed. Such a recording is later
        finalized without ``checksum_md5`` (its chunks are checked against ListChunks md5s
        instead) and cannot re-send an evicted chunk."""
        freed = 0
        rows = self._query(
            "SELECT c.local_id, c.part, c.size FROM chunks c JOIN recordings r"
            " ON r.local_id = c.local_id WHERE c.uploaded = 1 AND c.deleted = 0"
            " ORDER BY r.seq, c.part")
        usage = self.usage_bytes()
        for local_id, part, size in rows:
            if usage - freed <= target_bytes:
                break
            with self._tx() as tx:
                tx.execute("UPDATE chunks SET deleted = 1 WHERE local_id = ? AND part = ?",
                           (local_id, part))
            self.chunk_path(local_id, part).unlink(missing_ok=True)
            freed += size
        return freed

    def usage_bytes(self) -> int:
        """Bytes of chunk files still on disk."""
        rows = self._query("SELECT COALESCE(SUM(size), 0) FROM chunks WHERE deleted = 0")
        return int(rows[0][0])

    def pending(self) -> list[tuple[RecordingRow, list[ChunkRow]]]:
        """Active recordings (oldest first) with their chunks not yet uploaded."""
        out = []
        for rec in self.recordings(ACTIVE_STATES):
            out.append((rec, [c for c in self.chunks(rec.local_id) if not c.uploaded]))
        return out

    # -- agent state (shown by `status`) ---------------------------------------------------
    def set_state(self, key: str, value: str) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO agent_state VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
                       " SET value = excluded.value, updated_at = excluded.updated_at",
                       (key, value, now_iso()))

    def states(self) -> dict[str, tuple[str, str]]:
        """Every agent state key → (value, updated_at)."""
        rows = self._query("SELECT key, value, updated_at FROM agent_state ORDER BY key")
        return {r[0]: (r[1], r[2]) for r in rows}

    # -- recovery -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Bring the manifest in line with the files after a crash; returns what it did.

        Deletes ``.tmp`` leftovers, adds rows for complete chunk files that have none, and
        closes ``capturing`` recordings whose owner process is gone."""
        done: list[str] = []
        for rec in self.recordings((*ACTIVE_STATES, "parked")):
            done += self._recover_files(rec)
            if rec.state == "capturing" and not (rec.owner and self.owner_alive(rec.owner)):
                closed = self.close_recording(rec.local_id)
                done.append(f"closed interrupted recording {rec.local_id} with "
                            f"{closed.total_chunks} chunk(s)")
        for lock in (self.root / "locks").glob("owner-*.lock"):
            if not self.owner_alive(lock.stem):
                lock.unlink(missing_ok=True)
        return done

    def _recover_files(self, rec: RecordingRow) -> list[str]:
        done = []
        folder = self.recording_dir(rec.local_id)
        for tmp in folder.glob("*.tmp"):
            tmp.unlink()
            done.append(f"removed incomplete {tmp.name} of {rec.local_id}")
        known = {c.part for c in self.chunks(rec.local_id)}
        for path in sorted(folder.glob("chunk_*.opus")):
            part = int(path.stem.split("_")[1])
            if part not in known:
                data = path.read_bytes()
                with self._tx() as tx:
                    tx.execute("INSERT OR IGNORE INTO chunks (local_id, part, size, md5, samples)"
                               " VALUES (?,?,?,?,?)", (rec.local_id, part, len(data),
                                                      hashlib.md5(data).hexdigest(),
                                                      ogg_opus_samples(data)))
                done.append(f"registered chunk {part} of {rec.local_id} found on disk")
        return done


def ogg_opus_samples(data: bytes) -> int:
    """Playable samples (48 kHz) of one Ogg Opus chunk file, 0 if it does not parse (the
    server validates chunks fully; this only recovers a duration for the manifest)."""
    from tapedeck.oggopus.opus import InvalidAudio
    from tapedeck.oggopus.stream import probe

    try:
        return probe(io.BytesIO(data)).samples
    except InvalidAudio:
        return 0
