"""Test kit for operations: ``tapedeck <role>`` child processes whose stderr (the structured
log) goes to a file and whose stdout is read by a thread (failpoint lines), Prometheus
scrapes parsed with the official text parser, polling, and small real Opus recordings."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tapedeck.errors import ERRORS
from tapedeck.settings import Settings

from stitchkit import continuous_chunks

T = TypeVar("T")
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- polling ------------------------------------------------------------------------------------

def wait_until(check: Callable[[], T | None], timeout: float = 120.0, what: str = "condition",
               interval: float = 0.05) -> T:
    """Poll ``check`` until it returns a truthy value (returned); AssertionError on timeout.
    The timeout only bounds a hang: no test asserts on how long anything took."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- child processes ----------------------------------------------------------------------------

@dataclass
class Child:
    """A ``python -m tapedeck COMMAND`` process."""

    command: str
    proc: subprocess.Popen[str]
    stderr_path: Path
    listening: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 120.0) -> str:
        """The first stdout line matching ``predicate`` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line and predicate(line):
                        return line
                if self.lines and self.lines[-1] == "" and self.proc.poll() is not None:
                    raise AssertionError(f"tapedeck {self.command} exited: {self.stderr()[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"tapedeck {self.command}: no matching stdout line")
                self._cond.wait(min(left, 0.5))

    def wait_failpoint(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        line = self.wait_line(lambda s: s.startswith('{"failpoint"') and name in s, timeout)
        found: dict[str, Any] = json.loads(line)
        return found

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every stderr line as a JSON object (fails on a line that is not one)."""
        records = []
        for line in self.stderr().splitlines():
            if line.strip():
                records.append(json.loads(line))
        return records


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings.load()`` return ``settings``."""
    env = dict(os.environ)
    for key, value in vars(settings).items():
        env["TAPEDECK_" + key.upper()] = str(int(value) if isinstance(value, bool) else value)
    return env


def spawn(settings: Settings, command: str, log_dir: Path, name: str | None = None,
          timeout: float = 120.0) -> Child:
    """Start ``tapedeck COMMAND`` with ``settings``; stderr goes to ``log_dir/NAME.log``.
    Returns once it printed its listening line."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{name or command}.log"
    with stderr_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tapedeck", command],
                                env=settings_env(settings), stdout=subprocess.PIPE,
                                stderr=err, text=True)
    child = Child(command, proc, stderr_path)
    threading.Thread(target=child._read_stdout, daemon=True,
                     name=f"stdout-{name or command}").start()
    line = child.wait_line(lambda s: s.startswith('{"listening"'), timeout)
    child.listening = json.loads(line)["listening"]
    return child


def stop_all(children: list[Child]) -> None:
    """Kill whatever is still running (test teardown)."""
    for child in children:
        if child.proc.poll() is None:
            child.kill()


# -- REST -------------------------------------------------------------------------------------

def md5_b64(data: bytes) -> str:
    """The ``Content-MD5`` header value of ``data``."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put_chunk(template: str, part: int, data: bytes) -> httpx.Response:
    """PUT a chunk to the recording's ``chunk_upload_url_template`` (its token authorizes)."""
    return httpx.put(template.replace("{part}", str(part)), content=data, timeout=60.0,
                     headers={"Content-MD5": md5_b64(data)})


def create_streaming(c: httpx.Client, **extra: Any) -> dict[str, Any]:
    """POST a streaming recording; returns the 201 body."""
    resp = c.post("/v1/recordings", json={"streaming": True, **extra})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_error(resp: httpx.Response, type_: str) -> None:
    """``resp`` is the error envelope of ``type_`` with the error table's HTTP status."""
    assert resp.json()["error"]["type"] == type_, resp.text
    assert resp.status_code == ERRORS[type_].http_status, resp.text


# -- webhooks -----------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on 127.0.0.1 answering 200 and keeping every JSON body it got."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.events.append(json.loads(body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def about(self, recording_id: str) -> list[str]:
        """Types of the distinct events received about a recording, in arrival order."""
        with self._lock:
            seen: dict[str, str] = {}
            for event in self.events:
                data = event["data"]
                if recording_id in (data.get("id"), data.get("recording_id")):
                    seen.setdefault(event["id"], event["type"])
        return list(seen.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- metrics ------------------------------------------------------------------------------------

def scrape(url: str) -> Series:
    """Every sample of a ``/metrics`` page, parsed by prometheus_client's text parser:
    (sample name, sorted labels) → value."""
    resp = httpx.get(url, timeout=30.0)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Series = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: counters start unexported)."""
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Series, after: Series, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- audio --------------------------------------------------------------------------------------

def opus_chunks(parts: int, chunk_ms: int = 1000, start: int = 0) -> list[bytes]:
    """``parts`` real Ogg Opus chunk files of ``chunk_ms`` each (one continuous encoder over
    real speech, as the device agent makes them)."""
    seconds = parts * chunk_ms / 1000
    chunks = [c.data for c in continuous_chunks(seconds, chunk_ms, start=start)]
    assert len(chunks) == parts, len(chunks)
    return chunks


def iter_bytes(data: bytes, piece: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
