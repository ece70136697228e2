"""The parity check: the exported file run in ONNX Runtime against nnctl's own predictions.

Both sides see the same raw rows (for a CSV model with text columns or fill values, the
raw columns: nnctl encodes them with its data layer, the graph with its own nodes, and
probe rows make every fill and unknown slot take part). nnctl's side is exactly `nnctl
predict`'s path (batches cast to the model dtype, standardized, evaluation-mode forward,
then probabilities and classes by `LoadedModel.probabilities` and `predicted_classes`);
ONNX Runtime's side is the serialized model, the very bytes then written to disk, so what
is checked is what ships.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.export import tabular
from nnctl.export.graph import ExportError
from nnctl.export.onnx_model import (CLASSIFICATION, INPUT_NAME, LABEL_INDEX, PROBABILITIES, VALUES,
                                     input_shape_of)

# Rows per onnxruntime call: bounded memory on any split size.
CHUNK = 4096


@dataclass
class CheckRows:
    """The rows both sides run: `x` (N, *input_shape) the model input nnctl's data layer made
    (not standardized), and for a CSV model with an encoding, `table` the raw columns those
    were encoded from, which is what the graph is fed."""

    x: np.ndarray
    table: Any = None        # tabular.TableRows

    def __len__(self) -> int:
        return len(self.x)

    def feeds(self, lm: Any, lo: int, hi: int, dtype: np.dtype) -> dict[str, np.ndarray]:
        if self.table is not None:
            return tabular.feeds(lm, self.table, lo, hi, dtype)
        xb = np.asarray(self.x[lo:hi]).reshape((-1, *input_shape_of(lm)))
        return {INPUT_NAME: np.ascontiguousarray(xb, dtype=dtype)}


@dataclass
class Parity:
    """What the check found. label_agreement is None for regression."""

    rows: int
    max_abs_diff: float
    label_agreement: float | None
    label_mismatches: int
    tolerance: float

    @property
    def ok(self) -> bool:
        # NaN compares False, so a non-finite difference fails too
        return bool(self.max_abs_diff <= self.tolerance)


def nnctl_outputs(lm: Any, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities or values (N, k) float64, class indices (N,) or None) the way `nnctl predict` computes them."""
    from nnctl.data import Split
    from nnctl.training.metrics import predicted_classes
    values, labels = [], []
    for z, _ in lm.batches(Split(x, None, None), batch_size):
        if lm.task == CLASSIFICATION:
            values.append(np.asarray(lm.probabilities(z), dtype=np.float64))
            labels.append(predicted_classes(z).astype(np.int64))
        else:
            values.append(lm.preprocessor.unscale(z))   # in the target's units, as predict writes them
    v = np.concatenate(values) if values else np.empty((0, 0))
    return v, (np.concatenate(labels) if labels else None)


def session(blob: bytes, out: Path):
    """An onnxruntime session on the serialized model (the bytes written to `out`), one thread:
    the check must not fight the machine.

    Loaded before the file is written, so a model onnxruntime cannot run (its CPU provider has
    no float64 kernels for some ops, e.g. Conv and Erf) leaves nothing behind.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unloadable models
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{out}: onnxruntime cannot load the exported graph, so it cannot be checked; "
                          f"nothing written: {first}") from None


def onnx_outputs(lm: Any, sess: Any, path: Path, rows: CheckRows, dtype: np.dtype
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    want = [PROBABILITIES, LABEL_INDEX] if lm.task == CLASSIFICATION else [VALUES]
    values, labels = [], []
    for s in range(0, len(rows), CHUNK):
        try:
            out = sess.run(want, rows.feeds(lm, s, s + CHUNK, dtype))
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"{path}: onnxruntime fails on the check data, so the export cannot be "
                              f"checked; nothing written: {first}") from None
        values.append(np.asarray(out[0], dtype=np.float64))
        if len(out) > 1:
            labels.append(np.asarray(out[1]))
    v = np.concatenate(values) if values else np.empty((0, 0))
    return v, (np.concatenate(labels) if labels else None)


def check_parity(lm: Any, sess: Any, path: Path, rows: CheckRows, dtype: Any, tolerance: float,
                 batch_size: int) -> Parity:
    """Run both and compare: max |difference| over every output value, and label agreement."""
    ref, ref_labels = nnctl_outputs(lm, rows.x, batch_size)
    got, got_labels = onnx_outputs(lm, sess, path, rows, np.dtype(dtype))
    return compare(ref, ref_labels, got, got_labels, tolerance, path)


def compare(ref: np.ndarray, ref_labels: np.ndarray | None, got: np.ndarray, got_labels: np.ndarray | None,
            tolerance: float, path: Path) -> Parity:
    """nnctl's outputs `ref` against the exported file's `got`: worst |difference| and label agreement."""
    if ref.shape != got.shape:
        raise ExportError(f"{path}: the export gives outputs of shape {list(got.shape)}, nnctl "
                          f"{list(ref.shape)}; nothing written")
    diff = np.abs(ref - got)
    worst = float(np.nan) if not np.all(np.isfinite(diff)) else float(diff.max(initial=0.0))
    agreement, mismatches = None, 0
    if ref_labels is not None:
        same = ref_labels == got_labels
        mismatches = int((~same).sum())
        agreement = float(same.mean())
    return Parity(rows=len(ref), max_abs_diff=worst, label_agreement=agreement, label_mismatches=mismatches,
                  tolerance=float(tolerance))
