"""Live transcription, engine level: real recorded speech cut into chunks — seamless (the
agent's encoder, one encoder across chunks) and independently encoded (``opusenc`` per chunk)
— with the first boundary in the middle of a word; each chunk transcribed as its own piece
(with the previous chunk as context) and the pieces merged on the stitched timeline, against
the whole-file transcript of the same stitched audio."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tapedeck.background.transcribe import Transcript, transcribe_ogg_opus
from tapedeck.background.transcribe.live import decode, transcribe_piece
from tapedeck.background.transcribe.live_job import piece_json, transcript_from_segments
from tapedeck.background.transcribe.whisper import WhisperEngine
from tapedeck.domain.live import PieceRow, choose_cut, merge, place
from tapedeck.oggopus import OpusStreamReader, remux

import asterisk_speech as speech
from asterisk_speech import SpeechFile
from txnkit import device_chunks, pcm16

RATE = 16_000


def _mid_word_ms(t: Transcript, lo_ms: int, hi_ms: int) -> int:
    """The middle of the longest word between ``lo_ms`` and ``hi_ms`` of a transcript."""
    words = [w for s in t.segments for w in s.words if lo_ms <= w.start_ms and w.end_ms <= hi_ms]
    longest = max(words, key=lambda w: w.end_ms - w.start_ms)
    return (longest.start_ms + longest.end_ms) // 2 // 20 * 20  # whole 20 ms frames


@pytest.fixture(scope="module")
def boundary_ms(speech_transcript: Transcript) -> int:
    """A chunk length whose first boundary cuts a word in half (between 15 s and 25 s)."""
    return _mid_word_ms(speech_transcript, 15_000, 25_000)


def _seamless(samples: speech.Samples, chunk_ms: int) -> list[bytes]:
    chunks, _ = device_chunks(pcm16(samples), chunk_ms)
    return chunks


def _independent(samples: speech.Samples, chunk_ms: int, tmp: Path) -> list[bytes]:
    n = chunk_ms * RATE // 1000
    out = []
    for i in range(0, len(samples), n):
        path = speech.encode_ogg_opus([samples[i:i + n]], tmp / f"c{i}.opus")
        out.append(path.read_bytes())
    return out


def _stitched(chunks: list[bytes]) -> tuple[bytes, tuple[int, ...]]:
    out = io.BytesIO()
    result = remux([io.BytesIO(c) for c in chunks], out)
    return out.getvalue(), result.chunk_starts


def _playable(chunk: bytes) -> int:
    reader = OpusStreamReader(io.BytesIO(chunk))
    while reader.next_audio_page() is not None:
        pass
    return reader.samples


def _live(engine: WhisperEngine, chunks: list[bytes], duration_ms: int,
          order: list[int] | None = None) -> Transcript:
    """Pieces made in ``order`` (part numbers), then merged in part order."""
    rows: dict[int, PieceRow] = {}
    for part in order or list(range(1, len(chunks) + 1)):
        prev = chunks[part - 2] if part > 1 else None
        pc = transcribe_piece(engine, chunks[part - 1], prev, "en")

        rows[part] = PieceRow(part, "", None, "done", pc.delta48, pc.samples48, pc.overlap_ms,
                              pc.language, json.loads(piece_json(pc)), pc.speech_ms,
                              pc.skipped_ms)
    segments = merge(place([rows[p] for p in sorted(rows)]))
    return transcript_from_segments(segments, "en", engine.model, duration_ms)


def _words(t: Transcript) -> list[tuple[str, int, int]]:
    return [(speech.normalize(w.word), w.start_ms, w.end_ms) for s in t.segments for w in s.words]


Maker = Callable[[speech.Samples, int, Path], list[bytes]]


@pytest.mark.parametrize("kind", ["seamless", "independent"])
def test_assembled_transcript_matches_the_whole_file_at_a_mid_word_boundary(
        kind: str, engine: WhisperEngine, speech_file: SpeechFile, boundary_ms: int,
        tmp_path: Path) -> None:
    samples = speech_file.samples
    chunks = (_seamless(samples, boundary_ms) if kind == "seamless"
              else _independent(samples, boundary_ms, tmp_path))
    assert len(chunks) >= 3
    stitched, starts = _stitched(chunks)
    whole = transcribe_ogg_opus(io.BytesIO(stitched), engine, "en")
    # out of order: the last chunk first, then the rest — assembled in part order
    live = _live(engine, chunks, whole.duration_ms, order=[3, 1, 2, *range(4, len(chunks) + 1)])

    whole_wer = speech.wer(speech_file.reference, whole.text)
    live_wer = speech.wer(speech_file.reference, live.text)
    assert live_wer <= whole_wer + 0.01, (live.text, whole.text)
    # the word cut by each boundary is there exactly once, at the whole file's place
    b_ms = starts[1] // 48
    cut = [w for w in _words(whole) if w[1] <= b_ms + 150 and w[2] >= b_ms - 150]
    assert cut, "the boundary should cut a word"
    for word, start, _end in cut:
        near = [w for w in _words(live) if w[0] == word and abs(w[1] - start) < 1500]
        assert len(near) == 1, (word, start, near, _words(live))
        assert abs(near[0][1] - start) <= 300
    # every word of the whole file near each boundary is there once (none lost or doubled)
    live_words = _words(live)
    for k in range(1, len(starts)):
        b = starts[k] // 48
        for word, start, _end in (w for w in _words(whole) if b - 2500 <= w[1] <= b + 1000):
            near = [w for w in live_words if w[0] == word and abs(w[1] - start) < 700]
            assert len(near) == 1, (k, word, start, near)
    # timestamps on the stitched timeline: ordered and inside the audio
    ws = [w for s in live.segments for w in s.words]
    assert all(a.start_ms <= b.start_ms for a, b in itertools.pairwise(ws))
    assert all(0 <= w.start_ms <= w.end_ms <= whole.duration_ms for w in ws)


def test_chunk_starts_are_the_stitched_timeline(speech_file: SpeechFile, tmp_path: Path) -> None:
    """Seamless chunks start exactly at the sum of their lengths; independent ones where the
    stitched audio has their samples (checked by decoding both)."""
    samples = speech_file.samples[: 25 * RATE]
    seamless = _seamless(samples, 10_000)
    _, starts = _stitched(seamless)
    lengths = [_playable(c) for c in seamless]
    assert starts == (0, lengths[0], lengths[0] + lengths[1])  # each chunk plays alone exactly
    chunks = _independent(samples, 10_000, tmp_path)
    stitched, starts = _stitched(chunks)
    whole = decode(stitched)
    for k in (1, 2):
        own = decode(chunks[k])[4000:12000]  # skip the encoder's warm-up
        at = starts[k] // 3 + 4000
        got = whole[at:at + len(own)]
        assert float(np.max(np.abs(got - own))) < 0.05  # the same samples, same place


def test_silence_is_skipped_and_reported(engine: WhisperEngine, tmp_path: Path) -> None:
    """A chunk of digital silence and one of mostly silence: nothing sent for silence,
    the skipped ms reported, no text invented."""
    speech_part = speech.read_prompt("conf-now-recording")
    audio = np.concatenate([np.zeros(8 * RATE, np.float32), speech_part,
                            np.zeros(8 * RATE, np.float32)])
    chunks = _seamless(np.concatenate([np.zeros(10 * RATE, np.float32), audio]), 10_000)
    first = transcribe_piece(engine, chunks[0], None, "en")
    assert first.segments == () and first.speech_ms == 0 and first.skipped_ms >= 9_900
    second = transcribe_piece(engine, chunks[1], chunks[0], "en")
    third = transcribe_piece(engine, chunks[2], chunks[1], "en")
    skipped = second.skipped_ms + third.skipped_ms
    total = (second.samples48 + third.samples48) // 48
    assert 0 < second.speech_ms + third.speech_ms < total
    assert skipped >= total - len(speech_part) * 1000 // RATE - 2_000  # pads only
    merged = _live(engine, chunks, len(audio) * 1000 // RATE + 10_000)
    assert speech.normalize(merged.text).split().count("recorded") == 1, merged.text


def test_cut_is_the_widest_pause_inside_the_overlap() -> None:
    def w(word: str, a: int, b: int) -> dict[str, object]:
        return {"word": word, "start_ms": a, "end_ms": b, "confidence": 0.9}

    seg = {"start_ms": 5000, "end_ms": 9500, "text": "a b c", "confidence": 0.9,
           "words": [w("a", 6200, 6500), w("b", 6600, 7000), w("c", 8000, 9500)]}
    # overlap window [10000-4000+1000, 10000-500] = [7000, 9500]: widest gap 7000..8000
    assert choose_cut([seg], 10_000, 4000) == 7500
    # no words at all: the middle of the window
    assert choose_cut([], 10_000, 4000) == (7000 + 9500) // 2
