"""Session fixtures for transcription tests: the real whisper-base model (loaded once), real
recorded speech encoded with libopus, and one shared transcription of it (CPU is scarce)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tapedeck.background.transcribe import Transcript, transcribe_ogg_opus
from tapedeck.background.transcribe.models import ModelUnavailable, ensure_whisper_base
from tapedeck.background.transcribe.whisper import WhisperEngine

import asterisk_speech as speech
from asterisk_speech import SpeechFile
from serverkit import RunningServer, start_server
from txnkit import drop_bucket, pipeline_settings

REPO = Path(__file__).resolve().parents[2]
#: The same directory scripts/fetch-model fills by default.
MODEL_DIR = REPO / ".cache" / "models" / "whisper-base"


@pytest.fixture(scope="session")
def whisper_dir() -> Path:
    try:
        return ensure_whisper_base(MODEL_DIR)
    except ModelUnavailable as exc:
        pytest.fail(f"{exc} (run scripts/fetch-model)")


@pytest.fixture(scope="module")
def pipeline_overrides() -> dict[str, Any]:
    """Settings of the module's ``srv`` beyond ``txnkit.pipeline_settings``; a module that
    needs others (e.g. live transcription) overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def srv(weed: Any, whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest,
        pipeline_overrides: dict[str, Any]) -> Iterator[RunningServer]:
    """The module's real server with the whisper model: gRPC, REST and a worker."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    settings = pipeline_settings(weed, tmp_path_factory.mktemp(name) / "data", whisper_dir,
                                 **pipeline_overrides)
    server = start_server(settings, roles=("grpc", "http", "worker"))
    try:
        yield server
    finally:
        server.close()
        drop_bucket(weed, settings.s3_bucket)


@pytest.fixture(scope="session")
def engine(whisper_dir: Path) -> WhisperEngine:
    """One loaded model for the whole session, like one per worker process."""
    return WhisperEngine(str(whisper_dir), "whisper-base", threads=2)


def _onsets_ms(names: tuple[str, ...], pause_s: float) -> tuple[int, ...]:
    """Start of audible speech (first sample above -34 dBFS) of each prompt in the track."""
    onsets, at = [], 0
    for name in names:
        pcm = speech.read_prompt(name)
        first = int(np.argmax(np.abs(pcm) > 0.02))
        onsets.append((at + first) * 1000 // speech.RATE)
        at += len(pcm) + int(pause_s * speech.RATE)
    return tuple(onsets)


@pytest.fixture(scope="session")
def speech_file(tmp_path_factory: pytest.TempPathFactory) -> SpeechFile:
    """~59 s: twelve prompts with 0.6 s pauses, as Ogg Opus (opusenc, 24 kbit/s)."""
    samples, reference = speech.speech_track(speech.PROMPTS, pause_s=0.6)
    path = speech.encode_ogg_opus([samples], tmp_path_factory.mktemp("speech") / "speech.opus")
    return SpeechFile(path, samples, reference, _onsets_ms(speech.PROMPTS, 0.6))


@pytest.fixture(scope="session")
def speech_transcript(engine: WhisperEngine, speech_file: SpeechFile) -> Transcript:
    """The one full real-speech transcription, with language auto-detection."""
    with speech_file.path.open("rb") as f:
        return transcribe_ogg_opus(f, engine, None)


@pytest.fixture(scope="session")
def long_speech(speech_file: SpeechFile,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """5-minute and 30-minute single-stream recordings of the speech file's packets."""
    d = tmp_path_factory.mktemp("long")
    return (speech.repeat_packets(speech_file.path, 5 * 60, d / "5min.opus"),
            speech.repeat_packets(speech_file.path, 30 * 60, d / "30min.opus"))
