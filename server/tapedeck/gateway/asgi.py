"""The FastAPI application of the REST gateway, built from a ``Domain`` (no globals)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tapedeck.domain import Domain
from tapedeck.gateway import docs, errors, schemas
from tapedeck.gateway.audio import add_audio_route
from tapedeck.gateway.console import mount_console
from tapedeck.gateway.devices import BODY_MODELS as DEVICE_BODY_MODELS
from tapedeck.gateway.devices import add_device_routes
from tapedeck.gateway.fleet import BODY_MODELS as FLEET_BODY_MODELS
from tapedeck.gateway.fleet import add_fleet_routes
from tapedeck.gateway.restitch import add_restitch_route
from tapedeck.gateway.routes import Gateway, add_routes
from tapedeck.gateway.search import add_search_routes
from tapedeck.gateway.swagger import mount_swagger
from tapedeck.gateway.transcriptions import BODY_MODELS as TRANSCRIPTION_BODY_MODELS
from tapedeck.gateway.transcriptions import add_transcription_routes
from tapedeck.gateway.voice_profiles import BODY_MODELS as VOICE_BODY_MODELS
from tapedeck.gateway.voice_profiles import add_voice_profile_routes
from tapedeck.gateway.webhooks import BODY_MODELS as WEBHOOK_BODY_MODELS
from tapedeck.gateway.webhooks import add_webhook_routes

BODY_MODELS = (schemas.CreateRecordingRequest, schemas.FinalizeRequest,
               schemas.UploadUrlRequest, schemas.EmptyRequest, *DEVICE_BODY_MODELS,
               *WEBHOOK_BODY_MODELS, *TRANSCRIPTION_BODY_MODELS, *FLEET_BODY_MODELS,
               *VOICE_BODY_MODELS)
API_VERSION = "1.0.0"


def build_app(domain: Domain) -> FastAPI:
    """The REST API over ``domain``: routes, error envelopes, ``/openapi.json``, ``/docs``."""
    app = FastAPI(title="Tapedeck REST API", version=API_VERSION,
                  description=docs.API_DESCRIPTION, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    add_routes(app.router, domain)
    add_device_routes(app.router, Gateway(domain))
    add_webhook_routes(app.router, Gateway(domain))
    add_transcription_routes(app.router, Gateway(domain))
    add_search_routes(app.router, Gateway(domain))
    add_fleet_routes(app.router, Gateway(domain))
    add_voice_profile_routes(app.router, Gateway(domain))
    add_audio_route(app.router, Gateway(domain))
    add_restitch_route(app.router, Gateway(domain))
    errors.install(app)
    if domain.ctx.settings.console:
        mount_console(app, domain)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = docs.complete(FastAPI.openapi(app), BODY_MODELS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs/plain", include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        return HTMLResponse(docs.render_html(app.openapi()))

    mount_swagger(app)  # GET /docs: Swagger UI, offline

    return app
