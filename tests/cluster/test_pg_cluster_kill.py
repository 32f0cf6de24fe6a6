"""The scaled-out deployment under SIGKILL: PostgreSQL + the SeaweedFS cluster
(``scripts/cluster``: master, 3 volume servers with replication 001, filer, S3), 3
``tapedeck api``, 2 ``worker`` and 1 ``dispatcher`` processes (real children, ``fleetkit``).

N simulated devices x 20 real Opus chunks: 40 in the suite (26 cold process starts dominate it
on 2 cores), ``TAPEDECK_FLEET_DEVICES=200`` for the issue's full fleet,
every request of a device sent to a random live api process. Meanwhile a chaos thread
SIGKILLs a random api, worker or dispatcher process 20 times (each replaced by a new process,
as systemd would) and one volume server once. Devices retry like the agent does (connection
errors and 5xx, then another api process); a chunk is acknowledged when a PUT answered 2xx.

Then: zero acknowledged chunks lost or corrupt (the stitched audio of every recording is
byte for byte the remux of exactly the acknowledged chunks), every finalized recording
``completed`` exactly once (one succeeded stitch run, one audio media row), every event
delivered to the webhook receiver at least once, with ONE finalize outcome event
(``recording.uploaded``) per recording, and no job left queued or running. The counts are
printed. (Transcription is not part of the run, ``job_kinds=stitch``: whisper on 2 cores
would dominate it; its queued jobs are not "stuck", no process runs that kind.)"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tapedeck.infra.db import open_database
from tapedeck.infra.weed_cluster import WeedCluster
from tapedeck.oggopus.remux import remux

from fleetkit import Fleet, fleet_settings, fleet_store, read_all
from opskit import Receiver, md5_b64, wait_until
from serverkit import make_settings
from stitchkit import continuous_chunks

DEVICES = int(os.environ.get("TAPEDECK_FLEET_DEVICES", "40"))
CHUNKS = 20
KILLS = 20
ENCODINGS = 6  # distinct 20 s recordings, reused across devices (encoding is CPU)


class Hooks(Receiver):
    """The receiver, counting what it got."""

    def ids(self) -> set[str]:
        with self._lock:
            return {e["id"] for e in self.events}

    def posts(self) -> int:
        with self._lock:
            return len(self.events)


class Apis:
    """The live api processes' base URLs (the chaos thread swaps them)."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = list(urls)
        self._lock = threading.Lock()

    def pick(self, rng: random.Random) -> str:
        with self._lock:
            return rng.choice(self._urls)

    def without(self, url: str) -> None:
        """Stop sending to ``url`` (about to be killed)."""
        with self._lock:
            self._urls.remove(url)

    def add(self, url: str) -> None:
        with self._lock:
            self._urls.append(url)


def retried(rng: random.Random, apis: Apis,
            send: Callable[[str], httpx.Response]) -> httpx.Response:
    """``send(base_url)`` until it is answered below 500, on a random live api process each
    time (a killed process: connection refused or reset)."""
    for attempt in range(200):
        try:
            resp = send(apis.pick(rng))
            if resp.status_code < 500:
                return resp
        except httpx.TransportError:
            pass
        time.sleep(min(1.0, 0.05 * (attempt + 1)))
    raise AssertionError("no api process answered")


class Devices:
    def __init__(self, apis: Apis, tokens: list[str], chunks: list[list[bytes]]) -> None:
        self.apis, self.tokens, self.chunks = apis, tokens, chunks
        self.acked: dict[str, list[bytes]] = {}  # recording -> its acknowledged chunks
        self._lock = threading.Lock()

    def run(self, i: int) -> None:
        rng = random.Random(i)
        chunks = self.chunks[i % len(self.chunks)]
        headers = {"Authorization": f"Bearer {self.tokens[i]}"}
        rec = retried(rng, self.apis, lambda base: httpx.post(
            f"{base}/v1/recordings", headers=headers, timeout=30.0,
            json={"streaming": True, "chunk_duration_ms": 1000, "name": f"device {i}"})).json()
        path = rec["chunk_upload_url_template"].split("/v1/", 1)[1]
        for part, data in enumerate(chunks, start=1):
            resp = retried(rng, self.apis, lambda base, p=part, d=data: httpx.put(
                f"{base}/v1/{path}".replace("{part}", str(p)), content=d, timeout=30.0,
                headers={"Content-MD5": md5_b64(d)}))
            assert resp.status_code in (200, 201), resp.text
        whole = hashlib.md5(b"".join(chunks)).hexdigest()
        fin = retried(rng, self.apis, lambda base: httpx.post(
            f"{base}/v1/recordings/{rec['id']}/finalize", headers=headers, timeout=60.0,
            json={"total_chunks": CHUNKS, "final_duration_ms": CHUNKS * 1000,
                  "checksum_md5": whole}))
        assert fin.status_code == 200, fin.text
        with self._lock:
            self.acked[rec["id"]] = chunks


def chaos(fleet: Fleet, apis: Apis, cluster: WeedCluster, log: list[str]) -> None:
    """KILLS SIGKILLs of random api/worker/dispatcher processes, each replaced by a new
    process started in the background (as a supervisor restarts it), and volume-2 killed
    once halfway. Returns when every replacement listens."""
    rng = random.Random(19)
    starting: list[threading.Thread] = []

    def replace(role: str, was_api: bool) -> None:
        fresh = fleet.spawn(role)
        if was_api:
            apis.add(fresh.listening["http"])

    kills = 0
    while kills < KILLS:
        time.sleep(rng.uniform(0.5, 2.0))
        if kills == KILLS // 2 and "volume-2" not in log:
            cluster.kill("volume-2")
            log.append("volume-2")
        role = rng.choice(["api", "api", "worker", "dispatcher"])
        alive = fleet.alive(role)
        if len(alive) < (2 if role == "api" else 1):
            continue  # its replacement is still starting (one api always answers)
        victim = rng.choice(alive)
        url = victim.listening.get("http")
        if url is not None:
            apis.without(url)  # new requests go elsewhere; those in flight there fail
        fleet.kill(victim)
        log.append(role)
        kills += 1
        t = threading.Thread(target=replace, args=(role, url is not None))
        t.start()
        starting.append(t)
    for t in starting:
        t.join()


def settled(db: Any, receiver: Hooks) -> bool:
    """No recording still on its way, no stitch job pending, every event received."""
    busy = db.read().execute(
        "SELECT (SELECT count(*) FROM recordings WHERE status NOT IN ('completed', 'failed')),"
        " (SELECT count(*) FROM jobs WHERE kind = 'stitch' AND status IN ('queued', 'running'))"
    ).fetchone()
    if tuple(busy) != (0, 0):
        return False
    return {r[0] for r in db.read().execute("SELECT id FROM events")} <= receiver.ids()


def verify(db: Any, fleet: Fleet, devices: Devices, receiver: Hooks) -> dict[str, Any]:
    """Every check of the module docstring; returns the counts."""
    read = db.read()
    acked = devices.acked
    assert len(acked) == DEVICES
    status = dict(read.execute("SELECT id, status FROM recordings").fetchall())
    assert {status[r] for r in acked} == {"completed"}, Counter(status.values())
    runs = dict(read.execute(
        "SELECT j.recording_id, count(*) FROM job_runs r JOIN jobs j ON j.id = r.job_id"
        " WHERE j.kind = 'stitch' AND r.outcome = 'succeeded' GROUP BY j.recording_id"
    ).fetchall())
    assert runs == dict.fromkeys(acked, 1)  # completed exactly once
    media = {r[0]: (r[1], r[2]) for r in read.execute(
        "SELECT recording_id, count(*), max(md5) FROM media WHERE type = 'audio'"
        " GROUP BY recording_id").fetchall()}
    expected = {}
    for rec_id, chunks in acked.items():
        key = id(chunks)
        if key not in expected:
            out = io.BytesIO()
            remux([io.BytesIO(c) for c in chunks], out)
            expected[key] = hashlib.md5(out.getvalue()).hexdigest()
        assert media[rec_id] == (1, expected[key]), rec_id
    audio_keys = dict(read.execute("SELECT id, audio_key FROM recordings").fetchall())
    store = fleet_store(fleet)
    corrupt = [r for r in acked if hashlib.md5(read_all(store, audio_keys[r])).hexdigest()
               != media[r][1]]
    assert corrupt == []  # the stored audio is the remux of exactly the acknowledged chunks
    uploaded = Counter(r[0] for r in read.execute(
        "SELECT recording_id FROM events WHERE type = 'recording.uploaded'"))
    assert uploaded == Counter(dict.fromkeys(acked, 1))
    for rec_id in acked:
        assert receiver.about(rec_id).count("recording.uploaded") == 1
    events = [r[0] for r in read.execute("SELECT id FROM events")]
    assert set(events) <= receiver.ids()
    stuck = read.execute("SELECT count(*) FROM jobs WHERE kind = 'stitch' AND status IN"
                         " ('queued', 'running')").fetchone()[0]
    assert stuck == 0
    interrupted = read.execute("SELECT count(*) FROM job_runs WHERE outcome IS NULL"
                               " OR outcome = 'lease_lost'").fetchone()[0]
    resent = read.execute("SELECT count(*) FROM webhook_attempts").fetchone()[0] - len(events)
    return {"devices": DEVICES, "chunks_acknowledged": sum(map(len, acked.values())),
            "chunks_lost_or_corrupt": 0, "recordings_completed": len(runs),
            "events": len(events), "events_delivered": len(set(events) & receiver.ids()),
            "webhook_posts_received": receiver.posts(), "extra_attempts": resent,
            "stitch_runs_interrupted": interrupted, "jobs_stuck": stuck}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang bound only: 26 cold process starts on a shared machine
def test_fleet_survives_sigkills(cluster: WeedCluster, postgres: Any, tmp_path: Path) -> None:
    url = postgres.fresh_database()
    base = make_settings(cluster, tmp_path / "base", retention_chunks_s=-1)
    fleet = Fleet(fleet_settings(base, url, job_lease_s=4, webhooks_workers=8), tmp_path)
    receiver = Hooks()
    killed: list[str] = []
    try:
        api_urls = [fleet.spawn("api").listening["http"] for _ in range(3)]
        for _ in range(2):
            fleet.spawn("worker")
        fleet.spawn("dispatcher")
        _, api_key, tokens = fleet.project(devices=DEVICES)
        hook = httpx.post(f"{api_urls[0]}/v1/webhooks", json={"url": receiver.url,
                                                              "events": ["*"]},
                          headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0)
        assert hook.status_code == 201, hook.text
        chunks = [[c.data for c in continuous_chunks(float(CHUNKS), 1000, start=k * 3)]
                  for k in range(ENCODINGS)]
        apis = Apis(api_urls)
        devices = Devices(apis, tokens, chunks)
        monkey = threading.Thread(target=chaos, args=(fleet, apis, cluster, killed))
        monkey.start()
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(devices.run, range(DEVICES)))
        monkey.join()
        db = open_database(url)
        try:
            wait_until(lambda: settled(db, receiver), timeout=240,
                       what="every recording stitched and every event delivered")
            counts = verify(db, fleet, devices, receiver)
        finally:
            db.close()
        counts["kills"] = dict(Counter(killed))
        assert len(killed) == KILLS + 1
        print(f"fleet under SIGKILL: {counts}")
    finally:
        fleet.stop()
        receiver.close()
        cluster.restart("volume-2")
        postgres.drop_database(url)
