"""Delivery behaviour of the dispatcher against real HTTP receivers on 127.0.0.1, driven by a
``ManualClock``: retry schedule over a simulated 10-hour outage, replay, Retry-After, 410,
timeouts, TLS, isolation of slow endpoints, fan-out rules, lease takeover."""

from __future__ import annotations

import datetime as dt
import itertools
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tapedeck.clock import ManualClock, parse_iso
from tapedeck.webhooks.dispatcher import DEFAULT_DELAYS_S, RetrySchedule, parse_retry_after
from tapedeck.webhooks.netguard import NetGuard, NetPolicy
from tapedeck.webhooks.transport import DeliveryFailure, GuardedTransport

from webhookkit import Answer, Env, Received, Receiver, dead_port, make_env

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _next_due(env: Env) -> dt.datetime | None:
    row = env.rows("SELECT min(next_attempt_at) FROM webhook_deliveries"
                   " WHERE status = 'pending'")[0]
    return parse_iso(row[0])


def _simulate(env: Env, until: dt.datetime,
              phases: dict[dt.datetime, Callable[[], None]]) -> None:
    """Advance the clock from due time to due time (and phase change to phase change),
    draining the dispatcher at each, until ``until``."""
    d = env.dispatcher()
    pending = dict(sorted(phases.items()))
    while True:
        d.drain()
        due = _next_due(env)
        nxt = min([t for t in [due, *pending] if t is not None and t <= until], default=None)
        if nxt is None:
            return
        env.advance_to(max(nxt, env.clock.now()))
        for t in [t for t in pending if t <= env.clock.now()]:
            pending.pop(t)()


def _attempt_times(env: Env, event_id: str) -> list[dt.datetime]:
    rows = env.rows("SELECT attempted_at FROM webhook_attempts WHERE event_id = ? ORDER BY id",
                    [event_id])
    return [t for (s,) in rows if (t := parse_iso(s)) is not None]


def _check_schedule(times: list[dt.datetime], jitter: float = 0.1) -> list[float]:
    """Each gap is its table delay plus 0..jitter; returns the gaps."""
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    for gap, nominal in zip(gaps, DEFAULT_DELAYS_S, strict=False):
        assert nominal - 0.01 <= gap <= nominal * (1 + jitter) + 0.01, \
            (gap, nominal)
    return gaps


def _signed_by(req: Received, secret: str) -> bool:
    ts = dt.datetime.fromtimestamp(int(req.headers["webhook-timestamp"]), dt.UTC)
    expected = Webhook(secret).sign(req.webhook_id, ts, req.body.decode())
    return expected in req.headers["webhook-signature"].split(" ")


def test_ten_hour_outage_follows_schedule_then_every_event_arrives(
        tmp_path: Path, db_target: str | Path) -> None:
    """Refused for 1 h, then 500s until 10 h, then healthy: attempts at 0, 1 min, 5 min,
    30 min, 2 h, 8 h (+0..10 % jitter), and the 6th attempt delivers every event."""
    port = dead_port()
    state: dict[str, int] = {"status": 500}
    receivers: list[Receiver] = []

    def come_back_failing() -> None:
        receivers.append(Receiver(port, lambda r: (state["status"], {}, b"down for maintenance")))

    with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
        created = env.webhooks.create(env.principal, f"http://127.0.0.1:{port}/hook", ["*"])
        events = env.emit("transcription.completed", n=3)
        try:
            _simulate(env, T0 + 12 * HOUR, {
                T0 + HOUR: come_back_failing,
                T0 + 10 * HOUR: lambda: state.update(status=200)})
            [receiver] = receivers
            all_gaps = []
            for event_id in events:
                times = _attempt_times(env, event_id)
                assert len(times) == 6, times
                assert times[0] == T0
                all_gaps += _check_schedule(times)
                assert times[3] < T0 + HOUR < times[4] < T0 + 10 * HOUR < times[5]
            assert len(set(all_gaps)) > 5, "no jitter"
            page = env.webhooks.deliveries(env.principal, created.endpoint.id, limit=10)
            assert {d.event_id: d.status for d in page.data} == {e: "succeeded" for e in events}
            for d in page.data:
                assert [a.status_code for a in d.attempts] == [None] * 4 + [500, 200]
                assert all(a.error and a.error.startswith("connection_refused")
                           for a in d.attempts[:4])
                assert d.attempts[4].error == "http_error: HTTP 500: down for maintenance"
                assert d.attempts[5].error is None and d.attempts[5].latency_ms is not None
            ok = [r for r in receiver.requests if r.webhook_id in events]
            assert Counter(r.webhook_id for r in ok) == {e: 2 for e in events}  # 500, then 200
            for req in ok:  # same id, same bytes, signed at the simulated attempt time
                assert _signed_by(req, created.secret)
                assert req.json()["id"] == req.webhook_id
                stamp = int(req.headers["webhook-timestamp"])
                assert stamp in {int(t.timestamp()) for t in _attempt_times(env, req.webhook_id)}
            assert len({r.body for r in ok if r.webhook_id == events[0]}) == 1
        finally:
            for r in receivers:
                r.close()


def test_exhausted_deliveries_arrive_after_replay(tmp_path: Path, db_target: str | Path) -> None:
    port = dead_port()
    with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
        wh = env.webhooks.create(env.principal, f"http://127.0.0.1:{port}/hook",
                                 ["recording.uploaded"])
        uploaded = env.emit("recording.uploaded", n=4)
        env.emit("recording.created", n=2)  # not subscribed: never delivered, not replayed
        _simulate(env, T0 + 12 * HOUR, {})
        deliveries = env.webhooks.deliveries(env.principal, wh.endpoint.id).data
        assert sorted(d.event_id for d in deliveries) == sorted(uploaded)
        assert {(d.status, d.attempt_count) for d in deliveries} == {("failed", 6)}
        receiver = Receiver(port)
        try:
            result = env.webhooks.replay(env.principal, wh.endpoint.id, since=T0 - HOUR)
            assert (result.replayed, result.already_pending, result.next_since) == (4, 0, None)
            env.dispatcher().drain()
            assert sorted(receiver.ids()) == sorted(uploaded)
            # by id: exactly the named event, again with the same webhook-id
            env.webhooks.replay(env.principal, wh.endpoint.id, event_ids=[uploaded[2]])
            env.dispatcher().drain()
            assert receiver.ids()[4:] == [uploaded[2]]
            log = env.webhooks.deliveries(env.principal, wh.endpoint.id, limit=100).data
            assert sum(d.origin == "replay" for d in log) == 5
            assert all(d.status == "succeeded" for d in log if d.origin == "replay")
        finally:
            receiver.close()


def test_replay_validation_and_pending_dedup(tmp_path: Path, db_target: str | Path) -> None:
    from tapedeck.errors import TapedeckError

    with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
        wh = env.webhooks.create(env.principal, f"http://127.0.0.1:{dead_port()}/", ["*"])
        [event] = env.emit()
        env.dispatcher().drain()  # first attempt fails; the delivery stays pending
        res = env.webhooks.replay(env.principal, wh.endpoint.id, event_ids=[event])
        assert (res.replayed, res.already_pending) == (0, 1)
        for kwargs, field in [({}, "since"), ({"since": T0, "event_ids": [event]}, "event_ids"),
                              ({"since": T0, "until": T0}, "until"),
                              ({"event_ids": ["evt_nope"]}, "event_ids")]:
            with pytest.raises(TapedeckError) as exc:
                env.webhooks.replay(env.principal, wh.endpoint.id, **kwargs)  # type: ignore[arg-type]
            assert exc.value.type == "invalid_request" and exc.value.details["field"] == field


def test_retry_after_is_honoured(tmp_path: Path, db_target: str | Path) -> None:
    answers = [(503, {"retry-after": "7200"}, b""), (429, {"retry-after": "5"}, b""),
               (200, {}, b"")]
    receiver = Receiver(responder=lambda r: answers[min(len(receiver.requests), 3) - 1])
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            env.webhooks.create(env.principal, receiver.url, ["*"])
            [event] = env.emit()
            _simulate(env, T0 + 5 * HOUR, {})
            times = _attempt_times(env, event)
            assert len(times) == 3
            assert (times[1] - times[0]).total_seconds() == pytest.approx(7200, abs=0.01)
            # a Retry-After shorter than the table does not make the retry earlier
            assert 300 <= (times[2] - times[1]).total_seconds() <= 300 * 1.1
    finally:
        receiver.close()


def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 01:00:00 GMT", now) == 3600
    assert parse_retry_after("Wed, 31 Dec 2025 01:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    sched = RetrySchedule()
    import random

    assert sched.next_delay(6, None, random.Random(1)) is None
    assert sched.next_delay(1, 10**9, random.Random(1)) == sched.max_retry_after_s


def test_410_disables_endpoint_and_cancels_pending(tmp_path: Path, db_target: str | Path) -> None:
    receiver = Receiver(responder=lambda r: (410, {}, b"gone"))
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            wh = env.webhooks.create(env.principal, receiver.url, ["*"])
            env.emit(n=3)
            d = env.dispatcher()
            d.drain()
            assert len(receiver.requests) == 1  # per-endpoint order: the first one got 410
            ep = env.webhooks.get(env.principal, wh.endpoint.id)
            assert ep.status == "disabled" and ep.disabled_reason is not None
            statuses = Counter(x.status for x in
                               env.webhooks.deliveries(env.principal, ep.id).data)
            assert statuses == {"failed": 1, "cancelled": 2}
            env.emit(n=2)  # not fanned out to a disabled endpoint
            env.clock.advance(10 * HOUR)  # type: ignore[attr-defined]
            d.drain()
            assert len(receiver.requests) == 1
            receiver.responder = lambda r: (200, {}, b"")
            res = env.webhooks.replay(env.principal, ep.id, since=T0)
            assert res.replayed == 5
            assert env.webhooks.get(env.principal, ep.id).status == "enabled"
            d.drain()
            assert len(receiver.requests) == 6
    finally:
        receiver.close()


def test_timeout_fails_an_attempt(tmp_path: Path, db_target: str | Path) -> None:
    release = threading.Event()

    def hang(r: Received) -> Answer:
        release.wait(10)
        return (200, {}, b"")

    receiver = Receiver(responder=hang)
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            wh = env.webhooks.create(env.principal, receiver.url, ["*"])
            env.emit()
            env.dispatcher(timeout_s=0.3).drain()
            release.set()
            [delivery] = env.webhooks.deliveries(env.principal, wh.endpoint.id).data
            [attempt] = delivery.attempts
            assert attempt.status_code is None and attempt.error is not None
            assert attempt.error.startswith("timeout"), attempt.error
            assert delivery.status == "pending"
    finally:
        receiver.close()


def test_trickling_receiver_is_cut_at_the_deadline() -> None:
    """A receiver that sends its response a byte at a time cannot hold an attempt past the
    whole-attempt deadline (each byte arrives well within a per-read timeout)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            if stop.is_set():
                break
            try:
                conn.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.05)
        conn.close()

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=True)))
    try:
        with pytest.raises(DeliveryFailure) as exc:
            transport.post(f"http://127.0.0.1:{server.getsockname()[1]}/", {}, b"{}",
                           timeout_s=0.5)
        assert exc.value.kind == "timeout"
    finally:
        stop.set()
        t.join(5)
        server.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - HOUR).not_valid_after(now + HOUR)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_untrusted_certificate_fails_trusted_succeeds(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    receiver = Receiver()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    receiver._server.socket = server_ctx.wrap_socket(receiver._server.socket, server_side=True)
    url = f"https://127.0.0.1:{receiver.port}/hook"
    guard = NetGuard(NetPolicy(allow_private=True))
    try:
        with pytest.raises(DeliveryFailure) as exc:
            GuardedTransport(guard).post(url, {}, b"{}", timeout_s=5)
        assert exc.value.kind == "tls_error"
        trusting = ssl.create_default_context(cafile=str(cert))
        resp = GuardedTransport(guard, ssl_context=trusting).post(url, {}, b"{}", timeout_s=5)
        assert resp.status == 200 and len(receiver.requests) == 1
    finally:
        receiver.close()


def test_slow_endpoint_does_not_delay_others(tmp_path: Path, db_target: str | Path) -> None:
    """Endpoint A hangs on its first request; endpoint B still gets all 20 events, in order,
    while A's request is in flight (A holds at most one worker)."""
    release = threading.Event()

    def stuck(r: Received) -> Answer:
        release.wait(30)
        return (200, {}, b"")

    slow, fast = Receiver(responder=stuck), Receiver()
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            env.webhooks.create(env.principal, slow.url, ["*"])
            env.webhooks.create(env.principal, fast.url, ["*"])
            d = env.dispatcher(timeout_s=60, workers=4, poll_s=0.02)
            d.start()
            events = env.emit(n=20)
            assert fast.wait_for(lambda r: len(r) == 20, 30)
            assert fast.ids() == events
            assert len(slow.requests) == 1 and not release.is_set()
            release.set()
            assert slow.wait_for(lambda r: len(r) == 20, 30)
            assert slow.ids() == events
    finally:
        release.set()
        slow.close()
        fast.close()


def test_fan_out_rules(tmp_path: Path, db_target: str | Path) -> None:
    """Subscriptions filter types; an endpoint gets only events committed after it was
    created; other projects' events never reach it; one delivery per (endpoint, event)."""
    from tapedeck.auth import create_project

    receiver = Receiver()
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            early = env.emit("recording.created")
            uploaded_only = env.webhooks.create(env.principal, receiver.url + "/u",
                                                ["recording.uploaded"])
            everything = env.webhooks.create(env.principal, receiver.url + "/all", ["*"])
            other_project, _ = create_project(env.db, env.clock, "other")
            env.emit("recording.created", project_id=other_project)
            created = env.emit("recording.created")
            uploaded = env.emit("recording.uploaded")
            env.dispatcher().drain()
            env.dispatcher().drain()  # a second dispatcher finds nothing left to fan out
            got = Counter((r.path, r.webhook_id) for r in receiver.requests)
            assert got == {("/hook/u", uploaded[0]): 1, ("/hook/all", created[0]): 1,
                           ("/hook/all", uploaded[0]): 1}
            assert early[0] not in {r.webhook_id for r in receiver.requests}
            assert env.rows("SELECT count(*) FROM webhook_outbox") == [(0,)]
            for ep in (uploaded_only, everything):
                assert all(d.status == "succeeded" for d in
                           env.webhooks.deliveries(env.principal, ep.endpoint.id).data)
    finally:
        receiver.close()


def test_two_dispatchers_deliver_each_event_once(tmp_path: Path, db_target: str | Path) -> None:
    receiver = Receiver()
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            for i in range(3):
                env.webhooks.create(env.principal, f"{receiver.url}/{i}", ["*"])
            a = env.dispatcher(poll_s=0.01, per_endpoint=2)
            b = env.dispatcher(poll_s=0.01, per_endpoint=2)
            a.start()
            b.start()
            events = []
            for _ in range(10):
                events += env.emit(n=10)
            assert receiver.wait_for(lambda r: len(r) >= 300, 60)
            for _ in range(600):
                if env.rows("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'"
                            ) == [(300,)]:
                    break
                time.sleep(0.05)
            a.stop(5)
            b.stop(5)  # every attempt has finished: nothing more can arrive
            got = Counter((r.path, r.webhook_id) for r in receiver.requests)
            assert len(got) == 300 and set(got.values()) == {1}
    finally:
        receiver.close()


def test_stale_dispatcher_leases_are_taken_over(tmp_path: Path, db_target: str | Path) -> None:
    """A dispatcher that stops heartbeating (here: stuck, clock moved past stale_s) loses its
    lease; another sends the same event again with the same webhook-id; the late answer of
    the first is only logged."""
    release = threading.Event()
    first = threading.Event()

    def answer(r: Received) -> Answer:
        if not first.is_set():
            first.set()
            release.wait(30)
        return (200, {}, b"")

    receiver = Receiver(responder=answer)
    try:
        with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
            wh = env.webhooks.create(env.principal, receiver.url, ["*"])
            [event] = env.emit()
            stuck = env.dispatcher(timeout_s=60, stale_s=20)
            stuck.step()
            assert first.wait(10)
            env.clock.advance(dt.timedelta(seconds=30))  # type: ignore[attr-defined]
            env.dispatcher(stale_s=20).drain()
            assert receiver.ids() == [event, event]
            release.set()
            assert stuck.wait_idle(10)
            [delivery] = env.webhooks.deliveries(env.principal, wh.endpoint.id).data
            assert delivery.status == "succeeded"
            assert [a.status_code for a in delivery.attempts] == [200, 200]
    finally:
        release.set()
        receiver.close()


def test_deleted_endpoint_gets_nothing_more(tmp_path: Path, db_target: str | Path) -> None:
    from tapedeck.errors import TapedeckError

    port = dead_port()
    with make_env(tmp_path, target=db_target, clock=ManualClock(T0)) as env:
        wh = env.webhooks.create(env.principal, f"http://127.0.0.1:{port}/", ["*"])
        env.emit(n=2)
        d = env.dispatcher()
        d.drain()
        env.webhooks.delete(env.principal, wh.endpoint.id)
        with pytest.raises(TapedeckError) as exc:
            env.webhooks.get(env.principal, wh.endpoint.id)
        assert exc.value.type == "webhook_not_found"
        assert env.rows("SELECT DISTINCT status FROM webhook_deliveries") == [("cancelled",)]
        receiver = Receiver(port)
        try:
            env.emit(n=2)
            env.clock.advance(HOUR)  # type: ignore[attr-defined]
            d.drain()
            assert receiver.requests == []
        finally:
            receiver.close()
