"""Wake-ups across processes and hosts: PostgreSQL ``LISTEN/NOTIFY`` for idle job workers and
webhook dispatchers.

Contract:
- ``listen_for_wakeups(db, handlers)`` returns a service (``stop(grace)``). On PostgreSQL it is
  ONE daemon thread holding ONE autocommit connection that ``LISTEN``s on every channel of
  ``handlers`` and calls ``handlers[channel](payload)`` for each notification (delivered when
  the notifying transaction commits: the job or event is visible by then). On SQLite (one
  node, in-process signals already exist) it does nothing.
- A wake-up is a hint, never the only path to work: the loops it wakes keep polling at their
  fallback interval, so a lost notification (listener reconnecting after the database
  restarted) only delays work. After (re)connecting, every handler is called once with
  payload ``""`` (= look at everything), because notifications sent while not listening are
  gone.
- Handlers must be quick and must not raise (they set events); an exception is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from tapedeck.infra.db import Database

log = logging.getLogger("tapedeck.infra.wakeup")

Handler = Callable[[str], None]


class _NoWakeups:
    """SQLite: nothing to listen to."""

    def stop(self, grace: float) -> None:
        del grace


class PgWakeups:
    """The listener thread (see the module docstring)."""

    def __init__(self, url: str, handlers: Mapping[str, Handler], *,
                 check_s: float = 0.5, reconnect_s: float = 1.0) -> None:
        self.url = url
        self.handlers = dict(handlers)
        self.check_s = check_s
        self.reconnect_s = reconnect_s
        self.connected = threading.Event()  # set while LISTENing (tests wait on it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-wakeups")

    def start(self) -> PgWakeups:
        self._thread.start()
        return self

    def stop(self, grace: float) -> None:
        """Stop listening; the thread ends within ``check_s``."""
        self._stop.set()
        self._thread.join(max(grace, self.check_s * 2))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # database restarting or unreachable: poll covers it
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
            self._stop.wait(self.reconnect_s)

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            for channel in self.handlers:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected.set()
            for channel in self.handlers:
                self._call(channel, "")  # anything sent before we listened
            while not self._stop.is_set():
                for note in conn.notifies(timeout=self.check_s):
                    self._call(note.channel, note.payload)
                    if self._stop.is_set():
                        break

    def _call(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            log.exception("wake-up handler of %s failed", channel)


def listen_for_wakeups(db: Database, handlers: Mapping[str, Handler]
                       ) -> PgWakeups | _NoWakeups:
    """A started listener for ``handlers`` (channel → handler(payload)); a no-op on SQLite."""
    if db.dialect != "postgresql" or not handlers:
        return _NoWakeups()
    return PgWakeups(db.url, handlers).start()
