"""Per-credential request rate limit (token bucket), shared by REST and gRPC.

Each credential (``Principal.credential_id`` within its project; upload tokens per recording)
has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second; every authenticated
request takes one, and a request finding the bucket empty fails with
``rate_limit_exceeded`` (HTTP 429 / RESOURCE_EXHAUSTED) carrying ``retry_after_s``.
``rate <= 0`` disables the limit. Buckets live in this process's memory: with several API
processes each enforces the limit on its own share of the traffic.
"""

from __future__ import annotations

import math
import threading

from tapedeck.auth import Principal
from tapedeck.clock import Clock
from tapedeck.errors import error

_MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets keyed by credential."""

    def __init__(self, clock: Clock, rate: float, burst: int | None = None) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(2 * rate))
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def check(self, p: Principal) -> None:
        """Take one token for ``p``, or raise ``rate_limit_exceeded``."""
        if self.rate <= 0:
            return
        key = f"{p.project_id}/{p.kind}/{p.credential_id}/{p.recording_id or ''}"
        now = self._clock.now().timestamp()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise error("rate_limit_exceeded",
                            f"Too many requests for this credential; retry in {wait} s.",
                            retry_after_s=wait)
            if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
                self._buckets.clear()  # crude bound on memory; full buckets are the default
            self._buckets[key] = (tokens - 1.0, now)
