"""Diarization from chunks embedded one by one (live transcription, issues 13 + 14).

While a recording streams, each chunk's own speech is embedded on its own
(``tapedeck.background.transcribe.live.embed_piece``, the chunk decoded after its predecessor as in the
stitched file); at the end, the pieces are shifted to their chunk's start on the stitched
timeline and clustered once (``Embedded.join`` + ``Diarizer.diarize_embedded``). Here a
three-voice conversation of real recordings (``voicekit``), encoded as the agent does (one
encoder across chunks) and as a naive device would (a fresh encoder per chunk, which moves
every boundary by a few ms), is diarized that way and as one stitched file: the speaker
count is the same, the chunked DER meets the issue's 15 %, and the two label the same
10 ms frames alike (but for boundary effects: a region cut by a chunk boundary is embedded as
two).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tapedeck.background.transcribe.decode import iter_pcm, iter_windows
from tapedeck.background.transcribe.live import embed_piece, piece_audio
from tapedeck.diarize import Diarization, Diarizer, Embedded
from tapedeck.oggopus import remux
from tapedeck_agent.encoder import OpusChunker

import voicekit as vk
from stitchkit import encode_independent_chunks

CHUNK_MS = 20_000
MAX_DER = 0.15


def _int16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


def _chunks(pcm: np.ndarray, kind: str) -> list[bytes]:
    if kind == "seamless":
        chunker = OpusChunker(chunk_duration_ms=CHUNK_MS, bitrate=24_000)
        return [c.data for c in chunker.feed(_int16(pcm)) + chunker.finish()]
    return [c.data for c in encode_independent_chunks(_int16(pcm), chunk_duration_ms=CHUNK_MS,
                                                      bitrate=24_000)]


def _live(diarizer: Diarizer, chunks: list[bytes]) -> Diarization:
    """Each chunk embedded alone, shifted by the sum of the deltas, clustered once."""
    parts: list[Embedded] = []
    start48 = 0
    for i, chunk in enumerate(chunks):
        audio, overlap, delta48, _ = piece_audio(chunk, chunks[i - 1] if i else None)
        if i:
            assert delta48 is not None
            start48 += delta48
        parts.append(embed_piece(diarizer, audio, overlap).shifted(start48 // 480))
    return diarizer.diarize_embedded(Embedded.join(parts))


def _whole(diarizer: Diarizer, chunks: list[bytes]) -> Diarization:
    stitched = io.BytesIO()
    remux([io.BytesIO(c) for c in chunks], stitched)
    stitched.seek(0)
    return diarizer.diarize((w.start, w.samples) for w in iter_windows(iter_pcm(stitched)))


def _frames(d: Diarization) -> dict[int, str]:
    return {f: t.label for t in d.turns for f in range(t.start_ms // 10, t.end_ms // 10)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["seamless", "independent"])
def test_chunks_embedded_alone_diarize_like_the_stitched_file(diarizer: Diarizer,
                                                              kind: str) -> None:
    conv = vk.conversation(["allison", "carlo", "menardi"], 9, 77, min_turn=4, max_turn=14)
    chunks = _chunks(conv.pcm, kind)
    assert len(chunks) >= 4  # boundaries inside the conversation
    live, whole = _live(diarizer, chunks), _whole(diarizer, chunks)

    assert len(live.speakers) == len(whole.speakers) == 3
    hyp = [(t.start_ms / 1000, t.end_ms / 1000, t.label) for t in live.turns]
    assert vk.der(conv, hyp) <= MAX_DER
    a, b = _frames(live), _frames(whole)
    shared = a.keys() & b.keys()
    assert len(shared) >= 0.9 * len(b)  # the same speech found
    same = sum(a[f] == b[f] for f in shared)
    print(f"{kind}: {same} of {len(shared)} frames labelled alike")
    assert same >= 0.95 * len(shared)


def test_embedded_pieces_shift_and_join_in_timeline_order(diarizer: Diarizer) -> None:
    conv = vk.conversation(["carlo"], 1, 3, min_turn=3, max_turn=5)
    one = diarizer.embed([(0, conv.pcm)])
    assert one.regions and len(one.emb) == len(one.spans) > 0
    later = one.shifted(1000)
    assert [(r.start - 1000, r.end - 1000) for r in later.regions] == [
        (r.start, r.end) for r in one.regions]
    both = Embedded.join([one, later])
    assert both.spans == one.spans + later.spans
    assert np.array_equal(both.emb, np.concatenate([one.emb, one.emb]))
    assert Embedded.join([]).emb.shape == (0, 256)
