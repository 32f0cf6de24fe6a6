"""DeviceService, EndUserService and KeyService: authenticate, translate, call the domain.

No rules here: scopes, visibility and validation live in ``tapedeck.domain.devices``,
``.end_users`` and ``.keys``. Unset optional proto fields become ``None``.
"""

from __future__ import annotations

import io

import grpc

from tapedeck.domain import Domain
from tapedeck.domain.devices import Device, Heartbeat, NewDevice
from tapedeck.domain.end_users import EndUser, NewEndUser
from tapedeck.domain.fleet import SETTING_FIELDS, DeviceSettings, SettingsView
from tapedeck.domain.keys import ApiKey
from tapedeck.domain.voice_profiles import VoiceProfile
from tapedeck.errors import invalid
from tapedeck.grpc_api import _convert as cv
from tapedeck.grpc_api._errors import translate_errors
from tapedeck.grpc_api.servicers import principal
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import device_pb2_grpc, end_user_pb2_grpc, key_pb2_grpc
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import key_pb2 as kpb

_HEARTBEAT_INTS = ("battery_percent", "storage_used_mb", "storage_total_mb",
                   "signal_strength_dbm", "pending_recordings", "backlog_recordings",
                   "backlog_chunks", "backlog_bytes", "backlog_oldest_age_s", "settings_version")


# -- conversions -------------------------------------------------------------------------
def device_pb(d: Device) -> dpb.Device:
    """A ``Device`` message; heartbeat fields left unset when not reported."""
    hb = d.heartbeat
    out = dpb.Device(
        id=d.id, serial_number=d.serial_number or "", model=d.model or "",
        firmware_version=d.firmware_version or "",
        status=dpb.DeviceStatus.Value("DEVICE_STATUS_" + d.status.upper()),
        end_user_id=d.end_user_id or "", create_time=cv.ts(d.created_at),
        bind_time=cv.ts(d.bound_at), last_heartbeat_time=cv.ts(d.last_heartbeat_at),
        connection_type=hb.get("connection_type") or "", offline=d.offline,
        storage_low=d.storage_low, backlog_overdue=d.backlog_overdue)
    for name in _HEARTBEAT_INTS:
        if hb.get(name) is not None:
            setattr(out, name, hb[name])
    if hb.get("device_state"):
        out.device_state = dpb.DeviceState.Value("DEVICE_STATE_" + hb["device_state"].upper())
    return out


def heartbeat_from_pb(r: dpb.SendHeartbeatRequest) -> Heartbeat:
    """The domain heartbeat of a request (unset fields → ``None``)."""
    ints = {name: getattr(r, name) if r.HasField(name) else None  # type: ignore[arg-type]
            for name in _HEARTBEAT_INTS}
    return Heartbeat(**ints, firmware_version=r.firmware_version or None,
                     device_state=cv.enum_name(dpb.DeviceState.DESCRIPTOR, "DEVICE_STATE_",
                                                r.device_state, "device_state"),
                     connection_type=r.connection_type or None)


def settings_pb(s: DeviceSettings, version: int = 0) -> dpb.DeviceSettings:
    """A ``DeviceSettings`` message; fields not set at this level left unset."""
    out = dpb.DeviceSettings(version=version)
    for name in SETTING_FIELDS:
        if getattr(s, name) is not None:
            setattr(out, name, getattr(s, name))
    return out


def settings_from_pb(m: dpb.DeviceSettings) -> DeviceSettings:
    """The domain settings of a message (unset fields → ``None``)."""
    return DeviceSettings(**{name: getattr(m, name) if m.HasField(name)  # type: ignore[arg-type]
                             else None for name in SETTING_FIELDS})


def _settings_pair(view: SettingsView) -> tuple[dpb.DeviceSettings, dpb.DeviceSettings | None]:
    own = None if view.overrides is None else settings_pb(view.overrides)
    return settings_pb(view.settings, view.version), own


_FILTER_PREFIX = "DEVICE_HEALTH_FILTER_"


def voice_profile_pb(v: VoiceProfile) -> epb.VoiceProfile:
    out = epb.VoiceProfile(id=v.id, end_user_id=v.end_user_id, source=v.source,
                           recording_id=v.recording_id or "", speech_ms=v.speech_ms,
                           create_time=cv.ts(v.created_at))
    if v.start_ms is not None:
        out.start_ms = v.start_ms
    if v.end_ms is not None:
        out.end_ms = v.end_ms
    return out


def end_user_pb(u: EndUser) -> epb.EndUser:
    return epb.EndUser(id=u.id, external_id=u.external_id or "", email=u.email or "",
                       name=u.name or "", metadata=u.metadata, create_time=cv.ts(u.created_at))


def key_pb(k: ApiKey) -> kpb.Key:
    return kpb.Key(id=k.id, kind=kpb.KeyKind.Value("KEY_KIND_" + k.kind.upper()), mode=k.mode,
                   name=k.name or "", scopes=k.scopes, hint=k.hint,
                   create_time=cv.ts(k.created_at), revoke_time=cv.ts(k.revoked_at))


def _key_kind(value: int) -> str:
    """The domain key kind; UNSPECIFIED means ``restricted``."""
    return cv.enum_name(kpb.KeyKind.DESCRIPTOR, "KEY_KIND_", value, "kind") or "restricted"


# -- servicers ---------------------------------------------------------------------------
class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    """tapedeck.v1.DeviceService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def CreateDevice(self, request: dpb.CreateDeviceRequest,
                     context: grpc.ServicerContext) -> dpb.CreateDeviceResponse:
        req = NewDevice(serial_number=request.serial_number or None,
                        model=request.model or None,
                        firmware_version=request.firmware_version or None)
        device = self._d.devices.create(principal(self._d, context), req)
        return dpb.CreateDeviceResponse(device=device_pb(device))

    @translate_errors
    def GetDevice(self, request: dpb.GetDeviceRequest,
                  context: grpc.ServicerContext) -> dpb.GetDeviceResponse:
        device = self._d.devices.get(principal(self._d, context), request.id)
        return dpb.GetDeviceResponse(device=device_pb(device))

    @translate_errors
    def BindDevice(self, request: dpb.BindDeviceRequest,
                   context: grpc.ServicerContext) -> dpb.BindDeviceResponse:
        issued = self._d.devices.bind(principal(self._d, context), request.id,
                                      request.end_user_id)
        return dpb.BindDeviceResponse(device=device_pb(issued.device),
                                      device_token=issued.device_token)

    @translate_errors
    def UnbindDevice(self, request: dpb.UnbindDeviceRequest,
                     context: grpc.ServicerContext) -> dpb.UnbindDeviceResponse:
        device = self._d.devices.unbind(principal(self._d, context), request.id)
        return dpb.UnbindDeviceResponse(device=device_pb(device))

    @translate_errors
    def RefreshDeviceToken(self, request: dpb.RefreshDeviceTokenRequest,
                           context: grpc.ServicerContext) -> dpb.RefreshDeviceTokenResponse:
        fresh = self._d.devices.refresh_token(principal(self._d, context), request.id)
        return dpb.RefreshDeviceTokenResponse(device_id=fresh.device_id,
                                              device_token=fresh.device_token)

    @translate_errors
    def SendHeartbeat(self, request: dpb.SendHeartbeatRequest,
                      context: grpc.ServicerContext) -> dpb.SendHeartbeatResponse:
        p = principal(self._d, context)
        ack = self._d.fleet.heartbeat(p, request.device_id, heartbeat_from_pb(request))
        return dpb.SendHeartbeatResponse(
            status="ok", settings=settings_pb(ack.settings.settings, ack.settings.version))

    @translate_errors
    def ListDevices(self, request: dpb.ListDevicesRequest,
                    context: grpc.ServicerContext) -> dpb.ListDevicesResponse:
        state = cv.enum_name(dpb.DeviceHealthFilter.DESCRIPTOR, _FILTER_PREFIX, request.state,
                             "state")
        page = self._d.fleet.list(principal(self._d, context), state=state,
                                  limit=cv.page_limit(request.page_size),
                                  cursor=request.page_token or None)
        return dpb.ListDevicesResponse(devices=[device_pb(d) for d in page.data],
                                       next_page_token=page.next_cursor or "")

    @translate_errors
    def GetDeviceSettings(self, request: dpb.GetDeviceSettingsRequest,
                          context: grpc.ServicerContext) -> dpb.GetDeviceSettingsResponse:
        view = self._d.fleet.get_settings(principal(self._d, context),
                                          request.device_id or None)
        settings, own = _settings_pair(view)
        return dpb.GetDeviceSettingsResponse(settings=settings, overrides=own)

    @translate_errors
    def UpdateDeviceSettings(self, request: dpb.UpdateDeviceSettingsRequest,
                             context: grpc.ServicerContext) -> dpb.UpdateDeviceSettingsResponse:
        view = self._d.fleet.put_settings(principal(self._d, context),
                                          request.device_id or None,
                                          settings_from_pb(request.settings))
        settings, own = _settings_pair(view)
        return dpb.UpdateDeviceSettingsResponse(settings=settings, overrides=own)


class EndUserServicer(end_user_pb2_grpc.EndUserServiceServicer):
    """tapedeck.v1.EndUserService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def CreateEndUser(self, request: epb.CreateEndUserRequest,
                      context: grpc.ServicerContext) -> epb.CreateEndUserResponse:
        req = NewEndUser(external_id=request.external_id or None, email=request.email or None,
                         name=request.name or None, metadata=dict(request.metadata))
        user = self._d.end_users.create(principal(self._d, context), req)
        return epb.CreateEndUserResponse(end_user=end_user_pb(user))

    @translate_errors
    def GetEndUser(self, request: epb.GetEndUserRequest,
                   context: grpc.ServicerContext) -> epb.GetEndUserResponse:
        user = self._d.end_users.get(principal(self._d, context), request.id)
        return epb.GetEndUserResponse(end_user=end_user_pb(user))

    @translate_errors
    def CreateVoiceProfile(self, request: epb.CreateVoiceProfileRequest,
                           context: grpc.ServicerContext) -> epb.CreateVoiceProfileResponse:
        p = principal(self._d, context)
        vps = self._d.voice_profiles
        if request.WhichOneof("source") == "recording":
            span = request.recording
            vp = vps.create_from_recording(p, request.end_user_id, span.recording_id,
                                           span.start_ms, span.end_ms)
        elif request.WhichOneof("source") == "sample":
            vp = vps.create_from_sample(p, request.end_user_id, io.BytesIO(request.sample))
        else:
            raise invalid("source", "Give a recording span or an audio sample.")
        return epb.CreateVoiceProfileResponse(voice_profile=voice_profile_pb(vp))

    @translate_errors
    def ListVoiceProfiles(self, request: epb.ListVoiceProfilesRequest,
                          context: grpc.ServicerContext) -> epb.ListVoiceProfilesResponse:
        page = self._d.voice_profiles.list(principal(self._d, context), request.end_user_id,
                                           limit=cv.page_limit(request.page_size),
                                           cursor=request.page_token or None)
        return epb.ListVoiceProfilesResponse(
            voice_profiles=[voice_profile_pb(v) for v in page.data],
            next_page_token=page.next_cursor or "")

    @translate_errors
    def DeleteVoiceProfile(self, request: epb.DeleteVoiceProfileRequest,
                           context: grpc.ServicerContext) -> epb.DeleteVoiceProfileResponse:
        self._d.voice_profiles.delete(principal(self._d, context), request.end_user_id,
                                      request.id)
        return epb.DeleteVoiceProfileResponse(id=request.id)

    @translate_errors
    def DeleteEndUser(self, request: epb.DeleteEndUserRequest,
                      context: grpc.ServicerContext) -> epb.DeleteEndUserResponse:
        done = self._d.end_users.delete(principal(self._d, context), request.id)
        return epb.DeleteEndUserResponse(
            id=done.id, voice_profiles_deleted=done.voice_profiles_deleted,
            recordings_unbound=done.recordings_unbound, devices_unbound=done.devices_unbound,
            transcripts_unnamed=done.transcripts_unnamed)


class KeyServicer(key_pb2_grpc.KeyServiceServicer):
    """tapedeck.v1.KeyService over the domain."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    @translate_errors
    def CreateKey(self, request: kpb.CreateKeyRequest,
                  context: grpc.ServicerContext) -> kpb.CreateKeyResponse:
        created = self._d.keys.create(principal(self._d, context),
                                      kind=_key_kind(request.kind), scopes=list(request.scopes),
                                      name=request.name or None)
        return kpb.CreateKeyResponse(key=key_pb(created.key), secret=created.secret)

    @translate_errors
    def ListKeys(self, request: kpb.ListKeysRequest,
                 context: grpc.ServicerContext) -> kpb.ListKeysResponse:
        page = self._d.keys.list(principal(self._d, context),
                                 limit=cv.page_limit(request.page_size),
                                 cursor=request.page_token or None)
        return kpb.ListKeysResponse(keys=[key_pb(k) for k in page.data],
                                    next_page_token=page.next_cursor or "")

    @translate_errors
    def RevokeKey(self, request: kpb.RevokeKeyRequest,
                  context: grpc.ServicerContext) -> kpb.RevokeKeyResponse:
        key = self._d.keys.revoke(principal(self._d, context), request.id)
        return kpb.RevokeKeyResponse(key=key_pb(key))


SERVICES = (
    dpb.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    epb.DESCRIPTOR.services_by_name["EndUserService"].full_name,
    kpb.DESCRIPTOR.services_by_name["KeyService"].full_name,
)


def add_to_server(domain: Domain, server: grpc.Server) -> tuple[str, ...]:
    """Register the three services on ``server``; return their full names."""
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(domain), server)
    end_user_pb2_grpc.add_EndUserServiceServicer_to_server(EndUserServicer(domain), server)
    key_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(domain), server)
    return SERVICES
