"""Benchmark: webhook delivery throughput, against a same-run baseline.

Run: ``.venv/bin/python bench/webhooks.py [--events N] [--runs R] [--workers W]
[--per-endpoint P]``

A real SQLite file, a real HTTP receiver on 127.0.0.1 and the real dispatcher. The receiver
is a threaded ``http.server`` in its OWN process (as a real receiver is: in the bench's process
it would compete with the dispatcher for one GIL, which measures the test harness, not the
product), with a listen backlog of 1024 so concurrent connections are never refused. Each
run measures, for N events:

* baseline      — N signed POSTs through the same ``GuardedTransport`` (kept-alive
  connection), one at a time, no database: what HTTP alone costs;
* 1 endpoint    — the dispatcher delivering N events (each of its own recording) to one
  endpoint, from emit to the last arrival;
* 4 endpoints   — N events fanned out to four endpoints (4 x N deliveries);
* 1 slow of 4   — the same with one of the four answering each request after 2 s: the rate
  counts the 3 x N deliveries to the three others, until the last of them arrived (one slow
  endpoint must delay nobody else: target >= 0.7x).

The dispatcher runs with ``--workers`` attempts in total and ``--per-endpoint`` per endpoint
(order is kept per recording at any ``per_endpoint``). Prints the median deliveries/s over R
runs and the ratio to the baseline (targets: >= 0.8x for 1 and 4 endpoints).
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "webhooks")]

from tapedeck.clock import SystemClock  # noqa: E402
from tapedeck.webhooks.netguard import NetGuard, NetPolicy  # noqa: E402
from tapedeck.webhooks.signing import envelope, new_secret, signed_headers  # noqa: E402
from tapedeck.webhooks.transport import GuardedTransport  # noqa: E402

from webhookkit import make_env  # noqa: E402

SLOW_S = 2.0


# -- the receiver (a child process) ------------------------------------------------------------
def serve() -> None:
    """The receiver process: answers every POST with 200 (after ``SLOW_S`` on paths ending
    in ``/slow``), counts the fast ones; ``GET /count`` answers that count. Prints its port."""
    count = 0
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal count
            self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path.endswith("/slow"):
                time.sleep(SLOW_S)
            else:
                with lock:
                    count += 1
            self._answer(b"ok")

        def do_GET(self) -> None:
            with lock:
                self._answer(str(count).encode())

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024  # the listen backlog: many connections at once
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever(0.05)


class Receiver:
    """The receiver child process and its counter."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=10) as r:
            return int(r.read())

    def wait_count(self, n: int, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count()} of {n} deliveries arrived")
            time.sleep(0.005)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- the cases ---------------------------------------------------------------------------------
def baseline(receiver: Receiver, n: int) -> float:
    """Deliveries/s of plain signed POSTs, no database."""
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
        transport.close()


def dispatcher(receiver: Receiver, n: int, endpoints: int, slow: bool, workers: int,
               per_endpoint: int) -> float:
    """Deliveries/s of the dispatcher to the fast endpoints, from emit to the last arrival."""
    with tempfile.TemporaryDirectory() as tmp, \
            make_env(Path(tmp), clock=SystemClock()) as env:
        fast = endpoints - 1 if slow else endpoints
        for i in range(endpoints):
            env.webhooks.create(env.principal, f"{receiver.url}/{i}" + (
                "/slow" if i >= fast else ""), ["*"])
        d = env.dispatcher(poll_s=0.01, workers=workers, per_endpoint=per_endpoint,
                           timeout_s=30)
        d.start()
        before = receiver.count()
        start = time.perf_counter()
        env.emit(n=n)
        receiver.wait_count(before + n * fast)
        rate = n * fast / (time.perf_counter() - start)
        d.stop(grace=0.0)  # slow attempts still running are abandoned (leases released)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--per-endpoint", type=int, default=4)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    cases = {"1 endpoint": (1, False), "4 endpoints": (4, False), "1 slow of 4": (4, True)}
    results: dict[str, list[float]] = {"baseline": [], **{name: [] for name in cases}}
    receiver = Receiver()
    try:
        for _ in range(args.runs):
            results["baseline"].append(baseline(receiver, args.events))
            for name, (endpoints, slow) in cases.items():
                results[name].append(dispatcher(receiver, args.events, endpoints, slow,
                                                args.workers, args.per_endpoint))
    finally:
        receiver.close()
    base = statistics.median(results["baseline"])
    print(f"{args.events} events, median of {args.runs} runs, workers={args.workers},"
          f" per_endpoint={args.per_endpoint}")
    for name, values in results.items():
        rate = statistics.median(values)
        print(f"  {name:<12} {rate:8.0f} deliveries/s   x{rate / base:.2f} of baseline")


if __name__ == "__main__":
    main()
