"""The ``dispatcher`` process role: ``start_dispatcher(runtime, secret_box)`` builds a
``Dispatcher`` from the runtime's settings and starts it (a module of its own so
``tapedeck.webhooks`` imports nothing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tapedeck.runtime import Runtime
    from tapedeck.webhooks.dispatcher import Dispatcher
    from tapedeck.webhooks.secretbox import SecretBox


def start_dispatcher(runtime: Runtime, secret_box: SecretBox) -> Dispatcher:
    """Build the dispatcher from ``runtime.settings`` (policy, timeout, pool sizes) and start
    it. ``secret_box`` opens the sealed endpoint secrets: the domain's (``Domain.secret_box``),
    the one sealer of the process."""
    from tapedeck.webhooks.dispatcher import Dispatcher
    from tapedeck.webhooks.netguard import NetGuard, NetPolicy
    from tapedeck.webhooks.transport import GuardedTransport

    s = runtime.settings  # pool sizes and timeout >= 1: checked at startup (tapedeck.validate)
    transport = GuardedTransport(NetGuard(NetPolicy(allow_private=s.webhooks_allow_private)))
    dispatcher = Dispatcher(runtime.db, runtime.clock, secret_box, transport,
                            timeout_s=float(s.webhooks_timeout_s), workers=s.webhooks_workers,
                            per_endpoint=s.webhooks_per_endpoint,
                            observe=runtime.metrics.observe_webhook)
    dispatcher.start()
    return dispatcher
