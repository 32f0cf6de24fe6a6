"""Issue 21 part B in a real browser with the real pipeline: a server with workers, live
transcription and the real whisper-base model; a two-voice conversation of real recordings
(``voicekit``: Allison and Carlo) streams in 10 s chunks while the recording's page is open.
The partial transcript appears on the page before finalize; after stitching and the assembly
the page shows the player, speakers in two colours, downloads (audio, JSON, SRT, VTT), and a
click on a word moves the player's ``currentTime`` to that word's start. No request leaves
the origin; a screenshot of each state goes to ``console-screenshots``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import srt
import webvtt

from tapedeck.background.transcribe.models import ModelUnavailable, ensure_whisper_base
from tapedeck_agent.encoder import OpusChunker

import voicekit as vk
from serverkit import RunningServer, drop_bucket, make_settings, spawn_server, start_server

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
MODEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "models" / "whisper-base"
CHUNK_MS = 10_000
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="no Debian chromium")]


@pytest.fixture(scope="module")
def srv(weed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The API in this process; the workers (whisper, live pieces, stitching) in a
    ``tapedeck worker`` child on the same database and store. (With the model loaded in the
    process that also drove the browser, the interpreter crashed at exit.)"""
    try:
        model = ensure_whisper_base(MODEL_DIR)
    except ModelUnavailable as exc:
        pytest.fail(f"{exc} (run scripts/fetch-model)")
    settings = make_settings(weed, tmp_path_factory.mktemp("console-live") / "data",
                             whisper_model=str(model), whisper_threads=2, job_poll_ms=50,
                             live_transcription=True)
    s = start_server(settings, roles=["grpc", "http"])
    worker = spawn_server(settings, "worker")
    try:
        yield s
    finally:
        worker.terminate()
        s.close()
        drop_bucket(weed, settings.s3_bucket)


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(bypass_csp=True)  # playwright polls with eval(); CSP stays on
        pg.requests = []  # type: ignore[attr-defined]
        pg.on("request", lambda r: pg.requests.append(r.url))  # type: ignore[attr-defined]
        yield pg
        browser.close()


def conversation_chunks() -> tuple[list[bytes], int]:
    """The two-voice conversation of tests/transcribe/test_live_speakers.py (diarized as S1
    and S2 there), encoded like the device agent (one encoder, 10 s chunk files with the
    80 ms overlap)."""
    conv = vk.conversation(["allison", "carlo"], 4, 31, min_turn=4, max_turn=10)
    pcm = (np.clip(conv.pcm, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
    chunker = OpusChunker(chunk_duration_ms=CHUNK_MS, bitrate=24_000, complexity=10)
    chunks = chunker.feed(pcm) + chunker.finish()
    return [c.data for c in chunks], round(chunks[-1].end_sample / 48)


@pytest.mark.timeout(1200)
def test_live_transcript_speakers_downloads_and_click_to_seek(
        page: Any, srv: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    shots: Path = tmp_path_factory.mktemp("console-screenshots")
    chunks, duration_ms = conversation_chunks()
    assert len(chunks) >= 3
    api = httpx.Client(base_url=srv.http_url, timeout=60,
                       headers={"Authorization": f"Bearer {srv.api_key}"})
    rec = api.post("/v1/recordings", json={"streaming": True, "name": "two voices",
                                           "chunk_duration_ms": CHUNK_MS}).json()

    def put(part: int) -> None:
        url = rec["chunk_upload_url_template"].replace("{part}", str(part))
        assert httpx.put(url, content=chunks[part - 1], timeout=60).status_code == 201

    page.goto(f"{srv.http_url}/console")
    page.fill("#api_key", srv.api_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/recordings")
    put(1)
    put(2)
    page.goto(f"{srv.http_url}/console/recordings/{rec['id']}")
    assert page.get_attribute("#recording", "data-live") == "1"
    # The partial transcript grows on the open page (no reload) while it still records.
    page.wait_for_function("document.querySelectorAll('#transcript .word').length > 0",
                           timeout=300_000)  # generous: the machine is shared
    assert page.inner_text("#rec-status") == "streaming"
    assert page.locator("#player").count() == 0  # nothing stitched yet
    partial = page.locator("#transcript .word").count()
    page.screenshot(path=str(shots / "recording-live.png"), full_page=True)
    for part in range(3, len(chunks) + 1):
        put(part)
    fin = api.post(f"/v1/recordings/{rec['id']}/finalize",
                   json={"total_chunks": len(chunks), "final_duration_ms": duration_ms})
    assert fin.status_code == 200, fin.text
    page.wait_for_function(
        "(document.getElementById('txn-status') || {}).textContent === '(completed)'"
        " && document.getElementById('recording').dataset.live === '0'", timeout=600_000)
    words = page.locator("#transcript .word")
    assert words.count() > partial
    speakers = page.locator(".speakers .speaker")
    assert speakers.all_inner_texts() == ["S1", "S2"]
    assert {page.get_attribute(f".speakers .speaker >> nth={i}", "class")
            for i in (0, 1)} == {"speaker spk-0", "speaker spk-1"}
    legend = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll("
                           "'.speakers .speaker')).map(s => [s.textContent,"
                           " getComputedStyle(s).color]))")
    assert len(set(legend.values())) == 2, legend  # two distinct colours
    coloured = page.evaluate("Array.from(document.querySelectorAll('#transcript .word'))"
                             ".map(w => [w.dataset.speaker, getComputedStyle(w).color])")
    assert all(legend[spk] == colour for spk, colour in coloured), coloured  # by speaker
    print("speakers of the words:", {spk: sum(s == spk for s, _ in coloured) for spk in legend})
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    duration = page.evaluate("document.getElementById('player').duration")
    assert abs(duration * 1000 - duration_ms) < 100, (duration, duration_ms)
    # Click a word well inside the recording: the playhead jumps to its start.
    target = words.nth(words.count() // 2)
    start = float(target.get_attribute("data-start"))
    assert start > 2
    target.click()
    page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {start})"
                           " < 0.05")
    page.evaluate("document.getElementById('player').play()")
    page.wait_for_function(f"document.getElementById('player').currentTime > {start} + 0.2")
    page.wait_for_function("document.querySelector('#transcript .word.now') !== null")
    page.screenshot(path=str(shots / "recording-transcribed.png"), full_page=True)
    _check_downloads(page, srv, rec["id"])
    origin = urlsplit(srv.http_url).netloc
    assert all(urlsplit(u).netloc == origin for u in page.requests), page.requests


def _check_downloads(page: Any, srv: RunningServer, rec_id: str) -> None:
    """The page's download links work with the session alone (the browser's cookies)."""
    hrefs = page.eval_on_selector_all(".downloads a", "els => els.map(a => a.getAttribute('href'))")
    base = f"/console/recordings/{rec_id}"
    assert hrefs == [f"{base}/audio", f"{base}/transcript.json", f"{base}/transcript.srt",
                     f"{base}/transcript.vtt"]
    got = {h: page.request.get(srv.http_url + h) for h in hrefs}
    assert all(r.status == 200 for r in got.values()), {h: r.status for h, r in got.items()}
    assert got[hrefs[0]].body()[:4] == b"OggS"
    txn = got[hrefs[1]].json()
    assert txn["status"] == "completed" and txn["segments"]
    assert "attachment" in got[hrefs[2]].headers["content-disposition"]
    cues = list(srt.parse(got[hrefs[2]].text()))
    assert cues and all(c.content.strip() for c in cues)
    vtt = webvtt.from_string(got[hrefs[3]].text())
    assert len(vtt.captions) >= 1 and vtt.captions[0].text.strip()
    plain = httpx.get(srv.http_url + hrefs[2])  # no session: to sign-in, never the file
    assert plain.status_code == 303
