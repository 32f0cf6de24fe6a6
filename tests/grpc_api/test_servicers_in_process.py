"""RecordingService and ChunkService in process (``grpc_testing``, no socket) over the real
domain on MemoryStore: requests translate to domain calls, domain errors to rich statuses
(code from the ONE error table and the domain's message), anything else to a fixed
INTERNAL. ``grpc_testing`` drops trailing metadata on abort, so the ``ErrorInfo`` details
are checked over a real socket (tests/grpc_api/test_streaming_flow.py, tests/gateway).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc_testing
import pytest

from tapedeck.errors import error
from tapedeck.grpc_api.servicers import ChunkServicer, RecordingServicer
from tapedeck.v1 import chunk_pb2 as cpb
from tapedeck.v1 import recording_pb2 as pb

from domainkit import World

RECORDINGS = pb.DESCRIPTOR.services_by_name["RecordingService"]
CHUNKS = cpb.DESCRIPTOR.services_by_name["ChunkService"]


@dataclass
class Ended:
    """How a call ended: the response (None on error), status code and details."""

    response: Any
    code: grpc.StatusCode
    details: str


class Calls:
    """The two services of one domain behind a ``grpc_testing`` server."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.server = grpc_testing.server_from_dictionary(
            {RECORDINGS: RecordingServicer(world.domain), CHUNKS: ChunkServicer(world.domain)},
            grpc_testing.strict_real_time())

    def _md(self, token: str | None) -> tuple[tuple[str, str], ...]:
        return () if token == "" else (("authorization",
                                        f"Bearer {token or self.world.api_key}"),)

    def unary(self, service: Any, method: str, request: Any,
              token: str | None = None) -> Ended:
        rpc = self.server.invoke_unary_unary(service.methods_by_name[method],
                                             self._md(token), request, None)
        response, _trailing, code, details = rpc.termination()
        return Ended(response if code == grpc.StatusCode.OK else None, code, details)

    def upload(self, messages: Iterator[cpb.UploadChunkRequest],
               token: str | None = None) -> Ended:
        rpc = self.server.invoke_stream_unary(CHUNKS.methods_by_name["UploadChunk"],
                                              self._md(token), None)
        for message in messages:
            rpc.send_request(message)
        rpc.requests_closed()
        response, _trailing, code, details = rpc.termination()
        return Ended(response if code == grpc.StatusCode.OK else None, code, details)


@pytest.fixture
def calls(domain_world: World) -> Calls:
    return Calls(domain_world)


def _chunk(recording_id: str, part: int, data: bytes,
           md5: str | None = None) -> Iterator[cpb.UploadChunkRequest]:
    yield cpb.UploadChunkRequest(header=cpb.ChunkHeader(
        recording_id=recording_id, part=part, md5=md5 or hashlib.md5(data).hexdigest(),
        size_bytes=len(data)))
    for i in range(0, len(data), 4):
        yield cpb.UploadChunkRequest(data=data[i:i + 4])


def _expect(ended: Ended, type_: str, match: str) -> None:
    """The call failed with the code the error table gives ``type_``, and the domain's
    message (``match``, a regular expression)."""
    assert (ended.response, ended.code) == (None, error(type_).kind.grpc_code), ended.details
    assert re.search(match, ended.details), ended.details


def test_create_get_list_round_trip(calls: Calls) -> None:
    made = calls.unary(RECORDINGS, "CreateRecording", pb.CreateRecordingRequest(
        streaming=True, codec=pb.CODEC_OPUS, name="kitchen", chunk_duration_ms=5_000,
        metadata={"room": "2"}))
    assert made.code == grpc.StatusCode.OK
    rec = made.response.recording
    assert rec.status == pb.RECORDING_STATUS_STREAMING and rec.name == "kitchen"
    assert "/chunks/{part}?token=up_" in rec.chunk_upload_url_template
    stored = calls.world.domain.recordings.get(calls.world.principal(), rec.id)
    assert (stored.name, stored.metadata, stored.chunk_duration_ms) == (
        "kitchen", {"room": "2"}, 5_000)
    got = calls.unary(RECORDINGS, "GetRecording", pb.GetRecordingRequest(id=rec.id))
    assert (got.response.recording.id, got.response.recording.metadata) == (rec.id, rec.metadata)
    listed = calls.unary(RECORDINGS, "ListRecordings", pb.ListRecordingsRequest(page_size=10))
    assert [r.id for r in listed.response.recordings] == [rec.id]


def test_upload_stream_then_finalize(calls: Calls) -> None:
    rec = calls.world.streaming()
    first = calls.upload(_chunk(rec.id, 1, b"first chunk"))
    again = calls.upload(_chunk(rec.id, 1, b"first chunk"))
    assert (first.response.already_stored, again.response.already_stored) == (False, True)
    assert first.response.chunk.md5 == hashlib.md5(b"first chunk").hexdigest()
    done = calls.unary(RECORDINGS, "FinalizeRecording", pb.FinalizeRecordingRequest(
        id=rec.id, total_chunks=1, final_duration_ms=1_000,
        checksum_md5=hashlib.md5(b"first chunk").hexdigest()))
    assert done.code == grpc.StatusCode.OK
    assert calls.world.domain.recordings.get(calls.world.principal(), rec.id).status \
        == "uploaded"


def test_errors_carry_the_tables_code_and_the_domain_message(calls: Calls) -> None:
    _expect(calls.unary(RECORDINGS, "GetRecording", pb.GetRecordingRequest(id="rec_x"),
                        token=""), "unauthorized", "(?i)authorization|credential|token")
    _expect(calls.unary(RECORDINGS, "GetRecording", pb.GetRecordingRequest(id="rec_nope")),
            "recording_not_found", "(?i)not found")
    _expect(calls.unary(RECORDINGS, "CreateRecording", pb.CreateRecordingRequest(
        streaming=True, codec=pb.CODEC_OPUS, chunk_duration_ms=999)), "invalid_request",
        "chunk_duration_ms must be at least 1000")
    rec = calls.world.streaming()
    _expect(calls.upload(_chunk(rec.id, 1, b"bytes", md5="0" * 32)), "checksum_mismatch",
            "md5 does not match its bytes; nothing was stored")
    assert list(calls.world.store.list("recordings/")) == []
    _expect(calls.unary(RECORDINGS, "FinalizeRecording", pb.FinalizeRecordingRequest(
        id=rec.id, total_chunks=2, final_duration_ms=1)), "chunk_mismatch",
        "expected parts 1..2, 2 missing")


def test_upload_without_header_or_checksum_is_invalid(calls: Calls) -> None:
    rec = calls.world.streaming()
    _expect(calls.upload(iter([cpb.UploadChunkRequest(data=b"x")])), "invalid_request",
            "first UploadChunk message must carry the header")
    _expect(calls.upload(iter([
        cpb.UploadChunkRequest(header=cpb.ChunkHeader(recording_id=rec.id, part=1)),
        cpb.UploadChunkRequest(data=b"x")])), "invalid_request", "Send the chunk's md5")


def test_idempotency_key_replays_and_refuses_reuse(calls: Calls) -> None:
    req = pb.CreateRecordingRequest(streaming=True, codec=pb.CODEC_OPUS, name="a",
                                    idempotency_key="k-1")
    first = calls.unary(RECORDINGS, "CreateRecording", req)
    replay = calls.unary(RECORDINGS, "CreateRecording", req)
    assert replay.response.recording.id == first.response.recording.id
    assert len(calls.world.domain.recordings.list(calls.world.principal()).data) == 1
    other = pb.CreateRecordingRequest(streaming=True, codec=pb.CODEC_OPUS, name="b",
                                      idempotency_key="k-1")
    _expect(calls.unary(RECORDINGS, "CreateRecording", other), "idempotency_key_reused",
            "(?i)different request|reused|another request")


def test_an_unexpected_failure_is_a_fixed_internal_error(calls: Calls) -> None:
    with calls.world.db.write() as tx:  # a real fault below the domain: a broken schema
        tx.execute("DROP TABLE recordings" + (" CASCADE" if tx.dialect == "postgresql" else ""))
    ended = calls.unary(RECORDINGS, "ListRecordings", pb.ListRecordingsRequest())
    assert ended.code == grpc.StatusCode.INTERNAL
    assert ended.details == error("internal_error").message
