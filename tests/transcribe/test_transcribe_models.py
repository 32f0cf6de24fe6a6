"""Assembly and verification of the bundled whisper-base model from the pinned packages."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tapedeck.background.transcribe.models import (
    WHISPER_BASE_FILES,
    ModelFile,
    ModelUnavailable,
    ensure_whisper_base,
    resolve_model,
)
from tapedeck.background.transcribe.whisper import load_engine

REPO = Path(__file__).resolve().parents[2]

# The published Systran/faster-whisper-base files (revision ebe41f7), restated here so a
# change to the constants in models.py cannot pass unnoticed.
EXPECTED = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory removed after the test (an assembled model is 148 MB)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_assembles_the_published_files_and_then_leaves_them_alone(scratch: Path) -> None:
    dest = ensure_whisper_base(scratch / "m")
    assert {p.name: _sha256(p) for p in dest.iterdir()} == EXPECTED
    before = {p.name: _stamp(p) for p in dest.iterdir()}
    ensure_whisper_base(dest)
    assert {p.name: _stamp(p) for p in dest.iterdir()} == before


def test_damaged_files_are_rebuilt_and_intact_ones_kept(scratch: Path) -> None:
    dest = ensure_whisper_base(scratch / "m")
    kept = _stamp(dest / "tokenizer.json")
    with (dest / "config.json").open("ab") as f:
        f.write(b" ")
    with (dest / "model.bin").open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xff")
    (dest / "vocabulary.txt").unlink()
    ensure_whisper_base(dest)
    assert {p.name: _sha256(p) for p in dest.iterdir()} == EXPECTED
    assert _stamp(dest / "tokenizer.json") == kept


def test_bytes_that_do_not_verify_are_refused_and_not_installed(scratch: Path) -> None:
    config = next(f for f in WHISPER_BASE_FILES if f.name == "config.json")
    with pytest.raises(ModelUnavailable, match="sha256"):
        ensure_whisper_base(scratch, [replace(config, sha256="0" * 64)])
    assert list(scratch.iterdir()) == []  # neither the file nor its temporary remains


def test_missing_package_names_the_fix(scratch: Path) -> None:
    ghost = ModelFile("x.bin", (("tapedeck_no_such_model_package", "x"),), 1, "0" * 64)
    with pytest.raises(ModelUnavailable, match="fetch-model"):
        ensure_whisper_base(scratch, [ghost])


def test_resolve_model_setting(scratch: Path) -> None:
    name, path = resolve_model("", scratch)
    assert (name, Path(path)) == ("whisper-base", scratch / "models" / "whisper-base")
    assert _sha256(Path(path) / "model.bin") == EXPECTED["model.bin"]
    assert resolve_model(path, scratch) == ("whisper-base", path)
    assert resolve_model("large-v3", scratch) == ("large-v3", "large-v3")


def test_fetch_model_script(scratch: Path) -> None:
    dest = scratch / "fetched"
    out = subprocess.run([str(REPO / "scripts" / "fetch-model"), str(dest)], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    hashes = [line.split() for line in out.splitlines() if re.fullmatch(r"[0-9a-f]{64}",
                                                                          line.split()[0])]
    assert {Path(path).name: digest for digest, path in hashes} == EXPECTED
    assert "speaker encoder weights OK" in out  # the diarization weights, checked too
    assert {p.name: _sha256(p) for p in dest.iterdir()} == EXPECTED


@pytest.mark.parametrize("setting", ["empty-dir", "tapedeck-no-such-model"])
def test_unloadable_model_setting_is_model_unavailable(scratch: Path, setting: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # belt and braces: never reach for a hub
    if setting == "empty-dir":
        (scratch / "empty").mkdir()
        setting = str(scratch / "empty")
    with pytest.raises(ModelUnavailable, match="cannot load whisper model"):
        load_engine(setting, scratch)
