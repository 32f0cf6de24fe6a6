"""Benchmark: what TLS costs on the API ports (issue 15 item 5), against plaintext in the
same run.

Run: ``.venv/bin/python bench/security.py [--chunks 20] [--chunk-mib 1] [--rounds 3]``

Starts a real ``weed mini`` (with its mTLS/JWT security config) and two in-process Tapedeck
servers on it: one plaintext, one with a certificate from a CA made here. For each it
measures (median of ``--rounds``): uploading ``--chunks`` chunks of ``--chunk-mib`` MiB over
gRPC (``UploadChunk``, one channel), the same over REST (``PUT`` to the chunk URL, one
keep-alive connection), and a fresh connection plus one small call (gRPC
``ListRecordings``; REST ``GET /v1/recordings``), i.e. the handshake. Prints MiB/s or
milliseconds and the TLS/plaintext ratio of each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
import httpx  # noqa: E402

from tapedeck.infra.pki import CertificateAuthority  # noqa: E402
from tapedeck.infra.weed import ManagedWeed  # noqa: E402
from tapedeck.v1 import chunk_pb2_grpc, recording_pb2, recording_pb2_grpc  # noqa: E402

from serverkit import RunningServer, auth, chunk_messages, make_settings, start_server  # noqa: E402


class Side:
    """One server and how to reach it (plaintext or TLS)."""

    def __init__(self, srv: RunningServer, ca: Path | None) -> None:
        self.srv, self.ca = srv, ca
        _, self.token = srv.device_token()
        scheme = "https" if ca else "http"
        self.base = f"{scheme}://127.0.0.1:{srv.app.http_port}"
        self.verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(ca))
                                              if ca else False)

    def channel(self) -> grpc.Channel:
        options = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if self.ca is None:
            return grpc.insecure_channel(self.srv.grpc_target, options)
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.secure_channel(self.srv.grpc_target, creds, options)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=self.verify, timeout=120,
                            headers={"Authorization": f"Bearer {self.token}"})

    def streaming(self, c: httpx.Client) -> dict[str, str]:
        return dict(c.post("/v1/recordings", json={"streaming": True}).json())


def grpc_upload(side: Side, chunks: list[bytes]) -> float:
    with side.http() as c:
        rec = side.streaming(c)
    channel = side.channel()
    stub = chunk_pb2_grpc.ChunkServiceStub(channel)
    started = time.perf_counter()
    for i, data in enumerate(chunks, 1):
        stub.UploadChunk(chunk_messages(rec["id"], i, data), metadata=auth(side.token))
    took = time.perf_counter() - started
    channel.close()
    return took


def rest_upload(side: Side, chunks: list[bytes]) -> float:
    with side.http() as c:
        rec = side.streaming(c)
        template = rec["chunk_upload_url_template"]
        started = time.perf_counter()
        for i, data in enumerate(chunks, 1):
            resp = c.put(template.replace("{part}", str(i)), content=data,
                         headers={"Authorization": "",
                                  "Content-MD5": _b64md5(data)})
            assert resp.status_code == 201, resp.text
        return time.perf_counter() - started


def _b64md5(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


def grpc_connect(side: Side, n: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(n):
        channel = side.channel()
        recording_pb2_grpc.RecordingServiceStub(channel).ListRecordings(
            recording_pb2.ListRecordingsRequest(page_size=1), metadata=auth(side.token))
        channel.close()
    return (time.perf_counter() - started) / n


def rest_connect(side: Side, n: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with side.http() as c:
            assert c.get("/v1/recordings?limit=1").status_code == 200
    return (time.perf_counter() - started) / n


def median(rounds: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(rounds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--chunk-mib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    chunks = [os.urandom(int(args.chunk_mib * 1024 * 1024)) for _ in range(args.chunks)]
    mib = args.chunks * args.chunk_mib
    with tempfile.TemporaryDirectory() as tmp_s, ManagedWeed(Path(tmp_s) / "weed") as weed:
        tmp = Path(tmp_s)
        ca = CertificateAuthority("bench CA")
        (tmp / "ca.pem").write_bytes(ca.cert_pem)
        ca.issue("bench", ("127.0.0.1",)).write(tmp / "cert.pem", tmp / "key.pem")
        limits = {"max_chunks": max(100, args.chunks),
                  "max_chunk_bytes": max(32 << 20, len(chunks[0]))}
        plain_srv = start_server(make_settings(weed, tmp / "plain", **limits),
                                 roles=("grpc", "http"))
        tls_srv = start_server(make_settings(weed, tmp / "tls", tls_cert_file=str(tmp / "cert.pem"),
                                             tls_key_file=str(tmp / "key.pem"), **limits),
                               roles=("grpc", "http"))
        try:
            plain, tls = Side(plain_srv, None), Side(tls_srv, tmp / "ca.pem")
            rows = []
            for name, fn, unit in (("gRPC UploadChunk", grpc_upload, "MiB/s"),
                                   ("REST PUT chunk", rest_upload, "MiB/s")):
                p = mib / median(args.rounds, lambda fn=fn: fn(plain, chunks))
                t = mib / median(args.rounds, lambda fn=fn: fn(tls, chunks))
                rows.append((name, p, t, unit, t / p))
            for name, fn in (("gRPC connect + call", grpc_connect),
                             ("REST connect + call", rest_connect)):
                p = 1000 * median(args.rounds, lambda fn=fn: fn(plain))
                t = 1000 * median(args.rounds, lambda fn=fn: fn(tls))
                rows.append((name, p, t, "ms", t / p))
        finally:
            plain_srv.close()
            tls_srv.close()
    print(f"{args.chunks} chunks x {args.chunk_mib} MiB, median of {args.rounds} rounds")
    print(f"{'':22} {'plaintext':>12} {'TLS':>12}  TLS/plain")
    for name, p, t, unit, ratio in rows:
        print(f"{name:22} {p:9.1f} {unit:<5} {t:6.1f} {unit:<5} {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
