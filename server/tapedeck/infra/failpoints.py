"""Testing only: named stages where a worker stops, so crash tests can kill it there.

Production never builds one from anything but the ``test_only_failpoints`` setting
(``TAPEDECK_TEST_ONLY_FAILPOINTS``), empty by default; the long name is deliberate, so no
deployment sets it by accident. An empty ``Failpoints()`` costs one set lookup per stage.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)


class Failpoints:
    """Testing only: named stages where a worker stops, so crash tests can kill it there.

    Built from the ``test_only_failpoints`` setting (comma-separated names; empty = none, the default).
    ``hit(name)`` at a listed stage prints ``{"failpoint": name, ...}`` as one JSON line on
    standard output and blocks the calling thread forever; elsewhere it does nothing.
    """

    def __init__(self, spec: str = "") -> None:
        self.names = frozenset(n.strip() for n in spec.split(",") if n.strip())

    def hit(self, name: str, **info: Any) -> None:
        if name not in self.names:
            return
        sys.stdout.write(json.dumps({"failpoint": name, **info}) + "\n")  # one write: atomic
        sys.stdout.flush()
        log.warning("failpoint %s reached; hanging", name)
        threading.Event().wait()
