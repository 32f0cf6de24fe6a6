"""``tapedeck.server_keys``: one TAPEDECK_SECRET_KEY for every node (HKDF per purpose), the
embedded default's key files unchanged, rotation with TAPEDECK_SECRET_KEY_PREVIOUS, and
``admin reseal-secrets``; a URL signed by one api process is accepted by another."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tapedeck.auth import ALL_SCOPES, Principal, UploadTokens, create_project
from tapedeck.cli import reseal
from tapedeck.clock import SystemClock
from tapedeck.errors import TapedeckError
from tapedeck.infra.db import open_database
from tapedeck.infra.weed import ManagedWeed
from tapedeck.server_keys import ServerKeys, derive
from tapedeck.settings import Settings
from tapedeck.webhooks.secretbox import SecretBox

from serverkit import drop_bucket, make_settings, spawn_server, start_server

KEY_A = "a" * 20 + "-secret-key-of-cluster-A"
KEY_B = "b" * 20 + "-secret-key-of-cluster-B"
NOW = SystemClock().now()


def keys(data_dir: Path, secret: str = "", previous: str = "") -> ServerKeys:
    return ServerKeys.from_settings(Settings(data_dir=data_dir, secret_key=secret,
                                             secret_key_previous=previous))


def test_default_keeps_the_data_dir_key_files(tmp_path: Path) -> None:
    k = keys(tmp_path)
    token = k.upload_tokens().issue("prj_1", "rec_1", NOW + timedelta(hours=1))
    sealed = k.secret_box().seal("whsec_x", "wh_1")
    # The same files as before this module existed: the old loaders read them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload-signing.key",
                                                          "webhook-secrets.key"]
    assert UploadTokens.from_data_dir(tmp_path).verify(token, NOW).recording_id == "rec_1"
    assert SecretBox.from_data_dir(tmp_path).open(sealed, "wh_1") == "whsec_x"
    # another data dir = another key
    with pytest.raises(TapedeckError, match="The upload token is invalid"):
        keys(tmp_path / "other").upload_tokens().verify(token, NOW)


def test_one_secret_key_is_the_same_on_every_node_and_writes_no_files(tmp_path: Path) -> None:
    a, b = keys(tmp_path / "a", KEY_A), keys(tmp_path / "b", KEY_A)
    token = a.upload_tokens().issue("prj_1", "rec_1", NOW + timedelta(hours=1))
    assert b.upload_tokens().verify(token, NOW).recording_id == "rec_1"
    assert b.secret_box().open(a.secret_box().seal("whsec_x", "wh_1"), "wh_1") == "whsec_x"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    other = keys(tmp_path / "c", KEY_B)
    with pytest.raises(TapedeckError, match="The upload token is invalid"):
        other.upload_tokens().verify(token, NOW)
    with pytest.raises(ValueError, match="sealed secret does not open with this key"):
        other.secret_box().open(a.secret_box().seal("whsec_x", "wh_1"), "wh_1")
    # Purposes are separated: the signing key is not the sealing key.
    assert derive(KEY_A, "upload-signing") != derive(KEY_A, "webhook-secrets")
    assert len(derive(KEY_A, "upload-signing")) == 32


def test_rotation_accepts_the_previous_key_and_signs_with_the_new(tmp_path: Path) -> None:
    old = keys(tmp_path, KEY_A)
    token = old.upload_tokens().issue("prj_1", "rec_1", NOW + timedelta(hours=1))
    sealed = old.secret_box().seal("whsec_x", "wh_1")
    rotated = keys(tmp_path, KEY_B, previous=KEY_A)
    assert rotated.upload_tokens().verify(token, NOW).recording_id == "rec_1"
    assert rotated.secret_box().open(sealed, "wh_1") == "whsec_x"
    fresh = rotated.upload_tokens().issue("prj_1", "rec_2", NOW + timedelta(hours=1))
    assert keys(tmp_path, KEY_B).upload_tokens().verify(fresh, NOW).recording_id == "rec_2"
    # new tokens are not signed with the old key
    with pytest.raises(TapedeckError, match="The upload token is invalid"):
        old.upload_tokens().verify(fresh, NOW)
    # once the previous key is dropped, old tokens die
    with pytest.raises(TapedeckError, match="The upload token is invalid"):
        keys(tmp_path, KEY_B).upload_tokens().verify(token, NOW)


@pytest.mark.parametrize(("secret", "previous", "field"), [
    ("too-short", "", "secret_key"),
    (KEY_A, "short", "secret_key_previous"),
    ("", KEY_A, "secret_key_previous"),
    (KEY_A, KEY_A, "secret_key_previous"),
])
def test_unusable_settings_are_invalid(tmp_path: Path, secret: str, previous: str,
                                       field: str) -> None:
    with pytest.raises(TapedeckError) as exc:
        keys(tmp_path, secret, previous)
    assert exc.value.type == "invalid_request" and exc.value.details["field"] == field


def test_a_short_key_stops_the_server_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ, TAPEDECK_SECRET_KEY="x" * 31, TAPEDECK_DATA_DIR=str(tmp_path / "d"))
    done = subprocess.run([sys.executable, "-m", "tapedeck", "api"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    err = json.loads(lines[0])["error"]
    assert err["type"] == "invalid_request"
    assert "TAPEDECK_SECRET_KEY must be at least 32 characters" in err["message"]
    assert not (tmp_path / "d" / "seaweedfs").exists()  # refused before starting anything


def test_reseal_moves_file_sealed_secrets_under_the_secret_key(weed: ManagedWeed,
                                                               tmp_path: Path) -> None:
    """An embedded installation moving to TAPEDECK_SECRET_KEY: its key file still opens the
    old secrets, ``reseal-secrets`` re-seals them, and then a node without the file opens them."""
    settings = make_settings(weed, tmp_path / "data")
    srv = start_server(settings, roles=())
    try:
        p = Principal(srv.project_id, "secret", "key_1", ALL_SCOPES)
        made = srv.app.domain.webhooks.create(p, "http://127.0.0.1:9/hook",
                                              ["*"])
    finally:
        srv.close()
        drop_bucket(weed, settings.s3_bucket)
    endpoint_id, secret = made.endpoint.id, made.secret
    moved = settings.replace(secret_key=KEY_A)
    db = open_database(settings.database_target)
    try:
        assert reseal(db, moved) == {"resealed": 1, "current": 0, "unreadable": 0}
        assert reseal(db, moved) == {"resealed": 0, "current": 1, "unreadable": 0}
        sealed = db.read().execute("SELECT secret_sealed FROM webhook_endpoints WHERE id = ?",
                                   [endpoint_id]).fetchone()[0]
    finally:
        db.close()
    elsewhere = keys(tmp_path / "another-node", KEY_A).secret_box()
    assert elsewhere.open(sealed, endpoint_id) == secret


def _two_api_nodes(weed: ManagedWeed, tmp_path: Path, secret_a: str,
                   secret_b: str) -> tuple[int, int]:
    """Create a recording on api node A and PUT its chunk 1 to node B (two processes, two
    data dirs, one SQLite file, one bucket); the two PUT status codes (B, then A)."""
    a = make_settings(weed, tmp_path / "a", secret_key=secret_a)
    b = a.replace(data_dir=tmp_path / "b", secret_key=secret_b)
    db = open_database(a.database_target)
    _, api_key = create_project(db, SystemClock())
    db.close()
    b.data_dir.mkdir(mode=0o700)
    for suffix in ("", "-wal", "-shm"):  # the same database file under both data dirs
        if Path(f"{a.db_path}{suffix}").exists():
            (b.data_dir / f"tapedeck.db{suffix}").symlink_to(f"{a.db_path}{suffix}")
    nodes = [spawn_server(a, "api"), spawn_server(b, "api")]
    try:
        url_a, url_b = (str(n.listening["http"]) for n in nodes)
        rec = httpx.post(f"{url_a}/v1/recordings", json={"streaming": True},
                         headers={"Authorization": f"Bearer {api_key}"}, timeout=30).json()
        tpl = rec["chunk_upload_url_template"]
        assert tpl.startswith(url_a)
        data = b"chunk one"
        md5 = {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()}
        on_b = httpx.put(tpl.replace(url_a, url_b).replace("{part}", "1"), content=data,
                         headers=md5, timeout=30)
        on_a = httpx.put(tpl.replace("{part}", "1"), content=data, headers=md5, timeout=30)
        return on_b.status_code, on_a.status_code
    finally:
        for n in nodes:
            n.terminate()
        drop_bucket(weed, a.s3_bucket)


def test_a_url_signed_by_one_api_node_is_accepted_by_another(weed: ManagedWeed,
                                                            tmp_path: Path) -> None:
    assert _two_api_nodes(weed, tmp_path, KEY_A, KEY_A) == (201, 200)


def test_without_a_shared_key_the_other_node_refuses_the_url(weed: ManagedWeed,
                                                            tmp_path: Path) -> None:
    assert _two_api_nodes(weed, tmp_path, "", "") == (401, 201)
