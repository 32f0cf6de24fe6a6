"""The GE2E weights are read from Resemblyzer's file without torch, and checked."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tapedeck.diarize.weights import (
    WeightsUnavailable,
    default_weights_path,
    load_weights,
    read_legacy_checkpoint,
)


def test_weights_load_without_torch() -> None:
    w = load_weights()
    assert "torch" not in sys.modules
    assert w["lstm.weight_ih_l0"].shape == (1024, 40)
    for k in (1, 2):
        assert w[f"lstm.weight_ih_l{k}"].shape == (1024, 256)
    for k in range(3):
        assert w[f"lstm.weight_hh_l{k}"].shape == (1024, 256)
        assert w[f"lstm.bias_ih_l{k}"].shape == (1024,)
    assert w["linear.weight"].shape == (256, 256)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in w.values())


def test_altered_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "pretrained.pt"
    shutil.copy(default_weights_path(), copy)
    data = bytearray(copy.read_bytes())
    data[-5] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable, match="sha256"):
        load_weights(copy)
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        load_weights(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("true",))


def test_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump(_Evil(), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing global"):
        read_legacy_checkpoint(path)
