"""REST routes of the fleet: device listing by health and pushed device settings. Handlers
only translate; the rules live in ``tapedeck.domain.fleet``."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain.fleet import DeviceSettings, SettingsView
from tapedeck.domain.idempotency import StoredResponse, fingerprint
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.devices import DeviceId, DeviceOut
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, Gateway, IdempotencyKey
from tapedeck.gateway.schemas import RequestModel, ResponseModel

HealthFilter = Literal["offline", "online", "storage_low", "backlog"]


class DeviceSettingsRequest(RequestModel):
    """Body of ``PUT /v1/device-settings`` and ``PUT /v1/devices/{id}/settings``: the new
    settings at that level; omitted or ``null`` fields inherit (device → project → the
    agent's own configuration)."""

    chunk_duration_ms: Annotated[int, Field(ge=1_000, le=3_600_000, multiple_of=20)] | None = \
        Field(default=None, description="Audio per chunk, ms (whole 20 ms frames).")
    bitrate: Annotated[int, Field(ge=6_000, le=510_000)] | None = Field(
        default=None, description="Opus bitrate, bits/s.")
    dtx: bool | None = Field(default=None, description="Opus discontinuous transmission.")
    heartbeat_interval_s: Annotated[int, Field(ge=5, le=86_400)] | None = Field(
        default=None, description="Seconds between heartbeats.")


BODY_MODELS = (DeviceSettingsRequest,)


class SettingsFields(ResponseModel):
    """Settings fields; ``null`` = not set at this level."""

    chunk_duration_ms: int | None
    bitrate: int | None
    dtx: bool | None
    heartbeat_interval_s: int | None


class ProjectSettingsOut(SettingsFields):
    """The project's device settings (``version`` 0: never set)."""

    version: int
    updated_at: AwareDatetime | None


class DeviceSettingsOut(ProjectSettingsOut):
    """A device's effective settings (its overrides over the project's) and its overrides."""

    device_id: str
    overrides: SettingsFields


class DevicePageOut(ResponseModel):
    """One page of devices, oldest first."""

    data: list[DeviceOut]
    has_more: bool
    next_cursor: str | None


def _settings(body: DeviceSettingsRequest) -> DeviceSettings:
    return DeviceSettings(**body.model_dump())


def add_fleet_routes(router: APIRouter, gw: Gateway) -> None:
    """Register ``GET /v1/devices`` and the device settings routes on ``router``."""
    d = gw.domain

    @router.get("/v1/devices", response_model=DevicePageOut, summary="List devices",
                responses=errors_doc())
    async def list_devices(
            request: Request,
            state: Annotated[HealthFilter | None, Query(
                description="Only devices in this health state: offline (no heartbeat for "
                            "the offline threshold), online, storage_low, backlog")] = None,
            limit: Annotated[int, Query(ge=1, le=100)] = 25,
            cursor: Annotated[str | None, Query(description="next_cursor of a previous page")]
            = None) -> Response:
        """The project's devices with their last heartbeat and health, oldest first
        (``devices:read``)."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(
            lambda: d.fleet.list(p, state=state, limit=limit, cursor=cursor))
        return JSONResponse(page.to_json())

    async def get(request: Request, device_id: str | None) -> Response:
        p = await gw.caller(request)
        view: SettingsView = await anyio.to_thread.run_sync(
            lambda: d.fleet.get_settings(p, device_id))
        return JSONResponse(view.to_json())

    async def put(request: Request, device_id: str | None, key: str | None) -> Response:
        p = await gw.caller(request)
        body = await parse_json(request, DeviceSettingsRequest, gw.max_json_bytes)
        fp = fingerprint("fleet.put_settings", {"id": device_id, **body.model_dump()})
        return await gw.respond(p, key, fp, lambda: StoredResponse(
            200, d.fleet.put_settings(p, device_id, _settings(body)).to_json()))

    @router.get("/v1/device-settings", response_model=ProjectSettingsOut,
                summary="Get the project's device settings", responses=errors_doc())
    async def get_project_settings(request: Request) -> Response:
        """The settings pushed to every device of the project (``devices:read``)."""
        return await get(request, None)

    @router.put("/v1/device-settings", response_model=ProjectSettingsOut,
                summary="Set the project's device settings", responses=errors_doc(*ON_POST),
                openapi_extra=body_doc(DeviceSettingsRequest, required=False))
    async def put_project_settings(request: Request,
                                   idempotency_key: IdempotencyKey = None) -> Response:
        """Replace the project's device settings (``devices:write``); the change takes the
        next version. Devices get them in heartbeat answers and apply them from their next
        recording."""
        return await put(request, None, idempotency_key)

    @router.get("/v1/devices/{device_id}/settings", response_model=DeviceSettingsOut,
                summary="Get a device's settings", responses=errors_doc("device_not_found"))
    async def get_device_settings(request: Request, device_id: DeviceId) -> Response:
        """The device's effective settings and its own overrides (``devices:read``)."""
        return await get(request, device_id)

    @router.put("/v1/devices/{device_id}/settings", response_model=DeviceSettingsOut,
                summary="Set a device's settings",
                responses=errors_doc("device_not_found", *ON_POST),
                openapi_extra=body_doc(DeviceSettingsRequest, required=False))
    async def put_device_settings(request: Request,
                                  device_id: Annotated[str, Path(
                                      description="Device identifier (dev_…).")],
                                  idempotency_key: IdempotencyKey = None) -> Response:
        """Replace the device's overrides (``devices:write``; unset fields inherit the
        project's); the change takes the project's next version."""
        return await put(request, device_id, idempotency_key)
