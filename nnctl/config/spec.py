"""The experiment spec: YAML in, one typed, fully defaulted `Spec` out, every error with its line.

This is the only typed boundary between user text and the rest of nnctl. Each section is
declared once as a table of `Param`s (type, default, range, doc); components (layers,
optimizers, schedules, losses, datasets) declare their own options in the engine's registries,
so a new component is validated and documented without touching this file.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnctl.engine  # noqa: F401  (registers every layer)
from nnctl.config.check import Checker, describe
from nnctl.config.loggers import check_loggers
from nnctl.config.source import Source, apply_overrides, format_path, printable, read_spec
from nnctl.data import DATASETS, PARAMS_DATA
from nnctl.data.augment import check_augment
from nnctl.engine.activations import ACTIVATIONS
from nnctl.engine.base import LAYERS
from nnctl.hparams import Param
from nnctl.engine.initializers import INITIALIZERS
from nnctl.engine.losses import LOSSES
from nnctl.engine.metrics import GENERATIVE_TASKS, metric_names
from nnctl.engine.optimizers import OPTIMIZERS
from nnctl.engine.schedules import SCHEDULES
from nnctl.errors import ConfigError

REGISTRIES = {"layer": LAYERS, "activation": ACTIVATIONS, "initializer": INITIALIZERS}

TOP_PARAMS: dict[str, Param] = {
    "name": Param("str", None, nullable=True, doc="run name; runs/<name>-<timestamp>/ (default: the spec file's stem)"),
    "description": Param("str", None, nullable=True, doc="free text kept with the run"),
    "task": Param("str", None, choices=GENERATIVE_TASKS, nullable=True,
                  doc="autoencoder or vae: learn to reconstruct the inputs (model: encoder, latent, decoder); "
                      "null: supervised, the data's target decides"),
    "seed": Param("int", 0, ge=0, doc="seeds data generation, splits, initialization, shuffling and dropout"),
    "data": Param("mapping", {}, doc="where the data comes from and how it is split"),
    "model": Param("mapping", {}, doc="the network: short form (hidden, ...) or long form (layers)"),
    "loss": Param("any", None, nullable=True, doc="loss name or {name, options}; inferred from the task if omitted"),
    "optimizer": Param("any", "adam", doc="optimizer name or {name, lr, ...}"),
    "schedule": Param("any", None, nullable=True, doc="learning-rate schedule name or {name, ...}; constant if omitted"),
    "training": Param("mapping", {}, doc="epochs, batch size, dtype, early stopping"),
    "loggers": Param("any", None, nullable=True, doc="experiment loggers: [tensorboard, csv, {mlflow: {tracking_uri, experiment}}]"),
}

MODEL_PARAMS: dict[str, Param] = {
    "hidden": Param("int_list", None, gt=0, nullable=True, doc="short form: hidden layer sizes (default [64] when no layers)"),
    "activation": Param("activation", "relu", doc="short form: activation of hidden layers"),
    "initializer": Param("initializer", None, nullable=True, doc="short form: weight initializer (default follows the activation)"),
    "batch_norm": Param("bool", False, doc="short form: BatchNorm after each hidden Dense (before its activation)"),
    "dropout": Param("float", 0.0, ge=0.0, lt=1.0, doc="short form: dropout rate after each hidden layer"),
    "layers": Param("layers", None, nullable=True, doc="long form: a list of engine layers; the output layer is added for you"),
    "output_initializer": Param("initializer", None, nullable=True, doc="initializer of the output layer (default xavier_uniform)"),
}

# The model of an autoencoder or VAE (task: autoencoder | vae); encoder and decoder are each
# written like a supervised model (STACK_PARAMS: short or long form).
GENERATIVE_MODEL_PARAMS: dict[str, Param] = {
    "encoder": Param("mapping", {}, doc="the encoder's layers: short form (hidden, activation, ...) or long form "
                                        "(layers), as model; it ends in the latent head (mean and log-variance for a vae)"),
    "latent": Param("int", 8, gt=0, doc="size of the code z"),
    "decoder": Param("mapping", None, nullable=True,
                     doc="the decoder's layers, as encoder; the output layer back to the input size is added "
                         "(default: the encoder's short form mirrored)"),
    "output": Param("str", None, choices=("identity", "sigmoid"), nullable=True,
                    doc="activation of the reconstruction (default: sigmoid for binary_cross_entropy, which "
                        "needs it, identity for mse)"),
}
STACK_PARAMS = {k: p for k, p in MODEL_PARAMS.items() if k != "output_initializer"}
RECONSTRUCTION_LOSSES = ("mse", "binary_cross_entropy")

EARLY_STOPPING_PARAMS: dict[str, Param] = {
    "monitor": Param("str", "val_loss", doc="a logged metric: loss, val_loss, accuracy, val_accuracy, mae, val_mae, r2, "
                                            "val_r2; autoencoder/vae: reconstruction, kl (vae) and their val_"),
    "mode": Param("str", "auto", choices=("auto", "min", "max"), doc="auto: max for accuracy/r2, min otherwise"),
    "patience": Param("int", 5, ge=0, doc="epochs without improvement before stopping"),
    "min_delta": Param("float", 0.0, ge=0.0, doc="smallest change that counts as an improvement"),
    "restore_best": Param("bool", True, doc="load the best epoch's weights at the end (also when stopping never fired)"),
    "start_from_epoch": Param("int", 0, ge=0, doc="epochs to wait before counting patience"),
}

TRAINING_PARAMS: dict[str, Param] = {
    "epochs": Param("int", 20, ge=1, doc="maximum number of epochs"),
    "batch_size": Param("int", 32, ge=1, doc="training mini-batch size"),
    "eval_batch_size": Param("int", 1024, ge=1, doc="batch size for validation/test passes"),
    "dtype": Param("str", "float32", choices=("float32", "float64"), doc="the model's one dtype"),
    "shuffle": Param("bool", True, doc="reshuffle the training rows every epoch"),
    "early_stopping": Param("mapping", None, nullable=True, doc="monitor, mode, patience, min_delta, restore_best, start_from_epoch"),
    # speed (nnctl/threads.py): the count used is written back here, so --resume reuses it
    "threads": Param("int", None, ge=1, nullable=True,
                     doc="BLAS threads; null: --threads, else the environment, else half the physical cores (1..4)"),
    "memory_limit_gb": Param("float", None, gt=0, nullable=True,
                             doc="refuse a model whose estimated training memory is above this many GiB "
                                 "(default: the memory available when it starts)"),
}

# Keys the schedule wrapper handles for every schedule (warmup, stepping interval).
SCHEDULE_COMMON: dict[str, Param] = {
    "interval": Param("str", "epoch", choices=("epoch", "step"), doc="step the schedule per epoch or per batch"),
    "warmup_epochs": Param("int", 0, ge=0, doc="linear warmup from 0 over this many epochs"),
    "warmup_steps": Param("int", 0, ge=0, doc="linear warmup from 0 over this many batches"),
}

_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_name(name: str) -> str:
    """A run name that cannot leave the runs directory: path separators and odd bytes become '-'."""
    cleaned = _NAME_RE.sub("-", name).strip(".-")
    return cleaned[:80] or "run"


def loss_task(name: str) -> str:
    """The task a loss is for (its class's TASK): classification or regression."""
    return LOSSES.get(name).TASK


@dataclass(frozen=True)
class EarlyStopping:
    monitor: str
    mode: str
    patience: int
    min_delta: float
    restore_best: bool
    start_from_epoch: int


@dataclass(frozen=True)
class Training:
    epochs: int
    batch_size: int
    eval_batch_size: int
    dtype: str
    shuffle: bool
    early_stopping: EarlyStopping | None
    threads: int | None = None
    memory_limit_gb: float | None = None


@dataclass
class Spec:
    """A validated experiment spec with every default filled in."""

    name: str
    description: str | None
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]           # as written (short or long form), defaults filled
    layers: list[dict[str, Any]]    # canonical hidden layer specs (no output layer yet)
    loss: dict[str, Any] | None     # {"name": ..., options} or None (inferred from the task)
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    training: Training
    base_dir: Path = field(default=Path("."))
    source: Source | None = field(default=None, repr=False)
    # key paths (as in to_dict()) whose values came from defaults, not from the spec
    defaulted: frozenset = field(default=frozenset(), repr=False)
    loggers: list[dict[str, Any]] = field(default_factory=list)   # [{name: {options}}] (config/loggers.py)
    task: str | None = None         # autoencoder | vae; None: supervised (the data decides)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data: valid input for `nnctl train` again."""
        es = self.training.early_stopping
        training = {k: getattr(self.training, k) for k in TRAINING_PARAMS if k != "early_stopping"}
        training["early_stopping"] = None if es is None else dict(es.__dict__)
        out = {
            "name": self.name,
            "description": self.description,
            "data": copy.deepcopy(self.data),
            "model": copy.deepcopy(self.model),
            "loss": copy.deepcopy(self.loss),
            "optimizer": copy.deepcopy(self.optimizer),
            "schedule": copy.deepcopy(self.schedule),
            "training": training,
            "loggers": copy.deepcopy(self.loggers),
        }
        # supervised specs stay as they were written before generative tasks existed
        head = {"task": self.task} if self.task is not None else {}
        return {**head, "seed": self.seed, **out}

    def error_at(self, path: tuple, message: str) -> ConfigError:
        where = self.source.where(path) if self.source is not None else ""
        return ConfigError(f"{format_path(path)}: {printable(message)}{where}")


def _check_task_fit(chk: Checker, data: dict[str, Any], loss: Any, schedule: Any, es: Any,
                    generative: str | None = None) -> None:
    """The loss, the data's task and the monitored metrics must agree; report the cause first.

    A loss that contradicts the task is the cause: `--set loss=mse` on a classification spec
    is reported as "mse needs a regression task", not as the monitor val_accuracy that the
    regression task would then never log.
    """
    has_val = bool(data.get("val_split")) or bool(data.get("val_path"))
    task, told = data.get("task"), "data.task"
    dataset = data.get("dataset")
    if task is None and isinstance(dataset, str) and dataset in DATASETS:
        task = getattr(DATASETS.get(dataset), "TASK", None)
        told = f"the dataset {DATASETS.canonical(dataset)}"
    monitors = []
    if isinstance(es, dict) and isinstance(es.get("monitor"), str):
        monitors.append((("training", "early_stopping", "monitor"), es["monitor"]))
    if isinstance(schedule, dict) and isinstance(schedule.get("monitor"), str):
        monitors.append((("schedule", "monitor"), schedule["monitor"]))
    if generative is not None:
        task, loss = generative, None   # the loss was checked against the task already
    if isinstance(loss, dict) and isinstance(loss.get("name"), str) and loss["name"] in LOSSES:
        needs = loss_task(loss["name"])
        if task is not None and needs != task:
            chk.error(("loss",), f"{loss['name']} needs a {needs} task, but {told} is {task}")
            return  # the monitors follow from the task: judging them against the wrong one only misleads
        if task is None:
            # a monitor that only the other task logs: the loss is what contradicts the spec
            clash = [(path, m) for path, m in monitors
                     if m in metric_names(None, has_val) and m not in metric_names(needs, has_val)]
            if clash:
                path, monitor = clash[0]
                chk.error(("loss",), f"{loss['name']} needs a {needs} task, but {format_path(path)} "
                                     f"is {monitor}, a metric of the other task")
                return
            task = needs
    valid = metric_names(task, has_val)
    for path, monitor in monitors:
        if monitor not in valid:
            from nnctl.hparams import unknown_name_message
            why = "" if has_val or not monitor.startswith("val_") else " (there is no validation split: set data.val_split)"
            chk.error(path, unknown_name_message("metric", monitor, valid) + f"; it is never logged{why}")


def expand_short_form(model: dict[str, Any]) -> list[dict[str, Any]]:
    """hidden/activation/initializer/batch_norm/dropout -> canonical layer specs."""
    layers: list[dict[str, Any]] = []
    act = model["activation"]
    for units in model["hidden"] or []:
        dense: dict[str, Any] = {"type": "dense", "units": units,
                                 "activation": "identity" if model["batch_norm"] else act}
        if model["initializer"] is not None:
            dense["initializer"] = model["initializer"]
        elif model["batch_norm"]:
            # the activation moves after BatchNorm; the weights still follow it
            from nnctl.engine.initializers import default_initializer
            dense["initializer"] = default_initializer(act["name"] if isinstance(act, dict) else act)
        layers.append(dense)
        if model["batch_norm"]:
            layers.append({"type": "batch_norm"})
            layers.append(_activation_layer(act))
        if model["dropout"] > 0:
            layers.append({"type": "dropout", "rate": model["dropout"]})
    return layers


def _activation_layer(act: Any) -> dict[str, Any]:
    if isinstance(act, dict):
        return {"type": act["name"], **{k: v for k, v in act.items() if k != "name"}}
    return {"type": act}


def check_spec(source: Source, base_dir: Path, default_name: str) -> Spec:
    """Validate a parsed spec; every problem in the file is reported at once."""
    chk = Checker(source)
    raw = source.data
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.filename}: a spec must be a mapping of sections, got {describe(raw)}")
    top = chk.section((), raw, TOP_PARAMS, REGISTRIES)

    data = chk.section(("data",), raw.get("data"), PARAMS_DATA, REGISTRIES)
    if isinstance(data.get("dataset"), str) and data["dataset"] in DATASETS:
        cls = DATASETS.get(data["dataset"])
        data["options"] = chk.section(("data", "options"), data.get("options"), getattr(cls, "PARAMS", {}), REGISTRIES)
    data["augment"] = check_augment(chk, data.get("augment"))

    task = top.get("task") if top.get("task") in GENERATIVE_TASKS else None
    if task is not None:
        model = _generative_model(chk, raw.get("model"))
        loss = _reconstruction_loss(chk, top.get("loss"), task)
        if loss is not None and loss["name"] == "binary_cross_entropy" and model.get("output") == "identity":
            chk.error(("model", "output"), "binary_cross_entropy reconstructs through a sigmoid: set output: "
                                           "sigmoid, or use loss mse")
    else:
        model = _stack(chk, ("model",), raw.get("model"), MODEL_PARAMS)
        loss = None
        if top.get("loss") is not None:
            loss = chk.component(("loss",), top["loss"], LOSSES)
    optimizer = chk.component(("optimizer",), top["optimizer"], OPTIMIZERS)
    schedule = None
    if top.get("schedule") is not None:
        schedule = chk.component(("schedule",), top["schedule"], SCHEDULES, common=SCHEDULE_COMMON)

    training = chk.section(("training",), raw.get("training"), TRAINING_PARAMS, REGISTRIES)
    es = None
    if training.get("early_stopping") is not None:
        es = chk.section(("training", "early_stopping"), training["early_stopping"], EARLY_STOPPING_PARAMS, REGISTRIES)
    loggers = check_loggers(chk, top.get("loggers"), base_dir)
    # No raise here: the cross-field checks below run on whatever parsed, so a file with an
    # unknown key, an unknown optimizer and an unknown metric gets all three in one report.
    _check_task_fit(chk, data, loss, schedule, es, generative=task)
    chk.raise_if_any()

    for key in ("dataset", "val_path", "test_path", "target_path"):
        # Stored configs (runs/*/config.yaml, checkpoints) must find the data from anywhere.
        value = data.get(key)
        # a suffix-less name that is no file is a misspelt built-in: the data layer says "did you mean"
        unknown_name = key == "dataset" and isinstance(value, str) and not Path(value).suffix \
            and not os.path.lexists(base_dir / value)
        if isinstance(value, str) and not (key == "dataset" and value in DATASETS) and not unknown_name:
            # absolute but not resolved: a symlink's own name (data.csv -> blob) tells the format,
            # and a symlink loop is reported, with the key, when the data is read
            data[key] = os.path.abspath(base_dir / value)
    name = top.get("name") or default_name
    early = EarlyStopping(**es) if es else None
    train_cfg = Training(early_stopping=early, **{k: v for k, v in training.items() if k != "early_stopping"})
    if task is not None:
        model, layers = _resolve_generative(model, loss, task)
    else:
        model, layers = _resolve_stack(model, ("layers", "output_initializer"))
    return Spec(
        name=name, description=top.get("description"), seed=top["seed"], data=data, model=model,
        layers=layers, loss=loss, optimizer=optimizer, schedule=schedule, training=train_cfg,
        base_dir=base_dir, source=source, defaulted=frozenset(chk.defaulted), loggers=loggers, task=task,
    )


def _stack(chk: Checker, path: tuple, raw: Any, params: dict[str, Param]) -> dict[str, Any]:
    """A model (or an encoder, a decoder) in short or long form, checked; hidden [64] when neither."""
    model = chk.section(path, raw, params, REGISTRIES)
    if model.get("layers") is not None and isinstance(raw, dict) and raw.get("hidden") is not None:
        chk.error(path + ("hidden",), "give either hidden (short form) or layers (long form), not both")
    if model.get("layers") is None and model.get("hidden") is None:
        model["hidden"] = [64]
    return model


def _resolve_stack(model: dict[str, Any], keep: tuple[str, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the stack as stored in the resolved spec, its canonical layer specs)."""
    _record_default_initializers(model)
    layers = model["layers"] if model.get("layers") is not None else expand_short_form(model)
    if model.get("layers") is not None:
        model = {k: v for k, v in model.items() if k in keep}
    return model, layers


def _generative_model(chk: Checker, raw: Any) -> dict[str, Any]:
    """model: {encoder, latent, decoder, output}; a missing decoder mirrors a short-form encoder."""
    model = chk.section(("model",), raw, GENERATIVE_MODEL_PARAMS, REGISTRIES)
    raw = raw if isinstance(raw, dict) else {}
    model["encoder"] = _stack(chk, ("model", "encoder"), raw.get("encoder"), STACK_PARAMS)
    if model.get("decoder") is None:
        enc = model["encoder"]
        if enc.get("layers") is not None:
            chk.error(("model", "decoder"), "is required when the encoder is in long form (layers): only a "
                                            "short-form encoder (hidden) is mirrored")
            return model
        model["decoder"] = {**enc, "hidden": list(reversed(enc["hidden"]))}
    else:
        model["decoder"] = _stack(chk, ("model", "decoder"), raw.get("decoder"), STACK_PARAMS)
    return model


def _reconstruction_loss(chk: Checker, raw: Any, task: str) -> dict[str, Any] | None:
    """loss of an autoencoder or VAE: mse or binary_cross_entropy, with the VAE's beta.

    Checked as the engine's reconstruction / elbo loss, stored under the reconstruction's name
    ({name: mse, beta: 1.0}) as the spec writes it.
    """
    raw = {"name": "mse"} if raw is None else ({"name": raw} if isinstance(raw, str) else raw)
    if not isinstance(raw, dict):
        chk.error(("loss",), f"must be a loss name or a mapping with 'name', got {describe(raw)}")
        return None
    name = raw.get("name", "mse")
    canon = LOSSES.canonical(name) if isinstance(name, str) else None
    if canon not in RECONSTRUCTION_LOSSES:
        chk.error(("loss", "name") if "name" in raw and len(raw) > 1 else ("loss",),
                  f"{_a(task)} reconstructs its inputs with {' or '.join(RECONSTRUCTION_LOSSES)}, got {name!r}")
        return None
    engine_name = "elbo" if task == "vae" else "reconstruction"
    options = {k: v for k, v in raw.items() if k != "name"}
    valid = sorted(set(LOSSES.get(engine_name).PARAMS) - {"reconstruction"})   # the name says which
    for key in options:
        if key not in valid:
            why = "only a vae has a KL term to weigh" if key == "beta" else \
                f"valid: {', '.join(valid) or 'none (an autoencoder loss takes no options)'}"
            chk.error(("loss", key), f"unknown key '{key}' for {_a(task)} loss; {why}")
            return None
    checked = chk.component(("loss",), {"name": engine_name, **options, "reconstruction": canon}, LOSSES)
    return {"name": canon, **{k: v for k, v in checked.items() if k not in ("name", "reconstruction")}}


def _a(task: str) -> str:
    return ("an " if task[0] in "aeiou" else "a ") + task


def _resolve_generative(model: dict[str, Any], loss: dict[str, Any], task: str):
    """(the model as stored, [the one autoencoder layer spec])."""
    encoder, enc_layers = _resolve_stack(model["encoder"], ("layers",))
    decoder, dec_layers = _resolve_stack(model["decoder"], ("layers",))
    bce = loss["name"] == "binary_cross_entropy"
    output = model.get("output") or ("sigmoid" if bce else "identity")
    resolved = {"encoder": encoder, "latent": model["latent"], "decoder": decoder, "output": output}
    layer = {"type": "autoencoder", "encoder": enc_layers, "latent": model["latent"], "decoder": dec_layers,
             "variational": task == "vae",
             # binary_cross_entropy takes logits and applies the sigmoid itself
             "output": "identity" if bce else output}
    return resolved, [layer]


def _record_default_initializers(model: dict[str, Any]) -> None:
    """Write the initializer a layer would default to into the resolved spec.

    The default follows the activation and may change between nnctl versions (the defaults
    panel decides it); a run's config.yaml and checkpoints must say which one it used, so that
    retraining or resuming an old run never picks up a newer default.
    """
    from nnctl.engine.initializers import default_initializer
    if model.get("layers") is None:
        if model.get("initializer") is None:
            model["initializer"] = default_initializer(model["activation"])
        return
    def resolve(layers: list[dict[str, Any]]) -> None:
        for layer in layers:
            cls = LAYERS.get(layer["type"])
            if "initializer" in layer and layer["initializer"] is None and "activation" in getattr(cls, "PARAMS", {}):
                layer["initializer"] = default_initializer(layer.get("activation") or "identity")
            if isinstance(layer.get("layers"), list):  # residual blocks hold layers of their own
                resolve(layer["layers"])
    resolve(model["layers"])


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file."""
    path = Path(path)
    source = read_spec(path)
    data = source.data if isinstance(source.data, dict) else {}
    if "optimizer" not in data and any(o.strip().startswith("optimizer.") for o in overrides or []):
        # `--set optimizer.lr=...` tunes the default optimizer, as if the spec named it
        source.data = {**data, "optimizer": TOP_PARAMS["optimizer"].default}
    apply_overrides(source, overrides or [])
    return check_spec(source, path.resolve().parent, path.stem)


def spec_from_dict(data: dict[str, Any], base_dir: Path | str = ".", filename: str = "<config>") -> Spec:
    """Validate a spec given as plain data (e.g. the config stored in a checkpoint)."""
    source = Source(data=copy.deepcopy(data), filename=filename)
    return check_spec(source, Path(base_dir), str(data.get("name") or "run"))
