"""``tapedeck admin migrate-to``: an embedded installation's SQLite rows (recordings, chunks,
transcripts, events, keys…) copied into PostgreSQL as a real child process, SIGKILLed half-way,
rerun: every table verified (counts and checksums), no row twice, search works on the copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapedeck.domain.search_index import IndexQuery, SearchFilters, backend_for
from tapedeck.domain.search_query import parse
from tapedeck.infra.db import open_database

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer, drop_bucket, make_settings, start_server


@pytest.fixture
def embedded(weed: Any, tmp_path: Path) -> Iterator[RunningServer]:
    """A SQLite installation with transcripts, recordings and their events."""
    srv = start_server(make_settings(weed, tmp_path / "data", database_url=""))
    try:
        p = srv.app.domain.auth.authenticate(f"Bearer {srv.api_key}")
        for i in range(6):
            rec = new_recording(srv, p, name=f"r{i}", metadata={"room": f"k{i % 2}"})
            store_transcript(srv, rec, [segment(0, 900, f"quince number {i}", "Ana"),
                                        segment(1_000, 1_900, "Le café était bon")])
        srv.device_token()
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def _run(data_dir: Path, url: str, batch: int) -> subprocess.Popen[str]:
    env = {**os.environ, "TAPEDECK_TARGET_DATABASE_URL": url, "TAPEDECK_DATABASE_URL": ""}
    return subprocess.Popen([sys.executable, "-m", "tapedeck", "admin", "migrate-to",
                             "--data-dir", str(data_dir), "--batch", str(batch)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counts(db: Any, tables: list[str]) -> dict[str, int]:
    return {t: int(db.read().execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in tables}


def test_migrate_to_is_verified_and_resumes_after_a_kill(embedded: RunningServer,
                                                         postgres: Any) -> None:
    data_dir = embedded.app.settings.data_dir
    embedded.app.close(grace=1.0)  # the source must not change: the server is stopped
    url = postgres.fresh_database(migrated=False)
    try:
        first = _run(data_dir, url, batch=2)
        assert first.stderr is not None
        batches = 0
        for line in first.stderr:
            if line.startswith('{"copied"'):
                batches += 1
                if batches == 4:
                    first.kill()  # SIGKILL half-way through
                    break
        first.wait(timeout=60)
        assert batches == 4 and first.returncode != 0

        second = _run(data_dir, url, batch=2)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        lines = [json.loads(x) for x in out.strip().splitlines()]
        tables, summary = lines[:-1], lines[-1]
        assert summary["ok"] is True and summary["tables"] == len(tables) >= 10
        assert all(t["ok"] and t["rows"][0] == t["rows"][1] for t in tables), tables
        by_name = {t["table"]: t["rows"][0] for t in tables}
        assert by_name["recordings"] == 6 and by_name["transcriptions"] == 6
        assert by_name["events"] >= 6

        source, target = open_database(data_dir / "tapedeck.db"), open_database(url)
        try:
            names = sorted(by_name)
            assert _counts(source, names) == _counts(target, names)
            assert _counts(target, ["search_segments"]) == {"search_segments": 12}
            # The copy is usable: new rows get new ids (sequences moved), search finds.
            hits = backend_for(target).search(target.read(), IndexQuery(
                node=parse("cafe"), filters=SearchFilters(project_id=embedded.project_id,
                                                          metadata={"room": "k1"})))
            assert len(hits) == 3 and all("\ue000café\ue001" in h.marked for h in hits)
        finally:
            source.close()
            target.close()

        third = _run(data_dir, url, batch=500)  # a finished copy: nothing copied again
        out, err = third.communicate(timeout=300)
        assert third.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["ok"] is True
        assert '{"copied"' not in err
    finally:
        postgres.drop_database(url)


def test_migrate_to_refuses_a_target_with_other_data(embedded: RunningServer,
                                                     postgres: Any) -> None:
    data_dir = embedded.app.settings.data_dir
    embedded.app.close(grace=1.0)
    url = postgres.fresh_database()
    try:
        db = open_database(url)
        with db.write() as tx:
            tx.execute("INSERT INTO projects VALUES ('prj_other', 'other', 'now')")
        db.close()
        proc = _run(data_dir, url, batch=100)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 15
        assert err.strip().splitlines()[-1].startswith("tapedeck: the target's table projects")
        assert "Traceback" not in err
    finally:
        postgres.drop_database(url)
