"""The race one process could not show: two real ``tapedeck api`` processes on one PostgreSQL
database (and one bucket), a chunk REPLACED through one while the recording is FINALIZED
through the other, many times. Whatever the interleaving, the stitched audio is exactly the
audio of the chunk versions whose checksum finalize accepted, and the replace succeeded iff
it is part of that audio (the per-recording lock is a PostgreSQL advisory lock, shared by
every process; see docs/ARCHITECTURE.md "Locks")."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tapedeck.oggopus.remux import remux

from fleetkit import Fleet, fleet_settings
from opskit import put_chunk, wait_until
from serverkit import drop_bucket, make_settings
from stitchkit import continuous_chunks

ROUNDS = 24
PARALLEL = 4


def stitched(chunks: list[bytes]) -> bytes:
    """What the stitch job must produce from these chunk versions (deterministic remux)."""
    out = io.BytesIO()
    remux([io.BytesIO(c) for c in chunks], out)
    return out.getvalue()


class Race:
    def __init__(self, api_a: str, api_b: str, api_key: str) -> None:
        self.apis, self.api_key = (api_a, api_b), api_key
        self.outcomes: dict[str, int] = {"replace_first": 0, "finalize_first": 0}
        self._lock = threading.Lock()

    def round(self, i: int) -> None:
        rng = random.Random(i)
        x = [c.data for c in continuous_chunks(3.0, 1000, start=i)]
        y2 = continuous_chunks(3.0, 1000, start=i + 97)[1].data
        versions = {"X": x, "Y": [x[0], y2, x[2]]}
        fin_api, put_api = self.apis if rng.random() < 0.5 else self.apis[::-1]
        auth = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=fin_api, headers=auth, timeout=60.0) as c:
            rec = c.post("/v1/recordings", json={"streaming": True,
                                                 "chunk_duration_ms": 1000}).json()
            tpl = rec["chunk_upload_url_template"]
            for part, data in enumerate(x, start=1):
                assert put_chunk(tpl, part, data).status_code == 201
            other_tpl = tpl.replace(fin_api, put_api)
            assert other_tpl != tpl
            claimed = rng.choice("XY")
            go = threading.Barrier(2)
            put_delay = rng.uniform(0.0, 0.04)

            def replace() -> httpx.Response:
                go.wait()
                time.sleep(put_delay)  # spread the interleavings
                return put_chunk(other_tpl, 2, y2)

            def finalize(version: str) -> httpx.Response:
                return c.post(f"/v1/recordings/{rec['id']}/finalize", json={
                    "total_chunks": 3, "final_duration_ms": 3000,
                    "checksum_md5": hashlib.md5(b"".join(versions[version])).hexdigest()})

            with ThreadPoolExecutor(1) as other:
                put_future = other.submit(replace)
                go.wait()
                fin = finalize(claimed)
                put = put_future.result()
            accepted = claimed
            if fin.status_code != 200:  # the store held the other version at finalize
                assert fin.json()["error"]["type"] == "checksum_mismatch", fin.text
                # Still streaming, so the replace went through (before or after): Y now.
                assert put.status_code in (200, 201), put.text
                accepted = "Y"
                fin = finalize(accepted)
                assert fin.status_code == 200, fin.text
            if put.status_code in (200, 201):
                assert accepted == "Y", (claimed, fin.text)  # an acknowledged replace is in it
            else:
                assert put.json()["error"]["type"] == "recording_not_streaming", put.text
                assert accepted == "X", claimed  # a refused replace is not
            wait_until(lambda: c.get(f"/v1/recordings/{rec['id']}").json()["status"]
                       in ("completed", "failed"), timeout=120, what="stitched")
            assert c.get(f"/v1/recordings/{rec['id']}").json()["status"] == "completed"
            url = c.post(f"/v1/recordings/{rec['id']}/download-url").json()["download_url"]
            assert httpx.get(url, timeout=60.0).content == stitched(versions[accepted])
        with self._lock:
            self.outcomes["replace_first" if accepted == "Y" else "finalize_first"] += 1


@pytest.mark.slow
def test_replace_on_one_api_process_while_finalizing_on_another(
        weed: Any, postgres: Any, tmp_path: Path) -> None:
    url = postgres.fresh_database()
    fleet = Fleet(fleet_settings(make_settings(weed, tmp_path / "base"), url), tmp_path)
    try:
        a, b = fleet.spawn("api"), fleet.spawn("api")
        fleet.spawn("worker")
        _, api_key, _ = fleet.project()
        race = Race(a.listening["http"], b.listening["http"], api_key)
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(race.round, range(ROUNDS)))
        print(f"race outcomes over {ROUNDS} rounds: {race.outcomes}")
        # Both orders happened, so the test exercised the race and not one ordering only.
        assert race.outcomes["replace_first"] > 0 and race.outcomes["finalize_first"] > 0
    finally:
        fleet.stop()
        drop_bucket(weed, fleet.settings.s3_bucket)
        postgres.drop_database(url)
