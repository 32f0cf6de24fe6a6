"""DTX does not change the transcript: real speech around a minute of near-silence and a
minute of low background noise, encoded as the device agent does (one encoder, 30 s chunks)
with and without DTX, stitched with the server's remux, transcribed by the real whisper
model: the same words at the same times, at a fraction of the bytes."""

from __future__ import annotations

import difflib
import io

import numpy as np
import pytest

from tapedeck.background.transcribe import Transcript, transcribe_ogg_opus
from tapedeck.background.transcribe.whisper import WhisperEngine
from tapedeck.oggopus import probe, remux
from tapedeck_agent.encoder import OpusChunker

import asterisk_speech as speech

QUIET_S = 60.0


def pcm16(samples: speech.Samples) -> bytes:
    return speech.to_int16(samples)


def noise(seconds: float, level: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, level, int(seconds * speech.RATE)).astype("<i2").tobytes()


def stitched(pcm: bytes, *, dtx: bool) -> bytes:
    chunker = OpusChunker(chunk_duration_ms=30_000, complexity=5, dtx=dtx, serial=7)
    chunks = chunker.feed(pcm) + chunker.finish()
    out = io.BytesIO()
    remux((io.BytesIO(c.data) for c in chunks), out)
    return out.getvalue()


def words(t: Transcript) -> list[tuple[str, int, int]]:
    return [(w.word.strip().lower(), w.start_ms, w.end_ms) for s in t.segments for w in s.words]


def _matched(a: list[tuple[str, int, int]], b: list[tuple[str, int, int]]
             ) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """The words both transcripts have, aligned (difflib), pairwise."""
    blocks = difflib.SequenceMatcher(None, [w for w, _, _ in a], [w for w, _, _ in b],
                                     autojunk=False).get_matching_blocks()
    pairs = [(a[m.a + k], b[m.b + k]) for m in blocks for k in range(m.size)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def test_transcript_is_the_same_with_dtx(engine: WhisperEngine,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    before, ref_before = speech.speech_track(speech.PROMPTS[:3])
    after, ref_after = speech.speech_track(speech.PROMPTS[3:6])
    pcm = (pcm16(before) + noise(QUIET_S, 3, 1) + noise(QUIET_S, 25, 2) + pcm16(after))
    seconds = len(pcm) / 2 / speech.RATE
    files = {dtx: stitched(pcm, dtx=dtx) for dtx in (False, True)}
    for data in files.values():
        assert probe(io.BytesIO(data)).samples == len(pcm) // 2 * 3  # exact, 48 kHz units
    results = {dtx: transcribe_ogg_opus(io.BytesIO(data), engine, "en")
               for dtx, data in files.items()}
    plain, dtx = results[False], results[True]
    assert plain.duration_ms == dtx.duration_ms == round(seconds * 1000)
    # Greedy decoding (the fast default) may flip a word on the slightest spectral change
    # (measured: "you're" / "you are" once in ~100 words): at most 2 words may differ.
    assert speech.wer(plain.text, dtx.text) <= 2 / len(plain.text.split())
    assert speech.wer(f"{ref_before} {ref_after}", dtx.text) < 0.15
    a, b = _matched(words(plain), words(dtx))
    assert len(a) >= len(words(plain)) - 2
    # Word times: the timeline did not move. Whisper's word alignment (20 ms steps, from
    # cross-attention) jitters a little when the decoded audio differs at all (the encoder's
    # state differs after DTX frames), so compare the typical shift, and bound the worst.
    shifts = sorted(abs(x[1] - y[1]) for x, y in zip(a, b, strict=True))
    ends = sorted(abs(x[2] - y[2]) for x, y in zip(a, b, strict=True))
    assert shifts[len(shifts) // 2] <= 20 and ends[len(ends) // 2] <= 20
    assert shifts[-1] <= 500 and ends[-1] <= 500
    late = [s for s in dtx.segments if s.start_ms > (len(before) / speech.RATE + 2 * QUIET_S
                                                     - 1) * 1000]
    assert late, "no words found after the quiet stretch"
    with capsys.disabled():
        print(f"\n[dtx transcript] {seconds:.0f} s: {len(files[False])} bytes without DTX, "
              f"{len(files[True])} with ({len(files[True]) / len(files[False]):.2f}x); "
              f"{len(a)} words matched; word start shift median {shifts[len(shifts) // 2]} ms, "
              f"max {shifts[-1]} ms")
