"""The README stays true: its settings table, its quick start commands, and its API example
(run as written against a real server with a worker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tapedeck.cli import settings_markdown

from serverkit import drop_bucket, make_settings, start_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_table_is_current() -> None:
    table = README.split("<!-- settings-table -->\n", 1)[1].split("<!-- /settings-table -->")[0]
    assert table == settings_markdown()


def test_quick_start_commands_exist_and_ci_runs_the_test_command() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "scripts/setup && .venv/bin/tapedeck serve" in quick and "scripts/test" in quick
    for script in ("scripts/setup", "scripts/test", ".ci/run"):
        assert os.access(ROOT / script, os.X_OK), script
    assert re.search(r"^scripts/test\b", (ROOT / ".ci/run").read_text(), re.M)


def test_api_example_runs(weed: Any, tmp_path: Path) -> None:
    code = README.split("<!-- readme-example -->\n```python\n", 1)[1].split("```", 1)[0]
    srv = start_server(make_settings(weed, tmp_path / "d"), roles=("grpc", "http", "worker"))
    try:
        _, token = srv.device_token()
        env = dict(os.environ, TAPEDECK_URL=srv.http_url, TAPEDECK_DEVICE_TOKEN=token)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "'status': 'uploaded'" in lines[0] and "'chunks_received': 5" in lines[0]
        assert re.fullmatch(r"completed 42\d\d ms", lines[1])
        assert lines[2].lower().count("front") >= 2, lines[2]
    finally:
        srv.close()
        drop_bucket(weed, srv.app.settings.s3_bucket)
