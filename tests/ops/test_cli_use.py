"""Careless use of the CLIs (issue 16, item 6): admin commands name their database and never
create one silently; ``tapedeck-agent upload`` without a server fails at once; both commands
have ``--version``; every flag has help that states its default."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tapedeck import cli, startup
from tapedeck.infra.db import Database
from tapedeck_agent import cli as agent_cli


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_admin_in_a_folder_without_a_database_refuses_and_creates_nothing(tmp_path: Path) -> None:
    result = _run("tapedeck", "admin", "bootstrap", cwd=tmp_path)
    assert result.returncode == startup.EXIT_NO_DATABASE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "tapedeck-data" / "tapedeck.db") in lines[0]
    assert "--create-database" in lines[0] and "--data-dir" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "tapedeck-data" / "tapedeck.db").exists()


def test_admin_creates_only_when_asked_and_names_the_database(tmp_path: Path) -> None:
    made = _run("tapedeck", "admin", "bootstrap", "--create-database", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    db = tmp_path / "tapedeck-data" / "tapedeck.db"
    assert db.exists() and json.loads(made.stdout)["api_key"].startswith("sk_")
    assert str(db) in made.stderr
    project = json.loads(made.stdout)["project_id"]
    token = _run("tapedeck", "admin", "device-token", "--project-id", project, cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stdout)["device_token"].startswith("dtok_")
    assert str(db) in token.stderr


def test_admin_uses_the_servers_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    Database(data / "tapedeck.db").close()  # what `tapedeck serve` leaves
    result = _run("tapedeck", "admin", "bootstrap", "--data-dir", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str((data / "tapedeck.db").resolve()) in result.stderr


def test_agent_upload_without_a_server_fails_at_once(tmp_path: Path) -> None:
    wav = Path("/usr/share/sounds/alsa/Front_Center.wav")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": ":".join(sys.path)}
    result = _run("tapedeck_agent.cli", "upload", str(wav), "--token", "dtok_x",
                  "--spool-dir", str(tmp_path / "spool"), cwd=tmp_path, env=env)
    assert result.returncode == agent_cli.EXIT_USAGE, result.stderr
    assert "--server" in result.stderr and "TAPEDECK_AGENT_SERVER" in result.stderr
    assert "token" not in result.stderr.split("needs", 1)[1]  # only what is missing


@pytest.mark.parametrize("module", ["tapedeck", "tapedeck_agent.cli"])
def test_version(module: str, tmp_path: Path) -> None:
    result = _run(module, "--version", cwd=tmp_path)
    assert result.returncode == 0
    name, version = result.stdout.split()
    assert name in ("tapedeck", "tapedeck-agent") and version[0].isdigit()


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    """Every (command path, action) of ``parser`` and its subcommands, except -h/--version."""
    found: list[tuple[str, argparse.Action]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {path}", a) for path, a in _options(sub)]
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            found.append(("", action))
    return found


@pytest.mark.parametrize("parser", [cli._parser(), agent_cli.build_parser()],
                         ids=["tapedeck", "tapedeck-agent"])
def test_every_flag_has_help_with_its_default(parser: argparse.ArgumentParser) -> None:
    options = _options(parser)
    assert len(options) > 10
    for where, action in options:
        assert action.help, (where, action.dest)
        if action.option_strings:
            assert "default" in action.help or "required" in action.help, (where, action.help)
