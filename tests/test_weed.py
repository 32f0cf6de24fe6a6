"""ManagedWeed: a real ``weed mini`` process — loopback only, always authenticated, restartable
after kill -9 with data intact, clear errors when it cannot start."""

from __future__ import annotations

import http.client
import io
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from tapedeck.infra.store.s3 import S3Store
from tapedeck.infra.weed import ManagedWeed, WeedStartError

pytestmark = pytest.mark.timeout(180)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _inet_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(table, local address hex, state hex) of every IP socket the process holds."""
    mine = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in mine:
                found.append((table, cols[1], cols[3]))
    return found


def _leftover_sockets(w: ManagedWeed) -> list[Path]:
    paths = [p for p in w.data_dir.glob("*.sock")]
    for port in w.ports.values():
        paths += list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
    return paths


def _status(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_listens_on_loopback_only_and_stops_cleanly(tmp_path: Path) -> None:
    with ManagedWeed(tmp_path / "w") as w:
        pid = w.pid
        assert pid is not None and w.running
        # Ready means S3 answers; the admin server comes up a moment later.
        deadline = time.monotonic() + 30
        while True:
            sockets = _inet_sockets(pid)
            listening = [s for s in sockets if s[0].startswith("tcp") and s[2] == "0A"]
            ports = {int(addr.split(":")[1], 16) for _, addr, _ in listening}
            if set(w.ports.values()) <= ports or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert set(w.ports.values()) <= ports  # every chosen port is really used...
        for table, addr, _state in sockets:  # ...and nothing is reachable from outside
            assert table in ("tcp", "udp"), f"IPv6 socket {addr}"
            assert addr.split(":")[0] in ("0100007F", "00000000") or table == "udp", addr
        for _table, addr, _state in listening:
            assert addr.split(":")[0] == "0100007F", f"listening on {addr}"
        assert _leftover_sockets(w)  # while running, its unix sockets exist
    assert not w.running
    assert _leftover_sockets(w) == []
    assert not Path(f"/proc/{pid}").exists()


def test_always_authenticated_with_persisted_credentials(tmp_path: Path) -> None:
    data = tmp_path / "w"
    with ManagedWeed(data) as w:
        first = w.credentials
        port = w.s3_port
        creds = data / "s3-credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert _status(w.s3_port, "GET", "/") == 403  # anonymous ListBuckets
        assert _status(w.s3_port, "PUT", "/anon-bucket") == 403
        environ = Path(f"/proc/{w.pid}/environ").read_bytes().split(b"\0")
        assert f"AWS_ACCESS_KEY_ID={first.access_key}".encode() in environ
        assert f"GOMEMLIMIT={w.memory_limit}".encode() in environ
    with ManagedWeed(data) as again:
        assert again.credentials == first
        assert again.s3_port == port  # same endpoint while the port is free
        s = S3Store(again.endpoint, again.access_key, again.secret_key, "reused")
        s.ensure_bucket()
        s.close()
    assert (data / "weed.log").read_text().count("=== tapedeck: starting weed mini") == 2


def test_kill_9_then_restart_keeps_objects(tmp_path: Path) -> None:
    w = ManagedWeed(tmp_path / "w")
    w.start()
    try:
        s = S3Store(w.endpoint, w.access_key, w.secret_key, "durable")
        s.ensure_bucket()
        objects = {f"recordings/r1/chunks/chunk_{i}.opus": os.urandom(10_000 * i)
                   for i in range(1, 6)}
        for key, data in objects.items():
            s.put(key, io.BytesIO(data), len(data))
        s.close()
        old_pid, old_ports = w.pid, w.ports
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        while w.running:  # the crash is noticed once the kernel has delivered the signal
            time.sleep(0.01)
        w.start()  # reaps the dead process, cleans its sockets, starts again
        assert w.pid != old_pid and w.running
        assert w.ports == old_ports
        s = S3Store(w.endpoint, w.access_key, w.secret_key, "durable")
        assert [i.key for i in s.list("recordings/")] == sorted(objects)
        for key, data in objects.items():
            f = s.open(key)
            assert f.read() == data
            f.close()
        s.close()
    finally:
        w.stop()


def _fake_weed(tmp_path: Path, body: str) -> str:
    """An executable standing in for ``weed`` (a real process, to exercise the error paths)."""
    script = tmp_path / "fake-weed"
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    fake = _fake_weed(tmp_path, "import sys\nprint('boom: cannot open volume', flush=True)\n"
                                "sys.exit(3)")
    w = ManagedWeed(tmp_path / "w", binary=fake)
    with pytest.raises(WeedStartError) as exc:
        w.start()
    assert "code 3" in str(exc.value)
    assert "boom: cannot open volume" in str(exc.value)
    assert not w.running


def test_never_ready_times_out_and_is_killed(tmp_path: Path) -> None:
    fake = _fake_weed(tmp_path, "import os, signal, time\n"
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                "print('pid', os.getpid(), flush=True)\n"
                                "time.sleep(120)")
    w = ManagedWeed(tmp_path / "w", binary=fake, start_timeout=1.0, stop_grace=0.5)
    with pytest.raises(WeedStartError) as exc:
        w.start()
    assert "not ready" in str(exc.value)
    pid_line = next(line for line in str(exc.value).splitlines() if line.startswith("pid "))
    assert not Path(f"/proc/{pid_line.split()[1]}").exists()  # SIGTERM ignored → SIGKILL
    assert not w.running


def test_s3_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        w = ManagedWeed(tmp_path / "w", s3_port=port, start_timeout=30)
        with pytest.raises(WeedStartError) as exc:
            w.start()
        w.stop()
    assert str(port) in str(exc.value)
    assert not w.running


def test_one_weed_per_data_dir(tmp_path: Path) -> None:
    with ManagedWeed(tmp_path / "w") as first:
        second = ManagedWeed(tmp_path / "w")
        with pytest.raises(WeedStartError) as exc:
            second.start()
        assert "in use" in str(exc.value)
        assert first.running
    with ManagedWeed(tmp_path / "w") as again:  # released on stop
        assert again.running
