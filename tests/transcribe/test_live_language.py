"""The language a live piece is transcribed with (``language_for``) and when the assembly
keeps a stored piece (``_valid``): a function of the pieces before it, so the assembled
transcript is the same whatever order the live lane ran the pieces in."""

from __future__ import annotations

from tapedeck.background.transcribe.live_job import _valid, language_for
from tapedeck.domain.live import PieceRow

_SEG = [{"start_ms": 0, "end_ms": 500, "text": "ciao", "confidence": 0.9, "words": []}]


def _piece(part: int, language: str | None, *, speech: bool = True,
           hint: str | None = "") -> PieceRow:
    return PieceRow(part, f"m{part}", f"m{part - 1}" if part > 1 else None, "done", None,
                    48_000, 0, language, _SEG if speech else [], 500 if speech else 0, 0, hint)


def test_the_requested_language_wins() -> None:
    pieces = {1: _piece(1, "it")}
    assert language_for(pieces, 2, "en") == "en"
    assert language_for({}, 1, "en") == "en"


def test_the_earliest_earlier_piece_with_speech_decides() -> None:
    pieces = {1: _piece(1, "fr", speech=False), 2: _piece(2, "it"), 3: _piece(3, "en"),
              5: _piece(5, "de")}
    assert language_for(pieces, 1, None) is None  # the first piece detects its own
    assert language_for(pieces, 2, None) is None  # nothing spoken before it
    assert language_for(pieces, 3, None) == "it"
    assert language_for(pieces, 4, None) == "it"
    # A later piece that finished first does not decide for an earlier one.
    assert language_for({5: _piece(5, "de")}, 4, None) is None


def test_a_piece_made_with_another_hint_is_redone() -> None:
    want = ("m2", "m1")
    assert _valid(_piece(2, "it", hint="it"), want, "it")
    assert not _valid(_piece(2, "en", hint=""), want, "it")  # ran before piece 1 was done
    assert not _valid(_piece(2, "it", hint="it"), want, None)
    assert _valid(_piece(2, "it", hint=""), want, None)
    assert _valid(_piece(2, "it", hint=None), want, "en")  # stored before hints: kept
    assert not _valid(_piece(2, "it", hint="it"), ("other", "m1"), "it")  # other bytes
    assert not _valid(None, want, None)
