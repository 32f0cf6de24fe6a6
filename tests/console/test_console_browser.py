"""Issue 21 in a real browser: Debian's headless Chromium driven by Playwright. Sign in,
filter the list (status, dates), open a recording, play it (currentTime advances, duration
matches), re-run stitching of a failed recording and watch the open page recover, sign out;
hostile metadata stays text; no request leaves the server's origin. Screenshots go to the
pytest temp folder (``console-screenshots``). The live transcript, speakers, downloads and
click-to-seek run with the real pipeline in ``test_console_live_browser``."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_console_http import (  # noqa: F401  # the module's fixtures and helpers
    EVIL,
    client,
    create_streaming,
    put_chunk,
    srv,
    stitched,
)
from test_console_recordings import day, lost_chunk_recording, run_stitch

from serverkit import RunningServer
from stitchkit import continuous_chunks

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="no Debian chromium")


@pytest.fixture(scope="module")
def page(srv: RunningServer) -> Iterator[Any]:  # noqa: F811
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        pg = browser.new_page(bypass_csp=True)  # playwright polls with eval(); CSP stays on the server
        pg.requests = []  # type: ignore[attr-defined]
        pg.on("request", lambda r: pg.requests.append(r.url))  # type: ignore[attr-defined]
        yield pg
        browser.close()


def test_sign_in_filter_open_play_sign_out(page: Any, srv: RunningServer,  # noqa: F811
                                           stitched: dict[str, Any],  # noqa: F811
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    shots: Path = tmp_path_factory.mktemp("console-screenshots")
    page.goto(f"{srv.http_url}/console")
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#api_key", srv.api_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/recordings")
    page.select_option("select[name=status]", "completed")
    page.click("text=Filter")
    page.wait_for_url("**status=completed**")
    assert page.locator("tbody tr").count() == 1
    page.screenshot(path=str(shots / "recordings.png"), full_page=True)
    page.click("text=kitchen")
    page.wait_for_url(f"**/console/recordings/{stitched['id']}")
    assert page.locator("table.metadata td").first.inner_text() == EVIL
    assert page.evaluate("window.__xss === undefined") and page.locator("img").count() == 0
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    duration = page.evaluate("document.getElementById('player').duration")
    assert abs(duration - 3.0) < 0.1, duration
    page.evaluate("document.getElementById('player').play()")
    page.wait_for_function("document.getElementById('player').currentTime > 0.3")
    page.screenshot(path=str(shots / "recording.png"), full_page=True)
    page.click("text=Sign out")
    page.wait_for_url("**/console")
    page.goto(f"{srv.http_url}/console/recordings")
    assert page.url.endswith("/console")
    origin = urlsplit(srv.http_url).netloc
    assert all(urlsplit(u).netloc == origin for u in page.requests), page.requests


def sign_in(page: Any, srv: RunningServer) -> None:  # noqa: F811
    page.goto(f"{srv.http_url}/console")
    if page.url.endswith("/console"):
        page.fill("#api_key", srv.api_key)
        page.click("button[type=submit]")
    page.wait_for_url("**/console/recordings")


@pytest.mark.slow
def test_date_filter_and_rerun_stitching(page: Any, srv: RunningServer,  # noqa: F811
                                         stitched: dict[str, Any],  # noqa: F811
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    shots: Path = tmp_path_factory.mktemp("console-screenshots")
    rec_id, key, data = lost_chunk_recording(srv)
    sign_in(page, srv)
    page.fill("input[name=created_from]", day(1))
    page.click("text=Filter")
    page.wait_for_url("**created_from=**")
    assert page.inner_text("tbody") == "No recordings."
    page.fill("input[name=created_from]", day(-1))
    page.fill("input[name=created_to]", day(0))
    page.click("text=Filter")
    page.wait_for_url(f"**created_to={day(0)}**")
    shown = page.eval_on_selector_all("tbody tr", "rs => rs.map(r => r.dataset.id)")
    assert stitched["id"] in shown and rec_id in shown
    page.screenshot(path=str(shots / "recordings-date-filter.png"), full_page=True)
    page.click(f"tr[data-id='{rec_id}'] a")
    page.wait_for_url(f"**/console/recordings/{rec_id}")
    assert "chunk_missing" in page.inner_text("#failure")
    assert page.locator(".timeline li.tl-failed").count() >= 2  # stitching + recording
    page.screenshot(path=str(shots / "recording-failed.png"), full_page=True)
    srv.app.domain.ctx.store.put(key, io.BytesIO(data), len(data))  # the cause is fixed
    page.click("#restitch")
    page.wait_for_url(f"**/console/recordings/{rec_id}")
    assert page.inner_text("#rec-status") == "uploaded"  # requeued, the page polls
    assert page.locator("#restitch").count() == 0
    assert run_stitch(srv) == "succeeded"
    page.wait_for_selector("#player", timeout=30_000)  # the open page reloaded by itself
    assert page.inner_text("#rec-status") == "completed"
    assert page.locator(".timeline li.tl-stitched").count() == 1
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    assert abs(page.evaluate("document.getElementById('player').duration") - 3.0) < 0.1
    page.screenshot(path=str(shots / "recording-recovered.png"), full_page=True)
    origin = urlsplit(srv.http_url).netloc
    assert all(urlsplit(u).netloc == origin for u in page.requests), page.requests


@pytest.mark.slow
def test_list_rows_update_in_place_while_recording(page: Any, srv: RunningServer,  # noqa: F811
                                                   tmp_path_factory: pytest.TempPathFactory,
                                                   ) -> None:
    shots: Path = tmp_path_factory.mktemp("console-screenshots")
    api = client(srv.http_url, srv.api_key)
    rec = create_streaming(api, name="recording-now")
    sign_in(page, srv)
    page.goto(f"{srv.http_url}/console/recordings?status=streaming")
    row = f"tr[data-id='{rec['id']}']"
    assert page.inner_text(f"{row} [data-col=chunks_received]") == "0"
    page.evaluate("window.__same_page = true")  # survives only if the page is not reloaded
    for part, chunk in enumerate(continuous_chunks(2.0, 1_000), 1):
        assert put_chunk(rec["chunk_upload_url_template"], part, chunk.data).status_code == 201
    page.wait_for_function(f"document.querySelector(\"{row} [data-col=chunks_received]\")"
                           ".textContent === '2'", timeout=20_000)
    assert page.evaluate("window.__same_page === true")
    page.screenshot(path=str(shots / "recordings-live-row.png"), full_page=True)
    assert api.post(f"/v1/recordings/{rec['id']}/finalize",
                    json={"total_chunks": 2, "final_duration_ms": 2000}).status_code == 200
    page.wait_for_function(f"document.querySelector(\"{row} [data-col=status]\")"
                           ".textContent === 'uploaded'", timeout=20_000)
    assert page.evaluate("window.__same_page === true")
