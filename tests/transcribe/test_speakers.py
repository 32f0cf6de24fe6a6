"""Speakers end to end: real voices (``voicekit``: Asterisk prompts of different people)
uploaded like a device does, transcribed by the real worker (whisper-base + diarization),
read over REST and gRPC; voice profiles enrolled, matched, isolated per project, deleted.
One server (one loaded model) serves the module: CPU is scarce, so audio stays short."""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np
import pytest

from tapedeck.auth import create_project
from tapedeck.v1 import end_user_pb2 as epb
from tapedeck.v1 import end_user_pb2_grpc, transcription_pb2_grpc
from tapedeck.v1 import transcription_pb2 as tpb

import voicekit as vk
from serverkit import RunningServer, auth
from txnkit import (
    device_chunks,
    events,
    get_json,
    rest,
    upload_grpc,
    wait_for,
    wait_transcribed,
    words,
)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _upload(srv: RunningServer, conv: vk.Conversation) -> str:
    chunks, duration = device_chunks(_pcm16(conv.pcm), 20_000)
    _, token = srv.device_token()
    return upload_grpc(srv, token, chunks, duration)


def _transcribe(srv: RunningServer, rec_id: str, body: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    with rest(srv) as c:
        resp = c.post(f"/v1/recordings/{rec_id}/transcribe", json=body or {})
    assert resp.status_code == 201, resp.text
    return wait_transcribed(srv, rec_id)[1]


def _end_user(srv: RunningServer, token: str | None = None) -> str:
    with rest(srv, token) as c:
        resp = c.post("/v1/end-users", json={"name": "wearer"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


@pytest.fixture(scope="module")
def two_voices(srv: RunningServer) -> tuple[vk.Conversation, str, dict[str, Any]]:
    """Allison and Carlo, four turns of 4-10 s; transcribed at finalize."""
    conv = vk.conversation(["allison", "carlo"], 4, 31, min_turn=4, max_turn=10)
    rec_id = _upload(srv, conv)
    _, txn = wait_transcribed(srv, rec_id)
    assert txn["status"] == "completed", txn["error"]
    return conv, rec_id, txn


def test_every_segment_and_word_gets_its_speaker(
        srv: RunningServer, two_voices: tuple[vk.Conversation, str, dict[str, Any]]) -> None:
    conv, rec_id, txn = two_voices
    assert [s["label"] for s in txn["speakers"]] == ["S1", "S2"]
    assert all(s["end_user_id"] is None and s["talk_time_ms"] > 2000 for s in txn["speakers"])
    ws = words(txn)
    assert ws and all(w["speaker"] in ("S1", "S2") for w in ws)
    assert all(s["speaker"] == s["words"][0]["speaker"] for s in txn["segments"] if s["words"])
    assert all(len({w["speaker"] for w in s["words"]}) == 1 for s in txn["segments"])
    # Words land on the voice that spoke them (S1 = the voice of the first turn).
    names = {conv.voices[0]: "S1", conv.voices[1]: "S2"}
    right = 0
    for w in ws:
        mid = (w["start_ms"] + w["end_ms"]) / 2000
        voice = next((v for a, b, v in conv.turns if a <= mid < b), None)
        right += voice is not None and names[voice] == w["speaker"]
    assert right >= 0.9 * len(ws), (right, len(ws))
    # The webhook payload says how many speakers were found.
    done = [d for t, d in events(srv, rec_id) if t == "transcription.completed"]
    assert done[-1]["speaker_count"] == 2
    # gRPC answers the same labels.
    stub = transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())
    got = stub.GetTranscription(tpb.GetTranscriptionRequest(id=txn["id"]),
                                metadata=auth(srv.api_key)).transcription
    assert [(s.label, s.talk_time_ms) for s in got.speakers] == [
        (s["label"], s["talk_time_ms"]) for s in txn["speakers"]]
    assert [w.speaker for s in got.segments for w in s.words] == [w["speaker"] for w in ws]


def test_options_turn_it_off_and_are_validated(
        srv: RunningServer, two_voices: tuple[vk.Conversation, str, dict[str, Any]]) -> None:
    _, rec_id, _ = two_voices
    with rest(srv) as c:
        bad = c.post(f"/v1/recordings/{rec_id}/transcribe",
                     json={"min_speakers": 3, "max_speakers": 2})
        assert bad.status_code == 400
        assert (bad.json()["error"]["type"], bad.json()["error"]["field"]) == (
            "invalid_request", "min_speakers")
        bad = c.post(f"/v1/recordings/{rec_id}/transcribe", json={"speakers_expected": 0})
        assert bad.status_code == 400
    off = _transcribe(srv, rec_id, {"diarize": False})
    assert off["speakers"] is None
    assert all(s["speaker"] is None for s in off["segments"])
    done = [d for t, d in events(srv, rec_id) if t == "transcription.completed"]
    assert "speaker_count" not in done[-1]
    # gRPC twin: one speaker forced.
    stub = transcription_pb2_grpc.TranscriptionServiceStub(srv.channel())
    made = stub.CreateTranscription(tpb.CreateTranscriptionRequest(
        recording_id=rec_id, max_speakers=1), metadata=auth(srv.api_key)).transcription
    txn = wait_for(lambda: (lambda t: t if t["status"] == "completed" else None)(
        get_json(srv, f"/v1/transcriptions/{made.id}")), 600, "the transcription")
    assert [s["label"] for s in txn["speakers"]] == ["S1"]


def _span_of(conv: vk.Conversation, voice: str) -> tuple[int, int]:
    a, b, _ = next(t for t in conv.turns if t[2] == voice)
    return int(a * 1000), int(b * 1000)


def test_an_enrolled_wearer_is_recognized_and_deleting_stops_it(
        srv: RunningServer, two_voices: tuple[vk.Conversation, str, dict[str, Any]]) -> None:
    conv, rec_id, _ = two_voices
    wearer = _end_user(srv)
    start, end = _span_of(conv, "allison")
    base = f"/v1/end-users/{wearer}/voice-profiles"
    with rest(srv) as c:
        resp = c.post(base, json={"recording_id": rec_id, "start_ms": start, "end_ms": end})
        assert resp.status_code == 201, resp.text
        profile = resp.json()
        assert profile["source"] == "recording" and profile["speech_ms"] >= 3000
        assert [p["id"] for p in c.get(base).json()["data"]] == [profile["id"]]

    # A new recording where Allison speaks (other prompts, other turns): her speaker is
    # the wearer; Carlo's is nobody.
    new = vk.conversation(["carlo", "allison"], 4, 32, min_turn=6, max_turn=12)
    txn = wait_transcribed(srv, _upload(srv, new))[1]
    by_label = {s["label"]: s["end_user_id"] for s in txn["speakers"]}
    allison = "S1" if new.voices[0] == "allison" else "S2"
    assert by_label == {allison: wearer, ("S2" if allison == "S1" else "S1"): None}

    # A recording without her: no match.
    other = vk.conversation(["june", "carlo"], 4, 33, min_turn=6, max_turn=12)
    other_id = _upload(srv, other)
    txn = wait_transcribed(srv, other_id)[1]
    # (the count itself is test_diarize's concern: June and Carlo are sometimes split in 3)
    assert txn["speakers"] and all(s["end_user_id"] is None for s in txn["speakers"])

    # Another project can neither see nor use the profile.
    _, other_key = create_project(srv.app.db, srv.app.clock, "other")
    with rest(srv, other_key) as c:
        resp = c.get(base)
        assert (resp.status_code, resp.json()["error"]["type"]) == (404, "end_user_not_found")
        resp = c.delete(f"{base}/{profile['id']}")
        assert resp.status_code == 404

    # Deleting the profile removes the embedding and stops the match.
    with rest(srv) as c:
        resp = c.delete(f"{base}/{profile['id']}")
        assert resp.json() == {"id": profile["id"], "deleted": True}
        assert c.get(base).json()["data"] == []
        again = c.delete(f"{base}/{profile['id']}")
        assert (again.status_code, again.json()["error"]["type"]) == (
            404, "voice_profile_not_found")
    count = srv.app.db.read().execute("SELECT COUNT(*) FROM voice_profiles WHERE id = ?",
                                      [profile["id"]]).fetchone()[0]
    assert count == 0
    txn = _transcribe(srv, rec_id)
    assert all(s["end_user_id"] is None for s in txn["speakers"])


def _wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(vk.RATE)
        w.writeframes(_pcm16(x))
    return buf.getvalue()


def test_enroll_from_an_uploaded_sample_over_grpc_and_rest(srv: RunningServer) -> None:
    user = _end_user(srv)
    sample = vk.conversation(["june"], 1, 34, min_turn=6, max_turn=8)
    stub = end_user_pb2_grpc.EndUserServiceStub(srv.channel())
    made = stub.CreateVoiceProfile(epb.CreateVoiceProfileRequest(
        end_user_id=user, sample=_wav(sample.pcm)), metadata=auth(srv.api_key)).voice_profile
    assert made.source == "upload" and made.speech_ms >= 3000
    second = stub.CreateVoiceProfile(epb.CreateVoiceProfileRequest(
        end_user_id=user, sample=_wav(sample.pcm)), metadata=auth(srv.api_key)).voice_profile
    first = stub.ListVoiceProfiles(epb.ListVoiceProfilesRequest(end_user_id=user, page_size=1),
                                   metadata=auth(srv.api_key))
    assert [v.id for v in first.voice_profiles] == [made.id] and first.next_page_token
    rest_page = stub.ListVoiceProfiles(epb.ListVoiceProfilesRequest(
        end_user_id=user, page_size=1, page_token=first.next_page_token),
        metadata=auth(srv.api_key))
    assert [v.id for v in rest_page.voice_profiles] == [second.id]
    assert rest_page.next_page_token == ""
    with rest(srv) as c:
        page = c.get(f"/v1/end-users/{user}/voice-profiles", params={"limit": 1}).json()
        assert [v["id"] for v in page["data"]] == [made.id] and page["has_more"]
        page = c.get(f"/v1/end-users/{user}/voice-profiles",
                     params={"limit": 1, "cursor": page["next_cursor"]}).json()
        assert [v["id"] for v in page["data"]] == [second.id]
        assert (page["has_more"], page["next_cursor"]) == (False, None)
    stub.DeleteVoiceProfile(epb.DeleteVoiceProfileRequest(end_user_id=user, id=second.id),
                            metadata=auth(srv.api_key))
    with rest(srv) as c:
        short = c.post(f"/v1/end-users/{user}/voice-profiles", content=_wav(sample.pcm[:16000]),
                       headers={"Content-Type": "audio/wav"})
        assert short.status_code == 400 and short.json()["error"]["field"] == "audio"
        junk = c.post(f"/v1/end-users/{user}/voice-profiles", content=b"not audio" * 100,
                      headers={"Content-Type": "application/octet-stream"})
        assert junk.status_code == 400 and junk.json()["error"]["field"] == "audio"
    stub.DeleteVoiceProfile(epb.DeleteVoiceProfileRequest(end_user_id=user, id=made.id),
                            metadata=auth(srv.api_key))
    assert not stub.ListVoiceProfiles(epb.ListVoiceProfilesRequest(end_user_id=user),
                                      metadata=auth(srv.api_key)).voice_profiles


def test_deleting_an_end_user_deletes_their_voice_and_keeps_their_recordings(
        srv: RunningServer, two_voices: tuple[vk.Conversation, str, dict[str, Any]]) -> None:
    conv, rec_id, _ = two_voices
    wearer, bystander = _end_user(srv), _end_user(srv)
    start, end = _span_of(conv, "allison")
    june = vk.conversation(["june"], 1, 35, min_turn=6, max_turn=8)
    with rest(srv) as c:
        resp = c.post(f"/v1/end-users/{wearer}/voice-profiles",
                      json={"recording_id": rec_id, "start_ms": start, "end_ms": end})
        assert resp.status_code == 201, resp.text
        resp = c.post(f"/v1/end-users/{bystander}/voice-profiles", content=_wav(june.pcm),
                      headers={"Content-Type": "audio/wav"})
        assert resp.status_code == 201, resp.text
        device = c.post("/v1/devices", json={"serial_number": "del-1"}).json()["id"]
        bound = c.post(f"/v1/devices/{device}/bind", json={"end_user_id": wearer})
        assert bound.status_code == 200, bound.text
        token = bound.json()["device_token"]
        own = c.post("/v1/recordings", json={"end_user_id": wearer, "streaming": True}).json()
    # A transcript whose speaker names the wearer.
    txn = _transcribe(srv, rec_id)
    assert wearer in [s["end_user_id"] for s in txn["speakers"]]

    with rest(srv) as c:
        resp = c.delete(f"/v1/end-users/{wearer}")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"id": wearer, "deleted": True, "voice_profiles_deleted": 1,
                               "recordings_unbound": 1, "devices_unbound": 1,
                               "transcripts_unnamed": 1}
        gone = c.get(f"/v1/end-users/{wearer}")
        assert (gone.status_code, gone.json()["error"]["type"]) == (404, "end_user_not_found")
        again = c.delete(f"/v1/end-users/{wearer}")
        assert (again.status_code, again.json()["error"]["type"]) == (404, "end_user_not_found")
        # The recordings and the transcript stay, without the person.
        assert c.get(f"/v1/recordings/{own['id']}").json()["end_user_id"] is None
        after = c.get(f"/v1/transcriptions/{txn['id']}").json()
        assert after["text"] == txn["text"]
        assert all(s["end_user_id"] is None for s in after["speakers"])
        assert c.get(f"/v1/devices/{device}").json()["status"] == "unbound"
    with rest(srv, token) as c:  # the device's token went with the binding
        assert c.get(f"/v1/recordings/{own['id']}").status_code == 401
    db = srv.app.db.read()
    assert db.execute("SELECT COUNT(*) FROM voice_profiles WHERE end_user_id = ?",
                      [wearer]).fetchone()[0] == 0

    # Only the wearer's embedding went; then the gRPC twin deletes the bystander's.
    assert db.execute("SELECT COUNT(*) FROM voice_profiles WHERE end_user_id = ?",
                      [bystander]).fetchone()[0] == 1
    stub = end_user_pb2_grpc.EndUserServiceStub(srv.channel())
    done = stub.DeleteEndUser(epb.DeleteEndUserRequest(id=bystander),
                              metadata=auth(srv.api_key))
    assert (done.id, done.voice_profiles_deleted, done.recordings_unbound) == (bystander, 1, 0)
    assert db.execute("SELECT COUNT(*) FROM end_users WHERE id IN (?, ?)",
                      [wearer, bystander]).fetchone()[0] == 0
