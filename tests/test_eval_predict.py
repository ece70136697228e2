"""`nnctl eval` and `nnctl predict` end to end: exact agreement with training, round trips, bad inputs."""
from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.commands.predict import csv_parser
from nnctl.data import DATASETS
from nnctl.engine.base import LAYERS
from nnctl.hparams import unknown_name_message

ROOT = Path(__file__).resolve().parent.parent
IRIS_CSV = ROOT / "datasets" / "iris.csv"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
runner = CliRunner()

# eval_batch_size 7 cuts the 30 test rows into uneven batches: eval must use the same ones
IRIS = """\
    name: iris-eval
    seed: 1
    data: {dataset: iris, val_split: 0.2, test_split: 0.2}
    model: {hidden: [16]}
    optimizer: {name: adam, lr: 0.02}
    training: {epochs: 25, batch_size: 16, eval_batch_size: 7}
    """
# restore_best off: the test metrics are those of the last epoch's weights (last.npz)
IRIS_LAST = """\
    name: iris-last
    seed: 1
    data: {dataset: iris, val_split: 0.2, test_split: 0.2}
    model: {hidden: [16]}
    optimizer: {name: adam, lr: 0.05}
    training:
      epochs: 30
      batch_size: 8
      early_stopping: {monitor: val_loss, patience: 100, restore_best: false}
    """
SINE = """\
    name: sine-eval
    data: {dataset: sine, options: {n_samples: 200}}
    model: {hidden: [16], activation: tanh}
    loss: mse
    optimizer: {name: adam, lr: 0.02}
    training: {epochs: 10, batch_size: 32, eval_batch_size: 9}
    """
# six classes, so top-3 and top-5 accuracy are reported
BLOBS = """\
    name: blobs6
    data: {dataset: blobs, options: {n_samples: 240, centers: 6, cluster_std: 4.0}}
    model: {hidden: [8]}
    training: {epochs: 3, batch_size: 32}
    """


def train(tmp: Path, text: str) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(textwrap.dedent(text))
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp / "runs").iterdir()
    return run


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("iris"), IRIS)


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sine"), SINE)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def eval_json(*args: str) -> dict:
    res = invoke("eval", *args, "--json")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    return json.loads(res.stdout)  # the whole of stdout is one JSON object


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------------------- eval

def test_eval_reproduces_training_test_metrics_exactly(iris_run):
    test = metrics_of(iris_run)["test"]
    res = eval_json(iris_run)
    assert res["loss"] == test["test_loss"]
    assert res["accuracy"] == test["test_accuracy"]
    assert res["n"] == 30 and res["split"] == "test"
    assert res["checkpoint"] == str(iris_run / "checkpoints" / "best.npz")


def test_eval_val_split_reproduces_the_best_epochs_validation_metrics(iris_run):
    best = metrics_of(iris_run)["best"]
    res = eval_json(iris_run, "--split", "val")
    assert res["epoch"] == best["epoch"]
    assert res["loss"] == best["val_loss"]
    assert res["accuracy"] == best["val_accuracy"]


def test_eval_of_a_run_without_restore_best_uses_last_weights(tmp_path):
    run = train(tmp_path, IRIS_LAST)
    m = metrics_of(run)
    assert m["weights"] == "last" and m["best_epoch"] != m["epochs"]  # else this test proves nothing
    res = eval_json(run)
    assert res["checkpoint"] == str(run / "checkpoints" / "last.npz")
    assert res["epoch"] == m["epochs"]
    assert (res["loss"], res["accuracy"]) == (m["test"]["test_loss"], m["test"]["test_accuracy"])
    best = eval_json(run / "checkpoints" / "best.npz")
    assert best["epoch"] == m["best_epoch"] and best["loss"] != res["loss"]


def test_eval_regression_reproduces_training_and_reports_errors(sine_run):
    test = metrics_of(sine_run)["test"]
    res = eval_json(sine_run)
    assert res["task"] == "regression"
    assert res["loss"] == test["test_loss"]
    assert res["mae"] == test["test_mae"]
    assert res["r2"] == test["test_r2"]
    # the mse loss is the mean squared error of the standardized target (in float32); mse is in
    # the target's own units: the loss times the target's variance; RMSE its root
    with np.load(sine_run / "checkpoints" / "best.npz") as ckpt:
        scale = float(ckpt["target/scale"][0])
    assert scale != pytest.approx(1.0)
    assert res["mse"] == pytest.approx(res["loss"] * scale ** 2, rel=1e-5)
    assert res["rmse"] == pytest.approx(math.sqrt(res["mse"]), rel=1e-12)
    assert res["outputs"] == ["y"]


def test_eval_report_is_consistent(iris_run):
    res = eval_json(iris_run)
    cm = np.array(res["confusion_matrix"])
    assert res["classes"] == ["setosa", "versicolor", "virginica"]
    assert [c["label"] for c in res["per_class"]] == res["classes"]
    assert [c["support"] for c in res["per_class"]] == cm.sum(axis=1).tolist()
    assert cm.sum() == res["n"]
    assert res["accuracy"] == np.trace(cm) / cm.sum()
    for c, row in enumerate(res["per_class"]):
        assert row["precision"] == pytest.approx(cm[c, c] / cm[:, c].sum() if cm[:, c].sum() else 0.0)
        assert row["recall"] == pytest.approx(cm[c, c] / cm[c].sum())
    assert res["macro_avg"]["f1"] == pytest.approx(np.mean([c["f1"] for c in res["per_class"]]))
    assert not any(k.startswith("top_") for k in res)  # 3 classes: top-3 would always be 1


def test_eval_human_output_shows_labelled_confusion_matrix(iris_run):
    res = invoke("eval", iris_run)
    assert res.exit_code == 0, res.output
    cm = eval_json(iris_run)["confusion_matrix"]
    out = res.stdout
    assert "confusion matrix (rows: true, columns: predicted)" in out
    assert "macro avg" in out and "weighted avg" in out
    matrix = out.split("confusion matrix (rows: true, columns: predicted)")[1].splitlines()
    header = next(l for l in matrix if "true \\ pred" in l)
    assert header.replace("┃", " ").split()[3:] == ["setosa", "versicolor", "virginica"]
    for label, row in zip(["setosa", "versicolor", "virginica"], cm):
        line = next(l for l in matrix if l.strip("│ ").startswith(label))
        assert [int(t) for t in line.replace("│", " ").split()[1:]] == row


def test_eval_data_file_equals_builtin_dataset(iris_run):
    from_file = eval_json(iris_run, "--data", IRIS_CSV)
    from_name = eval_json(iris_run, "--data", "iris")
    assert from_file["n"] == from_name["n"] == 150
    assert from_file["loss"] == from_name["loss"]
    assert from_file["confusion_matrix"] == from_name["confusion_matrix"]
    assert from_name["data"] == "all of iris (built-in)"


def test_eval_top_k_matches_probabilities_from_predict(tmp_path):
    run = train(tmp_path, BLOBS)
    res = eval_json(run, "--data", "blobs")
    assert res["n"] == 240
    # the same rows, through predict --proba, ranked independently with argsort
    from nnctl.data import load_dataset
    ds = load_dataset({"dataset": "blobs", "options": {"n_samples": 240, "centers": 6, "cluster_std": 4.0},
                       "val_split": 0, "test_split": 0}, 0, tmp_path)
    np.save(tmp_path / "x.npy", ds.train.x)
    out = invoke("predict", run, tmp_path / "x.npy", "--proba")
    assert out.exit_code == 0, out.output
    rows = read_csv(out.stdout)
    p = np.array([[float(r[f"p_{c}"]) for c in range(6)] for r in rows])
    order = np.argsort(-p, axis=1)
    y = ds.train.y
    for k in (3, 5):
        expected = np.mean([y[i] in order[i, :k] for i in range(len(y))])
        assert res[f"top_{k}_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert res["accuracy"] <= res["top_3_accuracy"] <= res["top_5_accuracy"] <= 1.0
    assert res["top_3_accuracy"] < 1.0  # noisy clusters: the check above is not vacuous


# ---------------------------------------------------------------------------- predict

def test_predict_labels_round_trip_and_match_eval(iris_run, tmp_path):
    out = tmp_path / "pred.csv"
    res = invoke("predict", iris_run, IRIS_CSV, "--out", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"wrote 150 predictions to {out}; CSV parsed by {csv_parser(IRIS_CSV)}"
    pred = [r["species"] for r in read_csv(out.read_text())]
    truth = [r["species"] for r in read_csv(IRIS_CSV.read_text())]
    labels = ["setosa", "versicolor", "virginica"]
    assert set(pred) <= set(labels)
    cm = [[sum(1 for t, p in zip(truth, pred) if (t, p) == (a, b)) for b in labels] for a in labels]
    assert cm == eval_json(iris_run, "--data", IRIS_CSV)["confusion_matrix"]


def test_predict_proba_columns_sum_to_one_and_agree_with_labels(iris_run):
    res = invoke("predict", iris_run, IRIS_CSV, "--proba")
    assert res.exit_code == 0, res.output
    rows = read_csv(res.stdout)
    assert list(rows[0]) == ["species", "p_setosa", "p_versicolor", "p_virginica"]
    labels = ["setosa", "versicolor", "virginica"]
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in labels]
        assert sum(p) == pytest.approx(1.0, abs=1e-6)
        assert labels[int(np.argmax(p))] == r["species"]


def test_predict_stdout_file_npy_reordered_and_chunked_inputs_agree(iris_run, tmp_path, monkeypatch):
    base = invoke("predict", iris_run, IRIS_CSV, "--proba").stdout
    out = tmp_path / "p.csv"
    assert invoke("predict", iris_run, IRIS_CSV, "--proba", "-o", out).exit_code == 0
    assert out.read_text() == base

    # columns in another order, an id column, no target: the same predictions
    table = read_csv(IRIS_CSV.read_text())
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *reversed(FEATURES)])
        w.writerows([f"r{i}", *(r[c] for c in reversed(FEATURES))] for i, r in enumerate(table))
    assert invoke("predict", iris_run, shuffled, "--proba").stdout == base

    x = np.array([[float(r[c]) for c in FEATURES] for r in table])
    np.save(tmp_path / "x.npy", x)
    assert invoke("predict", iris_run, tmp_path / "x.npy", "--proba").stdout == base

    # small chunks and batches: chunk boundaries must not change anything
    import nnctl.commands.predict as predict_mod
    monkeypatch.setattr(predict_mod, "CHUNK_ROWS", 7)
    assert invoke("predict", iris_run, IRIS_CSV, "--proba", "--batch-size", "5").stdout == base


def test_predict_batches_count_from_the_first_row_whatever_the_blocks(iris_run, tmp_path, monkeypatch):
    """Batches of --batch-size rows from row 0, across parse blocks: a product's last bits may depend
    on its row count, so batches cut at block ends made --proba depend on the block size."""
    import nnctl.commands.predict as predict_mod
    from nnctl.data import files
    table = read_csv(IRIS_CSV.read_text())
    ids = tmp_path / "ids.csv"
    with open(ids, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *FEATURES])
        w.writerows([f"r{i}", *(r[c] for c in FEATURES)] for i, r in enumerate(table))
    whole = invoke("predict", iris_run, ids, "--proba", "--keep", "id", "--batch-size", "8").stdout
    sizes = []
    real = predict_mod.predict_rows

    def predict_rows(lm, x, batch_size, proba):
        sizes.append(len(x))
        return real(lm, x, batch_size, proba)
    monkeypatch.setattr(predict_mod, "predict_rows", predict_rows)
    monkeypatch.setattr(files, "BLOCK_BYTES", 150)   # blocks of 3-5 rows, never a multiple of 8 for long
    res = invoke("predict", iris_run, ids, "--proba", "--keep", "id", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    assert res.stdout == whole
    assert sum(sizes) == 150 and len(sizes) > 10
    assert all(n % 8 == 0 for n in sizes[:-1]) and sizes[-1] == 150 % 8
    assert [r["id"] for r in read_csv(res.stdout)] == [f"r{i}" for i in range(150)]


def test_predict_regression_values_match_eval_mse(sine_run, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, (40, 1))
    y = np.sin(x)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    res = invoke("predict", sine_run, tmp_path / "xy.npz")
    assert res.exit_code == 0, res.output
    rows = read_csv(res.stdout)
    assert list(rows[0]) == ["y"]
    pred = np.array([float(r["y"]) for r in rows])
    ev = eval_json(sine_run, "--data", tmp_path / "xy.npz")
    assert ev["n"] == 40
    assert ev["mse"] == pytest.approx(np.mean((pred - y[:, 0]) ** 2), rel=1e-6)
    assert ev["mae"] == pytest.approx(np.mean(np.abs(pred - y[:, 0])), rel=1e-6)


# ---------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad(iris_run, tmp_path_factory) -> Path:
    """Damaged variants of iris_run's best.npz."""
    d = tmp_path_factory.mktemp("bad")
    best = iris_run / "checkpoints" / "best.npz"
    raw = best.read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(2000))
    with np.load(best) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())

    def save(name, **changes):
        out = dict(arrays)
        for k, v in changes.items():
            if v is None:
                del out[k]
            else:
                out[k] = v
        np.savez(d / name, **out)

    save("pickled.npz", **{"model/evil": np.array([{"run": "code"}], dtype=object)})
    save("newer.npz", __meta__=np.frombuffer(json.dumps({**meta, "format_version": 99}).encode(), np.uint8))
    save("misshaped.npz", **{"model/layers.0.W": arrays["model/layers.0.W"][:, :8]})
    save("missing_key.npz", **{"model/layers.1.b": None})
    layers = json.loads(json.dumps(meta["model"]["layers"]))
    layers[0]["type"] = "bogus"
    save("bad_layer.npz", __meta__=np.frombuffer(
        json.dumps({**meta, "model": {**meta["model"], "layers": layers}}).encode(), np.uint8))
    np.save(d / "x5.npy", np.zeros((3, 5)))
    np.save(d / "x4.npy", np.ones((3, 4)))
    (d / "missing_col.csv").write_text("sepal_length,sepal_width,petal_length\n1,2,3\n")
    (d / "unknown_col.csv").write_text("sepal_length,sepal_width,petal_length,petal_width,height\n1,2,3,4,5\n")
    (d / "no_target.csv").write_text("sepal_length,sepal_width,petal_length,petal_width\n1,2,3,4\n")
    (d / "bad_cell.csv").write_text("sepal_length,sepal_width,petal_length,petal_width\n1,2,3,4\n1,x,3,4\n")
    (d / "unseen.csv").write_text("sepal_length,sepal_width,petal_length,petal_width,species\n1,2,3,4,rose\n")
    empty = d / "run-without-checkpoints"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "status.json").write_text('{"status": "completed"}')
    return d


def expect_error(args, message: str):
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    assert res.stderr == f"error: {message}\n"


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_broken_checkpoints_fail_with_one_line(bad, command, tmp_path):
    extra = [IRIS_CSV] if command == "predict" else []
    cases = {
        "random.npz": "not an .npz checkpoint (no zip header)",
        "pickled.npz": "contains pickled object arrays, which nnctl never loads",
        "newer.npz": "checkpoint format version 99 is newer than this nnctl supports (1); upgrade nnctl",
        "misshaped.npz": "weights do not fit the model in its metadata: state dict 'layers.0.W' has shape "
                         "(4, 8), the model expects (4, 16)",
        "missing_key.npz": "weights do not fit the model in its metadata: state dict is missing key "
                           "'layers.1.b' (model shape (3,))",
        "bad_layer.npz": "cannot rebuild the model from its metadata: "
                         + unknown_name_message("layer", "bogus", LAYERS.names()) + "\n",
    }
    for name, why in cases.items():
        if name == "bad_layer.npz":  # the list of valid layers grows with the engine
            res = invoke(command, bad / name, *extra)
            assert res.exit_code == 1 and res.stdout == "" and res.stderr.count("\n") == 1
            assert res.stderr == f"error: {bad / name}: {why}"
            continue
        expect_error([command, bad / name, *extra], f"{bad / name}: {why}")
    res = invoke(command, bad / "truncated.npz", *extra)
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith(f"error: {bad / 'truncated.npz'}: truncated or corrupt checkpoint (")
    assert res.stderr.count("\n") == 1
    expect_error([command, tmp_path / "nope", *extra], f"{tmp_path / 'nope'}: no such checkpoint or run directory")
    run = bad / "run-without-checkpoints"
    expect_error([command, run, *extra], f"{run}: run directory has no checkpoints/best.npz")


def test_inputs_that_do_not_fit_the_model(iris_run, bad, tmp_path):
    expect_error(["predict", iris_run, bad / "x5.npy"],
                 "x5.npy: each sample has 5 values (shape [5]), the model expects 4 (input shape [4])")
    expect_error(["eval", iris_run, "--data", bad / "x5.npy"],
                 "x5.npy: each sample has 5 values (shape [5]), the model expects 4 (input shape [4])")
    expect_error(["predict", iris_run, bad / "missing_col.csv"],
                 "missing_col.csv: missing feature column 'petal_width'")
    # a column the model does not use is ignored, with one note (issue 10)
    res = invoke("predict", iris_run, bad / "unknown_col.csv")
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "species", res.output
    assert res.stderr == "note: unknown_col.csv: ignored columns the model does not use: height\n"
    expect_error(["eval", iris_run, "--data", bad / "no_target.csv"],
                 "no_target.csv: no target column 'species' to evaluate against (nnctl predict needs none)")
    expect_error(["eval", iris_run, "--data", bad / "x4.npy"],
                 "x4.npy: a .npy file holds features only; to evaluate, give an .npz with 'x' and 'y' "
                 "or a CSV with the target column")
    out = tmp_path / "never.csv"
    expect_error(["predict", iris_run, bad / "bad_cell.csv", "--out", out],
                 "bad_cell.csv row 3, column 'sepal_width': not a number: 'x' (the column's other cells are "
                 "numbers; list it in data.categorical to use it as categories)")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no file, no temp file left
    res = invoke("eval", iris_run, "--data", bad / "unseen.csv")
    assert res.exit_code == 1 and res.stdout == ""
    assert "label 'rose' is not one of the 3 training classes: setosa, versicolor, virginica" in res.stderr
    expect_error(["eval", iris_run, "--data", "irs"],
                 "--data: unknown dataset 'irs'; did you mean 'iris'? valid: " + ", ".join(DATASETS.names())
                 + " (or give a .csv, .npy or .npz file)")
    expect_error(["eval", iris_run, "--data", "iris", "--split", "val"],
                 "--split picks one of the run's own splits; it cannot be combined with --data")


def test_proba_needs_a_classifier(sine_run, bad):
    expect_error(["predict", sine_run, bad / "x4.npy", "--proba"],
                 f"--proba needs a classification model; {sine_run / 'checkpoints' / 'best.npz'} is regression")
