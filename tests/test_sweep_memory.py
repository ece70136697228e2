"""A sweep sizes its trials like `train` sizes a run: the largest trial over its limit, or the
workers' largest trials side by side over the machine, is one error line before anything exists."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.engine.memory import format_bytes
from nnctl.sweep.memory import MAX_CORNERS, corners, size_trials, sweep_trials_to_size
from nnctl.sweep.spec import Parameter, build_trials, load_sweep

runner = CliRunner()


def dense_params(sizes: list[int]) -> int:
    """Weights and biases of a dense stack through `sizes` (inputs first, outputs last)."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def write_sweep(tmp_path: Path, parameters: str, method: str = "method: grid", limit: str = "") -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(f"data: {{dataset: xor}}\nmodel: {{hidden: [8]}}\ntraining: {{epochs: 1{limit}}}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: base.yaml\n{method}\nmetric: val_loss\nparameters:\n"
                     + textwrap.indent(textwrap.dedent(parameters), "  "))
    return sweep


def test_the_largest_trial_over_its_limit_is_one_line_naming_its_values(tmp_path):
    sweep = write_sweep(tmp_path, "model.hidden: [[8], [256, 256], [512, 512], [16]]\n",
                        limit=", memory_limit_gb: 0.001")
    res = runner.invoke(app, ["sweep", str(sweep), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert len(lines) == 1
    # the same sizing `train` gives that trial's spec on its own
    spec = tmp_path / "trial2.yaml"
    spec.write_text("data: {dataset: xor}\nmodel: {hidden: [512, 512]}\ntraining: {epochs: 1, memory_limit_gb: 0.001}\n")
    alone = runner.invoke(app, ["validate", str(spec)])
    assert alone.exit_code == 1
    sizing = alone.output.split("model: ", 1)[1].split("; make the model")[0]
    assert sizing.startswith(f"{dense_params([2, 512, 512, 2]):,} parameters need about ")
    assert lines[0] == (f"error: trial 2 (model.hidden=[512, 512]): model: {sizing}; 2 of 4 trials are over it; "
                        "make the model smaller or raise training.memory_limit_gb, or leave such values out of "
                        "the sweep")
    assert not (tmp_path / "runs").exists()


def test_workers_side_by_side_must_fit_the_memory_available(tmp_path, monkeypatch):
    import nnctl.training.memory as memory
    sweep = write_sweep(tmp_path, "model.hidden: [[8], [256, 256], [128, 128]]\n")
    spec = load_sweep(sweep)
    sized = size_trials(spec, sweep_trials_to_size(spec, build_trials(spec)), available=2**40)
    by_index = {s.index: s.bytes for s in sized}
    assert by_index[1] > by_index[2] > by_index[0]
    machine = by_index[1] + by_index[2] // 2          # the largest fits alone, not beside the next one
    monkeypatch.setattr(memory, "available_memory", lambda meminfo=None: machine)

    res = runner.invoke(app, ["sweep", str(sweep), "--workers", "3", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    assert res.output == (f"error: --workers 3: the 3 largest trials side by side need about "
                          f"{format_bytes(sum(by_index.values()))} to train (the largest, trial 1 "
                          f"(model.hidden=[256, 256]), {format_bytes(by_index[1])}), more than the "
                          f"{format_bytes(machine)} of memory available; use --workers 1 or make the models smaller\n")
    assert not (tmp_path / "runs").exists()
    res = runner.invoke(app, ["sweep", str(sweep), "--workers", "1", "--dry-run"])
    assert res.exit_code == 0, res.output
    # a Dask cluster's workers are not this machine's memory: only each trial alone is checked
    dask = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    del dask
    res = runner.invoke(app, ["sweep", str(sweep), "--workers", "3", "--executor", "dask", "--dry-run"])
    assert res.exit_code == 0, res.output


def test_a_model_based_space_is_sized_at_its_corners(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    sweep = write_sweep(tmp_path, """\
        model.hidden: [[64], [512, 512], [32]]
        training.batch_size: {distribution: int_uniform, min: 8, max: 64}
        optimizer.lr: {distribution: log_uniform, min: 1.0e-4, max: 1.0e-1}
        """, method="method: tpe\ntrials: 4", limit=", memory_limit_gb: 0.002")
    res = runner.invoke(app, ["sweep", str(sweep), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    line = res.output.splitlines()[0]
    # the worst corner: the widest model at the largest batch (lr does not change memory: first end)
    assert line.startswith("error: the tpe space's corner (model.hidden=[512, 512] training.batch_size=64 "
                           f"optimizer.lr=0.0001): model: {dense_params([2, 512, 512, 2]):,} parameters need about ")
    assert "; 4 of 12 corners are over it; " in line and len(res.output.splitlines()) == 1


def test_corners_are_every_choice_and_both_ends_then_a_seeded_sample():
    params = [Parameter("a", ("a",), "choice", values=[1, 2, 3]),
              Parameter("b", ("b",), "uniform", low=0.5, high=2.0),
              Parameter("c", ("c",), "int_uniform", low=4, high=4)]
    assert corners(params, 0) == [{"a": a, "b": b, "c": 4} for a in (1, 2, 3) for b in (0.5, 2.0)]
    many = [Parameter(f"p{i}", (f"p{i}",), "int_uniform", low=0, high=1) for i in range(10)]   # 1024 corners
    sample = corners(many, 3)
    assert len(sample) == MAX_CORNERS and sample == corners(many, 3) and sample != corners(many, 4)
    assert all(set(c.values()) <= {0, 1} for c in sample)


def test_a_resume_with_more_workers_is_sized_too_and_changes_nothing(tmp_path, monkeypatch):
    import hashlib

    import nnctl.training.memory as memory
    from nnctl.sweep.runner import SweepDir
    sweep = write_sweep(tmp_path, "model.hidden: [[8], [256, 256], [128, 128]]\n")
    spec = load_sweep(sweep)
    trials = build_trials(spec)
    sd = SweepDir.create(tmp_path / "runs", spec, trials)   # launched, no trial run yet: all three to run
    sized = {s.index: s.bytes for s in size_trials(spec, sweep_trials_to_size(spec, trials), available=2**40)}
    machine = sized[1] + sized[2] // 2
    monkeypatch.setattr(memory, "available_memory", lambda meminfo=None: machine)

    def digest() -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(sd.path.rglob("*")) if p.is_file())).hexdigest()

    before = digest()
    res = runner.invoke(app, ["sweep", "--resume", str(sd.path), "--workers", "2"])
    assert res.exit_code == 1
    assert res.output.startswith("error: --workers 2: the 2 largest trials side by side need about "
                                 f"{format_bytes(sized[1] + sized[2])} to train (the largest, trial 1 ")
    assert res.output.endswith("; use --workers 1 or make the models smaller\n")
    assert digest() == before
