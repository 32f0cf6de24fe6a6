"""Benchmark: transcript search latency and the cost of indexing, against same-run baselines.

Run: ``.venv/bin/python bench/search.py [--transcripts 10000] [--minutes 30] [--queries 200]``
(smaller, e.g. ``--transcripts 1000``, for a quick look; the output says what ran).

The embedded default: a real SQLite file (``tapedeck.infra.db.Database``: WAL, synchronous=FULL)
with the FTS5 index of ``tapedeck.domain.search_index``. Corpus: N synthetic transcripts of
M minutes each (~150 words a minute, segments of 8-16 words over 3-6 s), words drawn from a
Zipf distribution (s = 1.07) over an English-like vocabulary: 60 real function words first,
then 30,000 generated words; segments carry no word timestamps unless ``--with-words``
(the index reads only the text; word JSON makes the transcript much larger to store).

It prints:

* search — latency p50/p99 of ``Search.search`` (parse, FTS5 MATCH with BM25, filters,
  snippets; 25 hits a page), per query class: a rare word, a mid-frequency word, a phrase,
  a prefix, an OR, a NOT, a frequent word (in most segments: the worst case, BM25 ranks every
  match), the same by newest-first, and a mid word filtered to one device; with the ratio to
  the baseline: reading one transcript by id (``Transcriptions.get``) on the same database.
* indexing — on transcripts stored after the corpus (so the index is full-size): the median
  completion transaction without indexing (row completed with text and segments, recording
  updated, committed durably) versus the same transaction with the index write; ratio =
  index time / store time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server")]

from tapedeck.auth import Authenticator, Principal, UploadTokens, create_project  # noqa: E402
from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.domain.context import Context, KeyedLocks  # noqa: E402
from tapedeck.domain.search import Search, SearchRequest  # noqa: E402
from tapedeck.domain.search_index import backend_for  # noqa: E402
from tapedeck.domain.transcriptions import Transcriptions  # noqa: E402
from tapedeck.infra.db import Database  # noqa: E402
from tapedeck.settings import Settings  # noqa: E402

_FUNCTION = ("the be to of and a in that have i it for not on with he as you do at this but "
             "his by from they we say her she or an will my one all would there their what so "
             "up out if about who get which go me when make can like time no just him know "
             "take")
FUNCTION_WORDS = _FUNCTION.split()
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tu", "vel", "dor", "an", "is", "pe", "qua",
             "ri", "son", "ta", "ul", "ber", "cho", "fen", "gri", "hal", "jo", "lin", "mar")
WORDS_PER_MIN = 150


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words, seen = list(FUNCTION_WORDS), set(FUNCTION_WORDS)
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class Corpus:
    """Draws segments of Zipf-distributed words."""

    def __init__(self, seed: int, vocab_size: int = 30_060) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(vocab_size, self.rng)
        weights = [1 / (r + 1) ** 1.07 for r in range(len(self.words))]
        total = sum(weights)
        self.cum = list(_accumulate([w / total for w in weights]))

    def draw(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)

    def segments(self, minutes: float, with_words: bool) -> list[dict[str, Any]]:
        out, at, end = [], 0, int(minutes * 60_000)
        while at < end:
            words = self.draw(self.rng.randint(8, 16))
            dur = int(len(words) * 60_000 / WORDS_PER_MIN)
            seg: dict[str, Any] = {"start_ms": at, "end_ms": at + dur,
                                   "text": " " + " ".join(words).capitalize() + ".",
                                   "confidence": 0.9, "speaker": None, "words": []}
            if with_words:
                step = dur // len(words)
                seg["words"] = [{"word": " " + w, "start_ms": at + i * step,
                                 "end_ms": at + (i + 1) * step, "confidence": 0.9}
                                for i, w in enumerate(words)]
            out.append(seg)
            at += dur + self.rng.randint(200, 1_500)
        return out


def _accumulate(xs: list[float]) -> list[float]:
    out, s = [], 0.0
    for x in xs:
        s += x
        out.append(s)
    return out


# -- storing ---------------------------------------------------------------------------------

def new_rows(tx: Any, project_id: str, i: int, device: str) -> str:
    """A completed recording with a processing transcription (as the job finds it)."""
    rec, txn = f"rec_b{i:07d}", f"txn_b{i:07d}"
    t = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00.000Z"
    tx.execute("INSERT INTO recordings (id, project_id, device_id, status, codec, streaming,"
               " started_at, created_at, updated_at, transcription_id, transcription_status)"
               " VALUES (?, ?, ?, 'completed', 'opus', 1, ?, ?, ?, ?, 'processing')",
               [rec, project_id, device, t, t, t, txn])
    tx.execute("INSERT INTO transcriptions (id, recording_id, project_id, status, provider,"
               " created_at) VALUES (?, ?, ?, 'processing', 'whisper', ?)",
               [txn, rec, project_id, t])
    return txn


def complete(tx: Any, txn: str, segments: list[dict[str, Any]]) -> None:
    """The completion write of ``TranscribeHandler._finish`` (without the job and event)."""
    text = " ".join(s["text"].strip() for s in segments)
    tx.execute("UPDATE transcriptions SET status = 'completed', language = 'en', model ="
               " 'whisper-base', duration_ms = ?, text = ?, segments = ?, word_count = ?,"
               " completed_at = '2026-12-01T00:00:00.000Z' WHERE id = ?",
               [segments[-1]["end_ms"], text, json.dumps(segments, separators=(",", ":")),
                len(text.split()), txn])
    tx.execute("UPDATE recordings SET transcription_status = 'completed' WHERE"
               " transcription_id = ?", [txn])


def build(db: Database, corpus: Corpus, project_id: str, n: int, minutes: float,
          with_words: bool, devices: list[str]) -> None:
    index = backend_for(db)
    started = time.perf_counter()
    for start in range(0, n, 50):
        with db.write(durable=False) as tx:
            for i in range(start, min(n, start + 50)):
                txn = new_rows(tx, project_id, i, devices[i % len(devices)])
                complete(tx, txn, corpus.segments(minutes, with_words))
                index.replace(tx, txn)
        if (start // 50) % 20 == 19:
            done = start + 50
            rate = done / (time.perf_counter() - started)
            print(f"  built {done}/{n} transcripts ({rate:.0f}/s)", file=sys.stderr)


def indexing_cost(db: Database, corpus: Corpus, project_id: str, first: int, k: int,
                  minutes: float, with_words: bool) -> tuple[float, float]:
    """Median seconds of the durable completion transaction without and with indexing,
    alternating on fresh transcripts of the same shape."""
    index = backend_for(db)
    plain: list[float] = []
    indexed: list[float] = []
    for j in range(2 * k):
        segments = corpus.segments(minutes, with_words)
        with db.write(durable=False) as tx:
            txn = new_rows(tx, project_id, first + j, "dev_bench0")
        t0 = time.perf_counter()
        with db.write() as tx:
            complete(tx, txn, segments)
            if j % 2:
                index.replace(tx, txn)
        (indexed if j % 2 else plain).append(time.perf_counter() - t0)
    return statistics.median(plain), statistics.median(indexed)


# -- searching -------------------------------------------------------------------------------

def query_classes(corpus: Corpus) -> dict[str, Callable[[random.Random], SearchRequest]]:
    w = corpus.words
    rare, mid, frequent = w[20_000:30_000], w[200:2_000], w[:20]

    def pick(pool: list[str]) -> Callable[[random.Random], str]:
        return lambda r: r.choice(pool)

    rare_w, mid_w, freq_w = pick(rare), pick(mid), pick(frequent)
    return {
        "rare word": lambda r: SearchRequest(q=rare_w(r)),
        "mid word": lambda r: SearchRequest(q=mid_w(r)),
        "phrase": lambda r: SearchRequest(q=f'"{freq_w(r)} {mid_w(r)}"'),
        "prefix": lambda r: SearchRequest(q=mid_w(r)[:5] + "*"),
        "a OR b": lambda r: SearchRequest(q=f"{mid_w(r)} OR {rare_w(r)}"),
        "a NOT b": lambda r: SearchRequest(q=f"{mid_w(r)} NOT {freq_w(r)}"),
        "mid, 1 device": lambda r: SearchRequest(q=mid_w(r), device_id="dev_bench3"),
        "frequent word": lambda r: SearchRequest(q=freq_w(r)),
        "frequent, newest": lambda r: SearchRequest(q=freq_w(r), order="newest"),
    }


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transcripts", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--queries", type=int, default=200, help="per query class")
    ap.add_argument("--frequent-queries", type=int, default=20,
                    help="per frequent-word class (each ranks most of the corpus)")
    ap.add_argument("--index-samples", type=int, default=20)
    ap.add_argument("--with-words", action="store_true")
    ap.add_argument("--seed", type=int, default=20)
    args = ap.parse_args()

    corpus = Corpus(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "bench.db")
        clock = SystemClock()
        project_id, key = create_project(db, clock)
        ctx = Context(db=db, store=None, clock=clock,  # type: ignore[arg-type]  # no store
                      settings=Settings(data_dir=Path(tmp)), locks=KeyedLocks())
        p: Principal = Authenticator(db, UploadTokens(b"k" * 32), clock).authenticate(
            f"Bearer {key}")
        devices = [f"dev_bench{i}" for i in range(10)]
        t0 = time.perf_counter()
        build(db, corpus, project_id, args.transcripts, args.minutes, args.with_words,
              devices)
        built_s = time.perf_counter() - t0
        segs = db.read().execute("SELECT count(*) FROM search_segments").fetchone()[0]
        words = db.read().execute("SELECT sum(word_count) FROM transcriptions").fetchone()[0]
        size_mb = (Path(tmp) / "bench.db").stat().st_size / 2**20
        print(f"corpus: {args.transcripts} transcripts x {args.minutes:g} min, {segs} segments,"
              f" {words} words, word timestamps {'yes' if args.with_words else 'no'};"
              f" built in {built_s:.0f} s; database {size_mb:.0f} MiB")

        search = Search(ctx)
        reader = Transcriptions(ctx)
        rng = random.Random(args.seed)
        txn_ids = [f"txn_b{rng.randrange(args.transcripts):07d}" for _ in range(args.queries)]
        it = iter(txn_ids)
        base = timed(lambda: reader.get(p, next(it)), len(txn_ids))
        b50, b99 = percentiles(base)
        print(f"\nbaseline: read one {args.minutes:g}-min transcript by id"
              f"  p50 {b50 * 1e3:.2f} ms  p99 {b99 * 1e3:.2f} ms\n")
        print(f"{'search (25 hits/page)':<22} {'n':>4} {'p50 ms':>9} {'p99 ms':>9}"
              f" {'p50/base':>9} {'p99/base':>9} {'hits p50':>9}")
        everything: list[float] = []
        for name, make in query_classes(corpus).items():
            n = args.frequent_queries if name.startswith("frequent") else args.queries
            reqs = [make(rng) for _ in range(n)]
            counts: list[int] = []
            times = []
            for req in reqs:
                t0 = time.perf_counter()
                counts.append(len(search.search(p, req).data))
                times.append(time.perf_counter() - t0)
            everything += times
            p50, p99 = percentiles(times)
            print(f"{name:<22} {n:>4} {p50 * 1e3:>9.2f} {p99 * 1e3:>9.2f} {p50 / b50:>9.1f}"
                  f" {p99 / b50:>9.1f} {statistics.median(counts):>9.0f}")
        a50, a99 = percentiles(everything)
        print(f"{'all classes':<22} {len(everything):>4} {a50 * 1e3:>9.2f} {a99 * 1e3:>9.2f}"
              f" {a50 / b50:>9.1f} {a99 / b50:>9.1f}")

        store_s, with_index_s = indexing_cost(db, corpus, project_id, args.transcripts + 1,
                                              args.index_samples, args.minutes,
                                              args.with_words)
        index_s = with_index_s - store_s
        print(f"\nindexing ({args.index_samples} x 2 durable completion transactions on the"
              f" full index): store {store_s * 1e3:.1f} ms, store+index"
              f" {with_index_s * 1e3:.1f} ms; index/store = {index_s / store_s:.2f}"
              f" (store+index)/store = {with_index_s / store_s:.2f}")
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
