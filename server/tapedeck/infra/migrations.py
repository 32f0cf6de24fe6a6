"""Schema migrations: a list of functions, applied in order, each exactly once.

Applied migrations are recorded by name in ``_migrations``; add new ones at the END of
``MIGRATIONS`` with a unique name and never edit one that has shipped. Every migration runs
inside the same ``BEGIN IMMEDIATE`` transaction as its bookkeeping row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from tapedeck.infra.sql import Tx

Migration = Callable[[Tx], None]


def m0001_core(db: Tx) -> None:
    """Projects, credentials, devices, recordings, chunks, media, jobs, events."""
    for sql in _CORE_SQL:
        db.execute(sql)


_CORE_SQL = [
    """CREATE TABLE projects (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        kind TEXT NOT NULL,            -- secret | restricted
        mode TEXT NOT NULL,            -- test | live
        token_hash TEXT NOT NULL UNIQUE, hint TEXT NOT NULL, scopes TEXT NOT NULL,
        name TEXT, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        serial_number TEXT, model TEXT, firmware_version TEXT,
        status TEXT NOT NULL, end_user_id TEXT, created_at TEXT NOT NULL,
        heartbeat TEXT, last_heartbeat_at TEXT)""",
    """CREATE TABLE device_tokens (
        id TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices(id),
        project_id TEXT NOT NULL, mode TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE recordings (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        device_id TEXT, end_user_id TEXT, name TEXT, status TEXT NOT NULL,
        codec TEXT NOT NULL, streaming INTEGER NOT NULL,
        duration_ms INTEGER, file_size_bytes INTEGER, mime_type TEXT,
        started_at TEXT, ended_at TEXT, created_at TEXT NOT NULL, uploaded_at TEXT,
        estimated_duration_ms INTEGER, chunk_duration_ms INTEGER,
        max_chunks INTEGER, expires_at TEXT,
        transcription_status TEXT NOT NULL DEFAULT 'none', transcription_id TEXT,
        stitching_job_id TEXT, metadata TEXT NOT NULL DEFAULT '{}',
        failure_type TEXT, failure_message TEXT,
        finalize_request TEXT, finalized_by TEXT, gaps TEXT,
        audio_key TEXT, updated_at TEXT NOT NULL)""",
    "CREATE INDEX recordings_project_created ON recordings(project_id, created_at, id)",
    "CREATE INDEX recordings_status ON recordings(status, expires_at)",
    """CREATE TABLE chunks (
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        part INTEGER NOT NULL, size_bytes INTEGER NOT NULL, md5 TEXT NOT NULL,
        received_at TEXT NOT NULL, PRIMARY KEY (recording_id, part))""",
    """CREATE TABLE media (
        id TEXT PRIMARY KEY,
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        type TEXT NOT NULL, mime_type TEXT NOT NULL, object_key TEXT NOT NULL,
        file_size_bytes INTEGER, md5 TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, recording_id TEXT,
        status TEXT NOT NULL,          -- queued | running | succeeded | failed
        payload TEXT NOT NULL DEFAULT '{}', attempts INTEGER NOT NULL DEFAULT 0,
        run_after TEXT NOT NULL, lease_owner TEXT, lease_expires_at TEXT,
        last_error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        finished_at TEXT)""",
    "CREATE INDEX jobs_claim ON jobs(status, run_after)",
    """CREATE TABLE transcriptions (
        id TEXT PRIMARY KEY,
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL, status TEXT NOT NULL, language TEXT,
        provider TEXT NOT NULL, model TEXT, duration_ms INTEGER, text TEXT,
        segments TEXT, word_count INTEGER, error_type TEXT, error_message TEXT,
        job_id TEXT, created_at TEXT NOT NULL, completed_at TEXT)""",
    """CREATE TABLE events (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, type TEXT NOT NULL,
        recording_id TEXT, created_at TEXT NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX events_project_created ON events(project_id, created_at)",
]


def m0002_job_runs(db: Tx) -> None:
    """One row per job execution (claim → outcome): the audit trail of the job queue.

    ``outcome`` is NULL while running (or if the worker died), then one of ``succeeded``,
    ``retry``, ``failed``, ``released`` (handed back at shutdown), ``lease_lost``."""
    db.execute("""CREATE TABLE job_runs (
        job_id TEXT NOT NULL, attempt INTEGER NOT NULL, kind TEXT NOT NULL,
        owner TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
        outcome TEXT, error TEXT, PRIMARY KEY (job_id, attempt, owner))""")
    db.execute("CREATE INDEX jobs_kind_claim ON jobs(kind, status, run_after)")


def m0003_webhooks(db: Tx) -> None:
    """Webhook endpoints, the fan-out queue, deliveries, their attempts, live dispatchers.

    ``webhook_outbox`` is filled by a trigger on ``events`` (so it commits with the event and
    domain code stays unaware); the dispatcher turns each row into deliveries and deletes it in
    one transaction. Secrets are stored only AES-GCM sealed (``secret_sealed``)."""
    for sql in _WEBHOOKS_SQL:
        db.execute(sql)


_WEBHOOKS_SQL = [
    """CREATE TABLE webhook_endpoints (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        url TEXT NOT NULL, description TEXT, events TEXT NOT NULL,
        secret_sealed TEXT NOT NULL, secret_hint TEXT NOT NULL,
        status TEXT NOT NULL,          -- enabled | disabled | deleted
        disabled_reason TEXT,
        start_after_seq INTEGER NOT NULL,  -- outbox rows at or below this predate it
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT)""",
    "CREATE INDEX webhook_endpoints_project ON webhook_endpoints(project_id, status)",
    """CREATE TABLE webhook_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL)""",
    """CREATE TRIGGER events_webhook_outbox AFTER INSERT ON events BEGIN
        INSERT INTO webhook_outbox (event_id) VALUES (NEW.id); END""",
    """CREATE TABLE webhook_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id),
        event_id TEXT NOT NULL, project_id TEXT NOT NULL,
        origin TEXT NOT NULL,          -- fanout | replay
        status TEXT NOT NULL,          -- pending | succeeded | failed | cancelled
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT, lease_owner TEXT,
        last_status_code INTEGER, last_error TEXT,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, completed_at TEXT)""",
    """CREATE UNIQUE INDEX webhook_deliveries_fanout
        ON webhook_deliveries(endpoint_id, event_id) WHERE origin = 'fanout'""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at)",
    """CREATE INDEX webhook_deliveries_endpoint_due
        ON webhook_deliveries(endpoint_id, status, next_attempt_at, seq)""",
    "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, seq)",
    """CREATE INDEX webhook_deliveries_leased ON webhook_deliveries(lease_owner)
        WHERE lease_owner IS NOT NULL""",
    """CREATE TABLE webhook_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, attempt INTEGER NOT NULL,
        attempted_at TEXT NOT NULL, status_code INTEGER, latency_ms INTEGER, error TEXT)""",
    "CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, id)",
    """CREATE TABLE webhook_dispatchers (
        owner TEXT PRIMARY KEY, host_key TEXT NOT NULL, pid INTEGER NOT NULL,
        pid_start TEXT NOT NULL, started_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL)""",
]


def m0004_idempotency_keys(db: Tx) -> None:
    """``Idempotency-Key`` records (``tapedeck.domain.idempotency``), one per (scope, key).

    ``scope`` is the caller's credential; ``fingerprint`` the SHA-256 of the operation and
    its normalized arguments; ``state`` is ``running`` (until ``lease_until``) or ``done``
    with the stored response. Rows older than 24 h are dead and are purged lazily."""
    db.execute("""CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,           -- running | done
        claim TEXT NOT NULL,           -- random id of the request that holds the key
        response_status INTEGER, response_body TEXT,
        created_at TEXT NOT NULL, lease_until TEXT, PRIMARY KEY (scope, key))""")
    db.execute("CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at)")


def m0005_end_users_devices(db: Tx) -> None:
    """End users (``external_id`` unique per project), device binding time, token lookups by
    device (unbind revokes them all) and why a token was revoked (``refreshed``|``unbound``)."""
    db.execute("""CREATE TABLE end_users (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        external_id TEXT, email TEXT, name TEXT, metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL)""")
    db.execute("""CREATE UNIQUE INDEX end_users_external ON end_users(project_id, external_id)
        WHERE external_id IS NOT NULL""")
    db.execute("ALTER TABLE devices ADD COLUMN bound_at TEXT")
    db.execute("ALTER TABLE device_tokens ADD COLUMN revoked_reason TEXT")
    db.execute("CREATE INDEX device_tokens_device ON device_tokens(device_id, revoked_at)")
    db.execute("CREATE INDEX api_keys_project ON api_keys(project_id, created_at, id)")


def m0006_transcription_error_reason(db: Tx) -> None:
    """Why a transcription failed, beside ``error_type`` (``transcription_failed``):
    ``undecodable_audio``, ``unsupported_language``, ``engine_error``, ``missing_audio``, …"""
    db.execute("ALTER TABLE transcriptions ADD COLUMN error_reason TEXT")


def m0007_operations(db: Tx) -> None:
    """Request ids on jobs and events, and the chunk-retention state of recordings.

    ``jobs.request_id``/``events.request_id`` are filled on insert by triggers calling
    ``tapedeck_request_id()``, the current request id, which ``tapedeck.infra.logs`` registers on
    every connection ``tapedeck.infra.db.Database`` opens (NULL outside a request). A connection
    without that function cannot insert jobs or events.
    ``recordings.chunks_retention``: NULL (no chunk object deleted yet), ``stitched`` (the
    parts in the verified stitched file are deleted; parts left out remain), ``purged``
    (every chunk object deleted). See ``tapedeck.domain.retention``."""
    db.execute("ALTER TABLE jobs ADD COLUMN request_id TEXT")
    db.execute("ALTER TABLE events ADD COLUMN request_id TEXT")
    for table in ("jobs", "events"):
        db.execute(f"""CREATE TRIGGER {table}_request_id AFTER INSERT ON {table}
            WHEN NEW.request_id IS NULL BEGIN
            UPDATE {table} SET request_id = tapedeck_request_id() WHERE rowid = NEW.rowid; END""")
    db.execute("ALTER TABLE recordings ADD COLUMN chunks_retention TEXT")
    db.execute("CREATE INDEX recordings_retention"
               " ON recordings(status, chunks_retention, updated_at)")


def m_search_fts(db: Tx) -> None:
    """Full-text search over transcripts (issue 20; see ``tapedeck.domain.search_index``).

    ``search_segments``: one row per segment of every recording's CURRENT completed
    transcription (deleted with its recording or transcription by the foreign keys).
    ``search_fts``: an FTS5 index over its ``text`` (external content, English porter stemming,
    accent-insensitive unicode61), kept in step by triggers. Existing transcripts are indexed
    here, so an upgraded deployment searches its history at once."""
    db.execute("""CREATE TABLE search_segments (
        rowid INTEGER PRIMARY KEY,
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        transcription_id TEXT NOT NULL REFERENCES transcriptions(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL, segment_index INTEGER NOT NULL,
        start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, speaker TEXT, text TEXT NOT NULL)""")
    db.execute("CREATE INDEX search_segments_recording ON search_segments(recording_id)")
    db.execute("CREATE INDEX search_segments_transcription ON search_segments(transcription_id)")
    db.execute("""CREATE VIRTUAL TABLE search_fts USING fts5(text, content='search_segments',
        content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2')""")
    db.execute("""CREATE TRIGGER search_segments_ai AFTER INSERT ON search_segments BEGIN
        INSERT INTO search_fts(rowid, text) VALUES (NEW.rowid, NEW.text); END""")
    db.execute("""CREATE TRIGGER search_segments_ad AFTER DELETE ON search_segments BEGIN
        INSERT INTO search_fts(search_fts, rowid, text) VALUES ('delete', OLD.rowid, OLD.text);
        END""")
    db.execute("""INSERT INTO search_segments (recording_id, transcription_id, project_id,
            segment_index, start_ms, end_ms, speaker, text)
        SELECT t.recording_id, t.id, t.project_id, CAST(j.key AS INTEGER),
            json_extract(j.value, '$.start_ms'), json_extract(j.value, '$.end_ms'),
            json_extract(j.value, '$.speaker'),
            replace(replace(trim(json_extract(j.value, '$.text')), char(57344), ''),
                    char(57345), '')
        FROM transcriptions t JOIN recordings r ON r.transcription_id = t.id,
            json_each(t.segments) j
        WHERE t.status = 'completed' ORDER BY t.id, CAST(j.key AS INTEGER)""")


def m_sec1_pinned_chunks(db: Tx) -> None:
    """``chunks.object_key``: the store object of each part (every upload writes a new,
    versioned key; finalize pins the one it accepted and the stitcher reads exactly it).
    NULL on rows from before: the unversioned ``chunk_{part}.opus``."""
    db.execute("ALTER TABLE chunks ADD COLUMN object_key TEXT")


def m_sec1_event_redaction(db: Tx) -> None:
    """``deleted_recordings``: deleted recordings whose events still wait to be redacted
    (see ``tapedeck.domain.redaction``), and an index of events by recording."""
    db.execute("""CREATE TABLE deleted_recordings (
        recording_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, deleted_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX events_recording ON events(recording_id)")


def m_fleet_health_settings(db: Tx) -> None:
    """Fleet health flags of devices (set and cleared with their events, see
    ``tapedeck.domain.fleet``) and pushed device settings: one row per project
    (``device_id = ''``) and per device override; ``version`` is the project's sequence."""
    for flag in ("offline", "storage_low", "backlog_overdue"):
        db.execute(f"ALTER TABLE devices ADD COLUMN {flag} INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX devices_project_created ON devices(project_id, created_at, id)")
    db.execute("CREATE INDEX devices_heartbeat ON devices(offline, last_heartbeat_at)")
    db.execute("""CREATE TABLE device_settings (
        project_id TEXT NOT NULL REFERENCES projects(id), device_id TEXT NOT NULL,
        version INTEGER NOT NULL, chunk_duration_ms INTEGER, bitrate INTEGER, dtx INTEGER,
        heartbeat_interval_s INTEGER, updated_at TEXT NOT NULL,
        PRIMARY KEY (project_id, device_id))""")


def m_live_pieces(db: Tx) -> None:
    """Live transcription (``tapedeck.domain.live``): one row per transcribed chunk ("piece")
    of a streaming recording, and the live marker of a transcription.

    ``live_pieces``: the chunk's MD5 and the previous chunk's (``prev_md5``, NULL when it was
    absent) the piece was made from, ``delta48`` = this chunk's start minus the previous
    chunk's start on the stitched timeline (48 kHz samples, NULL without a previous chunk),
    ``samples48`` its playable length, ``segments`` JSON relative to the chunk's start (ms;
    negative inside the overlap taken from the previous chunk), speech/skipped ms, and
    ``status`` ``done`` | ``failed``. ``transcriptions.live`` = 1 for a transcription made from
    pieces while the recording streamed."""
    db.execute("""CREATE TABLE live_pieces (
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        part INTEGER NOT NULL, md5 TEXT NOT NULL, prev_md5 TEXT, status TEXT NOT NULL,
        delta48 INTEGER, samples48 INTEGER NOT NULL DEFAULT 0, overlap_ms INTEGER NOT NULL
        DEFAULT 0, language TEXT, segments TEXT NOT NULL DEFAULT '[]',
        speech_ms INTEGER NOT NULL DEFAULT 0, skipped_ms INTEGER NOT NULL DEFAULT 0,
        error TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (recording_id, part))""")
    db.execute("ALTER TABLE transcriptions ADD COLUMN live INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE transcriptions ADD COLUMN skipped_ms INTEGER")


def m_spk_speakers(db: Tx) -> None:
    """Diarization: a transcription's requested speaker options (JSON ``{diarize,
    min_speakers, max_speakers, speakers_expected}``, NULL = defaults) and its speakers
    (JSON ``[{label, talk_time_ms, end_user_id}]``, NULL = not diarized)."""
    db.execute("ALTER TABLE transcriptions ADD COLUMN speaker_options TEXT")
    db.execute("ALTER TABLE transcriptions ADD COLUMN speakers TEXT")


def m_spk_voice_profiles(db: Tx) -> None:
    """Voice profiles: an end user's voice embedding (256 float32, biometric data), made from
    a span of a recording or an uploaded sample. Deleted with the profile or the end user."""
    db.execute("""CREATE TABLE voice_profiles (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
        end_user_id TEXT NOT NULL REFERENCES end_users(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL, source TEXT NOT NULL, recording_id TEXT,
        start_ms INTEGER, end_ms INTEGER, speech_ms INTEGER NOT NULL,
        created_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX voice_profiles_user ON voice_profiles(project_id, end_user_id,"
               " created_at, id)")


def m_pgapi_search(db: Tx) -> None:
    """Nothing on SQLite (FTS5 folds accents itself); on PostgreSQL the search index's own
    text search configuration and accent-folded text (``tapedeck.infra.pg_migrations``)."""


def m_ingest2_presigned_parts(db: Tx) -> None:
    """Parts a presigned PUT URL was issued for (``Chunks.create_upload_url``; written
    durably before the URL is answered). Presigned PUTs bypass the chunk ledger, so a part
    may hold store objects only if it has a ledger row or a row here; a streamed upload
    lists the part's earlier objects only then."""
    db.execute("""CREATE TABLE presigned_parts (
        recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        part INTEGER NOT NULL, PRIMARY KEY (recording_id, part))""")


def m_live_language_hint(db: Tx) -> None:
    """``live_pieces.language_hint``: the language a piece was transcribed with (``''`` =
    detected by the piece itself; NULL = a piece stored before this column, taken as it is).
    The assembly redoes a piece whose hint is not the one its place in the recording calls
    for, so the live transcript does not depend on the order the pieces ran in."""
    db.execute("ALTER TABLE live_pieces ADD COLUMN language_hint TEXT")


def m_live_piece_voices(db: Tx) -> None:
    """``live_pieces.voice_spans`` (JSON ``{"regions": [[start, end], …], "spans": …}``, 10 ms
    frames relative to the chunk's first sample) and ``voice_emb`` (the spans' window
    embeddings, n x 256 float32, biometric data): the chunk's speech embedded for
    diarization while the recording streams (``tapedeck.diarize.Embedded``). NULL = not
    embedded. Cleared when the live transcription ends; deleted with the recording."""
    db.execute("ALTER TABLE live_pieces ADD COLUMN voice_spans TEXT")
    db.execute("ALTER TABLE live_pieces ADD COLUMN voice_emb BLOB")


MIGRATIONS: list[Migration] = [
    m0001_core,
    m0002_job_runs,
    m0003_webhooks,
    m0004_idempotency_keys,
    m0005_end_users_devices,
    m0006_transcription_error_reason,
    m0007_operations,
    m_search_fts,
    m_sec1_pinned_chunks,
    m_sec1_event_redaction,
    m_fleet_health_settings,
    m_live_pieces,
    m_spk_speakers,
    m_spk_voice_profiles,
    m_pgapi_search,
    m_ingest2_presigned_parts,
    m_live_language_hint,
    m_live_piece_voices,
]


def migrate(db: Tx) -> list[str]:
    """Apply every pending migration (caller holds the write transaction); return names.
    On PostgreSQL the list is ``tapedeck.infra.pg_migrations.PG_MIGRATIONS`` (same names)."""
    migrations = MIGRATIONS
    if db.dialect == "postgresql":
        from tapedeck.infra.pg_migrations import PG_MIGRATIONS

        migrations = PG_MIGRATIONS
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for fn in migrations:
        if fn.__name__ in done:
            continue
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?)",
                   [fn.__name__, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")])
        applied.append(fn.__name__)
    return applied
