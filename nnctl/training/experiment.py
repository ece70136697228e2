"""From a validated spec to the objects training needs: data, model, loss, optimizer, schedule.

Everything that can fail on user input (data files, shapes, batch size) fails here, before a
run directory exists.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnctl.config.spec import Spec, loss_task, metric_names
from nnctl.data import Dataset, Preprocessor, Standardizer, load_dataset
from nnctl.data.augment import Augmenter, build_augmenter
from nnctl.data.targets import CLASSIFICATION, weights_by_label
from nnctl.engine.losses import LOSSES, default_loss
from nnctl.engine.model import Sequential, build_layer
from nnctl.engine.optimizers import OPTIMIZERS
from nnctl.engine.schedules import build_schedule
from nnctl.errors import ConfigError, DataError, NnctlError
from nnctl.training.memory import check_memory


@dataclass
class Experiment:
    spec: Spec
    dataset: Dataset
    preprocessor: Preprocessor
    model: Sequential
    loss: Any
    loss_spec: dict[str, Any]
    optimizer: Any
    schedule: Any
    layer_specs: list[dict[str, Any]]   # hidden layers + the output layer, canonical
    steps_per_epoch: int
    augmenter: Augmenter = field(default_factory=Augmenter)   # training batches only

    @property
    def dtype(self):
        return np.dtype(self.spec.training.dtype)

    @property
    def standardizer(self) -> Standardizer | None:
        return self.preprocessor.standardizer

    @property
    def latent(self) -> int | None:
        """The code size of an autoencoder or VAE, else None."""
        return self.model.layers[0].latent if self.spec.task else None

    @property
    def target_scale(self) -> np.ndarray | None:
        """(k,) scale of a standardized regression target: metrics multiply errors by it."""
        return self.preprocessor.target_scale


def output_layer(spec: Spec, n_outputs: int) -> dict[str, Any]:
    layer: dict[str, Any] = {"type": "dense", "units": n_outputs, "activation": "identity"}
    init = spec.model.get("output_initializer")
    layer["initializer"] = init if init is not None else "xavier_uniform"
    return layer


def model_layer_specs(spec: Spec, n_outputs: int) -> list[dict[str, Any]]:
    """The layer specs the model is built from: the spec's layers and an output layer of
    `n_outputs` units, except an autoencoder's one layer, which ends in its own output layer
    sized from the input. Shared by `prepare` and a sweep's memory sizing."""
    return list(spec.layers) if spec.task else [*spec.layers, output_layer(spec, n_outputs)]


def model_rng(seed: int) -> np.random.Generator:
    """The model's Generator (initialization, then dropout masks); its state is checkpointed."""
    return np.random.default_rng([seed, 0])


def build_model(spec: Spec, layer_specs: list[dict[str, Any]], input_shape: tuple[int, ...], dtype) -> Sequential:
    """Build the layers in order with the model's Generator, so a shape error names the
    layer's YAML path; the result is the model itself (built once, same draws and the same
    flat parameter layout as Sequential.from_config)."""
    shape = tuple(input_shape)
    rng = model_rng(spec.seed)
    hidden = len(spec.layers)
    layers = []
    for i, layer_spec in enumerate(layer_specs):
        try:
            layer = build_layer(layer_spec)
            shape = layer.build(shape, rng, dtype)
        except NnctlError as err:
            if spec.task:
                path, what = ("model",), ""
            elif i >= hidden:
                path = ("model",)
                what = f"output layer ({layer_spec['units']} units)"
            elif "layers" in spec.model:
                path, what = ("model", "layers", i), ""
            else:
                path, what = ("model", "hidden"), f"layer {i} ({layer_spec['type']})"
            raise spec.error_at(path, f"{what + ': ' if what else ''}{err}") from None
        layers.append(layer)
    # the layers are ours alone: their parameters can move into the flat arrays the
    # optimizers update in one pass (Sequential.flatten)
    return Sequential(layers).flatten()


@contextmanager
def located(spec: Spec, path: tuple):
    """Give an engine-side ConfigError (a cross-field rule) the YAML path and line of its section."""
    try:
        yield
    except ConfigError as err:
        raise spec.error_at(path, str(err)) from None


def check_output_shape(spec: Spec, model: Sequential, n_outputs: int, input_shape) -> None:
    """The model must give (N, n_outputs): a dense stack on (N, 8, 8) gives (N, 8, n_outputs)."""
    out = tuple(model.output_shape or ())
    if out == (n_outputs,):
        return
    hint = ""
    if len(input_shape) > 1:
        hint = (f"; a dense layer acts on the last axis of each {list(input_shape)} sample: add "
                "{type: flatten} before the dense layers, or set data.shape")
    raise spec.error_at(("model",), f"the model's output per sample is {list(out)}, the loss needs "
                                    f"[{n_outputs}]{hint}")


def balanced_weights(y: np.ndarray, n_classes: int, where) -> list[float]:
    """n_samples / (n_classes * count_c) per class, from the training split's class indices."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    if (counts == 0).any():
        raise where(f"class_weights: balanced needs every class in the training split; class "
                    f"{int(np.argmin(counts))} has no row")
    return [float(v) for v in len(y) / (n_classes * counts)]


def reconstruction_loss_spec(spec: Spec) -> dict[str, Any]:
    """The engine loss of an autoencoder or VAE from the spec's {name: mse, beta: ...}."""
    loss = spec.loss or {"name": "mse"}
    engine = "elbo" if spec.task == "vae" else "reconstruction"
    return {"name": engine, "reconstruction": loss["name"], **{k: v for k, v in loss.items() if k != "name"}}


def unit_range(split) -> Standardizer:
    """x -> (x - min) / (max - min) with the training rows' global min and max: an autoencoder's
    inputs and targets in [0, 1], what a sigmoid output and binary_cross_entropy need, and one
    scale for every feature so that reconstructions read back in the data's units."""
    x = split.features()   # an image folder's pixels as the [0, 1] values batches hold, not 0..255
    lo, hi = float(x.min()), float(x.max())
    shape = split.x.shape[1:]
    return Standardizer(np.full(shape, lo), np.full(shape, hi - lo if hi > lo else 1.0))


def prepare(spec: Spec) -> Experiment:
    data = load_dataset(spec.data, spec.seed, spec.base_dir, spec.training.dtype, unlabelled_ok=bool(spec.task))
    if spec.task is not None:
        # the target is the input itself; labels stay in the splits only to colour latent plots
        data = dataclasses.replace(data, task=spec.task, n_outputs=math.prod(data.input_shape))
    task = data.task

    loss_spec = reconstruction_loss_spec(spec) if spec.task else spec.loss or {"name": default_loss(task, data.n_outputs)}
    needs = loss_task(loss_spec["name"])
    if needs != task:
        raise spec.error_at(("loss",), f"{loss_spec['name']} needs a {needs} task, but the data is {task} "
                                       f"(target {data.target_name or '?'}); set data.task or change the loss")
    n_outputs = data.n_outputs
    if loss_spec["name"] == "binary_cross_entropy":
        if data.n_outputs != 2:
            raise spec.error_at(("loss",), f"binary_cross_entropy needs 2 classes, the data has {data.n_outputs}")
        n_outputs = 1

    has_val = data.val is not None and len(data.val) > 0
    es = spec.training.early_stopping
    if es is not None and es.monitor not in metric_names(task, has_val):
        raise spec.error_at(("training", "early_stopping", "monitor"),
                            f"'{es.monitor}' is never logged for this {task} run; logged: "
                            f"{', '.join(metric_names(task, has_val))}")
    if spec.schedule is not None and spec.schedule.get("monitor") is not None:
        if spec.schedule["monitor"] not in metric_names(task, has_val):
            raise spec.error_at(("schedule", "monitor"), f"'{spec.schedule['monitor']}' is never logged; logged: "
                                                          f"{', '.join(metric_names(task, has_val))}")

    n_train = len(data.train)
    if spec.training.batch_size > n_train:
        raise spec.error_at(("training", "batch_size"),
                            f"{spec.training.batch_size} is larger than the training split ({n_train} rows)")

    # the data's own rules (augmentation fits the layout and the loss) before the model's
    augmenter = build_augmenter(spec, data.input_shape, task, loss_spec["name"], data.n_outputs)
    dtype = np.dtype(spec.training.dtype)
    layer_specs = model_layer_specs(spec, n_outputs)
    check_memory(spec, layer_specs, data)  # from shapes alone: refuse what cannot fit before allocating it
    model = build_model(spec, layer_specs, data.input_shape, dtype)
    if not spec.task:
        check_output_shape(spec, model, n_outputs, data.input_shape)

    mode = spec.data.get("standardize", True)
    if spec.task:
        standardizer = unit_range(data.train)
    else:
        standardizer = Standardizer().fit(data.train, per_feature=mode != "global") if mode else None
    if standardizer is not None and data.table is not None:
        # one-hot columns stay 0/1: scaling a rare category up to unit variance only adds noise
        onehot = data.table.onehot_mask().reshape(standardizer.mean.shape)
        standardizer.mean[onehot], standardizer.scale[onehot] = 0.0, 1.0
    preprocessor = Preprocessor(table=data.table, standardizer=standardizer,
                                target_mean=data.target_mean, target_scale=data.target_scale)
    given = loss_spec.get("class_weights")
    if given == "balanced" and task == CLASSIFICATION:
        loss_spec = {**loss_spec, "class_weights": balanced_weights(
            data.train.targets(), data.n_outputs, lambda m: spec.error_at(("loss", "class_weights"), m))}
    elif isinstance(given, dict) and task == CLASSIFICATION:
        try:
            loss_spec = {**loss_spec, "class_weights": weights_by_label(given, data.classes or [])}
        except DataError as err:
            raise spec.error_at(("loss", "class_weights"), str(err)) from None
    # shown beside the classes by validate and the train header
    data.class_weights = loss_spec.get("class_weights") if task == CLASSIFICATION else None
    with located(spec, ("loss",)):
        loss = LOSSES.create(loss_spec)
    weights = loss_spec.get("class_weights")
    if weights is not None and len(weights) != data.n_outputs:
        raise spec.error_at(("loss", "class_weights"),
                            f"has {len(weights)} weights, the data has {data.n_outputs} classes")
    with located(spec, ("optimizer",)):
        optimizer = OPTIMIZERS.create(spec.optimizer)
    steps = -(-n_train // spec.training.batch_size)
    with located(spec, ("schedule",)):
        schedule = build_schedule(spec.schedule, optimizer.lr, spec.training.epochs, steps)
    return Experiment(spec=spec, dataset=data, preprocessor=preprocessor, model=model, loss=loss,
                      loss_spec=loss_spec, optimizer=optimizer, schedule=schedule,
                      layer_specs=layer_specs, steps_per_epoch=steps, augmenter=augmenter)
