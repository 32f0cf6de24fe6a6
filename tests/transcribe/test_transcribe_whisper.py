"""End-to-end transcription with the real whisper-base model on real recorded speech."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tapedeck.background.transcribe import BLOCK_S, Transcript, TranscriptionFailed, transcribe_ogg_opus
from tapedeck.background.transcribe.whisper import WhisperEngine

import asterisk_speech as speech
from asterisk_speech import SpeechFile

# Measured: 0.0 % WER on this 153-word track (beam 5 and beam 1; see the report in
# bench/transcribe.py). The platform notes give 4-7 % for whisper-base on larger prompt sets.
# 10 % (~15 wrong words) leaves room for CPU/libopus version noise while still catching the
# failures that matter here: a wrong sample rate, a lost pre-skip, a window cut through words
# or dropped windows each cost far more than 15 words on this track.
MAX_WER = 0.10


def test_real_speech_word_error_rate(speech_file: SpeechFile,
                                     speech_transcript: Transcript) -> None:
    error = speech.wer(speech_file.reference, speech_transcript.text)
    print(f"WER {error:.3%} over {len(speech_file.reference.split())} reference words")
    assert error <= MAX_WER, speech_transcript.text


def test_transcript_metadata(speech_file: SpeechFile, speech_transcript: Transcript) -> None:
    t = speech_transcript
    assert t.language == "en"  # auto-detected
    assert t.model == "whisper-base"
    assert t.duration_ms == len(speech_file.samples) * 1000 // speech.RATE
    words = [w for s in t.segments for w in s.words]
    assert t.word_count == len(words) > 100
    assert t.text == " ".join(s.text for s in t.segments)
    assert all(0.0 <= s.confidence <= 1.0 for s in t.segments)
    assert all(0.0 <= w.confidence <= 1.0 for w in words)
    assert all(s.speaker is None for s in t.segments)
    json = t.to_json()
    assert set(json["segments"][0]) == {"start_ms", "end_ms", "text", "confidence", "speaker",
                                        "words"}


def test_word_timestamps_are_ordered_and_inside_the_audio(speech_transcript: Transcript) -> None:
    t = speech_transcript
    words = [w for s in t.segments for w in s.words]
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w.start_ms <= w.end_ms <= t.duration_ms for w in words)
    seg_starts = [s.start_ms for s in t.segments]
    assert seg_starts == sorted(seg_starts)
    assert all(0 <= s.start_ms <= s.end_ms <= t.duration_ms for s in t.segments)


def test_every_prompt_is_found_at_its_place_on_the_timeline(
    speech_file: SpeechFile, speech_transcript: Transcript
) -> None:
    """Window offsets add up: each prompt's speech onset has a word starting within 0.6 s
    (prompts are 0.6 s apart, and the track spans two windows)."""
    starts = np.array([w.start_ms for s in speech_transcript.segments for w in s.words])
    misses = [(onset, int(starts[np.argmin(np.abs(starts - onset))]))
              for onset in speech_file.onsets_ms
              if np.min(np.abs(starts - onset)) > 600]
    assert misses == []
    assert speech_file.onsets_ms[-1] > 30_000  # really crosses a window boundary


def _ogg(samples: speech.Samples, tmp_path: Path) -> bytes:
    return speech.encode_ogg_opus([samples], tmp_path / "a.opus").read_bytes()


def test_requested_language_is_used_and_reported(engine: WhisperEngine, tmp_path: Path) -> None:
    samples, reference = speech.speech_track(["conf-now-recording"])
    t = transcribe_ogg_opus(io.BytesIO(_ogg(samples, tmp_path)), engine, "en")
    assert t.language == "en"
    assert speech.wer(reference, t.text) <= MAX_WER


def test_unsupported_language_fails_typed(engine: WhisperEngine, tmp_path: Path) -> None:
    samples, _ = speech.speech_track(["conf-now-recording"])
    with pytest.raises(TranscriptionFailed) as info:
        transcribe_ogg_opus(io.BytesIO(_ogg(samples, tmp_path)), engine, "xx")
    assert info.value.reason == "unsupported_language"


def test_digital_silence_is_a_completed_empty_transcript(engine: WhisperEngine,
                                                         tmp_path: Path) -> None:
    silence = np.zeros(speech.RATE * 45, dtype=np.float32)  # two windows
    t = transcribe_ogg_opus(io.BytesIO(_ogg(silence, tmp_path)), engine, None)
    assert (t.text, t.segments, t.word_count, t.language) == ("", (), 0, None)
    assert t.duration_ms == 45_000


def test_quiet_noise_is_a_completed_empty_transcript(engine: WhisperEngine,
                                                     tmp_path: Path) -> None:
    """Audible-but-speechless audio reaches the model (above the digital-silence shortcut);
    the VAD must keep whisper from inventing text."""
    noise = np.random.default_rng(7).normal(0, 0.003, speech.RATE * 8).astype(np.float32)
    t = transcribe_ogg_opus(io.BytesIO(_ogg(noise, tmp_path)), engine, None)
    assert (t.text, t.word_count) == ("", 0)
    assert t.duration_ms == 8_000


def test_headers_only_stream_is_a_completed_empty_transcript(engine: WhisperEngine,
                                                             tmp_path: Path) -> None:
    empty = _ogg(np.zeros(0, dtype=np.float32), tmp_path)
    t = transcribe_ogg_opus(io.BytesIO(empty), engine, None)
    assert (t.text, t.duration_ms, t.segments) == ("", 0, ())


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 100, bytes(range(256)) * 40])
def test_garbage_bytes_fail_as_undecodable_audio(engine: WhisperEngine, data: bytes) -> None:
    with pytest.raises(TranscriptionFailed) as info:
        transcribe_ogg_opus(io.BytesIO(data), engine, None)
    assert info.value.reason == "undecodable_audio"


def test_progress_reports_processed_audio(speech_file: SpeechFile, tmp_path: Path,
                                          engine: WhisperEngine) -> None:
    """Reported after every block (``BLOCK_S``) and between engine calls."""
    silence = np.zeros(speech.RATE * 700, dtype=np.float32)  # silent: no model CPU spent
    seen: list[int] = []
    t = transcribe_ogg_opus(io.BytesIO(_ogg(silence, tmp_path)), engine, None, seen.append)
    assert seen == sorted(seen) and len(seen) >= 700 // BLOCK_S
    assert seen[-1] == t.duration_ms == 700_000
