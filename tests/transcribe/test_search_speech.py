"""Search and exports on REAL transcripts: real recorded speech (Asterisk prompts) uploaded
like a device does to a real server whose worker transcribes it with whisper-base; the
completion transaction indexes it. A phrase said at a known time is found at that time (with
stemming), re-transcription replaces the indexed transcript, deleting the recording removes
it, and the SRT/WebVTT exports parse with kept parsers with cue times matching the segments.

Short on purpose (four prompts, ~12 s of audio, transcribed twice): the CPU is shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import srt
import webvtt

import asterisk_speech as speech
from serverkit import RunningServer
from txnkit import (
    device_chunks,
    pcm16,
    rest,
    upload_rest,
    wait_for,
    wait_transcribed,
)

PROMPTS = ("cannot-complete-as-dialed", "conf-now-recording", "dir-nomatch",
           "number-not-answering")
PAUSE_S = 1.2


def _spans_ms() -> list[tuple[int, int]]:
    """Where each prompt's audible speech starts and ends in the track."""
    spans, at = [], 0
    for name in PROMPTS:
        pcm = speech.read_prompt(name)
        loud = np.flatnonzero(np.abs(pcm) > 0.02)
        spans.append(((at + int(loud[0])) * 1000 // speech.RATE,
                      (at + int(loud[-1])) * 1000 // speech.RATE))
        at += len(pcm) + int(PAUSE_S * speech.RATE)
    return spans


def _search(srv: RunningServer, q: str, token: str | None = None) -> list[dict[str, Any]]:
    with rest(srv, token) as c:
        r = c.get("/v1/search", params={"q": q})
    assert r.status_code == 200, r.text
    hits: list[dict[str, Any]] = r.json()["data"]
    return hits


def _word_at(txn: dict[str, Any], hit: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """The hit segment's word whose text is ``hit.text[start:end]``."""
    seg = txn["segments"][hit["segment_index"]]
    target = hit["text"][start:end].lower()
    return next(w for w in seg["words"] if target in w["word"].lower())


def test_real_speech_is_found_at_the_time_it_was_said(srv: RunningServer) -> None:
    samples, _ = speech.speech_track(PROMPTS, pause_s=PAUSE_S)
    chunks, duration = device_chunks(pcm16(samples), 20_000)
    _, token = srv.device_token()
    rec_id = upload_rest(srv, token, chunks, duration)
    rec, txn = wait_transcribed(srv, rec_id)
    assert txn["status"] == "completed", txn["error"]
    spans = _spans_ms()

    # "recordings" finds "...is now being recorded" (stemming), at the time it was said
    [hit] = _search(srv, "recordings")
    assert (hit["recording_id"], hit["transcription_id"]) == (rec_id, txn["id"])
    seg = txn["segments"][hit["segment_index"]]
    assert (hit["start_ms"], hit["end_ms"], hit["text"]) == (
        seg["start_ms"], seg["end_ms"], seg["text"].strip())
    [m] = hit["matches"]
    word = _word_at(txn, hit, m["start"], m["end"])
    said_from, said_to = spans[1]
    assert said_from - 300 <= word["start_ms"] <= word["end_ms"] <= said_to + 300, (word, spans)
    # one voice: the diarized transcript's single speaker, as the segment says
    assert "<mark>" in hit["snippet"] and hit["speaker"] == seg["speaker"] == "S1"

    # a phrase, a prefix and a boolean query on the same real transcript; the device sees it
    [phrase] = _search(srv, '"match your search"', token)
    assert spans[2][0] - 1_000 <= phrase["start_ms"] <= spans[2][1]
    assert {h["segment_index"] for h in _search(srv, "answ*")} == {
        i for i, s in enumerate(txn["segments"]) if "answer" in s["text"].lower()}
    assert _search(srv, "conference NOT recorded") == []

    # exports of the real transcript: kept parsers, cue times on the segments
    with rest(srv) as c:
        srt_body = c.get(f"/v1/transcriptions/{txn['id']}", params={"format": "srt"}).text
        vtt_body = c.get(f"/v1/transcriptions/{txn['id']}", params={"format": "vtt"}).text
    subs = list(srt.parse(srt_body))
    caps = list(webvtt.from_string(vtt_body))
    assert len(subs) == len(caps) >= len(txn["segments"])
    starts = {s["start_ms"] for s in txn["segments"]}
    ends = {s["end_ms"] for s in txn["segments"]}
    for sub, cap in zip(subs, caps, strict=True):
        s_ms = round(sub.start.total_seconds() * 1000)
        e_ms = round(sub.end.total_seconds() * 1000)
        assert (s_ms, e_ms) == (cap.start_time.in_milliseconds(), cap.end_time.in_milliseconds())
    cue_starts = {round(s.start.total_seconds() * 1000) for s in subs}
    cue_ends = {round(s.end.total_seconds() * 1000) for s in subs}
    # every segment's start and end is a cue boundary, to the millisecond
    assert starts <= cue_starts and ends <= cue_ends
    # each cue starts with its (diarized) speaker, then the words in order
    assert all(sub.content.startswith("S1: ") for sub in subs)
    said = " ".join(sub.content.removeprefix("S1: ").replace("\n", " ") for sub in subs).split()
    assert said == " ".join(s["text"] for s in txn["segments"]).split()

    # re-transcription replaces the indexed transcript; deletion removes it
    with rest(srv) as c:
        again = c.post(f"/v1/recordings/{rec_id}/transcribe", json={"language": "en"})
    assert again.status_code == 201, again.text
    wait_for(lambda: True if _search(srv, "recordings") and _search(srv, "recordings")[0][
        "transcription_id"] == again.json()["id"] else None, 300, "the new transcript indexed")
    assert {h["transcription_id"] for h in _search(srv, "number OR directory OR recorded")} == {
        again.json()["id"]}
    with rest(srv) as c:
        assert c.delete(f"/v1/recordings/{rec_id}").status_code == 200
    assert _search(srv, "recordings") == []
    count = srv.app.db.read().execute("SELECT count(*) FROM search_segments").fetchone()[0]
    assert count == 0
    assert rec["transcription_id"] == txn["id"]
