"""Offline speaker diarization: who spoke when, and which speaker is a known voice.

Interface (independent of the transcription job):

- ``Diarizer(encoder).diarize(blocks, options, profiles)`` takes the recording's 16 kHz mono
  PCM as ``(start_sample, float32 samples)`` blocks in timeline order (each ≤ ~30 s, e.g. the
  transcription windows; memory is bounded by one block plus ~1 KB per 0.5 s of speech) and
  returns a ``Diarization``: speaker turns on the timeline and the speakers (``S1``, ``S2``, …
  in order of first appearance, talk time, the matched profile's end user if any).
- ``label_transcript(segments, diarization)`` gives every segment and word its speaker;
  a segment whose words change speaker is split at the change.
- ``Diarizer.voice(blocks)`` is one unit vector for a voice sample (enrollment).
- ``Diarizer.embed(blocks)`` is the expensive half alone (speech regions and window
  embeddings, an ``Embedded``); ``Diarizer.diarize_embedded(embedded, ...)`` the cheap half
  (clustering and labels). ``diarize`` is the two in one call. Live transcription embeds
  each chunk while it streams (``Embedded.shifted`` puts it on the recording's timeline,
  ``Embedded.join`` concatenates the chunks) and only clusters at the end.

Labels depend only on the audio (and options, profiles): transcribing in chunks or in one
piece gives the same labels when the same final audio is diarized in one call; embedding
chunk by chunk differs from embedding the whole only at the chunk boundaries (a region cut
there is two regions, each embedded on its own side).

Pipeline: Silero VAD regions → 1.6 s mel windows every 0.5 s → GE2E embeddings (numpy) →
agglomerative clustering (count estimated unless given) → per 10 ms frame, the speaker whose
centroid the covering windows are closest to on average.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from tapedeck.background.transcribe import Segment, Word
from tapedeck.diarize.cluster import Bounds, cluster
from tapedeck.diarize.encoder import SpeakerEncoder
from tapedeck.diarize.segment import Region, speech_regions, windows

#: Most speakers a request may ask for (``max_speakers``/``speakers_expected``).
MAX_SPEAKERS = 20
#: Cosine similarity from which a speaker's centroid is taken to be a profile's voice.
MATCH_THRESHOLD = 0.80
FRAME_MS = 10

Block = tuple[int, np.ndarray]


class DiarizeOptionsError(ValueError):
    """Inconsistent options; ``field`` names the offending one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DiarizeOptions:
    """Speaker-count options of a request (None = estimate)."""

    min_speakers: int | None = None
    max_speakers: int | None = None
    speakers_expected: int | None = None

    def validate(self) -> DiarizeOptions:
        """Self, or ``DiarizeOptionsError`` naming the field that is out of range."""
        for name in ("min_speakers", "max_speakers", "speakers_expected"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise DiarizeOptionsError(name, f"{name} must be between 1 and {MAX_SPEAKERS}.")
        lo, hi = self.min_speakers, self.max_speakers
        if lo is not None and hi is not None and lo > hi:
            raise DiarizeOptionsError("min_speakers", "min_speakers must not exceed max_speakers.")
        exp = self.speakers_expected
        if exp is not None and ((lo is not None and exp < lo) or (hi is not None and exp > hi)):
            raise DiarizeOptionsError("speakers_expected",
                                      "speakers_expected must lie within min_speakers and "
                                      "max_speakers.")
        return self

    def to_json(self) -> dict[str, int | None]:
        return {"min_speakers": self.min_speakers, "max_speakers": self.max_speakers,
                "speakers_expected": self.speakers_expected}


@dataclass(frozen=True)
class VoiceProfile:
    """A known voice: the end user it belongs to and its unit embedding."""

    profile_id: str
    end_user_id: str
    embedding: np.ndarray


@dataclass(frozen=True)
class Speaker:
    """One speaker of a recording (``talk_time_ms`` = its labelled speech)."""

    label: str
    talk_time_ms: int
    end_user_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "talk_time_ms": self.talk_time_ms,
                "end_user_id": self.end_user_id}


@dataclass(frozen=True)
class Turn:
    """``[start_ms, end_ms)`` of speech by ``label``."""

    start_ms: int
    end_ms: int
    label: str


@dataclass(frozen=True)
class Diarization:
    """Turns in timeline order (non-overlapping) and the speakers in label order."""

    turns: tuple[Turn, ...]
    speakers: tuple[Speaker, ...]

    def label_at(self, start_ms: int, end_ms: int) -> str | None:
        """The label with most speech in ``[start_ms, end_ms)``; else the nearest turn's."""
        if not self.turns:
            return None
        overlap: dict[str, int] = {}
        for t in self.turns:
            o = min(end_ms, t.end_ms) - max(start_ms, t.start_ms)
            if o > 0:
                overlap[t.label] = overlap.get(t.label, 0) + o
        if overlap:
            return max(overlap.items(), key=lambda kv: (kv[1], -int(kv[0][1:])))[0]
        mid = (start_ms + end_ms) / 2
        return min(self.turns, key=lambda t: max(t.start_ms - mid, mid - t.end_ms, 0.0)).label


@dataclass(frozen=True)
class Embedded:
    """The speech of some audio and its window embeddings: ``regions`` and ``spans`` in
    10 ms frames on one timeline, ``emb`` one unit row (256 float32) per span."""

    regions: tuple[Region, ...]
    spans: tuple[tuple[int, int], ...]
    emb: np.ndarray

    def shifted(self, frames: int) -> Embedded:
        """The same, ``frames`` later on the timeline."""
        return Embedded(tuple(Region(r.start + frames, r.end + frames) for r in self.regions),
                        tuple((a + frames, b + frames) for a, b in self.spans), self.emb)

    @staticmethod
    def join(parts: Sequence[Embedded]) -> Embedded:
        """Consecutive parts (each later on the timeline than the one before) as one."""
        embs = [p.emb for p in parts if len(p.emb)]
        return Embedded(tuple(r for p in parts for r in p.regions),
                        tuple(s for p in parts for s in p.spans),
                        np.concatenate(embs) if embs else _NO_EMB)


_NO_EMB = np.zeros((0, 256), np.float32)


class Diarizer:
    """Holds one loaded encoder; thread-compatible (no state between calls). ``threads``
    caps numpy's BLAS threads during a call (1 is the most CPU-efficient: idle BLAS
    threads spin)."""

    def __init__(self, encoder: SpeakerEncoder | None = None, threads: int = 1) -> None:
        self._encoder = encoder or SpeakerEncoder()
        self._threads = threads

    def _embed_blocks(self, blocks: Iterable[Block]) -> Embedded:
        regions: list[Region] = []
        spans: list[tuple[int, int]] = []
        embs: list[np.ndarray] = []
        for start, samples in blocks:
            found = speech_regions(samples, start)
            w = windows(samples, start, found)
            regions.extend(found)
            spans.extend(w.spans)
            if len(w.mels):
                embs.append(self._encoder.embed(w.mels))
        return Embedded(tuple(regions), tuple(spans),
                        np.concatenate(embs) if embs else _NO_EMB)

    def embed(self, blocks: Iterable[Block]) -> Embedded:
        """Speech regions and window embeddings of ``blocks`` (the expensive half)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self._threads):
            return self._embed_blocks(blocks)

    def voice(self, blocks: Iterable[Block]) -> tuple[np.ndarray, int] | None:
        """``(unit mean embedding, speech ms)`` of the speech in ``blocks`` (one voice, e.g.
        an enrollment sample); None when it has too little speech to embed."""
        e = self.embed(blocks)
        if len(e.emb) == 0:
            return None
        mean = e.emb.mean(0)
        speech_ms = sum(r.end - r.start for r in e.regions) * FRAME_MS
        return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), np.float32), speech_ms

    def diarize(self, blocks: Iterable[Block], options: DiarizeOptions | None = None,
                profiles: Sequence[VoiceProfile] = ()) -> Diarization:
        """Who spoke when in ``blocks`` (see the module docstring)."""
        opts = (options or DiarizeOptions()).validate()
        return self.diarize_embedded(self.embed(blocks), opts, profiles)

    def diarize_embedded(self, embedded: Embedded, options: DiarizeOptions | None = None,
                         profiles: Sequence[VoiceProfile] = ()) -> Diarization:
        """Who spoke when, from what ``embed`` found (clustering and labels only)."""
        opts = (options or DiarizeOptions()).validate()
        if not embedded.regions:
            return Diarization((), ())
        emb = embedded.emb
        if len(emb) == 0:  # speech too short to embed: one speaker
            labels, centroids = np.zeros(0, np.int64), np.zeros((1, 256))
        else:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=self._threads):
                labels, centroids = cluster(emb, Bounds(opts.min_speakers, opts.max_speakers,
                                                        opts.speakers_expected))
        frame_turns = _frame_turns(embedded.regions, embedded.spans, emb, labels, centroids)
        return _name(frame_turns, centroids, profiles)


def _frame_turns(regions: Sequence[Region], spans: Sequence[tuple[int, int]], emb: np.ndarray,
                 labels: np.ndarray, centroids: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start_frame, end_frame, cluster)`` runs over the speech regions: each frame goes to
    the cluster with the highest summed similarity over the windows covering it (a frame no
    window covers takes the nearest window's cluster)."""
    if len(emb) == 0:
        return [(r.start, r.end, 0) for r in regions]
    sims = emb @ centroids.T  # (windows, k)
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    centers = (starts + ends) / 2
    out: list[tuple[int, int, int]] = []
    for r in regions:
        n = r.end - r.start
        if n <= 0:
            continue
        score = np.zeros((n + 1, sims.shape[1]))
        inside = np.flatnonzero((ends > r.start) & (starts < r.end))
        for w in inside:
            score[max(0, starts[w] - r.start)] += sims[w]
            score[min(n, ends[w] - r.start)] -= sims[w]
        covered = np.cumsum(score, axis=0)[:n]
        frame_labels = np.argmax(covered, axis=1)
        empty = ~np.any(covered != 0, axis=1)
        if empty.any():
            mids = r.start + np.flatnonzero(empty)
            nearest = np.argmin(np.abs(centers[None, :] - mids[:, None]), axis=1)
            frame_labels[empty] = labels[nearest]
        change = np.flatnonzero(np.diff(frame_labels)) + 1
        bounds = [0, *change.tolist(), n]
        out.extend((r.start + a, r.start + b, int(frame_labels[a]))
                   for a, b in itertools.pairwise(bounds))
    return out


def _name(runs: list[tuple[int, int, int]], centroids: np.ndarray,
          profiles: Sequence[VoiceProfile]) -> Diarization:
    """Labels ``S1``… in order of first appearance, talk times, matched end users."""
    order: dict[int, str] = {}
    talk: dict[int, int] = {}
    for a, b, c in sorted(runs):
        order.setdefault(c, f"S{len(order) + 1}")
        talk[c] = talk.get(c, 0) + (b - a) * FRAME_MS
    users = _match(centroids, profiles, list(order))
    turns: list[Turn] = []
    for a, b, c in sorted(runs):
        label = order[c]
        if turns and turns[-1].label == label and turns[-1].end_ms == a * FRAME_MS:
            turns[-1] = replace(turns[-1], end_ms=b * FRAME_MS)
        else:
            turns.append(Turn(a * FRAME_MS, b * FRAME_MS, label))
    speakers = tuple(Speaker(order[c], talk[c], users.get(c)) for c in order)
    return Diarization(tuple(turns), speakers)


def _match(centroids: np.ndarray, profiles: Sequence[VoiceProfile],
           clusters: list[int]) -> dict[int, str]:
    """Cluster → end user: greedily the most similar (cluster, profile) pairs at or above
    ``MATCH_THRESHOLD``; each cluster and each end user matched at most once."""
    if not profiles or not clusters:
        return {}
    prof = np.stack([p.embedding for p in profiles]).astype(np.float64)
    sims = centroids[clusters] @ prof.T
    pairs = sorted(((float(sims[i, j]), clusters[i], profiles[j].end_user_id)
                    for i in range(len(clusters)) for j in range(len(profiles))), reverse=True)
    out: dict[int, str] = {}
    for sim, c, user in pairs:
        if sim < MATCH_THRESHOLD:
            break
        if c not in out and user not in out.values():
            out[c] = user
    return out


def label_transcript(segments: Sequence[Segment], diarization: Diarization
                     ) -> tuple[list[Segment], list[Speaker]]:
    """Every segment and word gets its speaker; a segment whose words change speaker is
    split at each change (texts re-joined from the words). Speakers are those of the
    diarization (talk time = their labelled speech)."""
    out: list[Segment] = []
    for seg in segments:
        out.extend(_label_segment(seg, diarization))
    return out, list(diarization.speakers)


def _label_segment(seg: Segment, d: Diarization) -> list[Segment]:
    if not seg.words:
        return [replace(seg, speaker=d.label_at(seg.start_ms, seg.end_ms))]
    words = [replace(w, speaker=d.label_at(w.start_ms, max(w.end_ms, w.start_ms + 1)))
             for w in seg.words]
    runs: list[list[Word]] = []
    for w in words:
        if runs and runs[-1][-1].speaker == w.speaker:
            runs[-1].append(w)
        else:
            runs.append([w])
    if len(runs) == 1:
        return [replace(seg, speaker=runs[0][0].speaker, words=tuple(words))]
    pieces: list[Segment] = []
    for i, run in enumerate(runs):
        start = seg.start_ms if i == 0 else run[0].start_ms
        end = seg.end_ms if i == len(runs) - 1 else run[-1].end_ms
        conf = round(sum(w.confidence for w in run) / len(run), 4)
        pieces.append(Segment(start, max(end, start), " ".join(w.word for w in run), conf,
                              run[0].speaker, tuple(run)))
    return pieces


def pcm_blocks(pcm: np.ndarray, block_samples: int = 30 * 16_000) -> Iterable[Block]:
    """Blocks of an in-memory 16 kHz signal (tests, enrollment samples)."""
    for start in range(0, len(pcm), block_samples):
        yield start, np.asarray(pcm[start:start + block_samples], np.float32)


__all__ = [
    "MATCH_THRESHOLD",
    "MAX_SPEAKERS",
    "Block",
    "Diarization",
    "DiarizeOptions",
    "DiarizeOptionsError",
    "Diarizer",
    "Embedded",
    "Speaker",
    "Turn",
    "VoiceProfile",
    "label_transcript",
    "pcm_blocks",
]
