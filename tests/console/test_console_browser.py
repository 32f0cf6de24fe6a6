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
from test_console_http import EVIL, srv, stitched  # noqa: F401  # the module's fixtures
from test_console_recordings import day, lost_chunk_recording, run_stitch

from serverkit import RunningServer

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
