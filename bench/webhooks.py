"""Benchmark: webhook delivery throughput, against a same-run baseline.

Run: ``.venv/bin/python bench/webhooks.py [--events N] [--runs R]``

A real SQLite file, a real HTTP receiver on 127.0.0.1 (``http.server``, answers 200) and the
real dispatcher. Each run measures, for N events:

* baseline     — N signed POSTs through the same ``GuardedTransport``, one at a time, no
  database (what HTTP alone costs);
* 1 endpoint   — the dispatcher delivering N events (each of its own recording) to one
  endpoint (``per_endpoint=8``; order is kept per recording), from emit to the last arrival;
* 4 endpoints  — N events fanned out to four endpoints (4 x N deliveries, 8 workers).

Prints the median deliveries/s over R runs and the ratio to the baseline. The dispatcher pays
one SQLite write transaction (``synchronous=FULL``) per round: it records every attempt
finished since the last round and leases the next deliveries in the same commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "webhooks")]

from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.webhooks.netguard import NetGuard, NetPolicy  # noqa: E402
from tapedeck.webhooks.signing import envelope, new_secret, signed_headers  # noqa: E402
from tapedeck.webhooks.transport import GuardedTransport  # noqa: E402

from webhookkit import Receiver, make_env  # noqa: E402


def baseline(n: int) -> float:
    """Deliveries/s of plain signed POSTs, no database."""
    receiver = Receiver()
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=True)))
    secret = new_secret()
    try:
        start = time.perf_counter()
        for i in range(n):
            body = envelope(f"evt_{i}", "recording.created", "2026-01-01T00:00:00.000Z", {"i": i})
            headers = signed_headers(secret, f"evt_{i}", int(time.time()), body)
            assert transport.post(receiver.url, headers, body, 30).status == 200
        return n / (time.perf_counter() - start)
    finally:
        receiver.close()


def dispatcher(n: int, endpoints: int) -> float:
    """Deliveries/s of the dispatcher, from emit to the last arrival."""
    receiver = Receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                make_env(Path(tmp), clock=SystemClock()) as env:
            for i in range(endpoints):
                env.webhooks.create(env.principal, f"{receiver.url}/{i}", ["*"])
            d = env.dispatcher(poll_s=0.01, workers=8, per_endpoint=8, timeout_s=30)
            d.start()
            start = time.perf_counter()
            env.emit(n=n)
            assert receiver.wait_for(lambda r: len(r) >= n * endpoints, 600)
            return n * endpoints / (time.perf_counter() - start)
    finally:
        receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"baseline": [], "1 endpoint": [], "4 endpoints": []}
    for _ in range(args.runs):
        results["baseline"].append(baseline(args.events))
        results["1 endpoint"].append(dispatcher(args.events, 1))
        results["4 endpoints"].append(dispatcher(args.events, 4))
    base = statistics.median(results["baseline"])
    print(f"{args.events} events, median of {args.runs} runs")
    for name, values in results.items():
        rate = statistics.median(values)
        print(f"  {name:<12} {rate:8.0f} deliveries/s   x{rate / base:.2f} of baseline")


if __name__ == "__main__":
    main()
