"""``tapedeck.ids``: prefixed ids sort in creation order, whatever the clock does."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from tapedeck.ids import new_id


def test_ids_made_at_one_instant_sort_in_order() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [new_id("v", at) for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 21 for i in ids)


def test_a_clock_that_steps_back_still_sorts_later() -> None:
    later = new_id("v", datetime(2030, 1, 1, tzinfo=UTC))
    earlier_clock = new_id("v", datetime(2030, 1, 1, tzinfo=UTC) - timedelta(days=1))
    assert earlier_clock > later


def test_the_time_part_follows_the_given_clock() -> None:
    a = new_id("x", datetime(2100, 1, 1, tzinfo=UTC))
    b = new_id("x", datetime(2100, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert a[:9] < b[:9]  # a later millisecond: a larger time part


def test_threads_never_share_an_id() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        mine = [new_id("t_") for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2000
