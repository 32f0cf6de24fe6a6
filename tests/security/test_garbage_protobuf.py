"""Garbage protobuf bytes to any RPC answer INVALID_ARGUMENT with the ``invalid_request``
error type (issue 15 item 6), not INTERNAL "Exception deserializing request!"."""

from __future__ import annotations

import grpc
import pytest

from tapedeck.grpc_api.server import SERVICE_NAMES
from tapedeck.rpc_errors import from_rpc_error
from tapedeck.v1 import recording_pb2

from serverkit import RunningServer, auth

# Field 1 announced as a 100-byte length-delimited value with only 2 bytes behind it.
GARBAGE = b"\x0a\x64\x01\x02"


def _identity(b: bytes) -> bytes:
    return b


def _methods() -> list[tuple[str, bool]]:
    """(full method path, client streams?) for every method of every Tapedeck service."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    out = []
    for name in SERVICE_NAMES:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            out.append((f"/{name}/{m.name}", m.client_streaming))
    return out


def _assert_invalid_request(err: grpc.RpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    typed = from_rpc_error(err)
    assert typed.type == "invalid_request"
    assert "protobuf" in typed.message.lower()


def test_every_unary_request_method_refuses_garbage(server: RunningServer) -> None:
    channel = server.channel()
    methods = _methods()
    assert len(methods) > 10
    for path, client_streaming in methods:
        if client_streaming:
            call = channel.stream_unary(path, request_serializer=_identity,
                                        response_deserializer=_identity)
            request = iter([GARBAGE])
        else:
            call = channel.unary_unary(path, request_serializer=_identity,
                                       response_deserializer=_identity)
            request = GARBAGE
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=auth(server.api_key), timeout=10)
        _assert_invalid_request(caught.value)


def test_garbage_after_a_valid_message_in_a_stream(server: RunningServer) -> None:
    """A chunk upload whose second message is garbage fails typed, and stores nothing."""
    from tapedeck.v1 import chunk_pb2

    _, token = server.device_token()
    rec = server.recordings().CreateRecording(
        recording_pb2.CreateRecordingRequest(streaming=True, chunk_duration_ms=60_000),
        metadata=auth(token)).recording
    header = chunk_pb2.UploadChunkRequest(header=chunk_pb2.ChunkHeader(
        recording_id=rec.id, part=1, md5="0" * 32)).SerializeToString()
    path = f"/{chunk_pb2.DESCRIPTOR.services_by_name['ChunkService'].full_name}/UploadChunk"
    call = server.channel().stream_unary(path, request_serializer=_identity,
                                         response_deserializer=_identity)
    with pytest.raises(grpc.RpcError) as caught:
        call(iter([header, GARBAGE]), metadata=auth(token), timeout=10)
    _assert_invalid_request(caught.value)
    assert [o.key for o in server.app.store.list("") if rec.id in o.key] == []


def test_health_and_reflection_refuse_garbage_too(server: RunningServer) -> None:
    call = server.channel().unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=_identity,
                                        response_deserializer=_identity)
    with pytest.raises(grpc.RpcError) as caught:
        call(GARBAGE, timeout=10)
    _assert_invalid_request(caught.value)
