"""Checkpoints: one `.npz` of named arrays plus a JSON metadata entry; never pickled.

Arrays (all loadable with `numpy.load(path, allow_pickle=False)`):
    model/<name>            parameters and buffers by their model names, e.g. model/layers.0.W
    optim/<slot>/<name>     optimizer state, e.g. optim/m/layers.0.W
    standardize/mean        per-feature mean of the training split (when standardize is on)
    standardize/scale       per-feature scale
    __meta__                uint8 bytes of a UTF-8 JSON object (see `FORMAT_VERSION`)
Metadata keys: format, format_version, nnctl_version, kind (last|best), epoch (completed
epochs), step (global batches), config (the resolved spec), model (layers incl. the output
layer, input_shape, dtype), task, classes, feature_names, target_name, n_outputs, loss,
optimizer (name and scalar state), schedule (state), early_stopping (state), rng (bit
generator states), history (the per-epoch records so far; last.npz only).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.errors import CheckpointError, quoted
from nnctl.fileio import check_regular
from nnctl.runs.store import atomic_write, json_default

FORMAT = "nnctl-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    path: Path | None = None

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays under `prefix/`, with the prefix removed."""
        p = prefix + "/"
        return {k[len(p):]: v for k, v in self.arrays.items() if k.startswith(p)}

    @property
    def model_state(self) -> dict[str, np.ndarray]:
        return self.group("model")

    def standardizer_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        std = self.group("standardize")
        if not std:
            return None
        return std["mean"], std["scale"]


def save_checkpoint(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: temp file in the same folder, fsync, rename."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "nnctl_version": __version__, **meta}
    payload = dict(arrays)
    blob = json.dumps(meta, allow_nan=True, default=json_default).encode("utf-8")
    payload[META_KEY] = np.frombuffer(blob, dtype=np.uint8)
    atomic_write(Path(path), lambda f: np.savez(f, **payload))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and check a checkpoint; any problem is one CheckpointError line naming the file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .npz checkpoint")
    check_regular(path, CheckpointError)  # a FIFO would block, a device never end, a loop raise
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from None
    if not raw.startswith(b"PK"):
        raise CheckpointError(f"{path}: not an .npz checkpoint (no zip header)")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            for key in npz.files:
                value = npz[key]
                if not isinstance(value, np.ndarray):
                    # np.load hands a zip member that is not a .npy file back as raw bytes
                    raise CheckpointError(f"{path}: member {key!r} is not a .npy array")
                arrays[key] = value
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise CheckpointError(f"{path}: contains pickled object arrays, which nnctl never loads") from None
        raise CheckpointError(f"{path}: corrupt checkpoint: {err}") from None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from None
    except Exception as err:  # zlib.error and friends from a damaged member
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(err).__name__}: {err})") from None
    meta_arr = arrays.pop(META_KEY, None)
    if meta_arr is None:
        raise CheckpointError(f"{path}: not an nnctl checkpoint (no {META_KEY} entry)")
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        raise CheckpointError(f"{path}: metadata entry has the wrong type ({meta_arr.dtype}, {meta_arr.ndim}-D)")
    try:
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: metadata JSON is nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nnctl checkpoint (format is {quoted(meta.get('format') if isinstance(meta, dict) else None)})")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: metadata field format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this nnctl supports "
            f"({FORMAT_VERSION}); upgrade nnctl"
        )
    for key, kind, word in (("config", dict, "a mapping"), ("model", dict, "a mapping"),
                            ("epoch", int, "an integer"), ("task", str, "a string")):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: metadata field {key} is missing or not {word}")
    for key, arr in arrays.items():
        if arr.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: array {quoted(key)} has unsupported dtype {arr.dtype}")
        # training never writes a NaN or inf (a non-finite loss stops the run before its
        # checkpoint): one here is damage, and a model built from it predicts garbage silently
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise CheckpointError(f"{path}: array {quoted(key)} holds {bad:,} non-finite values (NaN or inf); "
                                  f"the checkpoint is damaged")
    return Checkpoint(meta=meta, arrays=arrays, path=path)


def resolve_checkpoint_path(target: Path, which: str = "best") -> Path:
    """A run directory means its checkpoints/<which>.npz; a file is itself."""
    target = Path(target)
    if target.is_dir():
        cand = target / "checkpoints" / f"{which}.npz"
        if not os.path.lexists(cand):  # a FIFO or a symlink loop there is refused, not skipped
            other = target / "checkpoints" / ("last.npz" if which == "best" else "best.npz")
            if (target / "checkpoints").is_dir() and other.exists() and which == "best":
                return other
            raise CheckpointError(f"{target}: run directory has no checkpoints/{which}.npz")
        return cand
    return target
