"""`nnctl export` without the rendering: load, check the options, write the file, check parity.

Everything that can be refused (missing extra, bad option, a layer without an exporter,
unusable check data, a graph onnxruntime cannot run) is refused before the output file is
touched. The parity check runs on the serialized bytes, which are then written as they
are; a file that fails the check is kept, and the command says it is not trustworthy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.errors import DataError
from nnctl.export.graph import ExportError

FORMATS = ("onnx",)
DTYPES = ("float32", "float64")
DEFAULT_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    checkpoint: Path
    format: str
    dtype: str
    opset: int
    size_bytes: int
    check_data: str
    parity: Any  # nnctl.export.parity.Parity


def require(module: str) -> None:
    """Import an optional package of the `export` extra, or say how to install it."""
    import importlib
    try:
        importlib.import_module(module)
    except ImportError:
        raise ExportError(f'{module} is not installed: pip install -e ".[export]"') from None


def default_out(target: Path, checkpoint: Path, fmt: str) -> Path:
    """A run directory exports to <run>/model.onnx, a checkpoint file to <checkpoint stem>.onnx beside it."""
    target = Path(target)
    return target / "model.onnx" if target.is_dir() else checkpoint.with_suffix(".onnx")


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"--out {out}: is a directory")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist")


def check_rows(lm: Any, check_data: str | None) -> tuple[np.ndarray, str]:
    """Raw feature rows (N, *input_shape) to check on, and what they are.

    Default: the run's test split, rebuilt from the stored spec and seed as `nnctl eval`
    does; a run without one falls back to its validation, then training split, and says so.
    """
    from nnctl.commands.evaluate import data_source, run_split
    if check_data is not None:
        src = data_source(lm, check_data, need_targets=False)
        return src.split.x, src.description
    last: DataError | None = None
    for which in ("test", "val", "train"):
        try:
            src = run_split(lm, which)
        except DataError as err:
            if "has no" not in str(err):
                raise
            last = err
            continue
        return np.take(src.split.x, src.split.rows(), axis=0), src.description
    raise ExportError(f"{lm.path}: no rows of the run to check the export on ({last}); give --check-data FILE")


def export_model(target: Path, fmt: str = "onnx", out: Path | None = None, opset: int | None = None,
                 check_data: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 dtype: str = "float32") -> ExportResult:
    """Export the checkpoint (or run directory) `target`, write it atomically, check it in onnxruntime."""
    from nnctl.commands.evaluate import checkpoint_for, default_batch_size, model_from_checkpoint
    from nnctl.runs.checkpoint import load_checkpoint
    from nnctl.runs.store import atomic_write

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ExportError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    require("onnx")
    require("onnxruntime")
    from nnctl.export.onnx_model import build_onnx
    from nnctl.export.parity import check_parity, session

    ckpt_path = checkpoint_for(Path(target))
    lm = model_from_checkpoint(load_checkpoint(ckpt_path))
    out = Path(out) if out is not None else default_out(Path(target), ckpt_path, fmt)
    _check_out(out)
    proto = build_onnx(lm, dtype, opset)
    x, description = check_rows(lm, check_data)
    if len(x) == 0:
        raise ExportError(f"{description}: no rows to check the export on")
    blob = proto.SerializeToString()
    # checked on the exact bytes that are written; a graph onnxruntime cannot run leaves nothing behind
    parity = check_parity(lm, session(blob, out), out, x, dtype, tolerance, default_batch_size(lm))
    try:
        atomic_write(out, lambda f: f.write(blob))
    except OSError as err:
        raise ExportError(f"--out {out}: cannot write: {err.strerror or err}") from None
    return ExportResult(path=out, checkpoint=ckpt_path, format=fmt, dtype=dtype,
                        opset=proto.opset_import[0].version, size_bytes=len(blob), check_data=description,
                        parity=parity)
