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

FORMATS = ("onnx", "npz-weights")
DTYPES = ("float32", "float64")
DEFAULT_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    checkpoint: Path
    format: str
    dtype: str
    opset: int | None
    size_bytes: int
    check_data: str
    parity: Any  # nnctl.export.parity.Parity


def require_export_extra() -> None:
    """Import the `export` extra's packages (onnx builds, onnxruntime checks), or say how to install them."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError('onnx is not installed: pip install -e ".[export]"') from None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError('onnxruntime is not installed: pip install -e ".[export]"') from None


def default_out(target: Path, checkpoint: Path, fmt: str) -> Path:
    """A run directory exports to <run>/model.onnx (model.weights.npz), a checkpoint file to
    <checkpoint stem>.onnx (.weights.npz) beside it."""
    suffix = ".onnx" if fmt == "onnx" else ".weights.npz"
    target = Path(target)
    return target / f"model{suffix}" if target.is_dir() else checkpoint.with_name(checkpoint.stem + suffix)


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
    from nnctl.runs.sources import data_source, run_split
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
                 dtype: str | None = None) -> ExportResult:
    """Export the checkpoint (or run directory) `target`: build, check, then write atomically."""
    from nnctl.runs.model import checkpoint_for, default_batch_size, model_from_checkpoint
    from nnctl.runs.checkpoint import load_checkpoint
    from nnctl.runs.store import atomic_write

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if fmt != "onnx" and (dtype is not None or opset is not None):
        raise ExportError(f"--{'dtype' if dtype is not None else 'opset'} is for --format onnx; "
                          f"{fmt} keeps the checkpoint's arrays as they are")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ExportError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    if fmt == "onnx":
        require_export_extra()

    ckpt_path = checkpoint_for(Path(target))
    lm = model_from_checkpoint(load_checkpoint(ckpt_path))
    out = Path(out) if out is not None else default_out(Path(target), ckpt_path, fmt)
    _check_out(out)
    batch_size = default_batch_size(lm)
    if fmt == "onnx":
        from nnctl.export.onnx_model import build_onnx
        from nnctl.export.parity import check_parity, session
        dtype = dtype or "float32"
        proto = build_onnx(lm, dtype, opset)
        rows, description = _rows(lm, check_data)
        blob = proto.SerializeToString()
        # checked on the exact bytes that are written; a graph onnxruntime cannot run leaves nothing behind
        parity = check_parity(lm, session(blob, out), out, rows, dtype, tolerance, batch_size)
        opset = proto.opset_import[0].version
    else:
        from nnctl.export.npz_weights import build_npz, check_npz
        dtype = str(lm.dtype)
        blob = build_npz(lm)
        rows, description = _rows(lm, check_data)
        parity = check_npz(lm, blob, out, rows.x, tolerance, batch_size)
    try:
        atomic_write(out, lambda f: f.write(blob))
    except OSError as err:
        raise ExportError(f"--out {out}: cannot write: {err.strerror or err}") from None
    return ExportResult(path=out, checkpoint=ckpt_path, format=fmt, dtype=dtype, opset=opset,
                        size_bytes=len(blob), check_data=description, parity=parity)


def _rows(lm: Any, check_data: str | None):
    """(CheckRows, what they are). A CSV model with an encoding is checked on raw columns: the
    --check-data CSV's cells as written, or the run's split decoded back to columns, plus probe
    rows that make each column missing (where a fill exists) or unseen in turn."""
    from nnctl.export import tabular
    from nnctl.export.parity import CheckRows
    table = tabular.encoded_table(lm)
    path = Path(check_data) if check_data is not None else None
    source, lines = None, None
    if table is not None and path is not None and path.suffix.lower() == ".csv" and path.exists():
        raw, description = tabular.read_table(path, table, lm.dtype), str(path)
        source, lines = path.name, raw.lines
    else:
        x, description = check_rows(lm, check_data)
        if table is None and len(x):
            return CheckRows(x), description
        raw = tabular.decode(table, x) if len(x) else []
    if len(raw) == 0:
        raise ExportError(f"{description}: no rows to check the export on")
    extra = tabular.probes(table, raw)
    rows = tabular.concat([raw, extra])
    # nnctl's side: the data layer's own encoding of the very same columns, as predict does it
    # (a missing cell without a fill is refused here, by file row, as predict refuses it)
    x = np.concatenate([table.transform(raw.columns, source or description, lines)[0],
                        table.transform(extra.columns, "probe rows", None)[0]])
    x = x.reshape((len(x), *lm.input_shape))
    if len(extra):
        description += f", {len(extra)} of them probes (a column missing or unseen in turn)"
    return CheckRows(x, rows), description
