"""Decoding profiles: ``fast`` (the default: greedy, no fallback, VAD speech windows batched)
and ``accurate`` (beam 5 with temperature fallback, one window at a time: the former
default), both on the real whisper-base model and real recorded speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapedeck.background.transcribe import Segment, Transcript, Word, transcribe_ogg_opus
from tapedeck.background.transcribe.whisper import (
    PROFILES,
    WhisperEngine,
    WhisperOptions,
    _sentences,
    decoding_options,
)
from tapedeck.settings import WHISPER_DECODINGS

import asterisk_speech as speech
from asterisk_speech import SpeechFile


def test_profiles_and_their_beam_override() -> None:
    assert decoding_options("fast") == WhisperOptions()
    assert WhisperOptions().batch_size > 1 and not WhisperOptions().fallback
    accurate = decoding_options("accurate")
    assert (accurate.beam_size, accurate.best_of, accurate.fallback, accurate.batch_size) == (
        5, 5, True, 0)
    assert decoding_options("accurate", 1).beam_size == 1
    assert decoding_options("fast", 3) == WhisperOptions(beam_size=3)
    with pytest.raises(ValueError, match="fast, accurate"):
        decoding_options("quick")
    assert set(PROFILES) == {"fast", "accurate"} == set(WHISPER_DECODINGS)  # tapedeck.validate


def test_a_window_segment_is_cut_into_sentences() -> None:
    words = (Word("Hello", 0, 300, 0.9), Word("there.", 300, 700, 0.7),
             Word("How", 1500, 1700, 0.8), Word("are", 1700, 1900, 0.6),
             Word("you?", 1900, 2300, 1.0), Word("Fine", 3000, 3400, 0.5))
    seg = Segment(0, 3400, "Hello there. How are you? Fine", 0.75, None, words)
    out = list(_sentences(seg))
    assert [s.text for s in out] == ["Hello there.", "How are you?", "Fine"]
    assert [(s.start_ms, s.end_ms) for s in out] == [(0, 700), (1500, 2300), (3000, 3400)]
    assert [s.confidence for s in out] == [0.8, 0.8, 0.5]
    assert sum(len(s.words) for s in out) == len(words)
    bare = Segment(0, 10, "no words", 0.5)
    assert list(_sentences(bare)) == [bare]


@pytest.fixture(scope="module")
def accurate_transcript(whisper_dir: Path, speech_file: SpeechFile) -> Transcript:
    engine = WhisperEngine(str(whisper_dir), "whisper-base", 2, decoding_options("accurate"))
    with speech_file.path.open("rb") as f:
        return transcribe_ogg_opus(f, engine, None)


def test_accurate_profile_still_works_and_fast_is_as_good(
        speech_file: SpeechFile, accurate_transcript: Transcript,
        speech_transcript: Transcript) -> None:
    """``speech_transcript`` is made with the default (fast) engine of conftest.py."""
    accurate = speech.wer(speech_file.reference, accurate_transcript.text)
    fast = speech.wer(speech_file.reference, speech_transcript.text)
    print(f"WER accurate {accurate:.2%}, fast {fast:.2%}")
    assert accurate <= 0.10
    assert fast <= accurate + 0.01  # the bound: at most 1 point worse
    for t in (accurate_transcript, speech_transcript):
        starts = [w.start_ms for s in t.segments for w in s.words]
        assert starts == sorted(starts) and len(starts) > 100
        assert all(0 <= s.start_ms <= s.end_ms <= t.duration_ms for s in t.segments)
    # fast segments are sentences (not one per 30 s window): captions stay readable
    assert len(speech_transcript.segments) >= 10
