"""Test kit for devices, end users and keys: gRPC stubs on a real server, and a ``World``
of credentials of every kind (secret, restricted, device tokens, revoked ones, another
project's key) built through the public API itself."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from tapedeck.auth import ALL_SCOPES, create_project
from tapedeck.clock import Clock
from tapedeck.errors import ERRORS
from tapedeck.infra.weed import ManagedWeed
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import (
    chunk_pb2_grpc,
    device_pb2_grpc,
    end_user_pb2_grpc,
    key_pb2_grpc,
    recording_pb2_grpc,
    webhook_pb2_grpc,
)
from tapedeck.v1 import device_pb2 as dpb
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import key_pb2 as kpb
from tapedeck.v1 import recording_pb2 as rpb
from tapedeck.v1 import webhook_pb2 as whpb

from serverkit import RunningServer, auth, chunk_messages, drop_bucket, make_settings, start_server

#: A whole secret of any kind (hints such as ``rk_test_…abcd`` do not match): API keys and
#: device tokens (prefix, 32 random + 6 checksum base62), upload tokens (payload.signature)
#: and webhook signing secrets (32 base64 characters).
SECRET_RE = re.compile(rb"(?:sk|rk|dtok)_(?:test|live)_[0-9A-Za-z]{38}"
                       rb"|up_[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
                       rb"|whsec_[A-Za-z0-9+/]{32}")


def gateway_available() -> bool:
    """Whether this checkout has the REST gateway (then servers also start ``http``)."""
    return importlib.util.find_spec("tapedeck.gateway") is not None


def serve(weed: ManagedWeed, data_dir: Path, clock: Clock | None = None) -> Iterator[RunningServer]:
    """Body of a module-scoped server fixture: a real server (gRPC, plus REST when the
    gateway exists) on a fresh SQLite file and bucket, removed afterwards."""
    roles = ["grpc", "http"] if gateway_available() else ["grpc"]
    srv = start_server(make_settings(weed, data_dir), roles=roles, clock=clock)
    try:
        yield srv
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)


def outcome(call: Callable[[], object]) -> str:
    """``"ok"`` if the RPC succeeds, else its error type (after checking that the gRPC code
    is the one the error table gives that type)."""
    try:
        call()
    except grpc.RpcError as exc:
        err = from_rpc_error(exc)
        assert exc.code() == ERRORS[err.type].grpc_code, (err.type, exc.code())
        return err.type
    return "ok"


def error_of(call: Callable[[], object]) -> str:
    """The error type of an RPC that must fail."""
    result = outcome(call)
    assert result != "ok", "expected the call to fail"
    return result


@dataclass
class Stubs:
    """One stub per service, on one channel."""

    devices: device_pb2_grpc.DeviceServiceStub
    end_users: end_user_pb2_grpc.EndUserServiceStub
    keys: key_pb2_grpc.KeyServiceStub
    recordings: recording_pb2_grpc.RecordingServiceStub
    chunks: chunk_pb2_grpc.ChunkServiceStub
    webhooks: webhook_pb2_grpc.WebhookServiceStub

    @classmethod
    def on(cls, channel: grpc.Channel) -> Stubs:
        return cls(devices=device_pb2_grpc.DeviceServiceStub(channel),
                   end_users=end_user_pb2_grpc.EndUserServiceStub(channel),
                   keys=key_pb2_grpc.KeyServiceStub(channel),
                   recordings=recording_pb2_grpc.RecordingServiceStub(channel),
                   chunks=chunk_pb2_grpc.ChunkServiceStub(channel),
                   webhooks=webhook_pb2_grpc.WebhookServiceStub(channel))


@dataclass
class World:
    """Project A (secret key ``sk``, an end user, a bound device ``other``) and project B.

    Every credential is made through the API (``KeyService``, ``DeviceService``) except the
    bootstrap keys, which come from ``create_project`` as ``tapedeck admin bootstrap`` does.
    """

    srv: RunningServer
    rpc: Stubs
    sk: str
    sk_b: str
    end_user_id: str = ""
    other_device_id: str = ""
    other_token: str = ""
    unbound_token: str = ""
    _restricted: dict[frozenset[str], str] = field(default_factory=dict)
    _revoked: dict[frozenset[str], str] = field(default_factory=dict)

    @classmethod
    def build(cls, srv: RunningServer) -> World:
        _, sk_b = create_project(srv.app.db, srv.app.clock, "project-b")
        w = cls(srv=srv, rpc=Stubs.on(srv.channel()), sk=srv.api_key, sk_b=sk_b)
        w.end_user_id = w.new_end_user()
        w.other_device_id, w.other_token = w.bound_device()
        gone_device, w.unbound_token = w.bound_device()
        w.rpc.devices.UnbindDevice(dpb.UnbindDeviceRequest(id=gone_device), metadata=auth(w.sk))
        return w

    # -- credentials ---------------------------------------------------------------------
    def restricted(self, scopes: Iterable[str]) -> str:
        """A restricted key of project A holding exactly ``scopes`` (made once, cached)."""
        wanted = frozenset(scopes)
        if wanted not in self._restricted:
            self._restricted[wanted] = self.create_key(wanted).secret
        return self._restricted[wanted]

    def restricted_without(self, scopes: Iterable[str]) -> str:
        """A restricted key holding every scope except ``scopes``."""
        rest = ALL_SCOPES - frozenset(scopes)
        return self.restricted(rest or {"recordings:read"})

    def revoked(self, scopes: Iterable[str]) -> str:
        """A restricted key holding ``scopes`` that has been revoked."""
        wanted = frozenset(scopes)
        if wanted not in self._revoked:
            created = self.create_key(wanted)
            self.rpc.keys.RevokeKey(kpb.RevokeKeyRequest(id=created.key.id),
                                    metadata=auth(self.sk))
            self._revoked[wanted] = created.secret
        return self._revoked[wanted]

    def create_key(self, scopes: Iterable[str], token: str | None = None) -> kpb.CreateKeyResponse:
        return self.rpc.keys.CreateKey(kpb.CreateKeyRequest(scopes=sorted(scopes)),
                                       metadata=auth(token or self.sk))

    def refresh(self, token: str, device_id: str = "me") -> str:
        """Refresh ``token``; return the new token (``token`` is now revoked)."""
        resp = self.rpc.devices.RefreshDeviceToken(
            dpb.RefreshDeviceTokenRequest(id=device_id), metadata=auth(token))
        return resp.device_token

    # -- resources -----------------------------------------------------------------------
    def new_end_user(self, external_id: str = "") -> str:
        return self.rpc.end_users.CreateEndUser(
            epb.CreateEndUserRequest(external_id=external_id, name="Ada"),
            metadata=auth(self.sk)).end_user.id

    def new_device(self, token: str | None = None) -> str:
        """A new unbound device of project A (or of ``token``'s project)."""
        return self.rpc.devices.CreateDevice(
            dpb.CreateDeviceRequest(serial_number="SN-1", model="tape-1"),
            metadata=auth(token or self.sk)).device.id

    def bound_device(self, end_user_id: str | None = None) -> tuple[str, str]:
        """A new device bound to an end user; (device id, its device token)."""
        device_id = self.new_device()
        resp = self.rpc.devices.BindDevice(
            dpb.BindDeviceRequest(id=device_id, end_user_id=end_user_id or self.end_user_id),
            metadata=auth(self.sk))
        return device_id, resp.device_token

    def streaming_recording(self, token: str, chunks: int = 1) -> str:
        """A streaming recording made with ``token``, holding parts 1..chunks."""
        rec = self.rpc.recordings.CreateRecording(
            rpb.CreateRecordingRequest(streaming=True, chunk_duration_ms=60_000),
            metadata=auth(token)).recording
        for part in range(1, chunks + 1):
            self.rpc.chunks.UploadChunk(chunk_messages(rec.id, part, b"chunk-%d" % part),
                                        metadata=auth(token))
        return rec.id

    def pending_recording(self, token: str) -> str:
        """A single-file recording made with ``token`` (status pending, no file yet)."""
        return self.rpc.recordings.CreateRecording(
            rpb.CreateRecordingRequest(codec=rpb.CODEC_WAV), metadata=auth(token)).recording.id

    def uploaded_file(self, token: str, complete: bool) -> str:
        """A single-file recording whose file is in the store (PUT to its presigned URL),
        optionally completed (then it has audio ready to download)."""
        rec_id = self.pending_recording(token)
        body = b"RIFF-not-really-a-wav"
        url = self.rpc.recordings.CreateUploadUrl(
            rpb.CreateUploadUrlRequest(id=rec_id, type="audio", content_type="audio/wav"),
            metadata=auth(token))
        resp = httpx.put(url.upload_url, content=body, headers=dict(url.headers))
        assert resp.status_code == 200, resp.text
        if complete:
            self.rpc.recordings.CompleteUpload(rpb.CompleteUploadRequest(id=rec_id),
                                               metadata=auth(token))
        return rec_id


# -- the access table (shared by the gRPC and REST access tests) ---------------------------
@dataclass
class Target:
    """What one case acts on: a device of project A, its live token, and maybe more."""

    device_id: str
    owner_token: str
    recording_id: str = ""
    end_user_id: str = ""
    key_id: str = ""
    transcription_id: str = ""
    webhook_id: str = ""


def bound_device(w: World) -> Target:
    return Target(*w.bound_device())


def unbound_device_with_token(w: World) -> Target:
    """An unbound device that still has a token (issued by ``tapedeck admin device-token``)."""
    device_id = w.new_device()
    _, token = w.srv.device_token(device_id)
    return Target(device_id, token)


def streaming_recording(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.streaming_recording(t.owner_token, chunks=1)
    return t


def finalized_recording(w: World) -> Target:
    """A finalized streaming recording: its transcription is queued (no worker runs here)."""
    t = streaming_recording(w)
    md = auth(t.owner_token)
    w.rpc.recordings.FinalizeRecording(rpb.FinalizeRecordingRequest(
        id=t.recording_id, total_chunks=1, final_duration_ms=900), metadata=md)
    t.transcription_id = w.rpc.recordings.GetRecording(
        rpb.GetRecordingRequest(id=t.recording_id), metadata=md).recording.transcription_id
    assert t.transcription_id.startswith("txn_")
    return t


def webhook(w: World) -> Target:
    """A webhook endpoint of project A (no dispatcher runs: nothing is delivered)."""
    t = bound_device(w)
    t.webhook_id = w.rpc.webhooks.CreateWebhook(whpb.CreateWebhookRequest(
        url="https://hooks.example.com/tapedeck", events=["recording.created"]),
        metadata=auth(w.sk)).webhook.id
    return t


def file_uploaded(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.uploaded_file(t.owner_token, complete=False)
    return t


def file_completed(w: World) -> Target:
    t = bound_device(w)
    t.recording_id = w.uploaded_file(t.owner_token, complete=True)
    return t


def end_user(w: World) -> Target:
    t = bound_device(w)
    t.end_user_id = w.new_end_user()
    return t


def api_key(w: World) -> Target:
    t = bound_device(w)
    t.key_id = w.create_key({"recordings:read"}).key.id
    return t


KINDS = ("secret", "restricted_with_scope", "restricted_without_scope", "device_owner",
         "device_other", "revoked_key", "unbound_device_token", "refreshed_away_token",
         "other_project_key")
OK, FORB, UNAUTH = "ok", "forbidden", "unauthorized"
RNF, DNF = "recording_not_found", "device_not_found"
EUNF, KNF = "end_user_not_found", "key_not_found"
TNF, WNF = "transcription_not_found", "webhook_not_found"
VPNF = "voice_profile_not_found"
#: Passed authentication, scope and visibility; refused only because the recording's audio is
#: not complete yet (the access tests run no worker, so nothing gets stitched).
NOT_READY = "invalid_state"
_401 = (UNAUTH, UNAUTH, UNAUTH)


@dataclass(frozen=True)
class Access:
    """One operation: the scopes a restricted key needs, its target, the exact outcomes."""

    scopes: frozenset[str]
    setup: Callable[[World], Target]
    expect: tuple[str, ...]  # one per KINDS

    def __post_init__(self) -> None:
        assert len(self.expect) == len(KINDS)


def _a(scopes: Iterable[str], setup: Callable[[World], Target], *expect: str) -> Access:
    return Access(frozenset(scopes), setup, expect)


R_READ, R_WRITE = {"recordings:read"}, {"recordings:write"}
D_READ, D_WRITE = {"devices:read"}, {"devices:write"}
W_READ, W_WRITE = {"webhooks:read"}, {"webhooks:write"}
#: Key management has no scope: only secret keys; "restricted with scope" holds every scope.
KEYS = set(ALL_SCOPES)

#: Outcomes per operation (named after its RPC), in KINDS order: secret key, restricted key
#: with / without the scope, device token of the owner / of another device of the project,
#: revoked key, token of an unbound device, refreshed-away token, another project's key.
#: ``forbidden`` is a missing scope, decided before any lookup (it reveals nothing); another
#: device's or project's existing resource answers ``*_not_found``.
ACCESS: dict[str, Access] = {
    # recordings and chunks                          sk  rk+ rk-   own   other
    "CreateRecording": _a(R_WRITE, bound_device, OK, OK, FORB, OK, OK, *_401, DNF),
    "GetRecording": _a(R_READ, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "ListRecordings": _a(R_READ, streaming_recording, OK, OK, FORB, OK, OK, *_401, OK),
    "FinalizeRecording": _a(R_WRITE, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "DeleteRecording": _a(R_WRITE, streaming_recording, OK, OK, FORB, FORB, FORB, *_401, RNF),
    "CreateUploadUrl": _a(R_WRITE, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "CompleteUpload": _a(R_WRITE, file_uploaded, OK, OK, FORB, OK, RNF, *_401, RNF),
    "CreateDownloadUrl": _a(R_READ, file_completed, OK, OK, FORB, OK, RNF, *_401, RNF),
    # REST only (the console's player): the stitched audio itself, with Range
    "GetRecordingAudio": _a(R_READ, file_completed, OK, OK, FORB, OK, RNF, *_401, RNF),
    # REST only (the console's "Re-run stitching"): a streaming recording has not failed
    "RestitchRecording": _a(R_WRITE, streaming_recording, NOT_READY, NOT_READY, FORB, FORB,
                            FORB, *_401, RNF),
    "UploadChunk": _a(R_WRITE, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "ListChunks": _a(R_READ, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "CreateChunkUploadUrl": _a(R_WRITE, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    "DeleteChunk": _a(R_WRITE, streaming_recording, OK, OK, FORB, OK, RNF, *_401, RNF),
    # transcriptions (a device token reads its own recordings' transcripts)
    "CreateTranscription": _a({"transcriptions:write"}, streaming_recording, NOT_READY,
                              NOT_READY, FORB, FORB, FORB, *_401, RNF),
    "GetTranscription": _a({"transcriptions:read"}, finalized_recording, OK, OK, FORB, OK,
                           TNF, *_401, TNF),
    # search: a device token finds only its own device's recordings, another credential of the
    # project or another project finds nothing (an empty page, never an error that leaks)
    "WatchTranscription": _a({"transcriptions:read"}, finalized_recording, OK, OK, FORB, OK,
                             TNF, *_401, TNF),
    "SearchTranscripts": _a({"transcriptions:read"}, finalized_recording, OK, OK, FORB, OK,
                            OK, *_401, OK),
    # webhooks                                       sk  rk+ rk-   own   other
    "CreateWebhook": _a(W_WRITE, bound_device, OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetWebhook": _a(W_READ, webhook, OK, OK, FORB, FORB, FORB, *_401, WNF),
    "ListWebhooks": _a(W_READ, webhook, OK, OK, FORB, FORB, FORB, *_401, OK),
    "DeleteWebhook": _a(W_WRITE, webhook, OK, OK, FORB, FORB, FORB, *_401, WNF),
    "ListWebhookDeliveries": _a(W_READ, webhook, OK, OK, FORB, FORB, FORB, *_401, WNF),
    "ReplayWebhookEvents": _a(W_WRITE, webhook, OK, OK, FORB, FORB, FORB, *_401, WNF),
    # devices                                        sk  rk+ rk-   own   other
    "CreateDevice": _a(D_WRITE, bound_device, OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetDevice": _a(D_READ, bound_device, OK, OK, FORB, FORB, FORB, *_401, DNF),
    "BindDevice": _a(D_WRITE, unbound_device_with_token, OK, OK, FORB, FORB, FORB, *_401, DNF),
    "UnbindDevice": _a(D_WRITE, bound_device, OK, OK, FORB, FORB, FORB, *_401, DNF),
    "RefreshDeviceToken": _a(D_WRITE, bound_device, FORB, FORB, FORB, OK, DNF, *_401, FORB),
    "SendHeartbeat": _a(D_WRITE, bound_device, OK, OK, FORB, OK, DNF, *_401, DNF),
    "ListDevices": _a(D_READ, bound_device, OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetDeviceSettings": _a(D_READ, bound_device, OK, OK, FORB, FORB, FORB, *_401, DNF),
    "UpdateDeviceSettings": _a(D_WRITE, bound_device, OK, OK, FORB, FORB, FORB, *_401, DNF),
    # end users                                      sk  rk+ rk-   own   other
    "CreateEndUser": _a({"end_users:write"}, bound_device, OK, OK, FORB, FORB, FORB, *_401, OK),
    "GetEndUser": _a({"end_users:read"}, end_user, OK, OK, FORB, FORB, FORB, *_401, EUNF),
    # voice profiles (enrolling from a recording that does not exist: past every access check)
    "CreateVoiceProfile": _a({"end_users:write"}, end_user, RNF, RNF, FORB, FORB, FORB, *_401,
                             EUNF),
    "ListVoiceProfiles": _a({"end_users:read"}, end_user, OK, OK, FORB, FORB, FORB, *_401, EUNF),
    "DeleteVoiceProfile": _a({"end_users:write"}, end_user, VPNF, VPNF, FORB, FORB, FORB, *_401,
                             VPNF),
    "DeleteEndUser": _a({"end_users:write"}, end_user, OK, OK, FORB, FORB, FORB, *_401, EUNF),
    # keys                                           sk  rk+ rk-   own   other
    "CreateKey": _a(KEYS, bound_device, OK, FORB, FORB, FORB, FORB, *_401, OK),
    "ListKeys": _a(KEYS, bound_device, OK, FORB, FORB, FORB, FORB, *_401, OK),
    "RevokeKey": _a(KEYS, api_key, OK, FORB, FORB, FORB, FORB, *_401, KNF),
}


def credential(w: World, kind: str, access: Access, t: Target) -> str:
    """The bearer secret of ``kind`` for a case acting on ``t``."""
    if kind == "refreshed_away_token":  # the owner's own token, replaced by a refresh
        old, t.owner_token = t.owner_token, w.refresh(t.owner_token)
        return old
    by_kind: dict[str, Callable[[], str]] = {
        "secret": lambda: w.sk,
        "restricted_with_scope": lambda: w.restricted(access.scopes),
        "restricted_without_scope": lambda: w.restricted_without(access.scopes),
        "device_owner": lambda: t.owner_token,
        "device_other": lambda: w.other_token,
        "revoked_key": lambda: w.revoked(access.scopes),
        "unbound_device_token": lambda: w.unbound_token,
        "other_project_key": lambda: w.sk_b,
    }
    return by_kind[kind]()


def cases(names: Iterable[str]) -> list[tuple[str, str, str]]:
    """(operation, credential kind, expected outcome) for every kind of each operation."""
    return [(name, kind, expected) for name in names
            for kind, expected in zip(KINDS, ACCESS[name].expect, strict=True)]
