"""SSRF protection: with private addresses not allowed, delivery to loopback, private,
link-local and metadata addresses — literal, behind a host name, or behind a redirect — is
refused before any connection is opened.

The connector records every connection the transport asks for and only ever opens sockets
on 127.0.0.1; "public" addresses from the fixed resolver are routed to a local receiver.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tapedeck.errors import TapedeckError
from tapedeck.webhooks.netguard import NetGuard, NetPolicy, SystemResolver, category
from tapedeck.webhooks.transport import DeliveryFailure, GuardedTransport

from webhookkit import FixedResolver, Receiver, RecordingConnector, make_env

FORBIDDEN = ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1", "fd00:ec2::254", "0.0.0.0",
             "172.16.5.4", "192.168.1.1", "100.64.0.1", "fe80::1", "::ffff:127.0.0.1",
             "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a9fe:a9fe", "224.0.0.1",
             "255.255.255.255", "fc00::1", "0.1.2.3"]
PUBLIC = "93.184.216.34"


def _post(transport: GuardedTransport, url: str) -> None:
    transport.post(url, {"webhook-id": "evt_1"}, b"{}", timeout_s=5)


@pytest.mark.parametrize("address", FORBIDDEN)
def test_literal_forbidden_address_refused_before_connecting(address: str) -> None:
    connector = RecordingConnector()
    resolver = FixedResolver({})
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=False), resolver), connector)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(DeliveryFailure) as exc:
        _post(transport, f"http://{host}:8080/hook")
    assert exc.value.kind == "address_refused"
    assert connector.attempts == [] and resolver.lookups == []


@pytest.mark.parametrize("address", FORBIDDEN)
def test_hostname_resolving_to_forbidden_address_refused(address: str) -> None:
    connector = RecordingConnector()
    resolver = FixedResolver({"hooks.example.com": [address]})
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=False), resolver), connector)
    with pytest.raises(DeliveryFailure) as exc:
        _post(transport, "https://hooks.example.com/hook")
    assert exc.value.kind == "address_refused"
    assert address in str(exc.value) or str(ipaddress.ip_address(address)) in str(exc.value)
    assert resolver.lookups == ["hooks.example.com"]
    assert connector.attempts == []


def test_any_forbidden_address_in_the_answer_refuses_the_host() -> None:
    """DNS answers mixing a public and an internal address are refused as a whole."""
    connector = RecordingConnector()
    resolver = FixedResolver({"mixed.example.com": [PUBLIC, "169.254.169.254"]})
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=False), resolver), connector)
    with pytest.raises(DeliveryFailure) as exc:
        _post(transport, "http://mixed.example.com/")
    assert exc.value.kind == "address_refused" and connector.attempts == []


def test_public_address_is_connected_to_exactly_the_checked_ip() -> None:
    """The transport connects to the IP it checked (no second lookup), and sends the
    URL's host name in the Host header."""
    receiver = Receiver()
    connector = RecordingConnector(route_to=receiver.port)
    resolver = FixedResolver({"hooks.example.com": [PUBLIC]})
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=False), resolver), connector)
    try:
        resp = transport.post("http://hooks.example.com:8443/in?x=1", {"webhook-id": "evt_1"},
                              b'{"a":1}', timeout_s=5)
        assert resp.status == 200
        assert connector.attempts == [(PUBLIC, 8443)]
        assert resolver.lookups == ["hooks.example.com"]
        [req] = receiver.requests
        assert req.path == "/in?x=1" and req.headers["host"] == "hooks.example.com:8443"
        assert req.body == b'{"a":1}'
    finally:
        receiver.close()


@pytest.mark.parametrize("target", ["http://127.0.0.1/", "http://[::1]/",
                                    "http://169.254.169.254/latest/meta-data/",
                                    "http://10.0.0.1/", "http://internal.example.com/"])
def test_redirects_are_never_followed(tmp_path: Path, target: str) -> None:
    """A receiver answering 302 to an internal address gets exactly one connection (its own);
    the redirect target is never contacted, and the attempt fails and is logged."""
    receiver = Receiver(responder=lambda r: (302, {"location": target}, b""))
    connector = RecordingConnector(route_to=receiver.port)
    resolver = FixedResolver({"hooks.example.com": [PUBLIC],
                              "internal.example.com": ["10.1.2.3"]})
    try:
        with make_env(tmp_path, webhooks_allow_private=False) as env:
            wh = env.webhooks.create(env.principal, "http://hooks.example.com/in", ["*"])
            env.emit("recording.created")
            env.dispatcher(resolver=resolver, connector=connector, allow_private=False).drain()
            assert connector.attempts == [(PUBLIC, 80)]
            assert resolver.lookups == ["hooks.example.com"]
            [delivery] = env.webhooks.deliveries(env.principal, wh.endpoint.id).data
            assert delivery.status == "pending" and delivery.attempt_count == 1
            [attempt] = delivery.attempts
            assert attempt.status_code == 302
            assert attempt.error is not None and "redirect_not_followed" in attempt.error
            assert target[:40] in attempt.error
    finally:
        receiver.close()


def test_refused_delivery_is_logged_and_retried_without_connecting(tmp_path: Path) -> None:
    connector = RecordingConnector()
    resolver = FixedResolver({"evil.example.com": ["169.254.169.254"]})
    with make_env(tmp_path, webhooks_allow_private=False) as env:
        wh = env.webhooks.create(env.principal, "http://evil.example.com/", ["*"])
        env.emit("recording.created")
        env.dispatcher(resolver=resolver, connector=connector, allow_private=False).drain()
        [delivery] = env.webhooks.deliveries(env.principal, wh.endpoint.id).data
        [attempt] = delivery.attempts
        assert attempt.status_code is None
        assert attempt.error is not None and attempt.error.startswith("address_refused")
        assert "metadata" in attempt.error
        assert delivery.status == "pending" and delivery.next_attempt_at is not None
        assert connector.attempts == []


def test_numeric_host_forms_are_judged_after_resolution() -> None:
    """``2130706433`` and ``0x7f.1`` are 127.0.0.1 to the C resolver; the check happens on
    what they resolve to. (A numeric name: getaddrinfo answers without any DNS query.)"""
    connector = RecordingConnector()
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=False), SystemResolver()),
                                 connector)
    for host in ("2130706433", "0x7f.1", "127.1"):
        with pytest.raises(DeliveryFailure) as exc:
            _post(transport, f"http://{host}/")
        assert exc.value.kind == "address_refused", host
    assert connector.attempts == []


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "169.254.1.1",
                                     "0.0.0.0", "::", "224.0.0.251", "192.0.2.10"])
def test_allow_private_still_refuses_metadata_and_special_ranges(address: str) -> None:
    connector = RecordingConnector()
    transport = GuardedTransport(
        NetGuard(NetPolicy(allow_private=True), FixedResolver({"h.example": [address]})),
        connector)
    with pytest.raises(DeliveryFailure) as exc:
        _post(transport, "http://h.example/")
    assert exc.value.kind == "address_refused" and connector.attempts == []


def test_allow_private_reaches_loopback(tmp_path: Path) -> None:
    receiver = Receiver()
    connector = RecordingConnector()
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=True)), connector)
    try:
        assert transport.post(receiver.url, {}, b"{}", timeout_s=5).status == 200
        assert connector.attempts == [("127.0.0.1", receiver.port)]
    finally:
        receiver.close()


def test_categories() -> None:
    expect = {"127.0.0.1": "loopback", "::1": "loopback", "169.254.169.254": "metadata",
              "fd00:ec2::254": "metadata", "10.0.0.1": "private", "100.64.0.1": "cgnat",
              "169.254.3.4": "link_local", "::ffff:10.0.0.1": "private", "8.8.8.8": None,
              "2606:4700:4700::1111": None, "2002:808:808::1": None, "ff02::1": "multicast"}
    for addr, cat in expect.items():
        assert category(ipaddress.ip_address(addr)) == cat, addr


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://[::1]/x", "http://localhost/",
                                 "http://169.254.169.254/", "http://10.0.0.1/",
                                 "ftp://hooks.example.com/", "http://user:pw@example.com/",
                                 "hooks.example.com/x", "http://exa mple.com/"])
def test_create_refuses_bad_or_internal_urls(tmp_path: Path, url: str) -> None:
    with make_env(tmp_path, webhooks_allow_private=False) as env:
        with pytest.raises(TapedeckError) as exc:
            env.webhooks.create(env.principal, url, ["*"])
        assert exc.value.type == "invalid_request" and exc.value.details["field"] == "url"
