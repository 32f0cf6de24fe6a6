"""Live and whole-file transcripts of the same audio carry the same speakers (issues 13 + 14).

A live transcript is assembled from pieces made while the recording streamed; its speakers
come from the same single diarization over the stitched audio as a whole-file transcript
(``TranscribeHandler._label_live``). Here a two-voice conversation of real recordings
(``voicekit``: Allison and Carlo) streams in 10 s chunks with live transcription on, then the
same recording is transcribed again as a whole file: the speakers list is the same and every
word that both transcripts hold at the same moment carries the same label.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voicekit as vk
from serverkit import RunningServer, start_server
from txnkit import (
    device_chunks,
    drop_bucket,
    pipeline_settings,
    rest,
    upload_grpc,
    wait_transcribed,
    words,
)


@pytest.fixture(scope="module")
def srv(weed: Any, whisper_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = pipeline_settings(weed, tmp_path_factory.mktemp("live-spk") / "data",
                                 whisper_dir, live_transcription=True)
    server = start_server(settings, roles=("grpc", "http", "worker"))
    try:
        yield server
    finally:
        server.close()
        drop_bucket(weed, settings.s3_bucket)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _labels_by_word(txn: dict[str, Any]) -> dict[tuple[str, int], str]:
    """Each word's speaker, keyed by its normalized text and its midpoint in 100 ms units."""
    return {(w["word"].strip(" .,?!").lower(), (w["start_ms"] + w["end_ms"]) // 200):
            w["speaker"] for w in words(txn)}


def test_live_and_whole_file_transcripts_have_the_same_speakers(srv: RunningServer) -> None:
    conv = vk.conversation(["allison", "carlo"], 4, 31, min_turn=4, max_turn=10)
    chunks, duration = device_chunks(_pcm16(conv.pcm), 10_000)
    assert len(chunks) >= 3  # boundaries inside the conversation
    _, token = srv.device_token()
    rec_id = upload_grpc(srv, token, chunks, duration)
    _, live = wait_transcribed(srv, rec_id)
    assert live["status"] == "completed", live["error"]
    assert live.get("live") is True  # made from the pieces
    assert [s["label"] for s in live["speakers"]] == ["S1", "S2"]

    with rest(srv) as c:
        resp = c.post(f"/v1/recordings/{rec_id}/transcribe", json={})
    assert resp.status_code == 201, resp.text
    _, whole = wait_transcribed(srv, rec_id)
    assert whole["status"] == "completed" and whole["id"] != live["id"]
    assert not whole.get("live")

    assert [(s["label"], s["end_user_id"]) for s in whole["speakers"]] == [
        (s["label"], s["end_user_id"]) for s in live["speakers"]]
    for a, b in zip(whole["speakers"], live["speakers"], strict=True):
        assert abs(a["talk_time_ms"] - b["talk_time_ms"]) <= 0.1 * a["talk_time_ms"], (a, b)
    live_labels, whole_labels = _labels_by_word(live), _labels_by_word(whole)
    shared = live_labels.keys() & whole_labels.keys()
    assert len(shared) >= 0.5 * len(whole_labels), (len(shared), len(whole_labels))
    same = sum(live_labels[k] == whole_labels[k] for k in shared)
    assert same == len(shared), [(k, live_labels[k], whole_labels[k]) for k in shared
                                 if live_labels[k] != whole_labels[k]]
