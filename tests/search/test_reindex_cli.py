"""``tapedeck admin reindex`` as a real child process on a live server's data directory:
it recreates a lost index from the transcripts, and search finds everything again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tapedeck.auth import Principal
from tapedeck.domain.search import SearchRequest

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer

Project = tuple[str, str, Principal]


def test_reindex_command_rebuilds_a_lost_index(srv: RunningServer, project: Project) -> None:
    _, _, p = project
    for word in ("sorrel", "yarrow"):
        store_transcript(srv, new_recording(srv, p), [segment(0, 900, f"{word} one"),
                                                      segment(1_000, 1_900, f"{word} two")])
    search = srv.app.domain.search
    with srv.app.db.write() as tx:  # the index is lost, a stale row left behind
        tx.execute("DELETE FROM search_segments")
        tx.execute("INSERT INTO search_segments (recording_id, transcription_id, project_id,"
                   " segment_index, start_ms, end_ms, text) SELECT recording_id, id,"
                   " project_id, 7, 0, 1, 'stale ghost' FROM transcriptions"
                   " WHERE project_id = ? LIMIT 1", [p.project_id])
    assert search.search(p, SearchRequest(q="sorrel OR yarrow")).data == []
    run = subprocess.run(
        [sys.executable, "-m", "tapedeck", "admin", "reindex", "--data-dir",
         str(srv.app.settings.data_dir)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TAPEDECK_DATABASE_URL": srv.app.settings.database_url})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["transcriptions"] >= 2 and out["segments"] >= 4
    hits = search.search(p, SearchRequest(q="sorrel OR yarrow", order="newest")).data
    assert sorted(h.text for h in hits) == ["sorrel one", "sorrel two", "yarrow one",
                                            "yarrow two"]
    assert search.search(p, SearchRequest(q="ghost")).data == []
