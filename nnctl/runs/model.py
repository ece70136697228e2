"""A trained model read back from a run: which checkpoint a path means, and the model rebuilt from it.

Nothing outside the checkpoint is needed: its layer specs, input shape, dtype, loss, label
list and standardization statistics are all stored in it (see runs/meta.py). Used by eval,
predict and show.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnctl.data import Preprocessor, Split, Standardizer, iterate_batches
from nnctl.errors import CheckpointError, DataError, NnctlError
from nnctl.runs.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint_path
from nnctl.runs.meta import model_fields
from nnctl.runs.store import read_json

CLASSIFICATION = "classification"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything needed to feed it raw features.

    input_shape: per-sample shape, e.g. (64,). classes: the original labels, index = class.
    """

    path: Path
    meta: dict[str, Any]
    model: Any
    loss: Any
    standardizer: Standardizer | None
    dtype: np.dtype
    task: str
    classes: list | None
    feature_names: list[str] | None
    target_name: str | None
    n_outputs: int
    input_shape: tuple[int, ...]
    preprocessor: Preprocessor | None = None   # data layer: CSV table encoding, target scale

    def __post_init__(self):
        if self.preprocessor is None:
            self.preprocessor = Preprocessor(standardizer=self.standardizer)

    @property
    def loss_name(self) -> str:
        """The loss's canonical registry name (mse, cross_entropy, ...)."""
        from nnctl.engine.losses import LOSSES
        return LOSSES.canonical(self.meta["loss"]["name"])

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    def batches(self, split: Split, batch_size: int):
        """(z, yb) per batch in row order: z the raw outputs (b, n_out), yb targets or None."""
        for xb, yb in iterate_batches(split, batch_size, None, self.dtype, self.standardizer):
            yield self.model.forward(xb, training=False), yb

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        """Class probabilities (b, K) from raw outputs; a single logit (binary) becomes [1 - p, p]."""
        p = np.asarray(self.loss.output(z))
        if p.ndim == 1:
            p = p[:, None]
        if p.shape[1] == 1 and self.classes is not None and len(self.classes) == 2:
            p = np.concatenate([1.0 - p, p], axis=1)
        return p

    def output_names(self) -> list[str]:
        """Regression column names: the target's name for one output, else y0..y{k-1}."""
        if self.n_outputs == 1 and self.target_name:
            return [self.target_name]
        return [f"y{j}" for j in range(self.n_outputs)]


def checkpoint_for(target: Path) -> Path:
    """The checkpoint a path means: a file is itself; a run directory means the weights its
    test metrics were computed with (best.npz, or last.npz when metrics.json says weights: last)."""
    target = Path(target)
    if target.is_dir():
        if not (target / "checkpoints").is_dir():
            raise CheckpointError(f"{target}: not a run directory with checkpoints (no checkpoints/ folder)")
        metrics = read_json(target / "metrics.json") or {}
        which = "last" if isinstance(metrics, dict) and metrics.get("weights") == "last" else "best"
        return resolve_checkpoint_path(target, which)
    if not target.exists():
        raise CheckpointError(f"{target}: no such checkpoint or run directory")
    return target


def model_from_checkpoint(ckpt: Checkpoint) -> LoadedModel:
    """Rebuild and load the model; any mismatch between metadata and arrays is a CheckpointError."""
    from nnctl.engine.losses import LOSSES
    from nnctl.engine.model import Sequential

    path, meta = ckpt.path, ckpt.meta
    f = model_fields(path, meta)
    dtype = np.dtype(f.dtype)

    standardizer = None
    std = ckpt.group("standardize")
    if std and set(std) != {"mean", "scale"}:
        odd = sorted(set(std) ^ {"mean", "scale"})
        raise CheckpointError(f"{path}: standardize/ must hold exactly mean and scale; "
                              f"unexpected or missing: {', '.join(odd)}")
    arrays = ckpt.standardizer_arrays()
    if arrays is not None:
        # checked before the model is built: an input shape that lies is found without allocating for it
        mean, scale = arrays
        if tuple(mean.shape) != f.input_shape:
            raise CheckpointError(f"{path}: standardize/mean has shape {list(mean.shape)}, "
                                  f"the model's input shape is {list(f.input_shape)}")
        try:
            standardizer = Standardizer.from_arrays(mean, scale)
        except DataError as err:
            raise CheckpointError(f"{path}: {err}") from None

    try:
        # data layer: the CSV encoding and target scale (absent in older checkpoints: none)
        preprocessor = Preprocessor.from_checkpoint(meta, ckpt.group("target"), str(path), f.n_outputs,
                                                    standardizer)
    except DataError as err:
        raise CheckpointError(str(err)) from None
    if preprocessor.table is not None and f.feature_names != preprocessor.table.feature_names:
        raise CheckpointError(f"{path}: metadata feature_names do not match its preprocess.table")

    try:
        model = Sequential.from_config(f.layers, f.input_shape, np.random.default_rng(0), dtype)
    except (NnctlError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: {_why(err)}") from None
    except (MemoryError, OverflowError, RecursionError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model from its metadata: the layers it lists are "
                              f"too large or too deeply nested ({type(err).__name__})") from None
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except (NnctlError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model in its metadata: {_why(err)}") from None
    try:
        loss_cls = LOSSES.get(f.loss["name"])
        loss = loss_cls(**{k: v for k, v in f.loss.items() if k != "name"})
    except (NnctlError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the loss from its metadata: {_why(err)}") from None
    loss_name = LOSSES.canonical(f.loss["name"])
    if loss_cls.TASK != f.task:
        raise CheckpointError(f"{path}: metadata loss {loss_name} does not fit task {f.task}")
    outputs = math.prod(model.output_shape or ())
    binary = loss_name == "binary_cross_entropy" and f.n_outputs == 2
    # a VAE also emits the posterior's mean and log-variance after its n_outputs reconstruction
    stats = 2 * model.layers[0].latent if f.task == "vae" else 0
    if outputs != (1 if binary else f.n_outputs + stats):
        raise CheckpointError(f"{path}: the model has {outputs} outputs but metadata n_outputs is {f.n_outputs}")
    return LoadedModel(path=path, meta=meta, model=model, loss=loss, standardizer=standardizer, dtype=dtype,
                       task=f.task, classes=f.classes, feature_names=f.feature_names, target_name=f.target_name,
                       n_outputs=f.n_outputs, input_shape=f.input_shape, preprocessor=preprocessor)


def _why(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, KeyError) and err.args:
        text = f"key {err.args[0]!r}"
    return text or type(err).__name__


def load_model(target: Path) -> LoadedModel:
    """A checkpoint file or run directory -> the rebuilt, loaded model."""
    ckpt = load_checkpoint(checkpoint_for(target))
    return model_from_checkpoint(ckpt)


def default_batch_size(lm: LoadedModel) -> int:
    """The run's eval_batch_size (what training scored the test split with), else 1024."""
    training = lm.meta["config"].get("training")
    value = training.get("eval_batch_size") if isinstance(training, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1024
