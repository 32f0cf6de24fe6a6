"""Transcript exports and paragraphs: a completed transcription as plain text, SubRip (SRT)
or WebVTT, and its segments grouped into paragraphs.

Cues: each segment becomes one or more cues of at most ``MAX_CUE_CHARS`` characters (two
lines of at most ~``LINE_CHARS``, broken at the word boundary that balances them) and at most
``MAX_CUE_MS`` long, split between words using the word timestamps (a segment without words
gets times interpolated by character position). A segment's first cue starts at its
``start_ms`` and its last cue ends at its ``end_ms``; cue boundaries inside it are word
boundaries. Timestamps are exact to the millisecond (``HH:MM:SS,mmm`` in SRT,
``HH:MM:SS.mmm`` in WebVTT). WebVTT cues of a known speaker carry a voice tag
``<v Speaker>``; SRT and text prefix ``Speaker: `` instead.

Paragraphs: consecutive segments stay in one paragraph unless the speaker changes, the pause
between them is at least ``PARAGRAPH_PAUSE_MS``, or the paragraph already spans
``MAX_PARAGRAPH_MS``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from tapedeck.errors import error, invalid

FORMATS = ("json", "txt", "srt", "vtt")
LINE_CHARS = 42
MAX_CUE_CHARS = 2 * LINE_CHARS
MAX_CUE_MS = 6_000
PARAGRAPH_PAUSE_MS = 1_500
MAX_PARAGRAPH_MS = 60_000
_TYPES = {"txt": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
          "vtt": "text/vtt; charset=utf-8"}


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: ``[start_ms, end_ms)``, one or two lines, the speaker if known."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    speaker: str | None


@dataclass(frozen=True)
class Export:
    """A rendered export: the body, its ``Content-Type`` and the download file name."""

    body: str
    content_type: str
    filename: str


def check_format(fmt: str | None) -> str:
    """``fmt`` (None → ``json``) if it is one of ``FORMATS``, else ``invalid_request``."""
    fmt = fmt or FORMATS[0]
    if fmt not in FORMATS:
        raise invalid("format", f"format must be one of {', '.join(FORMATS)}.")
    return fmt


def render(transcription_id: str, status: str, segments: list[dict[str, Any]],
           fmt: str) -> Export:
    """The ``txt``/``srt``/``vtt`` export of a transcription (``invalid_state`` unless it is
    ``completed``: only then are its segments final)."""
    if status != "completed":
        raise error("invalid_state", f"The transcription is {status}; exports exist once it "
                                     "is completed.", status=status)
    body = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt}[fmt](segments)
    return Export(body=body, content_type=_TYPES[fmt], filename=f"{transcription_id}.{fmt}")


# -- paragraphs ----------------------------------------------------------------------------

def paragraphs(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments grouped into paragraphs (see the module docstring): ``start_ms``,
    ``end_ms``, ``speaker``, ``text`` (segment texts joined by spaces), ``first_segment``
    (index) and ``segment_count``."""
    out: list[dict[str, Any]] = []
    for i, seg in enumerate(segments):
        text = " ".join(seg["text"].split())
        if not text:
            continue
        last = out[-1] if out else None
        if (last is None or seg.get("speaker") != last["speaker"]
                or seg["start_ms"] - last["end_ms"] >= PARAGRAPH_PAUSE_MS
                or last["end_ms"] - last["start_ms"] >= MAX_PARAGRAPH_MS):
            out.append({"start_ms": seg["start_ms"], "end_ms": seg["end_ms"],
                        "speaker": seg.get("speaker"), "text": text, "first_segment": i,
                        "segment_count": 1})
        else:
            last["end_ms"] = max(last["end_ms"], seg["end_ms"])
            last["text"] += " " + text
            last["segment_count"] = i - last["first_segment"] + 1
    return out


# -- cues ----------------------------------------------------------------------------------

def cues(segments: list[dict[str, Any]]) -> list[Cue]:
    """Every segment's cues, in order (see the module docstring)."""
    out: list[Cue] = []
    for seg in segments:
        out += segment_cues(seg)
    return out


def segment_cues(seg: dict[str, Any]) -> list[Cue]:
    """The cues of one segment."""
    start, end = int(seg["start_ms"]), int(seg["end_ms"])
    groups = _balanced(_timed_words(seg, start, end))
    speaker = seg.get("speaker")
    result = []
    for i, group in enumerate(groups):
        c_start = start if i == 0 else max(start, min(group[0][1], end))
        c_end = end if i == len(groups) - 1 else max(start, min(groups[i + 1][0][1], end))
        result.append(Cue(c_start, max(c_end, c_start), wrap(" ".join(w[0] for w in group)),
                          speaker))
    return result


Timed = tuple[str, int, int]


def _greedy(words: list[Timed]) -> list[list[Timed]]:
    groups: list[list[Timed]] = []
    for w in words:
        if groups and _fits(groups[-1], w):
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def _balanced(words: list[Timed]) -> list[list[Timed]]:
    """As few cues as the greedy fill needs, but with the words spread evenly over them by
    length (no one-word tail cue), unless that would break a limit."""
    greedy = _greedy(words)
    k = len(greedy)
    if k < 2:
        return greedy
    total = sum(len(w[0]) + 1 for w in words)
    groups: list[list[Timed]] = [[]]
    acc = 0
    for w in words:
        size = len(w[0]) + 1
        cut = total * len(groups) / k
        if groups[-1] and len(groups) < k and acc + size / 2 > cut:
            groups.append([])
        groups[-1].append(w)
        acc += size
    if all(_fits(g[:-1], g[-1]) for g in groups if len(g) > 1):
        return groups
    return greedy


def _fits(group: list[Timed], w: Timed) -> bool:
    chars = sum(len(x[0]) + 1 for x in group) + len(w[0])
    return chars <= MAX_CUE_CHARS and w[2] - group[0][1] <= MAX_CUE_MS


def _timed_words(seg: dict[str, Any], start: int, end: int) -> list[Timed]:
    """``(word, start_ms, end_ms)`` of a segment's non-empty words; from the text, with times
    interpolated by character offset, when it has no word timestamps."""
    timed = [(str(w["word"]).strip(), int(w["start_ms"]), int(w["end_ms"]))
             for w in seg.get("words") or []]
    timed = [w for w in timed if w[0]]
    if timed:
        return timed
    tokens = seg["text"].split()
    total = max(1, sum(len(t) + 1 for t in tokens))
    out, at = [], 0
    for t in tokens:
        out.append((t, start + (end - start) * at // total,
                    start + (end - start) * (at + len(t)) // total))
        at += len(t) + 1
    return out


def wrap(text: str) -> tuple[str, ...]:
    """One line if ``text`` fits ``LINE_CHARS``, else two lines broken at the space that
    makes the longer line shortest."""
    if len(text) <= LINE_CHARS or " " not in text:
        return (text,)
    best = min((i for i, ch in enumerate(text) if ch == " "),
               key=lambda i: max(i, len(text) - i - 1))
    return (text[:best], text[best + 1:])


# -- formats -------------------------------------------------------------------------------

def timestamp(ms: int, sep: str) -> str:
    """``HH:MM:SS{sep}mmm`` of ``ms`` milliseconds."""
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    """SubRip: numbered cues, ``start --> end`` with a comma before the milliseconds."""
    blocks = []
    for n, cue in enumerate(cues(segments), start=1):
        lines = list(cue.lines)
        if cue.speaker:
            lines[0] = f"{cue.speaker}: {lines[0]}"
        times = f"{timestamp(cue.start_ms, ',')} --> {timestamp(cue.end_ms, ',')}"
        blocks.append(f"{n}\n{times}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def to_vtt(segments: list[dict[str, Any]]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues whose text is escaped (``&``, ``<``, ``>``)
    and, for a known speaker, wrapped in a voice tag ``<v Speaker>``."""
    blocks = ["WEBVTT\n"]
    for cue in cues(segments):
        lines = [html.escape(line, quote=False) for line in cue.lines]
        if cue.speaker:
            lines[0] = f"<v {html.escape(cue.speaker, quote=False)}>{lines[0]}"
        times = f"{timestamp(cue.start_ms, '.')} --> {timestamp(cue.end_ms, '.')}"
        blocks.append(f"{times}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def to_txt(segments: list[dict[str, Any]]) -> str:
    """Plain text: one paragraph per ``paragraphs`` entry, blank lines between, each
    prefixed ``Speaker: `` when its speaker is known."""
    paras = [(f"{p['speaker']}: " if p["speaker"] else "") + p["text"]
             for p in paragraphs(segments)]
    return "\n\n".join(paras) + ("\n" if paras else "")
