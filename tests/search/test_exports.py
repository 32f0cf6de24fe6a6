"""Exports (txt, srt, vtt) and paragraphs: cue splitting on word timestamps, outputs parsed
back with kept parsers (``srt``, ``webvtt-py``) whose cue times match the segments to the
millisecond, and the REST surface (content types, file names, errors)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import srt
import webvtt

from tapedeck.auth import Principal
from tapedeck.domain import exports
from tapedeck.errors import TapedeckError

from searchkit import new_recording, segment, store_transcript
from serverkit import RunningServer

Project = tuple[str, str, Principal]

LONG = ("So the landlord said the lease runs until the end of March, and after that we can "
        "either renew it for another two years or move out, but we have to tell them by "
        "the first of February at the latest.")
SEGMENTS = [
    segment(1_234, 3_999, "Hello there, is this thing on?", "Ana"),
    segment(4_500, 21_789, LONG, "Ana"),
    segment(25_001, 27_002, "Yes & it <works> --> fine.", "Ben <B>"),
    segment(27_500, 29_000, "No word timestamps here at all, friend.", None, timed_words=False),
    segment(3_600_000, 3_601_007, "Past one hour.", None),
]


def vtt_ms(t: Any) -> int:
    return int(t.in_milliseconds())


def srt_ms(t: Any) -> int:
    return int(t.total_seconds() * 1000 + 0.5)


def check_cover(cue_spans: list[tuple[int, int, str]], segments: list[dict[str, Any]]) -> None:
    """The cues of each segment tile it: first starts at start_ms, last ends at end_ms,
    consecutive, and their words are the segment's words in order."""
    at = 0
    for seg in segments:
        mine = []
        while at < len(cue_spans) and cue_spans[at][0] < seg["end_ms"]:
            mine.append(cue_spans[at])
            at += 1
        assert mine, seg
        assert mine[0][0] == seg["start_ms"] and mine[-1][1] == seg["end_ms"]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(mine))
        assert " ".join(c[2] for c in mine).split() == seg["text"].split()
    assert at == len(cue_spans)


def test_cues_are_readable_and_split_on_words() -> None:
    cues = exports.cues(SEGMENTS)
    long_cues = [c for c in cues if c.start_ms >= 4_500 and c.end_ms <= 21_789]
    assert len(long_cues) >= 3
    for c in cues:
        assert 1 <= len(c.lines) <= 2
        assert all(len(line) <= exports.LINE_CHARS for line in c.lines) or len(c.lines) == 2
        assert sum(len(line) for line in c.lines) <= exports.MAX_CUE_CHARS
        assert c.end_ms - c.start_ms <= exports.MAX_CUE_MS + 2_000  # last word may overhang
    sizes = [sum(len(line) for line in c.lines) for c in long_cues]
    assert min(sizes) >= max(sizes) / 2, sizes  # spread evenly: no one-word tail cue
    words = SEGMENTS[1]["words"]
    inner = {c.start_ms for c in long_cues[1:]}
    assert inner <= {w["start_ms"] for w in words}  # boundaries are word starts


def test_srt_parses_and_matches_segments() -> None:
    body = exports.to_srt(SEGMENTS)
    subs = list(srt.parse(body))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    spans = []
    for s in subs:
        text = s.content.replace("\n", " ")
        for label in ("Ana: ", "Ben <B>: "):
            text = text.removeprefix(label)
        spans.append((srt_ms(s.start), srt_ms(s.end), text))
    check_cover(spans, SEGMENTS)
    assert "01:00:00,000 --> 01:00:01,007" in body
    assert subs[0].content == "Ana: Hello there, is this thing on?"


def test_vtt_parses_with_voice_tags_and_matches_segments() -> None:
    body = exports.to_vtt(SEGMENTS)
    assert body.startswith("WEBVTT\n\n")
    captions = list(webvtt.from_string(body))
    spans = [(vtt_ms(c.start_time), vtt_ms(c.end_time),
              c.text.replace("\n", " ").replace("&amp;", "&").replace("&lt;", "<")
              .replace("&gt;", ">")) for c in captions]
    check_cover(spans, SEGMENTS)
    voices = [c.voice for c in captions]
    assert voices[0] == "Ana" and voices[-1] is None
    assert "Ben &lt;B&gt;" in voices
    tricky = next(c for c in captions if "works" in c.raw_text)
    assert "<works>" not in tricky.raw_text and "-->" not in tricky.raw_text
    assert "01:00:00.000 --> 01:00:01.007" in body


def test_txt_and_paragraphs() -> None:
    paras = exports.paragraphs(SEGMENTS)
    assert [(p["first_segment"], p["segment_count"], p["speaker"]) for p in paras] == [
        (0, 2, "Ana"), (2, 1, "Ben <B>"), (3, 1, None), (4, 1, None)]
    assert paras[0]["start_ms"] == 1_234 and paras[0]["end_ms"] == 21_789
    assert paras[0]["text"].startswith("Hello there, is this thing on? So the landlord")
    txt = exports.to_txt(SEGMENTS)
    assert txt.split("\n\n")[0] == "Ana: " + paras[0]["text"]
    assert txt.endswith("Past one hour.\n")
    assert exports.paragraphs([segment(0, 1000, "a"), segment(2_400, 3000, "b")])[0][
        "segment_count"] == 2  # a 1.4 s pause keeps one paragraph, 1.5 s splits
    assert len(exports.paragraphs([segment(0, 1000, "a"), segment(2_500, 3000, "b")])) == 2


def test_timestamps_are_exact() -> None:
    assert exports.timestamp(0, ",") == "00:00:00,000"
    assert exports.timestamp(3_723_004, ".") == "01:02:03.004"
    assert exports.timestamp(100 * 3_600_000 + 1, ".") == "100:00:00.001"


def test_unknown_format_and_unfinished_transcripts() -> None:
    with pytest.raises(TapedeckError) as info:
        exports.check_format("docx")
    assert info.value.details["field"] == "format"
    with pytest.raises(TapedeckError) as info:
        exports.render("txn_x", "processing", [], "srt")
    assert info.value.type == "invalid_state"
    assert exports.render("txn_x", "completed", [], "txt").body == ""
    assert exports.render("txn_x", "completed", [], "vtt").body == "WEBVTT\n"


def test_rest_exports(srv: RunningServer, project: Project) -> None:
    _, key, p = project
    txn = store_transcript(srv, new_recording(srv, p), SEGMENTS)
    with httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {key}"}) as c:
        plain = c.get(f"/v1/transcriptions/{txn}")
        assert plain.status_code == 200
        assert plain.json()["paragraphs"] == exports.paragraphs(SEGMENTS)
        assert plain.json() == c.get(f"/v1/transcriptions/{txn}?format=json").json()
        for fmt, ctype in (("txt", "text/plain"), ("srt", "application/x-subrip"),
                           ("vtt", "text/vtt")):
            r = c.get(f"/v1/transcriptions/{txn}", params={"format": fmt})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == f"{ctype}; charset=utf-8"
            assert r.headers["content-disposition"] == f'attachment; filename="{txn}.{fmt}"'
            assert r.text == exports.render(txn, "completed", SEGMENTS, fmt).body
        bad = c.get(f"/v1/transcriptions/{txn}", params={"format": "pdf"})
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request"
        assert bad.json()["error"]["field"] == "format"
        missing = c.get("/v1/transcriptions/txn_nope", params={"format": "srt"})
        assert missing.status_code == 404


def test_rest_export_of_a_queued_transcription_is_invalid_state(
        srv: RunningServer, project: Project) -> None:
    _, key, p = project
    rec = new_recording(srv, p)
    with srv.app.db.write() as tx:
        tx.execute("INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
                   " created_at) VALUES ('txn_queued1', ?, ?, 'queued', 'whisper',"
                   " '2026-01-01T00:00:00.000Z')", [rec, p.project_id])
    with httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.get("/v1/transcriptions/txn_queued1", params={"format": "vtt"})
        assert r.status_code == 409 and r.json()["error"]["type"] == "invalid_state"
        assert c.get("/v1/transcriptions/txn_queued1").json()["paragraphs"] == []
