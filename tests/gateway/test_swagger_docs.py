"""Issue 21: ``/docs`` is Swagger UI (Swagger UI 5) served offline from the ``fastapi-offline`` wheel, over
the server's OpenAPI document, with the descriptions rendered as Markdown. Real gateway; the
rendering is checked in Debian's headless Chromium (Playwright), which also checks that no
request leaves the server's origin."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from serverkit import RunningServer

CHROMIUM = "/usr/bin/chromium"


def test_page_and_assets_are_served_by_the_gateway(server: RunningServer) -> None:
    page = httpx.get(f"{server.http_url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing external
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
                  "/docs/init.js"):
        assert f'"{asset}"' in page.text
        got = httpx.get(server.http_url + asset)
        assert got.status_code == 200 and len(got.content) > 100, asset
    init = httpx.get(f"{server.http_url}/docs/init.js").text
    assert '"/openapi.json"' in init and "validatorUrl: null" in init
    assert "SwaggerUIBundle" in httpx.get(
        f"{server.http_url}/docs/assets/swagger-ui-bundle.js").text
    assert httpx.get(f"{server.http_url}/docs/plain").status_code == 200


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium")
def test_swagger_ui_renders_markdown_offline(server: RunningServer, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    origin = urlsplit(server.http_url).netloc
    seen: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: seen.append(r.url))
            page.goto(f"{server.http_url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            # The API description's Markdown (``* **Auth**: ...``) is rendered, not shown raw.
            strong = page.locator(".info strong", has_text="Auth")
            assert strong.count() >= 1
            assert "**Auth**" not in page.locator(".info").inner_text()
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/v1/recordings/{recording_id}/audio" in t.replace("\u200b", "")
                       for t in paths)
            page.screenshot(path=str(tmp_path / "docs.png"))
        finally:
            browser.close()
    assert seen and all(urlsplit(u).netloc == origin for u in seen if not
                        u.startswith("data:")), seen
