"""Issue 17: one dispatcher round records many finished attempts at once (one read, a
multi-row attempt insert, one update per status code of the successes). Mixed outcomes in
one round must each land exactly as they would one by one: attempt numbers, statuses, retry
times, the attempt log, and the second attempt of the failures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tapedeck.clock import ManualClock, parse_iso

from webhookkit import Answer, Received, Receiver, make_env

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_one_round_records_mixed_outcomes(tmp_path: Path, db_target: str | Path) -> None:
    failing = {"on": True}

    def answer(r: Received) -> Answer:
        if r.path.endswith("/fails") and failing["on"]:
            return 500, {}, b"down"
        return (204 if r.path.endswith("/nocontent") else 200), {}, b""

    receiver = Receiver(responder=answer)
    clock = ManualClock(T0)
    try:
        with make_env(tmp_path, clock=clock, target=db_target) as env:
            names = ("ok", "nocontent", "fails")
            ids = {env.webhooks.create(env.principal, f"{receiver.url}/{n}", ["*"]).endpoint.id: n
                   for n in names}
            events = env.emit(n=5)
            d = env.dispatcher(workers=16, per_endpoint=8)
            d.step()  # fan-out and claim of all 15 deliveries in one round
            assert d.wait_idle(30)  # ... all acknowledged in one batch
            assert len(receiver.requests) == 15
            rows = env.rows("SELECT endpoint_id, status, attempts, last_status_code,"
                            " last_error, next_attempt_at, lease_owner FROM webhook_deliveries")
            by_name: dict[str, list[tuple[object, ...]]] = {}
            for endpoint_id, *rest in rows:
                by_name.setdefault(ids[endpoint_id], []).append(tuple(rest))
            assert sorted(by_name["ok"]) == [("succeeded", 1, 200, None, None, None)] * 5
            assert sorted(by_name["nocontent"]) == [("succeeded", 1, 204, None, None, None)] * 5
            for status, attempts, code, error, next_at, owner in by_name["fails"]:
                assert (status, attempts, code, owner) == ("pending", 1, 500, None)
                assert error == "http_error: HTTP 500: down"
                due = parse_iso(next_at)
                assert due is not None and 60 <= (due - T0).total_seconds() <= 66
            log = env.rows("SELECT event_id, endpoint_id, attempt, status_code"
                           " FROM webhook_attempts")
            assert sorted(log) == sorted((e, i, 1, {"ok": 200, "nocontent": 204,
                                                    "fails": 500}[n])
                                         for e in events for i, n in ids.items())

            failing["on"] = False
            env.advance_to(T0 + dt.timedelta(minutes=2))
            d.drain()
            fails = next(i for i, n in ids.items() if n == "fails")
            assert env.rows("SELECT status, attempts, last_status_code FROM webhook_deliveries"
                            " WHERE endpoint_id = ?", [fails]) == [("succeeded", 2, 200)] * 5
            assert sorted(env.rows("SELECT attempt, status_code FROM webhook_attempts WHERE"
                                   " endpoint_id = ?", [fails])) == [(1, 500)] * 5 + [(2, 200)] * 5
            assert len(receiver.requests) == 20
    finally:
        receiver.close()
