"""Console pages of the fleet: devices (bind, unbind), end users, webhook endpoints with
their delivery log (replay) and API keys (create restricted keys, revoke).

Contracts:

- Every page and action checks the session first (none: 303 to ``/console``); what the
  credential may not see or do answers the domain's typed error as a page (``forbidden``:
  403, naming the missing scope); nothing here queries the database.
- Every state-changing action is a POST with the session's CSRF token, in two steps: the
  form's button posts without ``confirm`` and gets a confirmation page; that page posts
  again with ``confirm=yes`` and only then does the domain call run. Secrets made by an
  action (a restricted key, a device token from a bind) are shown once, on the answer to
  that POST, with ``Cache-Control: no-store``; they are never put in a URL.
- Values from clients and devices are rendered by autoescaped templates only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData

from tapedeck.auth import Principal
from tapedeck.errors import TapedeckError, invalid
from tapedeck.gateway.console.fleet_views import (
    NOTICES,
    api_keys_view,
    device_view,
    devices_view,
    end_user_view,
    end_users_view,
    webhook_view,
    webhooks_view,
)

if TYPE_CHECKING:
    from tapedeck.gateway.console import Console
    from tapedeck.gateway.console.session import Session

View = Callable[[Principal, dict[str, str]], dict[str, Any]]


@dataclass(frozen=True)
class Confirm:
    """The confirmation page of an action: the question, the button, the hidden fields."""

    title: str
    question: str
    button: str
    back: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Shown:
    """An action's answer page (shown, not redirected to): a template and its context."""

    template: str
    ctx: dict[str, Any]


Asker = Callable[[Principal, dict[str, str], FormData], Confirm]
Doer = Callable[[Principal, dict[str, str], FormData], "str | Shown"]


def add_fleet_routes(app: FastAPI, c: Console) -> None:
    """Register the fleet pages and their actions on ``app``."""
    _pages(app, c)
    _device_actions(app, c)
    _webhook_and_key_actions(app, c)


def _pages(app: FastAPI, c: Console) -> None:
    d = c.domain
    _get(app, c, "/console/devices", "devices.html", lambda p, q: devices_view(d, p, q))
    _get(app, c, "/console/devices/{device_id}", "device.html",
         lambda p, q: device_view(d, p, q))
    _get(app, c, "/console/end-users", "end_users.html", lambda p, q: end_users_view(d, p, q))
    _get(app, c, "/console/end-users/{end_user_id}", "end_user.html",
         lambda p, q: end_user_view(d, p, q))
    _get(app, c, "/console/webhooks", "webhooks.html", lambda p, q: webhooks_view(d, p, q))
    _get(app, c, "/console/webhooks/{webhook_id}", "webhook.html",
         lambda p, q: webhook_view(d, p, q))
    _get(app, c, "/console/api-keys", "api_keys.html", lambda p, q: api_keys_view(d, p, q))


def _get(app: FastAPI, c: Console, path: str, template: str, view: View) -> None:
    """A page: session, then ``view(principal, path and query parameters)``."""

    async def page(request: Request) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _login()
        s, p = got
        params = {**request.query_params, **request.path_params}
        try:
            ctx = await anyio.to_thread.run_sync(lambda: view(p, params))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        notice = NOTICES.get(params.get("notice", ""))
        return c.page(request, template, s=s, notice=notice, **ctx)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False)


def _post(app: FastAPI, c: Console, path: str, ask: Asker | None, do: Doer) -> None:
    """An action: session, CSRF, then (unless ``ask`` is None) a confirmation page until
    the form carries ``confirm=yes``, then ``do``: a URL to redirect to, or a page."""
    from tapedeck.gateway.console import _check_csrf

    async def action(request: Request) -> Response:
        got = await anyio.to_thread.run_sync(lambda: c.session(request))
        if got is None:
            return _login()
        s, p = got
        refused = await _check_csrf(request, s)
        if refused:
            return refused
        form, params = await request.form(), dict(request.path_params)
        try:
            if ask is not None and form.get("confirm") != "yes":
                confirm = await anyio.to_thread.run_sync(lambda: ask(p, params, form))
                return c.page(request, "confirm.html", s=s, action=request.url.path,
                              confirm=confirm)
            done = await anyio.to_thread.run_sync(lambda: do(p, params, form))
        except TapedeckError as exc:
            return c.page(request, "error.html", exc.kind.http_status, s=s, error=exc)
        return _answer(c, request, s, done)

    app.add_api_route(path, action, methods=["POST"], include_in_schema=False)


def _answer(c: Console, request: Request, s: Session, done: str | Shown) -> Response:
    if isinstance(done, str):
        return RedirectResponse(done, status_code=303)
    resp = c.page(request, done.template, s=s, **done.ctx)
    resp.headers["Cache-Control"] = "no-store"  # a secret shown once stays out of caches
    return resp


def _login() -> Response:
    return RedirectResponse("/console", status_code=303)


def _field(form: FormData, name: str) -> str:
    """A required text field of the form (``invalid_request`` naming it if empty)."""
    value = str(form.get(name) or "").strip()
    if not value:
        raise invalid(name, f"{name} is required.")
    return value


# -- devices -------------------------------------------------------------------------------
def _device_actions(app: FastAPI, c: Console) -> None:
    d = c.domain

    def ask_unbind(p: Principal, a: dict[str, str], form: FormData) -> Confirm:
        dev = d.devices.get(p, a["device_id"])
        return Confirm("Unbind device", f"Unbind device {dev.id} ({dev.serial_number or 'no'}"
                       f" serial) from end user {dev.end_user_id or '—'}? Its device tokens"
                       " stop working at once.", "Unbind", f"/console/devices/{dev.id}")

    def unbind(p: Principal, a: dict[str, str], form: FormData) -> str:
        dev = d.devices.unbind(p, a["device_id"])
        return f"/console/devices/{dev.id}?notice=unbound"

    def ask_bind(p: Principal, a: dict[str, str], form: FormData) -> Confirm:
        dev, end_user_id = d.devices.get(p, a["device_id"]), _field(form, "end_user_id")
        return Confirm("Bind device", f"Bind device {dev.id} to end user {end_user_id}? A new"
                       " device token is shown once on the next page.", "Bind",
                       f"/console/devices/{dev.id}", {"end_user_id": end_user_id})

    def bind(p: Principal, a: dict[str, str], form: FormData) -> Shown:
        issued = d.devices.bind(p, a["device_id"], _field(form, "end_user_id"))
        return Shown("secret_once.html", {
            "title": "Device bound", "what": "device token", "secret": issued.device_token,
            "back": f"/console/devices/{issued.device.id}",
            "detail": f"Device {issued.device.id} is bound to end user "
                      f"{issued.device.end_user_id}. Put this token on the device:"})

    _post(app, c, "/console/devices/{device_id}/unbind", ask_unbind, unbind)
    _post(app, c, "/console/devices/{device_id}/bind", ask_bind, bind)


# -- webhooks and API keys -----------------------------------------------------------------
def _webhook_and_key_actions(app: FastAPI, c: Console) -> None:
    d = c.domain

    def ask_replay(p: Principal, a: dict[str, str], form: FormData) -> Confirm:
        wh, event_id = d.webhooks.get(p, a["webhook_id"]), _field(form, "event_id")
        return Confirm("Replay event", f"Send event {event_id} to {wh.url} again?", "Replay",
                       f"/console/webhooks/{wh.id}", {"event_id": event_id})

    def replay(p: Principal, a: dict[str, str], form: FormData) -> str:
        r = d.webhooks.replay(p, a["webhook_id"], event_ids=[_field(form, "event_id")])
        notice = "replayed" if r.replayed else "already_pending"
        return f"/console/webhooks/{r.webhook_id}?notice={notice}"

    def create_key(p: Principal, a: dict[str, str], form: FormData) -> Shown:
        name = str(form.get("name") or "").strip() or None
        scopes = [str(v) for v in form.getlist("scopes")]
        made = d.keys.create(p, kind="restricted", scopes=scopes, name=name)
        return Shown("secret_once.html", {
            "title": "API key created", "what": "API key", "secret": made.secret,
            "back": "/console/api-keys",
            "detail": f"Restricted key {made.key.name or made.key.id} with scopes "
                      f"{', '.join(made.key.scopes)}. Copy it now:"})

    def ask_revoke(p: Principal, a: dict[str, str], form: FormData) -> Confirm:
        key = d.keys.get(p, a["key_id"])
        return Confirm("Revoke API key", f"Revoke API key {key.name or key.id} ({key.hint})?"
                       " Every request with it fails"
                       " from now on, and its console sessions end.", "Revoke",
                       "/console/api-keys")

    def revoke(p: Principal, a: dict[str, str], form: FormData) -> str:
        d.keys.revoke(p, a["key_id"])
        return "/console/api-keys?notice=revoked"

    _post(app, c, "/console/webhooks/{webhook_id}/replay", ask_replay, replay)
    _post(app, c, "/console/api-keys", None, create_key)
    _post(app, c, "/console/api-keys/{key_id}/revoke", ask_revoke, revoke)

