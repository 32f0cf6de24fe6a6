"""Why a Tapedeck command could not start: one line for the operator and a distinct exit code.

``StartupError(code, message)`` is raised by ``App.open``/``App.start`` (and the admin
commands) for every check made before serving; ``tapedeck`` prints ``tapedeck: <message>``
on stderr, with no traceback, and exits with ``code``. The codes (also in the README):

    2   invalid setting or flag (a ``TapedeckError`` such as ``invalid_request``)
    10  the HTTP port is taken (or cannot be bound)
    11  the gRPC port is taken (or cannot be bound)
    12  the data dir is in use by another running Tapedeck
    13  the object store did not start or does not answer
    14  the data dir cannot be created or written
    15  the database cannot be opened or migrated
    16  an admin command found no database and was not asked to create one
"""

from __future__ import annotations

EXIT_INVALID = 2
EXIT_HTTP_PORT = 10
EXIT_GRPC_PORT = 11
EXIT_DATA_DIR_IN_USE = 12
EXIT_STORE = 13
EXIT_DATA_DIR = 14
EXIT_DATABASE = 15
EXIT_NO_DATABASE = 16


class StartupError(Exception):
    """A startup check failed: ``message`` is one line saying what and what to do."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = " ".join(message.split())  # one line, whatever the cause's text
        super().__init__(self.message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (log tails and tracebacks stay out)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
