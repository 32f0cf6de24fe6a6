"""The GE2E speaker-encoder weights, read from Resemblyzer's ``pretrained.pt`` without torch.

The file ships inside the ``resemblyzer==0.1.4`` wheel (Apache-2.0), installed with
``pip install --no-deps`` by ``scripts/fetch-model`` (torch is never installed). It is torch's
legacy (pre-zip) serialization: a sequence of pickles — magic number, protocol version, system
info, the checkpoint object (tensors refer to storages by persistent id), the list of storage
keys — then, for each key in that order, an int64 element count and the raw little-endian
data. ``load_weights`` reads it with a restricted unpickler (only the handful of globals a
tensor checkpoint needs; anything else is refused) into float32 numpy arrays.

The file's sha256 is pinned (``WEIGHTS_SHA256``): a different file is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: sha256 of ``resemblyzer/pretrained.pt`` in the resemblyzer 0.1.4 wheel.
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}


class WeightsUnavailable(Exception):
    """The encoder weights are missing, altered or unreadable (message says which)."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    key: str
    dtype: Any
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        assert self.storage.data is not None
        flat = self.storage.data
        item = flat.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], *_rest: Any) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_rest: Any) -> _TensorRef:
    return data


class _Unpickler(pickle.Unpickler):
    """Resolves only what a state-dict checkpoint needs; storages become ``_Storage``."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        kind, key = pid[1], str(pid[2])
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {kind!r}")
        return self._storages.setdefault(key, _Storage(key, _DTYPES[kind.name]))


def read_legacy_checkpoint(path: Path) -> Any:
    """The checkpoint object of a legacy torch file, with tensors as numpy arrays."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as f:
        def load() -> Any:
            return _Unpickler(f, storages).load()

        if load() != _MAGIC:
            raise WeightsUnavailable(f"{path} is not a legacy torch checkpoint")
        load()  # protocol version
        load()  # system info (endianness, type sizes)
        obj = load()
        for key in load():
            st = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * np.dtype(st.dtype).itemsize)
            st.data = np.frombuffer(raw, dtype=st.dtype)
    return _materialize(obj)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def default_weights_path() -> Path:
    """``pretrained.pt`` of the installed resemblyzer package (located without importing it:
    its ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable("the speaker encoder weights are not installed (package "
                                 "resemblyzer==0.1.4, installed without torch by "
                                 "scripts/fetch-model)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def load_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """The encoder's ``model_state`` (name → float32 array) after checking the sha256."""
    path = path or default_weights_path()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise WeightsUnavailable(f"cannot read speaker encoder weights {path}: {exc}") from exc
    if digest != WEIGHTS_SHA256:
        raise WeightsUnavailable(f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256}")
    try:
        checkpoint = read_legacy_checkpoint(path)
    except (pickle.UnpicklingError, struct.error, KeyError, EOFError) as exc:
        raise WeightsUnavailable(f"cannot parse {path}: {exc}") from exc
    state = checkpoint["model_state"]
    return {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}

