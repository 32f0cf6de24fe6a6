"""Issue 21's fleet pages in a real browser (Debian's headless Chromium driven by
Playwright): hostile device and end-user values show as text, unbind a device through its
confirmation, replay a webhook delivery and see it arrive in a real loopback receiver, create
a restricted key (its secret shown once) and revoke it; no request leaves the server's
origin. A screenshot of each page goes to the pytest temp folder (``console-screenshots``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from test_console_fleet_http import (  # noqa: F401  # the module's fixtures
    Receiver,
    api,
    bound_device,
    fleet_srv,
    heartbeat,
    new_end_user,
    receiver,
)
from test_console_http import EVIL, EVIL2

from serverkit import RunningServer

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="no Debian chromium"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def page(fleet_srv: RunningServer) -> Iterator[Any]:  # noqa: F811
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(bypass_csp=True)  # playwright polls with eval(); CSP stays on the server
        pg.requests = []  # type: ignore[attr-defined]
        pg.on("request", lambda r: pg.requests.append(r.url))  # type: ignore[attr-defined]
        pg.goto(f"{fleet_srv.http_url}/console")
        pg.fill("#api_key", fleet_srv.api_key)
        pg.click("button[type=submit]")
        pg.wait_for_url("**/console/recordings")
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


def _inert(page: Any) -> None:
    assert page.evaluate("window.__xss === undefined") and page.locator("img").count() == 0


def test_devices_and_end_users_show_hostile_values_as_text_and_unbind(
        page: Any, fleet_srv: RunningServer, shots: Path) -> None:  # noqa: F811
    eu = new_end_user(fleet_srv, name=EVIL, email="ada@example.org")
    dev_id, token = bound_device(fleet_srv, eu["id"], serial_number=EVIL2, model="TD-1")
    assert heartbeat(fleet_srv, token).status_code == 200
    page.goto(f"{fleet_srv.http_url}/console/devices")
    row = page.locator(f'tr[data-device="{dev_id}"]')
    assert row.locator("td.serial").inner_text() == EVIL2
    _inert(page)
    page.screenshot(path=str(shots / "devices.png"), full_page=True)
    page.click(f"text={dev_id}")
    page.wait_for_url(f"**/console/devices/{dev_id}")
    assert page.locator("dd.serial").inner_text() == EVIL2 and page.locator(
        f'a[href="/console/end-users/{eu["id"]}"]').inner_text() == EVIL
    page.screenshot(path=str(shots / "device.png"), full_page=True)
    page.click("#unbind")
    page.wait_for_selector("#confirm")
    page.screenshot(path=str(shots / "confirm.png"), full_page=True)
    page.click("#confirm")
    page.wait_for_url("**notice=unbound")
    assert page.locator("#binding").inner_text() == "unbound"
    assert heartbeat(fleet_srv, token).status_code == 401
    page.goto(f"{fleet_srv.http_url}/console/end-users")
    assert page.locator(f'tr[data-end-user="{eu["id"]}"] td.name').inner_text() == EVIL
    _inert(page)
    page.screenshot(path=str(shots / "end-users.png"), full_page=True)
    page.click(f'tr[data-end-user="{eu["id"]}"] td.name a')
    page.wait_for_url(f"**/console/end-users/{eu['id']}")
    assert page.locator("h1.name").inner_text() == EVIL
    _inert(page)
    page.screenshot(path=str(shots / "end-user.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 800})  # a phone: nothing wider than it
    for path in ("/console/devices", f"/console/devices/{dev_id}", "/console/end-users"):
        page.goto(fleet_srv.http_url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 391, path
    page.screenshot(path=str(shots / "end-users-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 720})


def test_replay_a_delivery_into_a_receiver(page: Any, fleet_srv: RunningServer,  # noqa: F811
                                           receiver: Receiver,  # noqa: F811
                                           shots: Path) -> None:
    made = api(fleet_srv).post("/v1/webhooks", json={
        "url": receiver.url, "events": ["recording.created"], "description": "my app"})
    wh_id = made.json()["id"]
    api(fleet_srv).post("/v1/recordings", json={"streaming": True, "name": EVIL})
    page.goto(f"{fleet_srv.http_url}/console/webhooks")
    page.screenshot(path=str(shots / "webhooks.png"), full_page=True)
    page.click("text=my app")
    page.wait_for_url(f"**/console/webhooks/{wh_id}")
    for _ in range(300):  # the real dispatcher delivers it
        if page.locator('tr[data-status="succeeded"]').count():
            break
        page.wait_for_timeout(100)
        page.reload()
    event_id = page.locator('tr[data-status="succeeded"]').first.get_attribute("data-event")
    assert receiver.ids.count(event_id) == 1
    page.click(f'tr[data-event="{event_id}"] button.replay')
    page.wait_for_selector("#confirm")
    page.click("#confirm")
    page.wait_for_url("**notice=replayed")
    assert receiver.wait_count(event_id, 2), receiver.ids
    page.reload()
    page.screenshot(path=str(shots / "webhook.png"), full_page=True)


def test_create_and_revoke_a_key_and_stay_on_the_origin(
        page: Any, fleet_srv: RunningServer, shots: Path) -> None:  # noqa: F811
    page.goto(f"{fleet_srv.http_url}/console/api-keys")
    page.fill("#key-name", "dashboard")
    page.check('input[name=scopes][value="devices:read"]')
    page.click("#create-key")
    page.wait_for_selector("#secret")
    secret = page.locator("#secret").input_value()
    assert secret.startswith("rk_test_")
    page.screenshot(path=str(shots / "api-key-created.png"), full_page=True)
    key = httpx.Client(base_url=fleet_srv.http_url, timeout=30,
                       headers={"Authorization": f"Bearer {secret}"})
    assert key.get("/v1/devices").status_code == 200
    assert key.get("/v1/recordings").status_code == 403
    page.click("text=Done")
    page.wait_for_url("**/console/api-keys")
    page.screenshot(path=str(shots / "api-keys.png"), full_page=True)
    row = page.locator("tr", has_text="dashboard")
    assert secret not in page.content() and row.count() == 1
    row.locator("button.revoke").click()
    page.wait_for_selector("#confirm")
    page.click("#confirm")
    page.wait_for_url("**notice=revoked")
    assert key.get("/v1/devices").status_code == 401
    assert page.locator("tr", has_text="dashboard").locator("td.revoked").inner_text() != ""
    origin = urlsplit(fleet_srv.http_url).netloc
    assert page.requests and all(urlsplit(u).netloc == origin for u in page.requests), \
        page.requests
