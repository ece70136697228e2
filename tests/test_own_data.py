"""Your own data, never silently wrong: explicit targets, task sanity, shapes, categorical and
missing values, target scaling, balanced class weights, predict --keep, values checked in float32.

Every failing case asserts the exact one-line message, exit code 1 and that the runs folder is
byte-for-byte what it was (nothing written); every passing case asserts values.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.spec import load_spec
from nnctl.data import load_dataset
from nnctl.errors import DataError
from nnctl.runs.checkpoint import load_checkpoint
from nnctl.training.experiment import prepare

runner = CliRunner()
COLORS = ["red", "green", "blue"]


def folder_hash(path: Path) -> str:
    """Names and contents of everything under `path` ("" if it does not exist)."""
    h = hashlib.sha256()
    if path.exists():
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def spec_file(tmp_path: Path, data: str, extra: str = "", name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""\
        name: own
        seed: 0
        data: {data}
        model: {{hidden: [16], activation: relu}}
        optimizer: {{name: adam, lr: 0.02}}
        training: {{epochs: 8, batch_size: 32}}
        """) + extra)
    return path


def churn_csv(path: Path, n: int = 240, seed: int = 0, missing: bool = False) -> Path:
    """customer_id (an ID), age (number), color (text), plan (integer code), churned (yes/no).

    churned depends on color and age only, so a model that reads the categories can learn it.
    missing: blank some age and color cells, and two targets.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        color = COLORS[int(rng.integers(3))]
        age = float(rng.uniform(18, 80))
        churn = (color == "red") != (age > 50)
        rows.append([f"c{i:04d}", f"{age:.1f}", color, str(int(rng.integers(1, 4))), "yes" if churn else "no"])
    if missing:
        rows[3][1] = ""
        rows[7][2] = "NA"
        rows[11][1] = "NaN"
        rows[20][4] = ""
        rows[21][4] = "na"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["customer_id", "age", "color", "plan", "churned"])
    w.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def fails(tmp_path: Path, args: list[str], message: str) -> None:
    """The command exits 1 with exactly `message` as its one line, and writes nothing."""
    runs = tmp_path / "runs"
    before = folder_hash(runs)
    res = runner.invoke(app, [*args, "--runs-dir", str(runs)] if args[0] == "train" else args)
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines() == [f"error: {message}"], res.output
    assert folder_hash(runs) == before


# ---------------------------------------------------------------------------- 1. explicit target

def test_a_csv_without_target_is_an_error_listing_the_columns(tmp_path):
    churn_csv(tmp_path / "d.csv")
    spec = spec_file(tmp_path, "{dataset: d.csv, ignore: [customer_id]}")
    msg = ("d.csv: data.target is required for a CSV file (the column to predict); "
           "columns are: customer_id, age, color, plan, churned")
    fails(tmp_path, ["train", str(spec)], msg)
    fails(tmp_path, ["validate", str(spec)], msg)


def test_validate_config_and_train_header_name_the_target_and_task(tmp_path):
    churn_csv(tmp_path / "d.csv", missing=True)
    spec = spec_file(tmp_path, "{dataset: d.csv, target: churned, ignore: [customer_id], missing: impute, "
                               "categorical: [color, plan]}")
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "target 'churned' (classification, 2 classes: no, yes)" in lines
    assert ("features: 1 numeric (age); 2 categorical (color (3), plan (3); one-hot + unknown); "
            "ignored: customer_id") in lines
    assert "missing values: impute; rows dropped: 2 for a missing target" in lines
    res = runner.invoke(app, ["config", str(spec)])
    assert res.exit_code == 0, res.output
    import yaml
    data = yaml.safe_load(res.output)["data"]
    assert data["target"] == "churned" and data["task"] == "classification"
    # a built-in prints its own target, never null, and that config validates again
    res = runner.invoke(app, ["config", str(Path(__file__).parents[1] / "configs" / "iris.yaml")])
    assert yaml.safe_load(res.output)["data"]["target"] == "species"
    (tmp_path / "iris.yaml").write_text(res.output)
    assert runner.invoke(app, ["validate", str(tmp_path / "iris.yaml")]).exit_code == 0
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs"),
                              "--set", "training.epochs=1"])
    assert res.exit_code == 0, res.output
    assert "target 'churned' (classification, 2 classes: no, yes)" in res.output


# ---------------------------------------------------------------------------- 2. task sanity

def test_task_sanity(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=214)
    (tmp_path / "r.csv").write_text("x,y\n" + "".join(f"{a:.6f},{150 + 3 * a:.6f}\n" for a in x))
    spec = spec_file(tmp_path, "{dataset: r.csv, target: y}")
    fails(tmp_path, ["train", str(spec), "--set", "data.task=classification", "--set", "data.val_split=0",
                     "--set", "data.test_split=0"],
          "r.csv: data.task is classification, but target 'y' holds 214 distinct values that are not all whole "
          "numbers; is this a regression target? (set data.task: regression)")
    (tmp_path / "s.csv").write_text("x,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    spec = spec_file(tmp_path, "{dataset: s.csv, target: y, task: regression}", name="s.yaml")
    fails(tmp_path, ["train", str(spec)], "s.csv row 2, column 'y': not a number: 'a' (a regression target must "
                                          "be numeric; set data.task: classification for labels)")
    # one class in the training split (the other only in a separate validation file)
    (tmp_path / "one.csv").write_text("x,y\n" + "".join(f"{i},yes\n" for i in range(20)))
    (tmp_path / "val.csv").write_text("x,y\n1,no\n2,yes\n")
    spec = spec_file(tmp_path, "{dataset: one.csv, target: y, val_path: val.csv, test_split: 0}", name="o.yaml")
    fails(tmp_path, ["train", str(spec)], "one.csv: the training split has a single class ('yes') in target 'y'; "
                                          "classification needs at least two")


# ---------------------------------------------------------------------------- 3. shapes

def test_a_dense_stack_on_rank_3_input_fails_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.random((60, 8, 8)), y=rng.integers(0, 10, 60))
    spec = spec_file(tmp_path, "{dataset: img.npz}")
    msg = ("model: the model's output per sample is [8, 10], the loss needs [10]; a dense layer acts on the last "
           "axis of each [8, 8] sample: add {type: flatten} before the dense layers, or set data.shape "
           "(spec.yaml line 4)")
    fails(tmp_path, ["train", str(spec)], msg)
    fails(tmp_path, ["validate", str(spec)], msg)
    # data.shape [64] fixes it
    res = runner.invoke(app, ["validate", str(spec), "--set", "data.shape=[64]"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------- 4./5. categories, missing

def test_categorical_id_column_and_missing_values_train_and_predict(tmp_path):
    churn_csv(tmp_path / "d.csv", n=300, missing=True)
    spec = spec_file(tmp_path, "{dataset: d.csv, target: churned, ignore: [customer_id], missing: impute}",
                     extra="")
    runs = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(runs), "--quiet",
                              "--set", "training.epochs=60", "--set", "model.hidden=[32]"])
    assert res.exit_code == 0, res.output
    run = next(runs.iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    # churned = (color == red) XOR (age > 50): only learnable from the one-hot color
    assert metrics["test"]["test_accuracy"] >= 0.9
    ckpt = load_checkpoint(run / "checkpoints" / "best.npz")
    table = ckpt.meta["preprocess"]["table"]
    exp = prepare(load_spec(spec, []))
    train_rows = exp.dataset.train.rows()
    assert table["missing"] == "impute"
    by_name = {c["name"]: c for c in table["columns"]}
    assert by_name["color"]["categories"] == ["blue", "green", "red"]
    # the impute statistics are the training split's (rows 3 and 11 miss their age)
    ages = np.array([float(r["age"]) if r["age"] not in ("", "NaN") else np.nan
                     for r in csv.DictReader((tmp_path / "d.csv").open())])
    kept = np.array([r["churned"] not in ("", "na") for r in csv.DictReader((tmp_path / "d.csv").open())])
    ages = ages[kept][train_rows]
    assert by_name["age"]["fill"] == pytest.approx(np.nanmean(ages))
    assert ckpt.meta["feature_names"] == ["age", "color=blue", "color=green", "color=red", "color=<unknown>",
                                          "plan"]
    # one-hot columns are not standardized
    assert ckpt.arrays["standardize/mean"][1:5].tolist() == [0, 0, 0, 0]
    assert ckpt.arrays["standardize/scale"][1:5].tolist() == [1, 1, 1, 1]

    # predict: an unseen category maps to unknown (one note), an extra column is ignored (one note),
    # --keep copies the ID, a missing age is imputed
    (tmp_path / "new.csv").write_text("customer_id,color,age,plan,notes\nz1,red,30,1,x\nz2,red,70,2,y\n"
                                      "z3,purple,30,1,z\nz4,blue,,3,w\nz5,blue,70,1,v\n")
    res = runner.invoke(app, ["predict", str(run), str(tmp_path / "new.csv"), "--keep", "customer_id"])
    assert res.exit_code == 0, res.output
    out = list(csv.reader(io.StringIO(res.stdout)))
    assert out[0] == ["customer_id", "churned"]
    assert [r[0] for r in out[1:]] == ["z1", "z2", "z3", "z4", "z5"]
    got = {r[0]: r[1] for r in out[1:]}
    assert (got["z1"], got["z2"], got["z5"]) == ("yes", "no", "yes")
    assert res.stderr.splitlines() == [
        "note: new.csv: ignored columns the model does not use: notes",
        "note: new.csv: 1 categorical value the training split never had, encoded as 'unknown'",
    ]
    # eval on a file with an unseen category says so too
    (tmp_path / "lab.csv").write_text("customer_id,color,age,plan,churned\nz1,red,30,1,yes\nz3,purple,30,1,no\n")
    res = runner.invoke(app, ["eval", str(run), "--data", str(tmp_path / "lab.csv"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["note"] == ("lab.csv: 1 categorical value the training split never had, "
                                              "encoded as 'unknown'")


def test_missing_values_error_drop_impute(tmp_path):
    churn_csv(tmp_path / "d.csv", missing=True)
    spec = spec_file(tmp_path, "{dataset: d.csv, target: churned, ignore: [customer_id]}")
    fails(tmp_path, ["train", str(spec)],
          "d.csv: 5 missing values (empty, NA or NaN), first at d.csv row 5, column 'age'; d.csv row 9, "
          "column 'color'; set data.missing: drop (remove those rows) or impute (fill from the training split)")
    base = {"dataset": "d.csv", "target": "churned", "ignore": ["customer_id"], "val_split": 0, "test_split": 0}
    ds = load_dataset({**base, "missing": "drop"}, 0, tmp_path)
    assert len(ds.train) == 240 - 5 and ds.dropped == {"target": 2, "features": 3}
    assert "missing values: drop; rows dropped: 2 for a missing target, 3 for a missing feature" in ds.describe()
    ds = load_dataset({**base, "missing": "impute"}, 0, tmp_path)
    assert len(ds.train) == 240 - 2 and ds.dropped == {"target": 2}
    assert not np.isnan(ds.train.x).any()
    # row 7 (file row 9) lost its color: imputed as the most frequent training color
    counts = {c: int(ds.train.x[:, 1 + i].sum()) for i, c in enumerate(["blue", "green", "red"])}
    assert ds.table.columns[1]["fill"] == max(counts, key=lambda c: (counts[c], -"bgr".index(c[0])))


def test_a_column_with_too_many_categories_suggests_ignore(tmp_path):
    churn_csv(tmp_path / "d.csv")
    spec = spec_file(tmp_path, "{dataset: d.csv, target: churned}")
    fails(tmp_path, ["train", str(spec)],
          "d.csv: column 'customer_id' has 240 distinct values, more than data.max_categories (50); an ID "
          "column is not a feature: add it to data.ignore")


# ---------------------------------------------------------------------------- 6. target scaling

def offset_csv(path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(n, 2))
    y = 150 + 20 * x[:, 0] - 10 * x[:, 1]
    path.write_text("a,b,y\n" + "".join(f"{a:.5f},{b:.5f},{t:.5f}\n" for (a, b), t in zip(x, y)))
    return path


def test_a_target_with_a_large_offset_trains_scaled_and_predicts_in_its_units(tmp_path):
    offset_csv(tmp_path / "r.csv")
    spec = spec_file(tmp_path, "{dataset: r.csv, target: y}")
    args = ["--set", "training.epochs=15", "--set", "model.hidden=[8]", "--set", "model.activation=identity",
            "--set", "optimizer.lr=0.01", "--quiet"]
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0 and "target 'y' (regression, 1 output, standardized for training)" in res.stdout
    assert ", 1 output, " in res.stdout, res.output
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "scaled"), *args])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "scaled").iterdir())
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["test_r2"] >= 0.9
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "raw"), *args,
                              "--set", "data.standardize_target=false"])
    assert res.exit_code == 0, res.output
    raw = json.loads((next((tmp_path / "raw").iterdir()) / "metrics.json").read_text())["test"]
    assert raw["test_r2"] < 0.9
    # mae in the target's units: the history's val_mae is |error| in units of y, not of the scaled y
    history = json.loads((run / "history.json").read_text())
    ckpt = load_checkpoint(run / "checkpoints" / "best.npz")
    assert ckpt.arrays["target/mean"][0] == pytest.approx(150, abs=2)
    assert history[-1]["val_mae"] < 3.0
    # predictions come back in original units: y = 150 + 20 a - 10 b
    (tmp_path / "new.csv").write_text("a,b\n0,0\n0.5,0\n0,-0.5\n")
    res = runner.invoke(app, ["predict", str(run), str(tmp_path / "new.csv")])
    assert res.exit_code == 0, res.output
    pred = [float(r[0]) for r in list(csv.reader(io.StringIO(res.stdout)))[1:]]
    assert pred == pytest.approx([150, 160, 155], abs=1.5)
    # eval reports mae/mse in units of y too
    res = runner.invoke(app, ["eval", str(run), "--json"])
    out = json.loads(res.stdout)
    assert out["mae"] == test["test_mae"] and out["mae"] < 3.0 and out["r2"] == test["test_r2"]


# ---------------------------------------------------------------------------- 7. balanced weights

def test_balanced_class_weights_are_resolved_from_the_training_split(tmp_path):
    rows = [f"{i},{'a' if i < 30 else 'b'}\n" for i in range(40)]   # 30 a, 10 b
    (tmp_path / "w.csv").write_text("x,y\n" + "".join(rows))
    spec = spec_file(tmp_path, "{dataset: w.csv, target: y, val_split: 0, test_split: 0}",
                     extra="loss: {name: cross_entropy, class_weights: balanced}\n")
    exp = prepare(load_spec(spec, []))
    # n / (k * count): 40 / (2 * 30), 40 / (2 * 10)
    assert exp.loss_spec["class_weights"] == pytest.approx([2 / 3, 2.0])
    assert exp.loss.hparams["class_weights"] == pytest.approx([2 / 3, 2.0])
    import yaml
    res = runner.invoke(app, ["config", str(spec)])
    assert yaml.safe_load(res.output)["loss"]["class_weights"] == pytest.approx([2 / 3, 2.0])


# ---------------------------------------------------------------------------- 9. values in float32, paths

def test_values_infinite_in_float32_fail_before_anything_is_written(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,1e300,1\n4,5,0\n6,7,1\n")
    spec = spec_file(tmp_path, "{dataset: d.csv, target: y}")
    fails(tmp_path, ["train", str(spec)], "d.csv row 3, column 'b': '1e300' is not finite in float32 "
                                          "(the model's dtype)")
    x = np.ones((20, 2))
    x[5, 1] = 1e300
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    spec = spec_file(tmp_path, "{dataset: x.npy, target_path: y.npy}", name="n.yaml")
    fails(tmp_path, ["train", str(spec)], "x.npy: x[5, 1] is 1e+300, which is not finite in float32 (the model's "
                                          "dtype); features must be finite")
    # float64 training accepts it (finite in float64)
    ds = load_dataset({"dataset": "x.npy", "target_path": "y.npy"}, 0, tmp_path, "float64")
    assert ds.train.x[5, 1] == 1e300


def test_predict_never_predicts_from_non_finite_input(tmp_path):
    churn_csv(tmp_path / "d.csv")
    spec = spec_file(tmp_path, "{dataset: d.csv, target: churned, ignore: [customer_id]}")
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                              "--set", "training.epochs=1"])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "runs").iterdir())
    (tmp_path / "bad.csv").write_text("age,color,plan\n30,red,1\n1e300,blue,2\n")
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(run), str(tmp_path / "bad.csv"), "--out", str(out)])
    assert res.exit_code == 1
    assert res.output.strip() == "error: bad.csv row 3, column 'age': '1e300' is not finite in float32 (the " \
                                 "model's dtype)"
    assert not out.exists()
    res = runner.invoke(app, ["predict", str(run), str(tmp_path / "bad.csv"), "--keep", "id"])
    assert res.exit_code == 1 and "--keep names no column 'id'" in res.output


def test_data_path_messages(tmp_path):
    spec = spec_file(tmp_path, "{dataset: iris}")
    fails(tmp_path, ["validate", str(spec), "--set", "data.dataset=digit"],
          "data.dataset: unknown dataset 'digit'; did you mean 'digits'? valid: " + ", ".join(
              __import__("nnctl.data", fromlist=["DATASETS"]).DATASETS.names()) + " (or give a .csv, .npy or .npz file)")
    churn_csv(tmp_path / "customers.csv")
    fails(tmp_path, ["validate", str(spec), "--set", "data.dataset=customer.csv"],
          f"data.dataset: file not found: {tmp_path / 'customer.csv'} (looked in {tmp_path}); "
          "did you mean 'customers.csv'?")
    # a typo in the extension is a missing file with its close names, not an unsupported type
    fails(tmp_path, ["validate", str(spec), "--set", "data.dataset=customers.cvs"],
          f"data.dataset: file not found: {tmp_path / 'customers.cvs'} (looked in {tmp_path}); "
          "did you mean 'customers.csv'?")
    (tmp_path / "notes.txt").write_text("x\n")
    fails(tmp_path, ["validate", str(spec), "--set", "data.dataset=notes.txt"],
          "notes.txt: unsupported file type '.txt'; use .csv, .npy or .npz")
    # a one-row CSV names the file
    (tmp_path / "one.csv").write_text("a,y\n1,0\n")
    fails(tmp_path, ["validate", str(spec), "--set", "data.dataset=one.csv", "--set", "data.target=y",
                     "--set", "data.task=regression"],
          "one.csv: val split is empty: 0.15 of 1 rows; use a larger val_split")


def test_a_symlink_to_an_extensionless_blob_takes_the_links_format(tmp_path):
    blob = tmp_path / "store" / "ab12cd"
    blob.parent.mkdir()
    churn_csv(blob)
    (tmp_path / "data.csv").symlink_to(blob)
    ds = load_dataset({"dataset": "data.csv", "target": "churned", "ignore": ["customer_id"]}, 0, tmp_path)
    assert ds.target_name == "churned" and ds.classes == ["no", "yes"]
    spec = spec_file(tmp_path, "{dataset: data.csv, target: churned, ignore: [customer_id]}")
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0, res.output


def test_old_checkpoints_without_preprocess_still_load(tmp_path):
    """A checkpoint from before this change: standardize/* only, no preprocess or target/ entries."""
    from nnctl.runs.model import model_from_checkpoint
    offset_csv(tmp_path / "r.csv", n=60)
    spec = spec_file(tmp_path, "{dataset: r.csv, target: y, standardize_target: false}")
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                              "--set", "training.epochs=1"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(next((tmp_path / "runs").iterdir()) / "checkpoints" / "best.npz")
    del ckpt.meta["preprocess"]
    assert not ckpt.group("target")
    lm = model_from_checkpoint(ckpt)
    assert lm.preprocessor.table is None and lm.preprocessor.target_scale is None
    assert lm.preprocessor.standardizer is not None
    with pytest.raises(DataError):
        load_dataset({"dataset": "r.csv"}, 0, tmp_path)


# ---------------------------------------------------------------------------- 10. image folders

REPO = Path(__file__).resolve().parents[1]


def test_an_image_folder_trains_evaluates_and_predicts_files_and_folders(tmp_path):
    pytest.importorskip("PIL", reason='Pillow is the "images" extra')
    from PIL import Image
    # the shipped PNGs are exactly the digits rows they came from, scaled to 0..255
    png = REPO / "datasets" / "digits_png" / "3"
    first = sorted(png.iterdir())[0]
    row = int(first.stem) + 2   # file line of that row in digits.csv (header is line 1)
    cells = (REPO / "datasets" / "digits.csv").read_text().splitlines()[row - 1].split(",")
    assert cells[-1] == "3"
    pixels = np.asarray(Image.open(first), dtype=np.float64)
    assert np.array_equal(pixels, np.round(np.array(cells[:-1], dtype=float).reshape(8, 8) * 255 / 16))

    ds = load_dataset({"dataset": str(REPO / "datasets" / "digits_png"), "image_size": [8, 8],
                       "val_split": 0, "test_split": 0}, 0, tmp_path)
    assert ds.input_shape == (1, 8, 8) and ds.classes == [str(d) for d in range(10)] and len(ds.train) == 300
    x = ds.train.features()    # uint8 pixels held (a memmap of the decode cache), values / 255
    assert x.dtype == np.float32 and x.min() == 0 and x.max() == 1 and ds.train.x.dtype == np.uint8
    assert np.allclose(x[ds.classes.index("3") * 30, 0], pixels / 255)
    rgb = load_dataset({"dataset": str(REPO / "datasets" / "digits_png"), "color": "rgb", "image_size": [4, 6],
                        "val_split": 0, "test_split": 0}, 0, tmp_path)
    assert rgb.input_shape == (3, 4, 6)

    res = runner.invoke(app, ["train", str(REPO / "configs" / "cnn-digits-png.yaml"), "--runs-dir",
                              str(tmp_path / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "runs").iterdir())
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["test_accuracy"] >= 0.8
    res = runner.invoke(app, ["eval", str(run), "--json"])
    assert json.loads(res.stdout)["accuracy"] == test["test_accuracy"]
    res = runner.invoke(app, ["predict", str(run), str(first)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == ["path,label", f"{first},3"]
    res = runner.invoke(app, ["predict", str(run), str(png.parent)])
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["path", "label"] and len(rows) == 301
    right = sum(Path(p).parent.name == label for p, label in rows[1:])
    assert right >= 0.85 * 300
    # eval --data takes a labelled folder too: its accuracy is the share predict got right
    res = runner.invoke(app, ["eval", str(run), "--data", str(png.parent), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["accuracy"] == pytest.approx(right / 300)
    other = tmp_path / "other" / "seven"
    other.mkdir(parents=True)
    (other / "a.png").write_bytes(first.read_bytes())
    res = runner.invoke(app, ["eval", str(run), "--data", str(other.parent)])
    assert res.exit_code == 1
    assert res.output.strip() == ("error: other: sample 0: label 'seven' is not one of the 10 training classes: "
                                  "0, 1, 2, 3, 4, 5, 6, 7, 8, 9")


def test_an_image_folder_without_pillow_says_how_to_install_it(tmp_path, monkeypatch):
    """No Pillow (the images extra): one line naming the install command, nothing written; no skip needed."""
    import sys
    monkeypatch.setitem(sys.modules, "PIL", None)           # `from PIL import Image` now raises ImportError
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    folder = Path(__file__).resolve().parents[1] / "datasets" / "digits_png"
    spec = spec_file(tmp_path, f"{{dataset: '{folder}/', cache: 'off'}}")
    fails(tmp_path, ["train", str(spec)], 'Pillow is not installed: pip install -e ".[images]"')


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL", reason='Pillow is the "images" extra')
    from PIL import Image
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "imgs" / "a" / "x.png")
    Image.new("L", (5, 4)).save(tmp_path / "imgs" / "b" / "y.png")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "imgs"}, 0, tmp_path)
    assert str(err.value) == "b/y.png: image is 5x4, a/x.png is 4x4; set data.image_size: [H, W] to resize them all"
    (tmp_path / "imgs" / "b" / "z.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "imgs", "image_size": [4, 4]}, 0, tmp_path)
    assert str(err.value).startswith("b/z.png: not a readable image (UnidentifiedImageError")
