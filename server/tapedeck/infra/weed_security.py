"""SeaweedFS's own security configuration for the managed ``weed mini``: the S3 endpoint
(which checks AWS signatures) stays the only door.

``write_security_config(data_dir)`` runs before every start and (re)writes
``data_dir/security.toml``, which ``weed`` reads from its working directory:

- mutual TLS on every internal gRPC port (master, volume, filer, s3, admin, worker) and on
  the master, volume, filer and admin HTTP ports: a fresh private CA signs one certificate
  for weed's components, then its key is thrown away, so no one can mint another; a client
  without that certificate cannot even finish the TLS handshake;
- JWT signing of volume writes and reads (master → volume) and of filer writes and reads
  (S3 gateway → filer, also through the filer's unix socket), each with a fresh random key;
- the volume UI off and the filer's directory metadata not exposed.

The S3 port is not touched (plain HTTP on loopback, signatures checked). Everything is
regenerated at each start, so nothing needs to survive a restart; the files are 0600 in
``data_dir/security`` (0700). ``WEED_*`` variables are removed from weed's environment by
``weed_environment`` (they would override the file).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from tapedeck.infra.pki import CertificateAuthority, write_private
from tapedeck.infra.private import private_dir

CONFIG_FILE = "security.toml"
SECURITY_DIR = "security"
JWT_EXPIRES_S = 10
_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker",
                    "msg_agent", "mq")
_HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")
_JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing",
                 "jwt.filer_signing.read")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(ca: Path, cert: Path, key: Path, jwt_keys: Mapping[str, str]) -> str:
    """The text of security.toml for the given files and one key per ``_JWT_SECTIONS``."""
    files = f"cert = {_toml_str(str(cert))}\nkey = {_toml_str(str(key))}\n"
    lines = ["# Written by tapedeck at each start of the managed weed; do not edit.", ""]
    for section in _JWT_SECTIONS:
        lines += [f"[{section}]", f"key = {_toml_str(jwt_keys[section])}",
                  f"expires_after_seconds = {JWT_EXPIRES_S}", ""]
    lines += ["[access]", "ui = false", "",
              "[filer.expose_directory_metadata]", "enabled = false", "",
              "[grpc]", f"ca = {_toml_str(str(ca))}", ""]
    for component in _GRPC_COMPONENTS:
        lines += [f"[grpc.{component}]", files]
    lines += ["[grpc.client]", files,
              "[https.client]", "enabled = true", files + f"ca = {_toml_str(str(ca))}", ""]
    for component in _HTTPS_COMPONENTS:
        lines += [f"[https.{component}]", files + f"ca = {_toml_str(str(ca))}", ""]
    return "\n".join(lines)


def write_security_config(data_dir: Path) -> Path:
    """Fresh CA, certificate and JWT keys for one run of weed in ``data_dir``; returns the
    path of the security.toml written (see the module docstring)."""
    folder = private_dir(data_dir / SECURITY_DIR)
    ca = CertificateAuthority("tapedeck managed weed CA")
    issued = ca.issue("weed", ("127.0.0.1", "localhost"))
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "weed.pem", folder / "weed.key"
    write_private(ca_path, ca.cert_pem)
    issued.write(cert_path, key_path)
    jwt_keys = {section: secrets.token_urlsafe(32) for section in _JWT_SECTIONS}
    config = data_dir / CONFIG_FILE
    write_private(config, render_config(ca_path, cert_path, key_path, jwt_keys).encode())
    return config


def weed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without ``WEED_*`` variables (a set one wins over security.toml)."""
    return {k: v for k, v in env.items() if not k.startswith("WEED_")}


__all__ = ["render_config", "weed_environment",
           "write_security_config"]
