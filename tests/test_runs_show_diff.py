"""`nnctl runs`, `show` and `diff`: listings that survive broken, running and crashed runs; exact diffs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.report.tables import sparkline

runner = CliRunner()

SPEC = """\
    name: {name}
    seed: 3
    data: {{dataset: iris, val_split: 0.2, test_split: 0.2}}
    model: {{hidden: [8]}}
    optimizer: {{name: adam, lr: {lr}}}
    training: {{epochs: {epochs}, batch_size: 16}}
    """


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(tmp: Path, runs: Path, name: str, lr: float, epochs: int) -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name=name, lr=lr, epochs=epochs)))
    before = set(runs.iterdir()) if runs.exists() else set()
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(runs), "--quiet"])
    assert res.exit_code == 0, res.output
    (run,) = set(runs.iterdir()) - before
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real runs and every kind of broken one, in one runs directory."""
    tmp = tmp_path_factory.mktemp("runs")
    root = tmp / "runs"
    out = {"fast": train(tmp, root, "fast", 0.05, 12), "slow": train(tmp, root, "slow", 0.01, 8)}

    def fake(name: str, files: dict[str, str], checkpoint: bool) -> Path:
        path = root / name
        (path / "checkpoints").mkdir(parents=True)
        for fname, text in files.items():
            (path / fname).write_text(text)
        if checkpoint:
            (path / "checkpoints" / "last.npz").write_bytes(b"PK")
        out[name] = path
        return path

    config = (out["fast"] / "config.yaml").read_text()
    history = json.dumps([{"epoch": 1, "lr": 0.1, "loss": 1.0, "accuracy": 0.5, "val_loss": 0.9,
                           "val_accuracy": 0.6, "seconds": 0.5},
                          {"epoch": 2, "lr": 0.1, "loss": 0.5, "accuracy": 0.7, "val_loss": 0.8,
                           "val_accuracy": 0.7, "seconds": 0.5}])
    fake("live-20250101-000001", {"config.yaml": config, "history.json": history,
                                  "status.json": json.dumps({"status": "running", "pid": os.getpid()})}, True)
    fake("dead-20250101-000002", {"config.yaml": config, "history.json": history,
                                  "status.json": json.dumps({"status": "running", "pid": dead_pid()})}, True)
    fake("corrupt-20250101-000003", {"config.yaml": config, "status.json": "{not json",
                                     "history.json": "[{"}, False)
    fake("nockpt-20250101-000004", {"config.yaml": config, "history.json": history,
                                    "status.json": json.dumps({"status": "completed"})}, False)
    (root / "notes").mkdir()          # not a run: no run files at all
    (root / ".hidden").mkdir()
    (root / ".hidden" / "status.json").write_text("{}")
    out["root"] = root
    return out


def runs_json(*args) -> list[dict]:
    res = invoke("runs", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# ---------------------------------------------------------------------------- runs

def test_runs_lists_every_run_and_describes_broken_ones(runs):
    listed = {r["name"]: r for r in runs_json(runs["root"])}
    fast, slow = runs["fast"].name, runs["slow"].name
    assert set(listed) == {fast, slow, "live-20250101-000001", "dead-20250101-000002",
                           "corrupt-20250101-000003", "nockpt-20250101-000004"}
    assert listed[fast]["status"] == "completed" and listed[fast]["problem"] is None
    assert listed["live-20250101-000001"]["status"] == "running"
    dead = listed["dead-20250101-000002"]
    assert dead["status"] == "crashed?" and dead["problem"].startswith("status is running but process")
    corrupt = listed["corrupt-20250101-000003"]
    assert corrupt["status"] == "broken"
    assert corrupt["problem"] == "no checkpoints; status.json is corrupt JSON; history.json is corrupt JSON"
    assert listed["nockpt-20250101-000004"]["status"] == "broken"
    assert listed["nockpt-20250101-000004"]["problem"] == "no checkpoints"
    # a run still going reports its best epoch so far, from the history
    assert listed["live-20250101-000001"]["best"] == {"monitor": "val_loss", "value": 0.8, "epoch": 2}
    assert listed["live-20250101-000001"]["seconds"] == 1.0


def test_runs_values_come_from_the_run_files(runs):
    listed = {r["name"]: r for r in runs_json(runs["root"])}
    for key in ("fast", "slow"):
        m = json.loads((runs[key] / "metrics.json").read_text())
        row = listed[runs[key].name]
        assert row["epochs"] == m["epochs"] and row["parameters"] == m["parameters"] == 8 * 4 + 8 + 9 * 3
        assert row["best"] == {"monitor": "val_loss", "value": m["best_value"], "epoch": m["best_epoch"]}
        assert row["test"] == m["test"]
        assert row["dataset"] == "iris" and row["task"] == "classification"


def test_runs_sorting(runs):
    by_acc = runs_json(runs["root"], "--sort", "test_accuracy")
    real = [runs["fast"].name, runs["slow"].name]
    accs = {r["name"]: r["test"]["test_accuracy"] for r in by_acc if r["name"] in real}
    assert [r["name"] for r in by_acc][:2] == sorted(real, key=lambda n: (-accs[n], n))
    # val_loss at each run's best epoch, lowest first; runs without one (broken) last
    expected = {runs[k].name: json.loads((runs[k] / "metrics.json").read_text())["best"]["val_loss"]
                for k in ("fast", "slow")}
    expected.update({"live-20250101-000001": 0.8, "dead-20250101-000002": 0.8, "nockpt-20250101-000004": 0.8})
    order = [r["name"] for r in runs_json(runs["root"], "--sort", "val_loss")]
    assert order == sorted(expected, key=lambda n: (expected[n], n)) + ["corrupt-20250101-000003"]
    names = [r["name"] for r in runs_json(runs["root"], "--sort", "name")]
    assert names == sorted(names)
    # default: by start time (from the folder name), oldest first
    started = [r["started"] for r in runs_json(runs["root"])]
    assert started == sorted(started)


def test_runs_table_and_errors(runs, tmp_path):
    res = invoke("runs", runs["root"], "--wide")  # every column, full names (the compact listing: test_first_hour)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    header = next(l for l in lines if l.lstrip().startswith("run "))
    for word in ("dataset", "status", "epochs", "best val_loss (epoch)", "test accuracy", "params", "time",
                 "started"):
        assert word in header
    row = next(l for l in lines if runs["fast"].name in l)
    m = json.loads((runs["fast"] / "metrics.json").read_text())
    assert "completed" in row and f"{m['test']['test_accuracy']:.4f}" in row and "iris" in row
    assert next(l for l in lines if l.startswith("nockpt-")).split()[1:3] == ["iris", "broken"]
    assert next(l for l in lines if l.startswith("dead-")).split()[1:3] == ["iris", "crashed?"]
    # why each one is broken, one footnote line per run under the table
    assert "nockpt-20250101-000004: no checkpoints" in lines
    assert any(l.startswith("dead-20250101-000002: status is running but process ") for l in lines)

    res = invoke("runs", runs["root"], "--sort", "bogus")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith("error: --sort: no run has a metric 'bogus'; use a column (name, started,")
    res = invoke("runs", tmp_path / "nowhere")
    assert (res.exit_code, res.stderr) == (1, f"error: {tmp_path / 'nowhere'}: no such runs directory\n")
    (tmp_path / "empty").mkdir()
    res = invoke("runs", tmp_path / "empty")
    assert (res.exit_code, res.stdout) == (0, f"no runs in {tmp_path / 'empty'}\n")


# ---------------------------------------------------------------------------- show

def test_show_prints_config_model_history_and_sparklines(runs):
    run = runs["fast"]
    res = invoke("show", run)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.splitlines()[0].split() == [run.name, "completed", str(run)]
    assert "optimizer: {name: adam, lr: 0.05" in out          # the stored YAML config
    for layer, shape, count in (("layers.0 dense", "(8,)", "40"), ("layers.1 dense", "(3,)", "27")):
        line = next(l for l in out.splitlines() if layer in l)
        assert shape in line and line.rstrip(" │").endswith(count)
    history = json.loads((run / "history.json").read_text())
    values = [r[k] for r in history for k in ("loss", "val_loss")]
    lo, hi = min(values), max(values)
    for key in ("loss", "val_loss"):
        expected = sparkline([r[key] for r in history], lo, hi, 60)
        line = next(l for l in out.splitlines() if l.startswith(f"{key} "))
        assert expected in line and len(expected) == 12 and set(expected) <= set("▁▂▃▄▅▆▇█")
    assert "█" in out and "▁" in out


def test_show_of_a_run_without_checkpoints_prints_what_it_can_then_fails(runs):
    run = runs["nockpt-20250101-000004"]
    res = invoke("show", run)
    assert res.exit_code == 1
    assert res.stderr == f"error: {run}: run directory has no checkpoints/best.npz\n"
    assert "broken (no checkpoints)" in res.stdout and "val_loss" in res.stdout


def test_show_of_something_that_is_not_a_run(runs, tmp_path):
    res = invoke("show", runs["root"] / "notes")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith(f"error: {runs['root'] / 'notes'}: not a run directory")
    res = invoke("show", tmp_path / "gone")
    assert res.stderr == f"error: {tmp_path / 'gone'}: no such run directory\n"


# ---------------------------------------------------------------------------- diff

def test_diff_lists_exactly_the_changed_keys_and_metric_deltas(runs):
    a, b = runs["fast"], runs["slow"]
    res = invoke("diff", a, b, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [(r["key"], r["a"], r["b"]) for r in d["config"]] == [("optimizer.lr", 0.05, 0.01),
                                                                  ("training.epochs", 12, 8)]
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    rows = {r["metric"]: r for r in d["metrics"]}
    assert rows["test_accuracy"]["a"] == ma["test"]["test_accuracy"]
    assert rows["test_accuracy"]["delta"] == mb["test"]["test_accuracy"] - ma["test"]["test_accuracy"]
    assert rows["epochs"] == {"metric": "epochs", "a": 12, "b": 8, "delta": -4}
    assert rows["best val_loss"]["b"] == mb["best_value"]
    ha = json.loads((a / "history.json").read_text())
    assert rows["final loss"]["a"] == ha[-1]["loss"]

    text = invoke("diff", a, b).stdout
    assert "optimizer.lr" in text and "training.epochs" in text and "B − A" in text
    lr_line = next(l for l in text.splitlines() if "optimizer.lr" in l)
    assert lr_line.replace("│", " ").split() == ["optimizer.lr", "0.05", "0.01"]


def test_diff_of_nested_and_missing_keys():
    from nnctl.runs.catalog import MISSING, config_diff
    a = {"name": "x", "model": {"layers": [{"type": "dense", "units": 8}, {"type": "relu"}]}, "seed": 0}
    b = {"name": "y", "model": {"layers": [{"type": "dense", "units": 16}, {"type": "relu"}]}, "seed": 0,
         "loss": "mse"}
    assert config_diff(a, b) == [("model.layers.0.units", 8, 16), ("loss", MISSING, "mse")]
    # a short form against a long form is one row, compared whole; 1 == 1.0 but true != 1
    c = {"model": {"hidden": [8], "dropout": 0}, "x": True}
    e = {"model": {"hidden": [8, 8], "dropout": 0.0}, "x": 1}
    assert config_diff(c, e) == [("model.hidden", [8], [8, 8]), ("x", True, 1)]


def test_diff_with_a_broken_run(runs):
    res = invoke("diff", runs["fast"], runs["corrupt-20250101-000003"])
    assert res.exit_code == 0, res.output
    assert "(broken)" in res.stdout


def test_runs_descends_into_sweep_trials(runs, tmp_path):
    import shutil
    root = tmp_path / "runs"
    trial = root / "my-sweep-20250101-000000" / "trials" / "0" / "my-sweep-0-20250101-000001"
    shutil.copytree(runs["fast"], trial)
    (root / "my-sweep-20250101-000000" / "sweep.json").write_text("{}")
    shutil.copytree(runs["slow"], root / runs["slow"].name)
    listed = sorted(r["name"] for r in runs_json(root))
    assert listed == sorted(["my-sweep-0-20250101-000001", runs["slow"].name])
