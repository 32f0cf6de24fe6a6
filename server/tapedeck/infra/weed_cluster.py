"""A real SeaweedFS cluster on loopback from the pinned ``weed`` binary: ``WeedCluster``.

One master, ``volumes`` (default 3) volume servers, one filer and one S3 gateway, each its
own ``weed`` process under one directory, every port free and bound to 127.0.0.1. Objects
are written with replication ``001`` (two copies on two different volume servers), so one
volume server can die without losing an acknowledged object; with three of them the master
can still place new two-copy volumes while one is down. The S3 gateway requires the
credentials it is given (``s3.json``: one admin identity), and the same pair is in its
environment, so it never falls back to accepting unsigned requests.

Used by ``scripts/cluster`` (``python -m tapedeck.infra.weed_cluster DIR`` prints the
``TAPEDECK_S3_*`` settings to point Tapedeck at it) and by the tests (``tests/clusterkit.py``).
On several hosts the same processes run with real addresses (see the README, Deployment).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import urllib3
from minio import Minio

from tapedeck.infra.weed import (
    HOST,
    WeedCredentials,
    WeedStartError,
    find_weed_binary,
    free_port,
    load_or_create_credentials,
)
from tapedeck.infra.weed_security import weed_environment

REPLICATION = "001"  # one more copy on another server of the same rack


@dataclass
class Node:
    """One ``weed`` process of the cluster."""

    name: str  # master | volume-N | filer | s3
    args: list[str]
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class WeedCluster:
    """Start with ``start()`` (or ``with``); ``stop()`` ends every process it started."""

    root: Path
    volumes: int = 3
    credentials: WeedCredentials = field(default_factory=WeedCredentials.generate)
    memory_limit: str = "256MiB"  # GOMEMLIMIT per process
    volume_size_limit_mb: int = 64
    start_timeout: float = 60.0
    nodes: dict[str, Node] = field(default_factory=dict)

    # -- addresses -----------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """host:port of the S3 gateway (``TAPEDECK_S3_ENDPOINT``)."""
        return f"{HOST}:{self.nodes['s3'].port}"

    @property
    def access_key(self) -> str:
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        return self.credentials.secret_key

    @property
    def master_url(self) -> str:
        return f"http://{HOST}:{self.nodes['master'].port}"

    def volume_names(self) -> list[str]:
        return [f"volume-{i}" for i in range(1, self.volumes + 1)]

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> WeedCluster:
        """Start master, volume servers, filer and S3 gateway; return when a signed write
        round trip succeeds and every volume server has registered."""
        if self.volumes < 2:
            raise ValueError("replication 001 needs at least two volume servers")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._plan(find_weed_binary())
        try:
            self._spawn(self.nodes["master"])
            self._wait_leader()  # volume servers that find no leader retry only every few s
            for node in self.nodes.values():
                if node.name != "master":
                    self._spawn(node)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every process (S3 first, master last), SIGKILL what is left after 5 s."""
        for node in reversed(list(self.nodes.values())):
            if node.alive:
                assert node.proc is not None
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        self._remove_sockets()

    def kill(self, name: str) -> None:
        """SIGKILL one process (e.g. ``volume-2``) and wait for it to be gone."""
        node = self.nodes[name]
        if node.proc is not None and node.alive:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, name: str) -> None:
        """Start a killed process again on the same directory and ports."""
        node = self.nodes[name]
        if not node.alive:
            self._spawn(node)

    def __enter__(self) -> WeedCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def data_nodes(self) -> int:
        """How many volume servers the master sees right now."""
        with urllib.request.urlopen(f"{self.master_url}/dir/status", timeout=5) as resp:
            topology = json.load(resp)["Topology"]
        return sum(len(rack.get("DataNodes") or [])
                   for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])

    # -- internals -----------------------------------------------------------------------
    def _plan(self, binary: str) -> None:
        common = [f"-ip={HOST}", f"-ip.bind={HOST}"]
        master = self._node("master", [binary, "master", f"-mdir={self.root / 'master'}",
                                       "-telemetry=false", f"-defaultReplication={REPLICATION}",
                                       f"-volumeSizeLimitMB={self.volume_size_limit_mb}",
                                       *common])
        mserver = f"{HOST}:{master.port}.{master.port + 10000}"  # port.grpc = port + 10000
        for name in self.volume_names():
            self._node(name, [binary, "volume", f"-dir={self.root / name}", f"-mserver={mserver}",
                              "-max=300", "-preStopSeconds=0", *common])
        filer = self._node("filer", [binary, "filer", f"-master={mserver}",
                                     f"-defaultStoreDir={self.root / 'filer'}",
                                     f"-defaultReplicaPlacement={REPLICATION}",
                                     f"-localSocket={self.root / 'filer.sock'}", *common])
        config = self.root / "s3.json"
        _write_private(config, json.dumps({"identities": [{
            "name": "tapedeck",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self._node("s3", [binary, "s3", f"-filer={HOST}:{filer.port}.{filer.port + 10000}",
                          f"-config={config}", f"-ip.bind={HOST}", "-port.iceberg=0",
                          "-port.lance=0", f"-localSocket={self.root / 's3.sock'}"])

    def _node(self, name: str, args: list[str]) -> Node:
        """A node on a free port whose gRPC twin (port + 10000, weed's default) is free too."""
        taken = {n.port for n in self.nodes.values()}
        while True:
            port = free_port()
            if port + 10000 < 65536 and port not in taken and _free(port + 10000):
                break
        node = Node(name, [*args, f"-port={port}", f"-port.grpc={port + 10000}"],
                    self.root / name, port)
        self.nodes[name] = node
        return node

    def _spawn(self, node: Node) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = weed_environment(os.environ)
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   GOMEMLIMIT=self.memory_limit)
        with open(node.log_path, "ab") as log:
            try:
                node.proc = subprocess.Popen(node.args, cwd=node.workdir, env=env,
                                             stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise WeedStartError(f"cannot run {node.args[0]}: {exc}") from exc

    def _wait_leader(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.nodes["master"].alive:
            with contextlib.suppress(OSError, ValueError), \
                    urllib.request.urlopen(f"{self.master_url}/cluster/status",
                                           timeout=2) as resp:
                if json.load(resp).get("Leader"):
                    return
            time.sleep(0.05)
        raise WeedStartError(f"the SeaweedFS master elected no leader (see "
                             f"{self.nodes['master'].log_path})")

    def _wait_ready(self) -> None:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=3.0),
                                   retries=False, maxsize=1)
        client = Minio(self.endpoint, self.access_key, self.secret_key, secure=False,
                       region="us-east-1", http_client=http)
        deadline, last = time.monotonic() + self.start_timeout, "no answer yet"
        try:
            while True:
                for node in self.nodes.values():
                    if not node.alive:
                        raise WeedStartError(f"weed {node.name} exited before the cluster was "
                                             f"ready (see {node.log_path})")
                try:
                    if self.data_nodes() >= self.volumes:
                        _probe(client)
                        return
                    last = f"{self.data_nodes()} of {self.volumes} volume servers registered"
                except Exception as exc:  # any failure means "not ready yet"
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise WeedStartError(f"the SeaweedFS cluster is not ready after "
                                         f"{self.start_timeout:.0f} s ({last})")
                time.sleep(0.1)
        finally:
            http.clear()

    def _remove_sockets(self) -> None:
        for path in [self.root / "filer.sock", self.root / "s3.sock",
                     *(Path(f"/tmp/seaweedfs-{kind}-{n.port}.sock")
                       for n in self.nodes.values() for kind in ("filer", "s3")),
                     *(Path(f"/tmp/seaweedfs-{n.name.split('-')[0]}-grpc-{n.port + 10000}.sock")
                       for n in self.nodes.values())]:
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _probe(client: Minio) -> None:
    """A signed bucket create (once), put and remove: the whole write path answers."""
    import io

    bucket = "tapedeck-readiness-probe"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, "ready", io.BytesIO(b"ok"), 2)
    client.remove_object(bucket, "ready")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    """``scripts/cluster DIR [VOLUMES]``: start the cluster, print the settings that point
    Tapedeck at it (shell ``export`` lines), run until SIGINT/SIGTERM, then stop it."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: scripts/cluster DIR [VOLUME_SERVERS (default 3)]", file=sys.stderr)
        return 2
    root = Path(args[0]).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster = WeedCluster(root, volumes=int(args[1]) if len(args) > 1 else 3,
                          credentials=load_or_create_credentials(root / "s3-credentials.json"))
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster.start()
    except WeedStartError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 13
    try:
        print(f"export TAPEDECK_S3_ENDPOINT={cluster.endpoint}")
        print(f"export TAPEDECK_S3_ACCESS_KEY={cluster.access_key}")
        print(f"export TAPEDECK_S3_SECRET_KEY={cluster.secret_key}")
        print(f"# master {cluster.master_url}, {cluster.volumes} volume servers "
              f"(replication {REPLICATION}); Ctrl-C stops the cluster", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
