"""Issue 21, the console's fleet pages over HTTP: devices (bind, unbind), end users, webhook
endpoints with their delivery log (replay into a real loopback receiver), API keys (create a
restricted key shown once, revoke). Sessions, CSRF, two-step confirmations, scopes as 403
pages, hostile values rendered inert. One real server (gateway + webhook dispatcher, real
SQLite and SeaweedFS) for the module."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_console_http import EVIL, EVIL2, client, csrf_of, signed_in

from serverkit import RunningServer, drop_bucket, make_settings, start_server

PAGES = ("/console/devices", "/console/end-users", "/console/webhooks", "/console/api-keys")


class Receiver:
    """A real HTTP server on 127.0.0.1 recording each webhook request's ``webhook-id``; it
    answers ``status`` with ``body`` (settable while it runs)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.status, self.body = 200, b"ok"
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._cond:
                    receiver.ids.append(self.headers["webhook-id"])
                    receiver._cond.notify_all()
                self.send_response(receiver.status)
                self.send_header("content-length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_count(self, event_id: str, n: int, timeout: float = 30) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.ids.count(event_id) >= n, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def fleet_srv(weed: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(make_settings(weed, tmp_path_factory.mktemp("fleet") / "data"),
                     roles=["http", "dispatcher"])
    try:
        yield s
    finally:
        s.close()
        drop_bucket(weed, s.app.settings.s3_bucket)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def api(srv: RunningServer, key: str | None = None) -> httpx.Client:
    return client(srv.http_url, key or srv.api_key)


def new_end_user(srv: RunningServer, **body: Any) -> dict[str, Any]:
    resp = api(srv).post("/v1/end-users", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def bound_device(srv: RunningServer, end_user_id: str, **body: Any) -> tuple[str, str]:
    """A new device bound to ``end_user_id``: its id and device token."""
    c = api(srv)
    dev = c.post("/v1/devices", json=body).json()
    bound = c.post(f"/v1/devices/{dev['id']}/bind", json={"end_user_id": end_user_id})
    assert bound.status_code == 200, bound.text
    return dev["id"], bound.json()["device_token"]


def restricted_key(srv: RunningServer, *scopes: str) -> str:
    made = api(srv).post("/v1/keys", json={"kind": "restricted", "scopes": list(scopes)})
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])


def heartbeat(srv: RunningServer, token: str) -> httpx.Response:
    return httpx.post(f"{srv.http_url}/v1/devices/me/heartbeat", json={"battery_percent": 57},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


def confirmed(c: httpx.Client, url: str, fields: dict[str, str]) -> httpx.Response:
    """Post an action's form, check the confirmation page, and post it confirmed."""
    page = c.post(url, data=fields)
    assert page.status_code == 200 and 'name="confirm" value="yes"' in page.text, page.text
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                             page.text))
    return c.post(url, data=hidden)


def test_pages_and_actions_without_a_session_go_to_sign_in(fleet_srv: RunningServer) -> None:
    for path in (*PAGES, "/console/devices/dev_x", "/console/end-users/eu_x",
                 "/console/webhooks/wh_x"):
        resp = httpx.get(fleet_srv.http_url + path)
        assert resp.status_code == 303 and resp.headers["location"] == "/console", path
    for path in ("/console/devices/dev_x/unbind", "/console/api-keys",
                 "/console/webhooks/wh_x/replay", "/console/api-keys/key_x/revoke"):
        assert httpx.post(fleet_srv.http_url + path, data={}).status_code == 303, path


def test_hostile_device_and_end_user_values_render_as_text(fleet_srv: RunningServer) -> None:
    eu = new_end_user(fleet_srv, name=EVIL, metadata={"note": EVIL2})
    dev_id, token = bound_device(fleet_srv, eu["id"], serial_number=EVIL2, model=EVIL)
    assert heartbeat(fleet_srv, token).status_code == 200
    c = signed_in(fleet_srv)
    for path in ("/console/devices", f"/console/devices/{dev_id}", "/console/end-users",
                 f"/console/end-users/{eu['id']}"):
        resp = c.get(path)
        assert resp.status_code == 200, (path, resp.text)
        assert EVIL not in resp.text and "<img" not in resp.text, path
        assert ("&lt;script&gt;" in resp.text or "&#34;&gt;&lt;img" in resp.text), path
        assert resp.headers["content-security-policy"].startswith("default-src 'self'")
    page = c.get(f"/console/devices/{dev_id}").text
    assert "battery_percent</th><td>57" in page and f"/console/end-users/{eu['id']}" in page
    assert f"/console/recordings?device_id={dev_id}" in page


def test_unbind_needs_csrf_and_a_confirmation_then_revokes_the_token(
        fleet_srv: RunningServer) -> None:
    eu = new_end_user(fleet_srv, name="Ada")
    dev_id, token = bound_device(fleet_srv, eu["id"], serial_number="SN-1")
    c = signed_in(fleet_srv)
    csrf = csrf_of(c.get(f"/console/devices/{dev_id}").text)
    url = f"/console/devices/{dev_id}/unbind"
    assert c.post(url, data={}).status_code == 403
    assert c.post(url, data={"csrf": "wrong", "confirm": "yes"}).status_code == 403
    ask = c.post(url, data={"csrf": csrf})
    assert ask.status_code == 200 and "Unbind device" in ask.text and "SN-1" in ask.text
    assert heartbeat(fleet_srv, token).status_code == 200  # nothing happened yet
    done = confirmed(c, url, {"csrf": csrf})
    assert done.status_code == 303 and done.headers["location"].endswith("?notice=unbound")
    assert heartbeat(fleet_srv, token).status_code == 401
    page = c.get(done.headers["location"]).text
    assert 'id="binding">unbound' in page and "Device unbound" in page
    assert 'id="bind"' in page  # an unbound device offers bind


def test_bind_shows_a_working_device_token_once(fleet_srv: RunningServer) -> None:
    eu = new_end_user(fleet_srv, name="Grace")
    dev = api(fleet_srv).post("/v1/devices", json={"serial_number": "SN-2"}).json()
    c = signed_in(fleet_srv)
    csrf = csrf_of(c.get(f"/console/devices/{dev['id']}").text)
    url = f"/console/devices/{dev['id']}/bind"
    done = confirmed(c, url, {"csrf": csrf, "end_user_id": eu["id"]})
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    token = re.search(r'id="secret" class="secret" readonly value="(dtok_test_[^"]+)"',
                      done.text)
    assert token, done.text
    assert heartbeat(fleet_srv, token.group(1)).status_code == 200
    assert token.group(1) not in c.get(f"/console/devices/{dev['id']}").text
    again = confirmed(c, url, {"csrf": csrf, "end_user_id": eu["id"]})
    assert again.status_code == 409 and "already bound" in again.text
    hostile = c.post(url, data={"csrf": csrf, "end_user_id": EVIL2})  # the confirmation page
    assert hostile.status_code == 200 and "<img" not in hostile.text
    assert 'name="end_user_id" value="&#34;&gt;&lt;img src=x onerror=alert(2)&gt;"' in hostile.text


def test_end_users_list_pages_and_shows_devices_and_links(fleet_srv: RunningServer) -> None:
    with api(fleet_srv) as c_api:
        made = [c_api.post("/v1/end-users", json={"name": f"pager-{i}"}).json()
                for i in range(26)]
    dev_id, _ = bound_device(fleet_srv, made[-1]["id"], serial_number="SN-PAGER")
    c = signed_in(fleet_srv)
    first = c.get("/console/end-users").text
    assert first.count("data-end-user=") == 25
    assert "pager-25" in first and "SN-PAGER" in first and f"/console/devices/{dev_id}" in first
    assert f"/console/recordings?end_user_id={made[-1]['id']}" in first
    nxt = re.search(r'rel="next" href="([^"]+)"', first)
    assert nxt, "no next page"
    second = c.get(nxt.group(1).replace("&amp;", "&")).text
    assert "pager-0" in second and "pager-25" not in second
    assert c.get("/console/end-users", params={"cursor": "bogus"}).status_code == 400


def test_scopes_decide_what_a_restricted_key_sees(fleet_srv: RunningServer) -> None:
    rec_only = signed_in(fleet_srv, restricted_key(fleet_srv, "recordings:read"))
    for path in ("/console/devices", "/console/end-users", "/console/webhooks"):
        resp = rec_only.get(path)
        assert resp.status_code == 403 and "forbidden" in resp.text, path
        assert ":read scope" in resp.text, path
    keys = rec_only.get("/console/api-keys")
    assert keys.status_code == 403 and "Only a secret key" in keys.text
    people = signed_in(fleet_srv, restricted_key(fleet_srv, "end_users:read"))
    eu = new_end_user(fleet_srv, name="Scoped")
    bound_device(fleet_srv, eu["id"], serial_number="SN-HIDDEN")
    page = people.get("/console/end-users")
    assert page.status_code == 200 and "Scoped" in page.text and "SN-HIDDEN" not in page.text
    viewer = signed_in(fleet_srv, restricted_key(fleet_srv, "devices:read"))
    dev_page = viewer.get("/console/devices")
    assert dev_page.status_code == 200 and "SN-HIDDEN" in dev_page.text
    dev_id = re.search(r'data-device="(dev_[^"]+)"', dev_page.text)
    assert dev_id
    one = viewer.get(f"/console/devices/{dev_id.group(1)}").text
    assert 'id="unbind"' not in one and 'id="bind"' not in one  # no devices:write
    csrf = csrf_of(one)
    refused = viewer.post(f"/console/devices/{dev_id.group(1)}/unbind",
                          data={"csrf": csrf, "confirm": "yes"})
    assert refused.status_code == 403 and "devices:write" in refused.text


def test_bad_filters_and_unknown_ids_answer_error_pages(fleet_srv: RunningServer) -> None:
    c = signed_in(fleet_srv)
    assert c.get("/console/devices", params={"state": "bogus"}).status_code == 400
    assert c.get("/console/devices/dev_nope").status_code == 404
    assert c.get("/console/end-users/eu_nope").status_code == 404
    assert c.get("/console/webhooks/wh_nope").status_code == 404
    assert c.get("/console/devices", params={"state": "offline"}).status_code == 200


def test_deliveries_show_the_response_and_replay_reaches_the_receiver(
        fleet_srv: RunningServer, receiver: Receiver) -> None:
    receiver.status, receiver.body = 410, EVIL2.encode()
    made = api(fleet_srv).post("/v1/webhooks", json={
        "url": receiver.url, "events": ["recording.created"], "description": "replay-me"})
    assert made.status_code == 201, made.text
    wh_id = made.json()["id"]
    rec = api(fleet_srv).post("/v1/recordings", json={"streaming": True}).json()
    c = signed_in(fleet_srv)
    page = _wait_for_delivery(c, wh_id, "failed")
    event_id = re.search(r'data-event="(evt_[^"]+)" data-status="failed"', page)
    assert event_id and receiver.ids.count(event_id.group(1)) == 1
    assert "HTTP 410" in page and "&#34;&gt;&lt;img src=x" in page and "<img" not in page
    assert 'id="wh-status">disabled' in page and rec["id"]
    assert "webhooks" in c.get("/console/webhooks").text and "replay-me" in c.get(
        "/console/webhooks").text
    receiver.status, receiver.body = 200, b"ok"
    url = f"/console/webhooks/{wh_id}/replay"
    assert c.post(url, data={"event_id": event_id.group(1)}).status_code == 403
    done = confirmed(c, url, {"csrf": csrf_of(page), "event_id": event_id.group(1)})
    assert done.status_code == 303 and done.headers["location"].endswith("notice=replayed")
    assert receiver.wait_count(event_id.group(1), 2)
    after = _wait_for_delivery(c, wh_id, "succeeded")
    assert "replay" in after and 'id="wh-status">enabled' in after
    failed = c.get(f"/console/webhooks/{wh_id}", params={"status": "failed"}).text
    assert 'data-status="failed"' in failed and 'data-status="succeeded"' not in failed
    assert c.get(f"/console/webhooks/{wh_id}", params={"status": "nope"}).status_code == 400
    unknown = confirmed(c, url, {"csrf": csrf_of(page), "event_id": "evt_nope"})
    assert unknown.status_code == 400 and "do not exist" in unknown.text


def _wait_for_delivery(c: httpx.Client, wh_id: str, status: str) -> str:
    """The endpoint's page once a delivery of ``status`` shows (the dispatcher is real)."""
    import time

    for _ in range(300):
        page = c.get(f"/console/webhooks/{wh_id}").text
        if f'data-status="{status}"' in page:
            return page
        time.sleep(0.1)
    raise AssertionError(f"no {status} delivery: {page}")


def test_api_keys_create_shows_the_secret_once_and_revoke_ends_it(
        fleet_srv: RunningServer) -> None:
    c = signed_in(fleet_srv)
    page = c.get("/console/api-keys")
    assert page.status_code == 200 and "(this session)" in page.text
    csrf = csrf_of(page.text)
    assert c.post("/console/api-keys", data={"scopes": "devices:read"}).status_code == 403
    made = c.post("/console/api-keys", data={"csrf": csrf, "name": EVIL,
                                             "scopes": ["devices:read", "webhooks:read"]})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    secret = re.search(r'value="(rk_test_[^"]+)"', made.text)
    assert secret and EVIL not in made.text
    key = api(fleet_srv, secret.group(1))
    assert key.get("/v1/devices").status_code == 200
    assert key.get("/v1/recordings").status_code == 403
    listing = c.get("/console/api-keys").text
    assert secret.group(1) not in listing and "devices:read, webhooks:read" in listing
    key_id = re.search(r'data-key="(key_[^"]+)">\s*<td>&lt;script', listing)
    assert key_id, listing
    url = f"/console/api-keys/{key_id.group(1)}/revoke"
    ask = c.post(url, data={"csrf": csrf})
    assert ask.status_code == 200 and "Revoke API key" in ask.text and "<script>" not in ask.text
    assert key.get("/v1/devices").status_code == 200  # not yet
    done = confirmed(c, url, {"csrf": csrf})
    assert done.status_code == 303 and key.get("/v1/devices").status_code == 401
    assert "API key revoked" in c.get(done.headers["location"]).text


def test_key_form_errors_are_pages_and_the_last_secret_key_stays(
        fleet_srv: RunningServer) -> None:
    c = signed_in(fleet_srv)
    csrf = csrf_of(c.get("/console/api-keys").text)
    none = c.post("/console/api-keys", data={"csrf": csrf})
    assert none.status_code == 400 and "at least one scope" in none.text
    bogus = c.post("/console/api-keys", data={"csrf": csrf, "scopes": "root:all"})
    assert bogus.status_code == 400 and "Unknown scopes" in bogus.text
    mine = re.search(r'data-key="(key_[^"]+)">\s*<td>bootstrap <small>\(this session',
                     c.get("/console/api-keys").text)
    assert mine
    last = confirmed(c, f"/console/api-keys/{mine.group(1)}/revoke", {"csrf": csrf})
    assert last.status_code == 400 and "last active secret key" in last.text
    assert c.get("/console/api-keys").status_code == 200  # still signed in
