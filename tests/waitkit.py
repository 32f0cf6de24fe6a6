"""THE poll helper of the tests: wait for a condition another thread or process brings about.

A hang guard, not a timing assertion: ``timeout`` only bounds how long a broken build takes
to fail (the machine is shared and noisy; never assert how long something took).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def truthy(value: object) -> bool:
    return bool(value)


def not_none(value: object) -> bool:
    return value is not None


def wait_for(probe: Callable[[], T], timeout: float, what: str = "a condition", *,
             interval: float = 0.1, done: Callable[[T], bool] = truthy) -> T:
    """Call ``probe`` every ``interval`` s until ``done(value)`` (default: truthy); return
    that value. ``AssertionError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
