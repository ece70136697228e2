"""The typed metadata of a checkpoint: one declaration for the writer (training) and the readers (eval, predict, show).

`to_meta()` gives the JSON object stored in the `.npz` (see runs/checkpoint.py); `model_fields`
reads back and checks the fields needed to rebuild a model, naming the file and the field
that does not fit. The resume state (optimizer, schedule, early stopping, rng, history) is
kept as the plain mappings their own `load_state_dict` check.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nnctl.engine.metrics import TASKS
from nnctl.errors import CheckpointError, quoted

DTYPES = ("float32", "float64")


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself besides its arrays.

    model: {"layers": layer specs incl. the output layer, "input_shape": per-sample shape,
    "dtype": float32|float64}. classes: the original labels, index = class (classification).
    """

    kind: str                                   # "last" (resumable) or "best" (weights only)
    epoch: int                                  # completed epochs the weights are from
    step: int                                   # global batches
    config: dict[str, Any]                      # the resolved spec
    model: dict[str, Any]
    task: str
    classes: list | None
    feature_names: list[str] | None
    target_name: str | None
    n_outputs: int
    loss: dict[str, Any]                        # {"name": ..., options}
    optimizer: dict[str, Any] = field(default_factory=dict)      # {"name", "state": scalars}
    schedule: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # last.npz only
    elapsed: float = 0.0
    preprocess: dict[str, Any] | None = None    # data layer: the CSV table encoding (Preprocessor.to_meta)

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


_KINDS = {int: "an integer", list: "a list", dict: "a mapping", str: "a string", float: "a number"}


def _need(path: Path, meta: dict[str, Any], key: str, kind: type, where: str | None = None) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(f"{path}: metadata field {where or key} is missing or not {_KINDS.get(kind, kind.__name__)}")
    return value


@dataclass
class ModelFields:
    """The metadata fields that rebuild a model, checked."""

    layers: list[dict[str, Any]]
    input_shape: tuple[int, ...]
    dtype: str
    task: str
    n_outputs: int
    classes: list | None
    feature_names: list[str] | None
    target_name: str | None
    loss: dict[str, Any]
    epoch: int


def model_fields(path: Path, meta: dict[str, Any]) -> ModelFields:
    """Read and check the fields of `meta` that rebuild a model; a bad one is a CheckpointError."""
    spec = _need(path, meta, "model", dict)
    layers = _need(path, spec, "layers", list, "model.layers")
    input_shape = _need(path, spec, "input_shape", list, "model.input_shape")
    if not input_shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape):
        raise CheckpointError(f"{path}: metadata field model.input_shape must be positive integers, "
                              f"got {quoted(input_shape)}")
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: metadata field model.dtype must be float32 or float64, got {quoted(dtype)}")
    task = meta.get("task")
    if task not in TASKS:
        raise CheckpointError(f"{path}: metadata field task must be one of {', '.join(TASKS)}, got {quoted(task)}")
    n_outputs = _need(path, meta, "n_outputs", int)
    classes = None
    if task == "classification":
        classes = _need(path, meta, "classes", list)
        if len(classes) != n_outputs:
            raise CheckpointError(f"{path}: metadata lists {len(classes)} classes but n_outputs is {n_outputs}")
        if len(classes) < 2:   # e.g. trained before a single-class target was refused
            raise CheckpointError(f"{path}: a classification model needs at least two classes, this one has "
                                  f"{len(classes)} ({', '.join(map(repr, classes))})")
        if not all(isinstance(c, (str, int, float)) for c in classes):
            raise CheckpointError(f"{path}: metadata field classes must hold plain labels (text or numbers)")
    feature_names = meta.get("feature_names")
    if feature_names is not None and not (isinstance(feature_names, list)
                                          and all(isinstance(f, str) for f in feature_names)):
        raise CheckpointError(f"{path}: metadata field feature_names must be a list of column names")
    if feature_names is not None and len(feature_names) != math.prod(input_shape):
        raise CheckpointError(f"{path}: metadata lists {len(feature_names)} feature names for input shape "
                              f"{input_shape}")
    target_name = meta.get("target_name") if isinstance(meta.get("target_name"), str) else None
    loss = _need(path, meta, "loss", dict)
    if not isinstance(loss.get("name"), str):
        raise CheckpointError(f"{path}: metadata field loss.name is missing or not a str")
    epoch = meta.get("epoch", 0)
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    return ModelFields(layers=layers, input_shape=tuple(input_shape), dtype=dtype, task=task, n_outputs=n_outputs,
                       classes=classes, feature_names=feature_names, target_name=target_name, loss=loss, epoch=epoch)
