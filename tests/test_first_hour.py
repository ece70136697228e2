"""Issue 16, the rough edges of a new user's first hour: each test asserts the exact new behaviour."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app

runner = CliRunner()
ERROR = "loss is nan at epoch 1, step 3 (global step 3); try a lower optimizer.lr or clip_norm"


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A run that diverged (failed), a completed one, and listed-only runs with long names."""
    tmp = tmp_path_factory.mktemp("first")
    root = tmp / "runs"
    spec = write(tmp / "diverge.yaml", """\
        name: diverge
        data: {dataset: sine, val_split: 0.2, test_split: 0.2}
        model: {hidden: [16]}
        optimizer: {name: sgd, lr: 1000000.0}
        training: {epochs: 3, batch_size: 16}
        """)
    assert invoke("train", spec, "--runs-dir", root, "-q").exit_code == 1
    ok = write(tmp / "ok.yaml", """\
        name: iris-ok
        data: {dataset: iris, val_split: 0.2, test_split: 0.2}
        model: {hidden: [8]}
        training: {epochs: 2, batch_size: 16}
        """)
    assert invoke("train", ok, "--runs-dir", root, "-q").exit_code == 0
    for i in range(3):
        fake = root / f"an-experiment-with-a-really-long-descriptive-name-{i}-20250101-00000{i}"
        (fake / "checkpoints").mkdir(parents=True)
        (fake / "checkpoints" / "last.npz").write_bytes(b"")
        (fake / "config.yaml").write_text("data: {dataset: some-dataset-with-a-long-name.csv}\n")
        (fake / "status.json").write_text(json.dumps({"status": "stopped_early"}))
        (fake / "metrics.json").write_text(json.dumps(
            {"epochs": 40, "best_epoch": 31, "best_value": 0.123456, "monitor": "val_loss",
             "parameters": 1234567, "seconds": 3725.0, "test": {"test_accuracy": 0.987}}))
    return root


def failed_run(root: Path) -> Path:
    return next(p for p in root.iterdir() if p.name.startswith("diverge-"))


# -- item 1: a failed run says why ---------------------------------------------------------

def test_failed_reason_in_runs_json_and_show(runs):
    listed = {r["name"]: r for r in json.loads(invoke("runs", runs, "--json").stdout)}
    run = failed_run(runs)
    assert listed[run.name]["status"] == "failed"
    assert listed[run.name]["problem"] == ERROR
    assert json.loads((run / "status.json").read_text())["error"] == ERROR
    table = invoke("runs", runs).stdout
    assert f"diverge: {ERROR}" in table.splitlines()  # short name, one line (fits within 100)
    shown = invoke("show", run).stdout
    assert f"failed ({ERROR})" in " ".join(shown.split())


# -- item 2: runs fits 100 columns --------------------------------------------------------

def test_runs_fits_100_columns_and_wide_shows_all(runs):
    out = invoke("runs", runs).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = lines[0].split()
    assert header[:3] == ["run", "status", "epochs"] and "params" not in header
    assert any(line.startswith("an-experime…g-name-0 ") or line.startswith("an-experime") for line in lines)
    row = next(line for line in lines if line.startswith("an-experime"))
    assert "stopped_early" in row and "…" in row.split()[0] and len(row.split()[0]) == 24
    assert "not shown: params, dataset" in out
    wide = invoke("runs", runs, "--wide").stdout
    assert "an-experiment-with-a-really-long-descriptive-name-2-20250101-000002" in wide
    assert "1,234,567" in wide and "1h02m" in wide and "params" in wide.splitlines()[0]


def test_runs_table_fits_a_100_column_rich_console(runs):
    from rich.console import Console

    from nnctl.report.tables import runs_table
    from nnctl.runs.catalog import scan_runs
    console = Console(width=100, record=True, force_terminal=True)
    console.print(runs_table(scan_runs(runs), width=100))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = text.splitlines()[2:7]
    # statuses are never cut short (the issue saw `stopped…`, `complet…`): each run on one line
    assert sorted(row.split()[1] for row in rows) == ["completed", "failed", "stopped_early", "stopped_early",
                                                      "stopped_early"]


def test_runs_of_one_spec_in_the_same_minute_keep_their_stamps():
    """Without the stamp two `reg` runs started at 09:56 read alike; with a minute between them they do not."""
    from datetime import datetime
    from types import SimpleNamespace

    from rich.console import Console

    from nnctl.report.tables import runs_table

    def run(stamp, started):
        name = f"reg-{stamp}"
        return SimpleNamespace(name=name, short_name="reg", dataset="reg.csv", status="completed", epochs=4,
                               max_epochs=4, best=(4, 0.5), monitor="val_loss", test={"test_r2": 0.9},
                               main_metric="r2", parameters=10, seconds=1.0, started=started)
    runs = [run("20261206-095603", datetime(2026, 12, 6, 9, 56, 3)),
            run("20261206-095604", datetime(2026, 12, 6, 9, 56, 4)),
            run("20261206-101104", datetime(2026, 12, 6, 10, 11, 4))]
    console = Console(width=100, record=True, force_terminal=False)
    console.print(runs_table(runs, width=100))
    names = [line.split()[0] for line in console.export_text().splitlines()[2:5]]
    assert names == ["reg-20261206-095603", "reg-20261206-095604", "reg"]


# -- item 3: errors in one round, cause first ---------------------------------------------

def test_every_independent_error_at_once(tmp_path):
    spec = write(tmp_path / "bad.yaml", """\
        data:
          dataset: digits
          val_split: 0.1
          colour: red
        optimizer: {name: adamm, lr: 0.01}
        training:
          early_stopping: {monitor: val_acuracy}
        """)
    res = invoke("validate", spec)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: data.colour: unknown key 'colour'") and lines[0].endswith("(bad.yaml line 4)")
    assert lines[1].startswith("error: optimizer.name: unknown optimizer 'adamm'; did you mean 'adam'?")
    assert lines[2].startswith("error: training.early_stopping.monitor: unknown metric 'val_acuracy'; "
                               "did you mean 'val_accuracy'?")
    assert len(lines) == 3


def test_loss_contradicting_the_task_is_the_cause(tmp_path):
    spec = write(tmp_path / "clf.yaml", """\
        data: {dataset: iris, val_split: 0.2}
        training: {early_stopping: {monitor: val_accuracy}}
        """)
    res = invoke("validate", spec, "--set", "loss=mse")
    assert res.exit_code == 1
    assert res.stderr == "error: loss: mse needs a regression task, but the dataset iris is classification (--set loss)\n"
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    spec = write(tmp_path / "file.yaml", """\
        data: {dataset: d.csv, target: label, val_split: 0.2}
        training: {early_stopping: {monitor: val_accuracy}}
        """)
    res = invoke("validate", spec, "--set", "loss=mse")
    assert res.stderr == ("error: loss: mse needs a regression task, but training.early_stopping.monitor is "
                          "val_accuracy, a metric of the other task (--set loss)\n")


# -- item 6: completion ---------------------------------------------------------------------

def _complete(words: str, cwd: Path, monkeypatch) -> list[str]:
    """What bash completion offers for the last word of `words` (Typer's protocol, in process)."""
    monkeypatch.chdir(cwd)
    env = {"_NNCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    return runner.invoke(app, [], env=env, prog_name="nnctl").stdout.split()


def test_completion_script_and_values(runs, tmp_path, monkeypatch):
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = subprocess.run([sys.executable, "-m", "nnctl", "--show-completion", "bash"], env=env,
                            capture_output=True, text=True).stdout
    assert "_nnctl_completion()" in script and "complete -o default -F _nnctl_completion nnctl" in script
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "configs").mkdir()
    assert _complete("nnctl train ", tmp_path, monkeypatch) == ["a.yaml", "configs/"]
    assert _complete("nnctl validate a.yaml --set training.early_stopping.p", tmp_path, monkeypatch) == \
        ["training.early_stopping.patience="]
    run = failed_run(runs)
    assert _complete(f"nnctl show {runs}/dive", tmp_path, monkeypatch) == [str(run)]


def test_clicks_bash_source_spelling_prints_the_script_too():
    """`_NNCTL_COMPLETE=bash_source nnctl` (Click's documented form) answered "Shell source not supported"."""
    for value, marker in [("bash_source", "_nnctl_completion()"), ("zsh_source", "#compdef nnctl"),
                          ("source_bash", "_nnctl_completion()")]:
        env = {**os.environ, "_NNCTL_COMPLETE": value}
        res = subprocess.run([sys.executable, "-m", "nnctl"], env=env, capture_output=True, text=True)
        assert res.returncode == 0 and marker in res.stdout, (value, res.stdout, res.stderr)


# -- item 7: terminal output ----------------------------------------------------------------

def test_help_flags_take_no_value():
    out = invoke("train", "--help", env={"COLUMNS": "100"}).stdout
    quiet = next(line for line in out.splitlines() if "--quiet" in line)
    assert "<bool>" not in out and "-q" in quiet
    assert "<path>" in out  # options with a value still show it


def test_epoch_header_is_not_glued():
    from rich.console import Console

    from nnctl.report.progress import RichReporter
    console = Console(width=200, record=True)
    reporter = RichReporter(console)
    record = {"epoch": 1, "loss": 0.5, "accuracy": 0.75, "val_loss": 0.625, "val_accuracy": 0.5,
              "lr": 0.001, "seconds": 0.25}
    reporter.on_epoch_end(None, record, improved=False)  # events: callbacks take the TrainState first
    header = console.export_text().splitlines()[0]
    assert header.split() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def test_table_title_on_its_own_line():
    from rich.console import Console
    from rich.table import Table

    from nnctl.report.tables import titled
    table = Table(title="diabetes: /a/long/path/to/regression.csv, regression")
    table.add_column("x")
    console = Console(width=100, record=True)
    console.print(titled(table))
    assert console.export_text().splitlines()[0].strip() == "diabetes: /a/long/path/to/regression.csv, regression"


def test_show_marks_best_without_colour(runs):
    run = next(p for p in runs.iterdir() if p.name.startswith("iris-ok-"))
    out = invoke("show", run).stdout
    assert "best in green" not in out
    assert "* best epoch" in out and "│    2* │" in out  # 2 epochs, val_loss falls: the last is best


def test_eval_regression_shows_one_mse(tmp_path):
    spec = write(tmp_path / "sine.yaml", """\
        data: {dataset: sine, val_split: 0.2, test_split: 0.2}
        model: {hidden: [8]}
        training: {epochs: 1}
        """)
    assert invoke("train", spec, "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    out = invoke("eval", run).stdout
    names = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    # the target is standardized for training (issue 10): the loss is another number, named so
    assert names == ["loss", "mse", "rmse", "mae", "r2"]
    assert "loss (mse, standardized target)" in out
    res = json.loads(invoke("eval", run, "--json").stdout)
    scale = float(np.load(run / "checkpoints" / "best.npz")["target/scale"][0])
    assert res["loss_name"] == "mse" and res["mse"] == pytest.approx(res["loss"] * scale ** 2, rel=1e-5)
    # unscaled, the loss and the mse are one quantity: shown once
    assert invoke("train", spec, "--runs-dir", tmp_path / "raw", "-q", "--set",
                  "data.standardize_target=false").exit_code == 0
    (run,) = (tmp_path / "raw").iterdir()
    out = invoke("eval", run).stdout
    assert [line.split()[0] for line in out.splitlines()[1:] if line.strip()] == ["mse", "rmse", "mae", "r2"]
    res = json.loads(invoke("eval", run, "--json").stdout)
    assert res["loss_name"] == "mse" and res["mse"] == pytest.approx(res["loss"], rel=1e-5)


# -- item 9: startup ------------------------------------------------------------------------

HEAVY = ("numpy", "yaml", "optuna", "onnx", "onnxruntime", "mlflow", "tensorboardX", "PIL", "dask", "matplotlib")


def test_cli_import_and_help_import_nothing_heavy():
    code = ("import sys\nfrom nnctl.cli import app\n"
            "try:\n    app(['--help'], prog_name='nnctl')\nexcept SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == ""


# -- item 10: nnctl init ---------------------------------------------------------------------

def _animals(path: Path, n: int = 120) -> Path:
    rng = __import__("random").Random(0)
    lines = ["row_id,colour,size,weight,species"]
    for i in range(n):
        size, weight = rng.random() * 10, rng.gauss(5, 1)
        lines.append(f"{1000 + i},{rng.choice(['red', 'green', 'blue'])},{size:.3f},{weight:.3f},"
                     f"{'big' if size + weight > 10 else 'small'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_init_csv_string_target_and_categorical_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    _animals(tmp_path / "data" / "animals.csv")
    res = invoke("init", "data/animals.csv", "--target", "species")
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "target species (given with --target)" in out
    assert "task classification (text labels, 2 classes: big, small)" in out
    assert "left out row_id: id, numbered 1 by 1 like a row ID" in out
    assert "categorical colour: 3 categories, one-hot encoded (plus one for unknown)" in out
    assert "wrote animals.yaml; next: nnctl validate animals.yaml && nnctl train animals.yaml" in out
    text = (tmp_path / "animals.yaml").read_text()
    import yaml
    spec = yaml.safe_load(text)
    assert spec["data"] == {"dataset": "data/animals.csv", "target": "species", "ignore": ["row_id"],
                            "categorical": ["colour"], "task": "classification", "val_split": 0.2, "test_split": 0.2,
                            "standardize": True}
    assert spec["model"]["hidden"] == [16] and spec["loss"] == "cross_entropy"
    assert spec["training"]["early_stopping"] == {"monitor": "val_loss", "patience": 10, "restore_best": True}
    # every key line carries a comment saying what it means
    keys = [line for line in text.splitlines() if not line.lstrip().startswith("#") and ":" in line
            and not line.rstrip().endswith(":")]
    assert keys and all("  # " in line for line in keys)
    res = invoke("validate", "animals.yaml")
    # size, weight and colour one-hot (3 categories + unknown): the 6 inputs init sized the model for
    assert res.exit_code == 0 and "input (6,), 2 outputs" in res.stdout, res.output
    res = invoke("train", "animals.yaml", "--set", "training.epochs=1", "--runs-dir", "runs", "-q")
    assert res.exit_code == 0 and res.stdout.startswith("completed: 1 epochs"), res.output
    again = invoke("init", "data/animals.csv", "--target", "species")
    assert again.exit_code == 1
    assert again.stderr == "error: animals.yaml: exists; choose another name with --out or overwrite it with --force\n"


def test_init_on_a_csv_with_missing_cells_imputes_them_instead_of_dropping_columns(tmp_path, monkeypatch):
    """Missing cells (empty, NA) are not text: the column stays a feature, NA is no category."""
    import yaml
    monkeypatch.chdir(tmp_path)
    lines = _animals(tmp_path / "full.csv").read_text().splitlines()
    cells = [line.split(",") for line in lines]
    cells[2][3] = ""        # weight: a number column with an empty cell
    cells[3][1] = "NA"      # colour: a text column with NA
    cells[4][3] = "nan"
    cells[5][4] = ""        # the target
    (tmp_path / "holes.csv").write_text("\n".join(",".join(c) for c in cells) + "\n")
    res = invoke("init", "holes.csv", "--target", "species")
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "categorical colour: 3 categories, one-hot encoded (plus one for unknown)" in out
    assert ("missing impute: missing cells (colour 1, weight 2) get the training split's mean or most "
            "frequent value; 1 row without a target is dropped") in out
    spec = yaml.safe_load((tmp_path / "holes.yaml").read_text())
    assert spec["data"]["missing"] == "impute" and spec["data"]["ignore"] == ["row_id"]
    res = invoke("validate", "holes.yaml")
    assert res.exit_code == 0 and "input (6,), 2 outputs" in res.stdout, res.output
    assert "missing values: impute; rows dropped: 1 for a missing target\n" in res.stdout
    res = invoke("train", "holes.yaml", "--set", "training.epochs=1", "--runs-dir", "runs", "-q")
    assert res.exit_code == 0 and res.stdout.startswith("completed: 1 epochs"), res.output


def test_init_names_the_file_row_of_a_partly_numeric_column_past_missing_cells(tmp_path):
    """The bad cell is found among all the column's cells: a missing one before it must not shift the row."""
    from nnctl.config.starter import profile_data
    lines = ["a,b,c,label"] + [f"{i % 7},{'NA' if i == 3 else 'oops' if i == 7 else i % 10},{i / 40:.3f},{'xy'[i % 2]}"
                               for i in range(40)]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    p = profile_data(tmp_path / "p.csv", "label")
    assert p.features == ["a", "c"]
    assert [(c.name, c.kind, c.why) for c in p.left_out] == [
        ("b", "text", "partly numeric (row 9: 'oops'); fix it to use the column")]   # header is line 1, i=7 line 9


def test_init_npy_finds_its_targets_and_npz(tmp_path, monkeypatch):
    import numpy as np
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2, 3, 3)).astype(np.float32)
    np.save("x.npy", x)
    assert invoke("init", "x.npy").stderr.startswith("error: x.npy: a .npy file holds features only; give the "
                                                     "targets file with --target FILE.npy (looked for y.npy,")
    np.save("y.npy", rng.normal(size=60))
    res = invoke("init", "x.npy")
    assert res.exit_code == 0, res.output
    spec = __import__("yaml").safe_load(Path("x.yaml").read_text())
    assert spec["data"]["target_path"] == "y.npy" and spec["data"]["task"] == "regression"
    assert spec["model"]["layers"] == ["flatten", {"dense": {"units": 64, "activation": "relu"}}]
    assert spec["loss"] == "mse"
    assert invoke("validate", "x.yaml").exit_code == 0
    np.savez("d.npz", x=rng.normal(size=(40, 5)), y=np.arange(40) % 4)
    assert invoke("init", "d.npz", "-o", "spec.yml").exit_code == 0
    spec = __import__("yaml").safe_load(Path("spec.yml").read_text())
    assert spec["data"]["task"] == "classification" and spec["model"]["hidden"] == [16]
    assert invoke("validate", "spec.yml").exit_code == 0


def test_startup_benchmark_script():
    script = Path(__file__).resolve().parent.parent / "nnctl" / "bench" / "startup.py"
    out = subprocess.run([sys.executable, str(script), "--runs", "1", "--top", "3"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("import nnctl.cli: ") and lines[0].endswith(" modules")
    assert lines[1].split()[-1] == "nnctl.cli"  # the largest cumulative time is the module itself
    assert "heavy modules imported: none" in lines
    assert lines[-1].startswith("nnctl --help: best ") and "over 1 runs" in lines[-1]
