"""`nnctl lr-find`: the range test's schedule and suggestions, reproducibility, and an lr that a grid confirms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.spec import spec_from_dict
from nnctl.data import iterate_batches
from nnctl.errors import NnctlError
from nnctl.training.experiment import prepare
from nnctl.training.lr_find import find_lr, lr_schedule, suggest
from nnctl.training.metrics import evaluate

runner = CliRunner()


def linear_csv(path: Path) -> Path:
    """y = x . w + noise over 4 standard-normal features: a task every lr sweep can be checked on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=512)
    np.savetxt(path, np.c_[x, y], delimiter=",", header="a,b,c,d,y", comments="", fmt="%.6f")
    return path


def spec_dict(csv: Path, lr: float = 0.1) -> dict:
    return {"name": "lin", "data": {"dataset": str(csv), "target": "y", "task": "regression", "val_split": 0.25,
                     "standardize_target": False},  # the grid below trains on raw targets
            "model": {"hidden": [16], "activation": "tanh"}, "optimizer": {"name": "sgd", "lr": lr},
            "training": {"batch_size": 32, "epochs": 3}}


def test_schedule_is_geometric_and_bad_ranges_are_refused():
    lrs = lr_schedule(1e-4, 1.0, 5)
    assert np.allclose(lrs, [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(NnctlError, match=r"--min/--max: need 0 < min < max, got min 1.0 and max 0.1"):
        lr_schedule(1.0, 0.1, 10)
    with pytest.raises(NnctlError, match="--steps: need at least 5 steps for a curve, got 3"):
        lr_schedule(1e-3, 1.0, 3)


def test_suggestions_on_a_hand_made_curve():
    lrs = 10.0 ** np.linspace(-4, 0, 41)           # 10 points a decade
    # flat at 10, falling fastest (by fraction) around 1e-2, lowest at 1e-1, then up
    logs = np.log10(lrs)
    smoothed = np.where(logs < -1, 1.0 + 9.0 / (1.0 + np.exp(-6.0 * (-2.0 - logs))) ** 1, 1.0 + (logs + 1) ** 2)
    steepest, min10 = suggest(lrs, smoothed)
    assert min10 == pytest.approx(lrs[np.argmin(smoothed)] / 10)
    slope = np.gradient(np.log(smoothed[10:31]), np.log(lrs[10:31]))
    assert steepest == pytest.approx(lrs[10 + int(np.argmin(slope))])
    assert 10 ** -2.3 <= steepest <= 10 ** -1.7


def test_lr_find_agrees_with_a_grid_of_real_trainings(tmp_path):
    csv = linear_csv(tmp_path / "lin.csv")

    def val_loss_after_training(lr: float) -> float:
        exp = prepare(spec_from_dict(spec_dict(csv, lr)))
        params, grads = exp.model.named_parameters(), exp.model.named_grads()
        with np.errstate(all="ignore"):
            for epoch in range(3):
                for xb, yb in iterate_batches(exp.dataset.train, 32, np.random.default_rng(epoch), exp.dtype,
                                              exp.standardizer):
                    _, dz = exp.loss(exp.model.forward(xb, training=True), yb)
                    exp.model.backward(dz)
                    exp.optimizer.step(params, grads)
            value = evaluate(exp.model, exp.loss, exp.dataset.val, exp.standardizer, 256, "regression",
                             exp.dtype, prefix="val_")["val_loss"]
        return value if np.isfinite(value) else np.inf

    grid = 10.0 ** np.arange(-3.0, 0.01, 0.25)
    losses = [val_loss_after_training(lr) for lr in grid]
    best = grid[int(np.argmin(losses))]
    assert losses[0] > 5 * min(losses) and not np.isfinite(losses[-1])   # the grid brackets the best lr

    result = find_lr(prepare(spec_from_dict(spec_dict(csv))), 1e-5, 10.0, 100)
    assert result.stopped.startswith("diverged at lr")
    assert best / 3 <= result.steepest <= best * 3, (best, result.steepest)
    assert best / 3 <= result.min_over_10 <= best * 3, (best, result.min_over_10)


def test_cli_writes_the_curve_reproducibly_and_prints_the_set_option(tmp_path):
    import yaml
    csv = linear_csv(tmp_path / "lin.csv")
    spec = tmp_path / "lin.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(csv)))
    outs = []
    for _ in range(2):
        res = runner.invoke(app, ["lr-find", str(spec), "--min", "1e-5", "--steps", "60", "--apply",
                                  "--runs-dir", str(tmp_path / "runs")])
        assert res.exit_code == 0, res.output
        outs.append(res.output)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("lin-lr-find-") for f in folders)
    curves = [json.loads((f / "lr_find.json").read_text()) for f in folders]
    assert curves[0] == curves[1]          # seeded: the same curve twice
    assert set(curves[0]) == {"settings", "stopped", "suggestion", "curve"}
    steepest = curves[0]["suggestion"]["steepest"]
    lines = outs[0].splitlines()
    assert lines[1] == f"suggested lr: {steepest:.3g} (steepest descent of the smoothed loss)"
    assert lines[-1] == f"nnctl train {spec} --set optimizer.lr={steepest:.3g}"
    assert yaml.safe_load((folders[0] / "config.yaml").read_text())["optimizer"]["lr"] == 0.1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (folders[0] / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_range_is_one_line(tmp_path):
    res = runner.invoke(app, ["lr-find", str(tmp_path / "none.yaml"), "--min", "1", "--max", "0.5"])
    assert res.exit_code == 1
    assert res.output == "error: --min/--max: need 0 < min < max, got min 1.0 and max 0.5\n"
    assert not (tmp_path / "runs").exists()
