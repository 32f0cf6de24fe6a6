"""Every setting checked in one place: ``check_settings`` runs first in ``App.open``, in every
process whatever its roles, before anything starts. An unusable value is one
``invalid_request`` naming the setting (``tapedeck`` prints it as one JSON line, exit 2).

Roles and job handlers rely on it: the settings of a ``Runtime`` passed these checks.
Checked elsewhere, also before anything starts: the type of each value (``Settings.load``)
and ``log_format``/``log_level`` (``tapedeck.cli``, where logging is set up first).
"""

from __future__ import annotations

from tapedeck.errors import invalid
from tapedeck.infra.jobs import JOB_KINDS, parse_lanes
from tapedeck.infra.tls import ServerCertificate, check_transport
from tapedeck.server_keys import check_secret_key
from tapedeck.settings import WHISPER_DECODINGS, Settings

#: Settings that are a count or a duration of at least 1 (the dispatcher's pools, timeout).
AT_LEAST_ONE = ("webhooks_timeout_s", "webhooks_workers", "webhooks_per_endpoint")


def check_settings(settings: Settings) -> ServerCertificate | None:
    """Raise ``invalid_request`` for the first unusable setting; else the TLS certificate to
    serve with, loaded from the files just checked (None: plaintext)."""
    certificate = check_transport(settings)
    check_secret_key(settings)
    for name in AT_LEAST_ONE:
        if getattr(settings, name) < 1:
            raise invalid(name, f"TAPEDECK_{name.upper()} must be at least 1.")
    parse_lanes(settings.worker_lanes, JOB_KINDS)
    if settings.whisper_decoding not in WHISPER_DECODINGS:
        raise invalid("whisper_decoding", f"whisper_decoding must be one of "
                      f"{', '.join(WHISPER_DECODINGS)}, not {settings.whisper_decoding!r} "
                      "(TAPEDECK_WHISPER_DECODING)")
    return certificate
