"""REST routes for end users, devices and API keys (``api.md`` "Devices and end users",
"Authentication and scopes"). Handlers only translate, as in ``routes``; the rules live in
``tapedeck.domain.devices``, ``.end_users`` and ``.keys``.

Secrets in idempotent responses: bind, token refresh and key creation answer a secret shown
once. When such a request carries an ``Idempotency-Key``, its stored response (SQLite) holds
the secret only sealed (the route names the field, ``secret_field``; the domain's
``Idempotency.once`` seals it with the ``SecretBox``, bound to the credential and key), so a
replay within 24 h returns the same secret while no plaintext secret ever reaches the
database. (A refreshed-away token cannot replay its refresh: it no
longer authenticates.)
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, Field

from tapedeck.domain.devices import Heartbeat, NewDevice
from tapedeck.domain.end_users import NewEndUser
from tapedeck.domain.idempotency import StoredResponse, fingerprint
from tapedeck.gateway.body import parse_json
from tapedeck.gateway.docs import body_doc, errors_doc
from tapedeck.gateway.routes import ON_POST, Gateway, IdempotencyKey
from tapedeck.gateway.schemas import EmptyRequest, Metadata, RequestModel, ResponseModel

DeviceState = Literal["idle", "recording", "syncing", "uploading", "charging", "low_battery",
                      "storage_full", "error"]
#: The scopes of ``auth.ALL_SCOPES`` (documentation; the domain validates).
Scope = Literal["recordings:read", "recordings:write", "transcriptions:read",
                "transcriptions:write", "devices:read", "devices:write", "end_users:read",
                "end_users:write", "webhooks:read", "webhooks:write"]
DeviceId = Annotated[str, Path(description="Device identifier (dev_…).")]
DeviceOrMe = Annotated[str, Path(description="Device identifier (dev_…), or `me` with a "
                                             "device token.")]


# -- request bodies ----------------------------------------------------------------------
class CreateEndUserRequest(RequestModel):
    """Body of ``POST /v1/end-users``; ``external_id`` is unique per project."""

    external_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    name: Annotated[str, Field(max_length=500)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class CreateDeviceRequest(RequestModel):
    """Body of ``POST /v1/devices``."""

    serial_number: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    firmware_version: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class BindDeviceRequest(RequestModel):
    """Body of ``POST /v1/devices/{id}/bind``."""

    end_user_id: Annotated[str, Field(min_length=1, max_length=100)]


class HeartbeatRequest(RequestModel):
    """Body of ``POST /v1/devices/{id|me}/heartbeat``: all optional; it replaces the
    device's previous heartbeat state (omitted fields are no longer reported)."""

    battery_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    storage_used_mb: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    storage_total_mb: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    signal_strength_dbm: Annotated[int, Field(ge=-200, le=0)] | None = None
    firmware_version: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    device_state: DeviceState | None = None
    pending_recordings: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    connection_type: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] | None = Field(
        default=None, description="For example wifi, cellular, ethernet, bluetooth.")
    backlog_recordings: Annotated[int, Field(ge=0, le=1_000_000)] | None = Field(
        default=None, description="Recordings recorded but not yet acknowledged by the server.")
    backlog_chunks: Annotated[int, Field(ge=0, le=100_000_000)] | None = Field(
        default=None, description="Chunks recorded but not yet acknowledged.")
    backlog_bytes: Annotated[int, Field(ge=0, le=2 ** 50)] | None = Field(
        default=None, description="Bytes of those chunks.")
    backlog_oldest_age_s: Annotated[int, Field(ge=0, le=10 ** 9)] | None = Field(
        default=None, description="Age in seconds of the oldest of them.")
    settings_version: Annotated[int, Field(ge=0, le=2 ** 62)] | None = Field(
        default=None, description="Version of the pushed device settings the device runs.")


class CreateKeyRequest(RequestModel):
    """Body of ``POST /v1/keys``: a restricted key with ``scopes``, or a secret key."""

    kind: Literal["restricted", "secret"] = "restricted"
    scopes: list[Annotated[str, Field(max_length=40)]] = Field(
        default_factory=list, max_length=20,
        description="Restricted keys: at least one of " + ", ".join(get_args(Scope))
        + " (others → invalid_request listing unknown_scopes). Secret keys: none.")
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None


BODY_MODELS = (CreateEndUserRequest, CreateDeviceRequest, BindDeviceRequest, HeartbeatRequest,
               CreateKeyRequest)


# -- responses ---------------------------------------------------------------------------
class EndUserOut(ResponseModel):
    """The end user object."""

    id: str
    external_id: str | None
    email: str | None
    name: str | None
    metadata: dict[str, str]
    created_at: AwareDatetime


class DeviceOut(ResponseModel):
    """The device object, with its last heartbeat's fields and ``last_heartbeat_at``."""

    id: str
    serial_number: str | None
    model: str | None
    firmware_version: str | None
    status: Literal["unbound", "bound"]
    end_user_id: str | None
    created_at: AwareDatetime
    bound_at: AwareDatetime | None
    last_heartbeat_at: AwareDatetime | None
    battery_percent: int | None
    storage_used_mb: int | None
    storage_total_mb: int | None
    signal_strength_dbm: int | None
    device_state: DeviceState | None
    pending_recordings: int | None
    connection_type: str | None
    backlog_recordings: int | None = None
    backlog_chunks: int | None = None
    backlog_bytes: int | None = None
    backlog_oldest_age_s: int | None = None
    settings_version: int | None = None
    offline: bool = Field(False, description="No heartbeat for the server's offline "
                                             "threshold (as the sweeper last saw).")
    storage_low: bool = Field(False, description="The last heartbeat reported storage above "
                                                 "the threshold.")
    backlog_overdue: bool = Field(False, description="The last heartbeat reported audio "
                                                     "waiting longer than the threshold.")


class BoundDeviceOut(DeviceOut):
    """The bound device and its new device token (shown only here)."""

    device_token: str


class RefreshedTokenOut(ResponseModel):
    """The new device token (shown only here); the one used for the request is revoked."""

    device_id: str
    device_token: str


class PushedSettingsOut(ResponseModel):
    """The device settings a device should run from its next recording (``null``: not set
    for it; the agent keeps its own configuration)."""

    version: int
    chunk_duration_ms: int | None
    bitrate: int | None
    dtx: bool | None
    heartbeat_interval_s: int | None


class HeartbeatOut(ResponseModel):
    """The heartbeat was stored; ``settings`` are the device's pushed settings."""

    status: Literal["ok"]
    settings: PushedSettingsOut | None = None


class KeyOut(ResponseModel):
    """An API key, without its secret."""

    id: str
    kind: Literal["secret", "restricted"]
    mode: Literal["test", "live"]
    name: str | None
    scopes: list[str]
    hint: str
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None


class CreatedKeyOut(KeyOut):
    """A new key and its secret (shown only here)."""

    secret: str


class KeyPageOut(ResponseModel):
    """One page of keys, newest first."""

    data: list[KeyOut]
    has_more: bool
    next_cursor: str | None


# -- routes ------------------------------------------------------------------------------
def add_device_routes(router: APIRouter, gw: Gateway) -> None:
    """Register the end user, device and key routes on ``router`` (the app's router, whose
    ``route_class`` ``routes.add_routes`` has already set)."""
    _end_user_routes(router, gw)
    _device_routes(router, gw)
    _binding_routes(router, gw)
    _key_routes(router, gw)


def _end_user_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/end-users", status_code=201, response_model=EndUserOut,
            summary="Create an end user",
            responses=errors_doc("resource_already_exists", *ON_POST),
            openapi_extra=body_doc(CreateEndUserRequest))
    async def create_end_user(request: Request,
                              idempotency_key: IdempotencyKey = None) -> Response:
        """A new end user (``end_users:write``); a duplicate ``external_id`` in the project
        → 409 ``resource_already_exists`` naming the existing ``end_user_id``."""
        p = await gw.caller(request)
        body = await parse_json(request, CreateEndUserRequest, gw.max_json_bytes)
        req = NewEndUser(**body.model_dump())
        fp = fingerprint("end_users.create", body.model_dump())
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, d.end_users.create(p, req).to_json()))

    @r.get("/v1/end-users/{end_user_id}", response_model=EndUserOut, summary="Get an end user",
           responses=errors_doc("end_user_not_found"))
    async def get_end_user(request: Request, end_user_id: Annotated[str, Path(
            description="End user identifier (eu_…).")]) -> Response:
        """One end user of the caller's project (``end_users:read``)."""
        p = await gw.caller(request)
        user = await anyio.to_thread.run_sync(lambda: d.end_users.get(p, end_user_id))
        return JSONResponse(user.to_json())


def _device_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/devices", status_code=201, response_model=DeviceOut,
            summary="Register a device", responses=errors_doc(*ON_POST),
            openapi_extra=body_doc(CreateDeviceRequest, required=False))
    async def create_device(request: Request,
                            idempotency_key: IdempotencyKey = None) -> Response:
        """A new device, status ``unbound`` (``devices:write``)."""
        p = await gw.caller(request)
        body = await parse_json(request, CreateDeviceRequest, gw.max_json_bytes)
        req = NewDevice(**body.model_dump())
        fp = fingerprint("devices.create", body.model_dump())
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, d.devices.create(p, req).to_json()))

    @r.get("/v1/devices/{device_id}", response_model=DeviceOut, summary="Get a device",
           responses=errors_doc("device_not_found"))
    async def get_device(request: Request, device_id: DeviceId) -> Response:
        """The device with its last heartbeat's fields and ``last_heartbeat_at``
        (``devices:read``)."""
        p = await gw.caller(request)
        device = await anyio.to_thread.run_sync(lambda: d.devices.get(p, device_id))
        return JSONResponse(device.to_json())

    @r.post("/v1/devices/{device_id}/heartbeat", response_model=HeartbeatOut,
            summary="Send a heartbeat", responses=errors_doc("device_not_found", *ON_POST),
            openapi_extra=body_doc(HeartbeatRequest, required=False))
    async def heartbeat(request: Request, device_id: DeviceOrMe,
                        idempotency_key: IdempotencyKey = None) -> Response:
        """Store the device's current state as its latest heartbeat: a device token for
        its own device (``me``), or a key with ``devices:write``. Fleet events
        (``device.online``, ``device.storage_low``, ``device.backlog``) commit with it; the
        answer carries the device settings it should run from its next recording."""
        p = await gw.caller(request)
        body = await parse_json(request, HeartbeatRequest, gw.max_json_bytes)
        hb = Heartbeat(**body.model_dump())
        fp = fingerprint("devices.heartbeat", {"id": device_id, **body.model_dump()})

        def call() -> StoredResponse:
            return StoredResponse(200, d.fleet.heartbeat(p, device_id, hb).to_json())

        return await gw.respond(p, idempotency_key, fp, call)


def _binding_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/devices/{device_id}/bind", response_model=BoundDeviceOut,
            summary="Bind a device to an end user",
            responses=errors_doc("device_not_found", "end_user_not_found",
                                 "device_already_bound", *ON_POST),
            openapi_extra=body_doc(BindDeviceRequest))
    async def bind_device(request: Request, device_id: DeviceId,
                          idempotency_key: IdempotencyKey = None) -> Response:
        """Bind an unbound device (``devices:write``); the answer carries its new
        ``device_token``, shown only this once."""
        p = await gw.caller(request)
        body = await parse_json(request, BindDeviceRequest, gw.max_json_bytes)
        fp = fingerprint("devices.bind", {"id": device_id, **body.model_dump()})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.devices.bind(p, device_id, body.end_user_id).to_json()),
            secret_field="device_token")

    @r.post("/v1/devices/{device_id}/unbind", response_model=DeviceOut,
            summary="Unbind a device", responses=errors_doc("device_not_found", *ON_POST),
            openapi_extra=body_doc(EmptyRequest, required=False))
    async def unbind_device(request: Request, device_id: DeviceId,
                            idempotency_key: IdempotencyKey = None) -> Response:
        """Revoke every token of the device and make it ``unbound`` (``devices:write``)."""
        p = await gw.caller(request)
        await parse_json(request, EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("devices.unbind", {"id": device_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.devices.unbind(p, device_id).to_json()))

    @r.post("/v1/devices/{device_id}/token/refresh", response_model=RefreshedTokenOut,
            summary="Refresh the calling device's token",
            responses=errors_doc("device_not_found", *ON_POST),
            openapi_extra=body_doc(EmptyRequest, required=False))
    async def refresh_token(request: Request, device_id: DeviceOrMe,
                            idempotency_key: IdempotencyKey = None) -> Response:
        """Device tokens only, for their own device (``me``): a new token; the one used
        for this request is revoked and fails on its very next request."""
        p = await gw.caller(request)
        await parse_json(request, EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("devices.refresh_token", {"id": device_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.devices.refresh_token(p, device_id).to_json()),
            secret_field="device_token")


def _key_routes(r: APIRouter, gw: Gateway) -> None:
    d = gw.domain

    @r.post("/v1/keys", status_code=201, response_model=CreatedKeyOut,
            summary="Create an API key", responses=errors_doc(*ON_POST),
            openapi_extra=body_doc(CreateKeyRequest))
    async def create_key(request: Request, idempotency_key: IdempotencyKey = None) -> Response:
        """Secret keys only: a restricted key (``rk_…``) holding exactly ``scopes``, or a
        secret key (``sk_…``). The ``secret`` is shown only in this answer."""
        p = await gw.caller(request)
        body = await parse_json(request, CreateKeyRequest, gw.max_json_bytes)
        fp = fingerprint("keys.create", body.model_dump())
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            201, d.keys.create(p, kind=body.kind, scopes=body.scopes,
                               name=body.name).to_json()), secret_field="secret")

    @r.get("/v1/keys", response_model=KeyPageOut, summary="List API keys",
           responses=errors_doc())
    async def list_keys(
            request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 25,
            cursor: Annotated[str | None, Query(description="next_cursor of a previous page")]
            = None) -> Response:
        """Secret keys only: the project's keys, revoked ones included, newest first."""
        p = await gw.caller(request)
        page = await anyio.to_thread.run_sync(
            lambda: d.keys.list(p, limit=limit, cursor=cursor))
        return JSONResponse(page.to_json())

    @r.post("/v1/keys/{key_id}/revoke", response_model=KeyOut, summary="Revoke an API key",
            responses=errors_doc("key_not_found", *ON_POST),
            openapi_extra=body_doc(EmptyRequest, required=False))
    async def revoke_key(request: Request, key_id: Annotated[str, Path(
            description="Key identifier (key_…).")],
            idempotency_key: IdempotencyKey = None) -> Response:
        """Secret keys only: revoke a key (it fails on its very next request). The
        project's last active secret key cannot be revoked."""
        p = await gw.caller(request)
        await parse_json(request, EmptyRequest, gw.max_json_bytes)
        fp = fingerprint("keys.revoke", {"id": key_id})
        return await gw.respond(p, idempotency_key, fp, lambda: StoredResponse(
            200, d.keys.revoke(p, key_id).to_json()))
