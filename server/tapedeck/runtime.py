"""``Runtime``: what a process role (worker pool, dispatcher, sweeper, gateway) and a job
handler factory receive, instead of the whole ``App``.

A leaf: it imports only the modules its fields are typed with, never ``tapedeck.app``, the
domain or a role (tests/test_architecture.py enforces it). ``App.open`` builds the one
``Runtime`` of a process; roles that need more (the gateway needs the ``Domain``, the
dispatcher the secret box) get that as explicit arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapedeck.clock import Clock
from tapedeck.infra.db import Database
from tapedeck.infra.jobs import JobSignals
from tapedeck.infra.metrics import Metrics
from tapedeck.infra.store import ObjectStore
from tapedeck.settings import Settings


@dataclass(frozen=True)
class Runtime:
    """The shared clients of one Tapedeck process.

    Contracts: ``settings`` were checked at startup and never change afterwards; a listening
    port given as 0 is already the bound one (``http_port``: chunk upload URLs name it).
    ``store`` is the metered store. ``job_signals`` is the domain's: whoever commits an
    enqueue calls ``notify(kind)`` after the commit; worker pools subscribe to it."""

    settings: Settings
    db: Database
    store: ObjectStore
    clock: Clock
    metrics: Metrics
    job_signals: JobSignals
