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
from nnctl.training.lr_find import centred_smooth, find_lr, lr_schedule, suggest
from nnctl.training.metrics import evaluate

runner = CliRunner()


def linear_csv(path: Path) -> Path:
    """y = x . w + noise over 4 standard-normal features: a task every lr sweep can be checked on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=512)
    np.savetxt(path, np.c_[x, y], delimiter=",", header="a,b,c,d,y", comments="", fmt="%.6f")
    return path


def spec_dict(csv: Path, lr: float = 0.1, standardize_target: bool | None = None) -> dict:
    data = {"dataset": str(csv), "target": "y", "task": "regression", "val_split": 0.25}
    if standardize_target is not None:   # None: the default (standardized)
        data["standardize_target"] = standardize_target
    return {"name": "lin", "data": data,
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
    suggested, steepest, min10 = suggest(lrs, smoothed)
    assert suggested == pytest.approx(lrs[np.argmin(smoothed)] / 2)
    assert min10 == pytest.approx(lrs[np.argmin(smoothed)] / 10)
    slope = np.gradient(np.log(smoothed[5:31]), np.log(lrs[5:31]))
    assert steepest == pytest.approx(lrs[5 + int(np.argmin(slope))])
    assert 10 ** -2.3 <= steepest <= 10 ** -1.7
    rising = np.linspace(1.0, 5.0, 41)
    assert suggest(lrs, rising) == (None, None, pytest.approx(lrs[0] / 10))   # only rising: nothing learns


def test_the_smoothing_is_centred_so_it_does_not_trail_a_falling_loss():
    losses = 10.0 ** -np.arange(30.0)              # the loss falls a decade a step
    smoothed = centred_smooth(losses)
    assert np.allclose(np.log10(smoothed[5:25]), -np.arange(5.0, 25.0))   # exact in the middle, no lag
    assert np.log10(smoothed[0]) == pytest.approx(-2.5)                     # mean of steps 0..5 at the edge


def val_loss_after_training(csv: Path, lr: float, standardize_target: bool | None) -> float:
    """Validation loss after 3 epochs of SGD at a constant lr (inf if it diverged)."""
    exp = prepare(spec_from_dict(spec_dict(csv, lr, standardize_target)))
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


@pytest.mark.parametrize("standardize_target", [None, False], ids=["standardized-default", "raw-target"])
def test_lr_find_agrees_with_a_grid_of_real_trainings(tmp_path, standardize_target):
    """Standardizing the target moves the grid's best lr ~4x up (less curvature); the suggestion follows."""
    csv = linear_csv(tmp_path / "lin.csv")
    grid = 10.0 ** np.arange(-3.0, 0.01, 0.25)
    losses = np.array([val_loss_after_training(csv, lr, standardize_target) for lr in grid])
    assert losses[0] > 5 * losses.min() and not np.isfinite(losses[-1])   # the grid brackets the best lr
    # the val loss is nearly flat over a range of lrs just below divergence: the argmin would pick an
    # end of that plateau by noise, so the best lr is the geometric middle of the lrs within 25% of it
    good = grid[losses <= 1.25 * losses.min()]
    best = float(np.exp(np.log(good).mean()))

    result = find_lr(prepare(spec_from_dict(spec_dict(csv, standardize_target=standardize_target))), 1e-5, 10.0, 100)
    assert result.stopped.startswith("diverged at lr")
    assert best / 3 <= result.suggested <= best * 3, (best, result.suggested)
    assert val_loss_after_training(csv, result.suggested, standardize_target) <= 1.5 * losses.min()
    # twice the steps (the model trains longer during the test): the suggestion stays put
    longer = find_lr(prepare(spec_from_dict(spec_dict(csv, standardize_target=standardize_target))), 1e-5, 10.0, 200)
    assert 0.5 <= longer.suggested / result.suggested <= 2.0, (result.suggested, longer.suggested)


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
    suggestion = curves[0]["suggestion"]
    lines = outs[0].splitlines()
    assert lines[1] == f"suggested lr: {suggestion['suggested']:.3g} (half the lr where the smoothed loss bottoms out)"
    assert lines[2] == (f"  also: steepest descent at {suggestion['steepest']:.3g} (moves with --steps), "
                        f"lowest loss / 10 at {suggestion['min_over_10']:.3g}")
    assert suggestion["suggested"] == pytest.approx(5 * suggestion["min_over_10"])
    assert lines[-1] == f"nnctl train {spec} --set optimizer.lr={suggestion['suggested']:.3g}"
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
