"""kill -9 the `tapedeck dispatcher` process repeatedly while 1,000 events are pending: every
event arrives, and the only duplicates are re-sends with the same webhook-id and bytes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from tapedeck.clock import SystemClock

from serverkit import ChildServer, make_settings, spawn_server
from webhookkit import Received, Receiver, make_env

TOTAL = 1000


def _slow_ok(r: Received) -> tuple[int, dict[str, str], bytes]:
    time.sleep(0.002)  # widen the window between "receiver has it" and "dispatcher logged it"
    return (200, {}, b"")


def test_kill_9_dispatcher_repeatedly_loses_nothing(weed: Any, tmp_path: Path) -> None:
    receiver = Receiver(responder=_slow_ok)
    settings = make_settings(weed, tmp_path / "data")
    children: list[ChildServer] = []
    try:
        with make_env(tmp_path, clock=SystemClock(), target=settings.database_target) as env:
            assert env.settings.data_dir == settings.data_dir
            wh = env.webhooks.create(env.principal, receiver.url, ["*"])
            events = [e for _ in range(5) for e in env.emit("recording.uploaded", n=100)]
            kills = 0
            started = time.perf_counter()
            children.append(spawn_server(settings, "dispatcher"))
            for threshold in (100, 250, 400, 550, 700, 850):
                assert receiver.wait_for(_distinct_at_least(threshold), 120), threshold
                children[-1].kill()
                kills += 1
                if threshold == 400:  # the other half arrives while dispatchers come and go
                    events += [e for _ in range(5) for e in env.emit("recording.uploaded", n=100)]
                children.append(spawn_server(settings, "dispatcher"))
            assert receiver.wait_for(_distinct_at_least(TOTAL), 120)
            _wait_all_succeeded(env, TOTAL)
            elapsed = time.perf_counter() - started
            children[-1].terminate()

            assert len(events) == TOTAL and kills == 6
            got = Counter(r.webhook_id for r in receiver.requests)
            assert set(got) == set(events), "lost or foreign events"
            hook = Webhook(wh.secret)
            bodies: dict[str, bytes] = {}
            for req in receiver.requests:
                assert hook.verify(req.body, req.headers)["id"] == req.webhook_id
                assert bodies.setdefault(req.webhook_id, req.body) == req.body
            # one delivery per event (no double fan-out), all succeeded
            assert env.rows("SELECT count(*), count(DISTINCT event_id), min(status),"
                            " max(status) FROM webhook_deliveries") == \
                [(TOTAL, TOTAL, "succeeded", "succeeded")]
            dups = sum(got.values()) - TOTAL
            assert dups <= kills * env.settings.webhooks_per_endpoint, got.most_common(3)
            print(f"\n{TOTAL} events, {kills} kill -9s: 0 lost, {dups} duplicate sends; "
                  f"{elapsed:.1f} s incl. {kills + 1} process starts")
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.kill()
        receiver.close()


def _distinct_at_least(n: int) -> Callable[[list[Received]], bool]:
    return lambda reqs: len({r.webhook_id for r in reqs}) >= n


def _wait_all_succeeded(env: Any, total: int) -> None:
    for _ in range(1200):
        if env.rows("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'") \
                == [(total,)]:
            return
        time.sleep(0.05)
    raise AssertionError(env.rows("SELECT status, count(*) FROM webhook_deliveries"
                                  " GROUP BY status"))
