"""`--format npz-weights`: the model as plain named arrays plus a JSON description, readable with numpy alone.

The file is a zip (an `.npz`): one `.npy` member per array, named as in the checkpoint
(`layers.0.W`, `layers.1.running_mean`; `standardize.mean` / `standardize.scale` when
the inputs are standardized; `target.mean` / `target.scale` when a regression target was
standardized for training, so values * target.scale + target.mean are in the target's own
units), and `architecture.json`, which `numpy.load(path)` hands back as bytes. The JSON
holds the layer specs (the same canonical specs as `nnctl show`), the input shape and how
raw features become it (a CSV's column encoding included), the dtype, the task, the
classes, the output activation, the target's unscaling, and every array's shape. There is no optimizer state and nothing
pickled; members carry a fixed timestamp, so the same checkpoint gives the same bytes.

The check for this format rebuilds the model from the file's bytes alone (the JSON's
specs and the arrays) and compares its predictions with the checkpoint's.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nnctl import __version__
from nnctl.export.graph import ExportError

FORMAT = "nnctl-npz-weights"
# 2: target.mean/target.scale arrays, input.table and target in the JSON (version 1 had neither)
FORMAT_VERSION = 2
ARCHITECTURE = "architecture.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)   # zip's earliest date: the bytes depend on the model only


def _output_activation(lm: Any) -> str:
    return getattr(lm.loss, "OUTPUT", "identity") if lm.task == "classification" else "identity"


def architecture(lm: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    data = lm.meta.get("config", {}).get("data")
    shape = data.get("shape") if isinstance(data, dict) else None
    table = lm.preprocessor.table
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nnctl_version": __version__,
        "task": lm.task, "classes": lm.classes, "feature_names": lm.feature_names, "target_name": lm.target_name,
        "n_outputs": lm.n_outputs, "dtype": str(lm.dtype),
        "input": {"raw_shape": [math.prod(lm.input_shape)] if shape is not None else list(lm.input_shape),
                  "model_shape": list(lm.input_shape),
                  "standardize": "(x - standardize.mean) / standardize.scale" if lm.standardizer is not None
                  else None,
                  # a CSV's columns -> the feature row: numbers as they are, each text column one-hot over
                  # its sorted categories then one "unknown" slot; `fill` replaces a missing cell
                  "table": None if table is None else table.to_meta()},
        "output_activation": _output_activation(lm),
        "target": {"unscale": "values * target.scale + target.mean"} if "target.scale" in arrays else None,
        "layers": lm.model.get_config(),
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "spec": lm.meta.get("config"),
    }


def build_npz(lm: Any) -> bytes:
    arrays = dict(lm.model.state_dict())
    if lm.standardizer is not None:
        arrays["standardize.mean"] = lm.standardizer.mean
        arrays["standardize.scale"] = lm.standardizer.scale
    if lm.preprocessor.target_scale is not None:
        arrays["target.mean"] = lm.preprocessor.target_mean
        arrays["target.scale"] = lm.preprocessor.target_scale
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        text = json.dumps(architecture(lm, arrays), indent=1, default=str)
        z.writestr(zipfile.ZipInfo(ARCHITECTURE, _EPOCH), text.encode("utf-8"))
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, member.getvalue())
    return buf.getvalue()


_PREPROCESS = ("standardize.", "target.")


def rebuild(lm: Any, blob: bytes) -> Any:
    """A LoadedModel like `lm` whose model, standardizer, table encoding and target scale come
    from the file's bytes only."""
    from nnctl.data import Preprocessor, Standardizer, TableEncoder
    from nnctl.engine.model import Sequential
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arch = json.loads(npz[ARCHITECTURE].decode("utf-8"))
        arrays = {k: npz[k] for k in npz.files if k != ARCHITECTURE}
    model = Sequential.from_config(arch["layers"], tuple(arch["input"]["model_shape"]), 0, arch["dtype"])
    model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(_PREPROCESS)}, strict=True)
    std = None
    if "standardize.mean" in arrays:
        std = Standardizer.from_arrays(arrays["standardize.mean"], arrays["standardize.scale"])
    table = arch["input"].get("table")
    pre = Preprocessor(table=None if table is None else TableEncoder.from_meta(table, ARCHITECTURE),
                       standardizer=std, target_mean=arrays.get("target.mean"),
                       target_scale=arrays.get("target.scale"))
    return dataclasses.replace(lm, model=model, standardizer=std, preprocessor=pre)


def check_npz(lm: Any, blob: bytes, path: Path, x: np.ndarray, tolerance: float, batch_size: int):
    """Predictions of the model rebuilt from the file against the checkpoint's (a Parity)."""
    from nnctl.export.parity import compare, nnctl_outputs
    try:
        other = rebuild(lm, blob)
    except Exception as err:  # any failure to read back is the check failing, never a crash
        raise ExportError(f"the npz-weights file does not rebuild the model: {err}; nothing written") from None
    ref, ref_labels = nnctl_outputs(lm, x, batch_size)
    got, got_labels = nnctl_outputs(other, x, batch_size)
    return compare(ref, ref_labels, got, got_labels, tolerance, path)
