"""``/docs``: the interactive API reference (Swagger UI 5) served offline.

The assets come from the ``fastapi-offline`` wheel (mounted at ``/docs/assets``;
``swagger-ui-bundle`` ships Swagger UI 4, which cannot read OpenAPI 3.1). ``init.js`` here
starts it over ``/openapi.json``. Swagger UI renders the descriptions as Markdown and offers
"Authorize" (a bearer key) and "Try it out". The page's CSP allows only this origin, so
nothing is fetched from anywhere else (the online validator badge is off).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "object-src 'none'; frame-ancestors 'none'")
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tapedeck REST API reference</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon.png"></head>
<body><p style="margin:.5em 1em;font-family:system-ui,sans-serif">
<a href="/console">Console</a> · <a href="/openapi.json">openapi.json</a> ·
<a href="/docs/plain">plain page (no JavaScript)</a></p>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>"""


def assets_dir() -> Path:
    """The Swagger UI distribution inside the installed ``fastapi_offline`` wheel."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def mount_swagger(app: FastAPI) -> None:
    """Add ``GET /docs`` (the Swagger UI page), ``/docs/init.js`` and ``/docs/assets``."""
    app.mount("/docs/assets", StaticFiles(directory=str(assets_dir())), name="swagger-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP})

    @app.get("/docs/init.js", include_in_schema=False)
    async def swagger_init() -> FileResponse:
        return FileResponse(HERE / "init.js", media_type="text/javascript")
