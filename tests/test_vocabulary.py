"""One metric vocabulary (direction, task, R²) and loss tasks from Loss.TASK, read by every caller."""
import numpy as np
import pytest

from nnctl.engine.losses import LOSSES
from nnctl.engine.metrics import TASKS, auto_mode, direction, metric_names, r2_from_sums
from nnctl.engine.schedules import build_schedule
from nnctl.runs.catalog import RunInfo, better_direction, sort_runs
from nnctl.sweep.spec import default_goal
from nnctl.training.early_stopping import EarlyStopping


@pytest.mark.parametrize("name,way", [("loss", "min"), ("val_loss", "min"), ("test_mae", "min"),
                                      ("accuracy", "max"), ("val_accuracy", "max"), ("test_r2", "max"),
                                      ("top_3_accuracy", "max"), ("rmse", "min"), ("seconds", None)])
def test_direction_table(name, way):
    assert direction(name) == way
    assert auto_mode(name) == (way or "min")


def test_every_reader_uses_the_table():
    for name in ("val_accuracy", "val_r2", "val_loss", "mae"):
        want = auto_mode(name)
        assert EarlyStopping(name).mode == want
        assert default_goal(name) == ("maximize" if want == "max" else "minimize")
        assert better_direction(f"best {name}") == want
        sched = build_schedule({"name": "reduce_on_plateau", "monitor": name}, 0.1, 10, 5)
        assert sched.mode == want


def test_metric_names_per_task():
    assert metric_names("classification", True) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert metric_names("regression", False) == ["loss", "mae", "r2"]
    assert metric_names(None, False) == ["loss", "accuracy", "mae", "r2"]
    assert metric_names("vae", True) == ["loss", "reconstruction", "kl", "val_loss", "val_reconstruction", "val_kl"]
    assert metric_names("autoencoder", False) == ["loss", "reconstruction"]


def test_loss_tasks_come_from_the_loss_classes():
    from nnctl.config.spec import loss_task
    assert loss_task("mse") == "regression"
    assert loss_task("ce") == "classification"
    assert loss_task("bce") == "classification"
    assert all(LOSSES.get(n).TASK in TASKS for n in LOSSES.names())
    assert loss_task("elbo") == "vae" and loss_task("reconstruction") == "autoencoder"


def test_r2_by_hand():
    # y = [1, 2, 3], p = [1, 2, 4]: ss_res = 1, ss_tot = 2 -> 0.5; constant target: 1 if exact else 0
    assert r2_from_sums(np.array([1.0, 0.0, 3.0]), np.array([2.0, 0.0, 0.0])).tolist() == [0.5, 1.0, 0.0]


def test_sort_by_r2_is_descending(tmp_path):
    runs = [RunInfo(path=tmp_path / n, name=n, status="completed", metrics={"test": {"test_r2": v}})
            for n, v in (("a", 0.2), ("b", 0.9), ("c", 0.5))]
    assert [r.name for r in sort_runs(runs, "test_r2")] == ["b", "c", "a"]
    runs[0].metrics["test"]["test_loss"] = 3.0
    runs[2].metrics["test"]["test_loss"] = 1.0
    # lower is better; the run without the value goes last
    assert [r.name for r in sort_runs(runs, "test_loss")] == ["c", "a", "b"]


def test_checkpoint_metadata_is_the_typed_record(tmp_path):
    """The trainer writes exactly CheckpointMeta's fields; the reader checks them by name."""
    import dataclasses
    import textwrap

    from typer.testing import CliRunner

    from nnctl.cli import app
    from nnctl.errors import CheckpointError
    from nnctl.runs.checkpoint import load_checkpoint
    from nnctl.runs.meta import CheckpointMeta, model_fields
    spec = tmp_path / "iris.yaml"
    spec.write_text(textwrap.dedent("""\
        data: {dataset: iris, val_split: 0.2, test_split: 0.2}
        model: {hidden: [4]}
        training: {epochs: 1}
        """))
    assert CliRunner().invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs"), "-q"]).exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    fields = {f.name for f in dataclasses.fields(CheckpointMeta)}
    assert set(ckpt.meta) == fields | {"format", "format_version", "nnctl_version"}
    got = model_fields(ckpt.path, ckpt.meta)
    assert (got.task, got.n_outputs, got.input_shape, got.epoch) == ("classification", 3, (4,), 1)
    assert got.classes == ["setosa", "versicolor", "virginica"]
    bad = {**ckpt.meta, "n_outputs": "3"}
    with pytest.raises(CheckpointError, match=r"last\.npz: metadata field n_outputs is missing or not an integer$"):
        model_fields(ckpt.path, bad)


def test_trial_metric_is_read_through_the_catalog(tmp_path):
    import json

    from nnctl.runs.catalog import kept_metric
    from nnctl.sweep.executors import read_metric
    run = tmp_path / "r"
    run.mkdir()
    assert kept_metric(run, "val_loss") == (None, f"{run}: no metrics.json")
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.75}]))
    (run / "metrics.json").write_text(json.dumps({"best": {"epoch": 1, "val_loss": 0.5}, "test": {"test_r2": 0.25}}))
    assert read_metric(run, "val_loss") == kept_metric(run, "val_loss") == (0.5, None)  # best weights kept
    assert kept_metric(run, "test_r2") == (0.25, None)
    assert kept_metric(run, "val_r2") == (None, "val_r2 was not logged by this run")
    (run / "metrics.json").write_text(json.dumps({"weights": "last", "best": {"epoch": 1, "val_loss": 0.5}}))
    assert kept_metric(run, "val_loss") == (0.75, None)  # restore_best off: the last epoch's


# ---------------------------------------------------------------------------- options

def _registries():
    from nnctl.engine.activations import ACTIVATIONS
    from nnctl.engine.initializers import INITIALIZERS
    from nnctl.engine.optimizers import OPTIMIZERS
    from nnctl.engine.schedules import SCHEDULES
    return {"activation": (ACTIVATIONS, "leaky_relu", "alpha"), "initializer": (INITIALIZERS, "uniform", "limit"),
            "loss": (LOSSES, "huber", "delta"), "optimizer": (OPTIMIZERS, "adam", "lr"),
            "schedule": (SCHEDULES, "exponential", "gamma")}


@pytest.mark.parametrize("kind", ["activation", "initializer", "loss", "optimizer", "schedule"])
def test_every_component_checks_its_options_with_the_one_checker(kind):
    """Activations, initializers, losses, optimizers and schedules are Configurable: the same
    unknown-option line, numbers widened to Python floats, bounds in the YAML check's words."""
    from nnctl.errors import ConfigError
    from nnctl.hparams import Configurable

    registry, name, key = _registries()[kind]
    cls = registry.get(name)
    assert issubclass(cls, Configurable)
    valid = ", ".join(sorted(cls.PARAMS))
    with pytest.raises(ConfigError) as err:
        cls(**{f"{key}x": 1})
    assert str(err.value) == f"{name}: unknown option(s) {key}x; valid: {valid}"
    made = cls(**{key: np.float32(0.5)})
    assert made.get_config()[key] == 0.5 and type(made.get_config()[key]) is float
    assert type(made)(**made.get_config()).get_config() == made.get_config()
    with pytest.raises(ConfigError) as err:
        cls(**{key: -1})
    bound = cls.PARAMS[key]
    word, limit = next((w, b) for w, b in ((">", bound.gt), (">=", bound.ge)) if b is not None)
    assert str(err.value) == f"{name}.{key}: must be {word} {limit:.10g}, got -1"
