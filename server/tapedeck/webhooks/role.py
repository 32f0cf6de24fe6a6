"""The ``dispatcher`` process role: ``start_dispatcher(app)`` builds a ``Dispatcher`` from the
app's settings and starts it (a module of its own so ``tapedeck.webhooks`` imports nothing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tapedeck.app import App
    from tapedeck.webhooks.dispatcher import Dispatcher


def start_dispatcher(app: App) -> Dispatcher:
    """Build the dispatcher from ``app.settings`` (policy, timeout, pool sizes) and start it."""
    from tapedeck.errors import invalid
    from tapedeck.webhooks.dispatcher import Dispatcher
    from tapedeck.webhooks.netguard import NetGuard, NetPolicy
    from tapedeck.webhooks.transport import GuardedTransport

    s = app.settings
    for name in ("webhooks_timeout_s", "webhooks_workers", "webhooks_per_endpoint"):
        if getattr(s, name) < 1:
            raise invalid(name, f"TAPEDECK_{name.upper()} must be at least 1.")
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=s.webhooks_allow_private)))
    dispatcher = Dispatcher(app.db, app.clock, app.domain.secret_box, transport,
                            timeout_s=float(s.webhooks_timeout_s), workers=s.webhooks_workers,
                            per_endpoint=s.webhooks_per_endpoint,
                            observe=app.metrics.observe_webhook)
    dispatcher.start()
    return dispatcher
