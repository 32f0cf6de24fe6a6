"""Shared fixtures of the diarization tests: one loaded encoder/diarizer per session."""

from __future__ import annotations

import pytest

from tapedeck.diarize import Diarizer
from tapedeck.diarize.encoder import SpeakerEncoder


@pytest.fixture(scope="session")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder()


@pytest.fixture(scope="session")
def diarizer(encoder: SpeakerEncoder) -> Diarizer:
    return Diarizer(encoder)
