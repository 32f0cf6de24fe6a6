"""Webhooks delivery: Standard Webhooks signing (``signing``), sealed secrets
(``secretbox``), SSRF policy (``netguard``), the HTTP transport (``transport``) and the
durable dispatcher (``dispatcher``). The endpoint rules (create, list, replay, ...) are
domain rules: ``tapedeck.domain.webhooks``.

``role.start_dispatcher(runtime, secret_box)`` is the ``dispatcher`` process role. This
package ``__init__`` imports nothing, so the domain can use the transport pieces without
pulling in the dispatcher or the app.
"""
