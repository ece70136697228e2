"""Data layer: built-in datasets, CSV/NumPy loaders and their errors, splits, standardization, batching."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import nnctl.data.builtin as builtin
import nnctl.data.standardize as standardize
from nnctl.data import (DATASETS, PARAMS_DATA, Split, Standardizer, encode_labels, infer_task,
                        iterate_batches, load_dataset, load_features)
from nnctl.data.builtin import generate
from nnctl.data.files import read_csv_data
from nnctl.data.splits import split_indices
from nnctl.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------- built-ins

TOY = {
    # name: (options, x shape, class counts or None for regression)
    "xor": ({}, (400, 2), [200, 200]),
    "spirals": ({}, (600, 2), [200, 200, 200]),
    "moons": ({}, (500, 2), [250, 250]),
    "circles": ({}, (500, 2), [250, 250]),
    "blobs": ({}, (500, 2), [167, 167, 166]),
    "sine": ({}, (500, 1), None),
    "blobs ": ({"n_samples": 40, "centers": 4, "n_features": 5}, (40, 5), [10, 10, 10, 10]),
    "spirals ": ({"n_samples": 100, "classes": 5}, (100, 2), [20] * 5),
}


@pytest.mark.parametrize("key", list(TOY))
def test_builtin_shapes_counts_and_seeding(key):
    name = key.strip()
    options, shape, counts = TOY[key]
    a = generate(name, options, rng(1))
    b = generate(name, options, rng(1))
    c = generate(name, options, rng(2))
    assert a.x.shape == shape and a.x.dtype == np.float64
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.allclose(a.x, c.x)
    if counts is None:
        assert a.y.shape == (shape[0], 1) and a.task == "regression"
    else:
        assert a.y.shape == (shape[0],) and a.task == "classification"
        assert np.bincount(a.y).tolist() == counts


def test_every_registered_builtin_is_covered():
    assert {k.strip() for k in TOY} | {"digits", "iris"} <= set(DATASETS.entries)


def test_a_registered_function_generator(monkeypatch):
    from nnctl.hparams import Param

    def counting(rng, n_samples, steps):
        x = rng.integers(0, 2, size=(n_samples, steps, 1)).astype(np.float64)
        return x, x.sum(axis=(1, 2))

    counting.PARAMS = {"n_samples": Param("int", 64, ge=1), "steps": Param("int", 5, ge=1)}
    counting.TASK = "regression"
    monkeypatch.setitem(DATASETS.entries, "counting", counting)
    ds = load_dataset({"dataset": "counting", "options": {"steps": 3}}, 0, REPO)
    assert ds.task == "regression" and ds.input_shape == (3, 1) and ds.n_outputs == 1
    assert (len(ds.train), len(ds.val), len(ds.test)) == (46, 9, 9)
    # the regression target is standardized with the training split's mean and std
    y = ds.train.y[:, 0] * ds.target_scale[0] + ds.target_mean[0]
    assert np.allclose(y, ds.train.x.sum(axis=(1, 2)))
    assert np.isclose(ds.target_mean[0], ds.train.x[ds.train.rows()].sum(axis=(1, 2)).mean())
    assert ds.source == "counting (built-in)"


def test_xor_labels_are_the_xor_of_the_signs():
    raw = generate("xor", {"noise": 0.1}, rng())
    assert np.array_equal(raw.y, ((raw.x[:, 0] > 0) != (raw.x[:, 1] > 0)).astype(int))


def test_noise_free_geometry():
    c = generate("circles", {"noise": 0.0, "factor": 0.3}, rng())
    radius = np.hypot(c.x[:, 0], c.x[:, 1])
    assert np.allclose(radius[c.y == 0], 1.0) and np.allclose(radius[c.y == 1], 0.3)
    m = generate("moons", {"noise": 0.0}, rng())
    upper = m.x[m.y == 0]
    assert np.allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0) and (upper[:, 1] >= 0).all()
    lower = m.x[m.y == 1]
    assert np.allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0)
    s = generate("spirals", {"noise": 0.0, "n_samples": 30, "classes": 3}, rng())
    arm = s.x[s.y == 1]
    assert np.allclose(np.hypot(arm[:, 0], arm[:, 1]), np.linspace(0, 1, 10))
    t = 4.0 + 4.0 * np.linspace(0, 1, 10)
    assert np.allclose(arm, np.stack([np.linspace(0, 1, 10) * np.sin(t), np.linspace(0, 1, 10) * np.cos(t)], 1))


def test_sine_range_and_values():
    s = generate("sine", {"noise": 0.0}, rng())
    assert s.x.min() >= -math.pi and s.x.max() <= math.pi
    assert np.allclose(s.y, np.sin(s.x))
    s = generate("sine", {"noise": 0.0, "low": 0, "high": 1, "n_samples": 50}, rng())
    assert s.x.min() >= 0 and s.x.max() <= 1
    with pytest.raises(ConfigError) as err:
        generate("sine", {"low": 2, "high": 1}, rng())
    assert str(err.value) == "data.options.high: must be > low (2.0), got 1.0"


def test_builtin_option_errors():
    with pytest.raises(ConfigError) as err:
        generate("xor", {"nosie": 0.1}, rng())
    assert str(err.value) == ("data.options: unknown option for xor 'nosie'; did you mean 'noise'? "
                              "valid: n_samples, noise")
    with pytest.raises(ConfigError) as err:
        generate("xor", {"noise": -1}, rng())
    assert str(err.value) == "data.options.noise: must be >= 0, got -1"  # as the YAML check says it
    with pytest.raises(ConfigError) as err:
        generate("blobs", {"centers": 2.5}, rng())
    assert str(err.value) == "data.options.centers: must be an integer, got 2.5"
    with pytest.raises(ConfigError) as err:
        generate("digits", {"n_samples": 3}, rng())
    assert str(err.value) == "data.options.n_samples: dataset 'digits' takes no options"


def test_digits_shipped_file():
    path = REPO / "datasets" / "digits.csv"
    assert path.stat().st_size < 2 * 2**20
    raw = generate("digits", {}, rng())
    assert raw.x.shape == (1797, 64)
    assert raw.feature_names == [f"pixel_{i}" for i in range(64)]
    assert raw.x.min() == 0 and raw.x.max() == 16 and np.array_equal(raw.x, np.round(raw.x))
    assert np.bincount(raw.y.astype(int)).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    ds = load_dataset({"dataset": "digits"}, 0, REPO)
    assert ds.classes == list(range(10)) and ds.n_outputs == 10 and ds.input_shape == (64,)
    assert ds.source == "digits (built-in)" and ds.target_name == "label"


def test_iris_shipped_file():
    assert (REPO / "datasets" / "iris.csv").stat().st_size < 2 * 2**20
    ds = load_dataset({"dataset": "iris", "val_split": 0, "test_split": 0}, 0, REPO)
    assert ds.train.x.shape == (150, 4) and len(ds.train) == 150
    assert ds.classes == ["setosa", "versicolor", "virginica"]
    assert ds.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert np.bincount(ds.train.y).tolist() == [50, 50, 50]
    assert ds.train.x[0].tolist() == [5.1, 3.5, 1.4, 0.2] and ds.train.y[0] == 0
    assert ds.train.y[-1] == 2


def test_missing_datasets_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "datasets_dir", lambda: tmp_path)
    with pytest.raises(DataError) as err:
        generate("iris", {}, rng())
    assert str(err.value).startswith(f"built-in dataset 'iris': {tmp_path / 'iris.csv'} is missing")


def test_unknown_dataset_name():
    with pytest.raises(ConfigError) as err:
        load_dataset({"dataset": "digts"}, 0, REPO)
    assert str(err.value).startswith("data.dataset: unknown dataset 'digts'; did you mean 'digits'?")


# ---------------------------------------------------------------------------- CSV

def test_csv_bom_quotes_blank_lines_and_string_labels(tmp_path):
    p = write(tmp_path / "d.csv",
              'a,"b, quoted",label\n1,"2.5",cat\n\n3,4,"dog"\n5,"6",cat\n\n\n', bom=True)
    raw = read_csv_data(p, "label", None)
    assert raw.feature_names == ["a", "b, quoted"] and raw.target_name == "label"
    assert [c.values.tolist() for c in raw.columns] == [[1, 3, 5], [2.5, 4, 6]]
    assert raw.lines.tolist() == [2, 4, 5]
    ds = load_dataset({"dataset": "d.csv", "target": "label", "val_split": 0, "test_split": 0}, 0, tmp_path)
    assert ds.train.x.tolist() == [[1, 2.5], [3, 4], [5, 6]]
    assert ds.classes == ["cat", "dog"] and ds.train.y.tolist() == [0, 1, 0]
    assert ds.task == "classification" and ds.source == str(p.resolve())


def test_csv_multiline_quoted_field_keeps_line_numbers(tmp_path):
    p = write(tmp_path / "m.csv", 'note,x,y\n"two\nlines",1,a\nok,zz,b\n')
    with pytest.raises(DataError) as err:
        read_csv_data(p, "y", ["x"])
    assert str(err.value) == ("m.csv row 4, column 'x': not a number: 'zz' (the column's other cells are "
                              "numbers; list it in data.categorical to use it as categories)")


def test_csv_target_is_required_and_features_default_to_the_rest(tmp_path):
    p = write(tmp_path / "t.csv", "target,x,label,name\n1,2,a,id1\n3,4,b,id2\n")
    with pytest.raises(DataError) as err:
        read_csv_data(p, None, None)
    # no silent default (not even a column called "label"): the error lists the columns
    assert str(err.value) == ("t.csv: data.target is required for a CSV file (the column to predict); "
                              "columns are: target, x, label, name")
    raw = read_csv_data(p, "label", None)
    # every other column is a feature; the all-text "name" is categorical
    assert raw.feature_names == ["target", "x", "name"]
    assert [c.kind for c in raw.columns] == ["numeric", "numeric", "categorical"]
    raw = read_csv_data(p, "label", None, ignore=["name"])
    assert raw.feature_names == ["target", "x"] and raw.ignored == ["name"]
    raw = read_csv_data(p, "x", ["target"], categorical=["target"])
    assert raw.feature_names == ["target"] and raw.columns[0].kind == "categorical"
    assert raw.columns[0].values.tolist() == ["1", "3"] and raw.y.tolist() == [2, 4]


CSV_ERRORS = [
    ("digits.csv", "a,b,label\n1,2,0\n3,4\n", {},
     "digits.csv row 3: expected 3 fields, got 2"),
    ("data.csv", "x1,x2,label\n1,2,0\n1,2,1\n3,4,0\n1,abc,1\n", {},
     "data.csv row 5, column 'x2': not a number: 'abc' (the column's other cells are numbers; "
     "list it in data.categorical to use it as categories)"),
    ("data.csv", "x1,x2,label\n1,2,0\n1,1e300,1\n", {},
     "data.csv row 3, column 'x2': '1e300' is not finite in float32 (the model's dtype)"),
    ("data.csv", "x1,x2,label\n1,-inf,0\n", {},
     "data.csv row 2, column 'x2': not a finite number: '-inf'"),
    ("data.csv", "x1,x2,label\n1,2,0\n-4e39,3,1\n", {},
     "data.csv row 3, column 'x1': '-4e39' is not finite in float32 (the model's dtype)"),
    ("data.csv", "x1,x2,label\n1,2,0\n1,3,1e300\n", {},
     "data.csv row 3, column 'label': '1e300' is not finite in float32 (the model's dtype)"),
    ("data.csv", "", {}, "data.csv: file is empty"),
    ("data.csv", "\n\n", {}, "data.csv: file is empty"),
    ("data.csv", "a,b,label\n\n", {}, "data.csv: no data rows, only a header"),
    ("data.csv", "a,b,a\n1,2,3\n", {}, "data.csv: duplicate column name 'a' (columns 1 and 3)"),
    ("data.csv", "a,,c\n1,2,3\n", {}, "data.csv: column 2 has no name in the header"),
    ("data.csv", "a,b,c\n1,2,3\n", {"target": "label"},
     "data.csv: no column 'label'; columns are: a, b, c"),
    ("data.csv", "a,b,c\n1,2,3\n", {"features": ["a", "x"], "target": "c"},
     "data.csv: no column 'x'; columns are: a, b, c"),
    ("data.csv", "id,label\nu,0\nv,1\n", {"ignore": ["id"]},
     "data.csv: no feature columns besides the target 'label' and the ignored ones"),
    ("data.csv", "id,label\nu,0\nv,1\nw,0\n", {"max_categories": 2},
     "data.csv: column 'id' has 3 distinct values, more than data.max_categories (2); an ID column is "
     "not a feature: add it to data.ignore"),
    ("data.csv", "id,label\nu,0\n", {"ignore": ["label"]},
     "data.csv: data.ignore lists the target column 'label'"),
    ("data.csv", "id,x,label\nu,1,0\n", {"features": ["x"], "ignore": ["x"]},
     "data.csv: column 'x' is in both data.features and data.ignore"),
    # a categorical list makes the columns it leaves out numeric: a text one is named as left out,
    # not as "the column's other cells are numbers" (they are not)
    ("data.csv", "code,color,label\n1,red,0\n2,blue,1\n", {"categorical": ["code"]},
     "data.csv row 2, column 'color': not a number: 'red' (data.categorical lists the text columns and does "
     "not name this one; add it to use it as categories)"),
]


@pytest.mark.parametrize("fname, text, kw, message", CSV_ERRORS)
def test_csv_errors(tmp_path, fname, text, kw, message):
    p = write(tmp_path / fname, text)
    with pytest.raises(DataError) as err:
        read_csv_data(p, kw.get("target", "label"), kw.get("features"), ignore=kw.get("ignore"),
                      max_categories=kw.get("max_categories", 50), categorical=kw.get("categorical", "auto"))
    assert str(err.value) == message


def test_csv_target_errors_name_the_cell(tmp_path):
    write(tmp_path / "r.csv", "x,y\n1,0.5\n2,1.5\n3,oops\n")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "r.csv", "target": "y", "task": "regression", "val_split": 0, "test_split": 0},
                     0, tmp_path)
    assert str(err.value).startswith("r.csv row 4, column 'y': not a number: 'oops'")
    write(tmp_path / "c.csv", "x,y\n1,0.5\n2,1\n3,1\n")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "c.csv", "target": "y", "task": "classification", "val_split": 0,
                      "test_split": 0}, 0, tmp_path)
    assert str(err.value) == ("c.csv: data.task is classification, but target 'y' holds 2 distinct values that "
                              "are not all whole numbers; is this a regression target? (set data.task: regression)")


def test_load_features_for_prediction(tmp_path):
    p = write(tmp_path / "input.csv", "x2,id,x1,label\n2,a,1,cat\n4,b,3,dog\n")
    x, y = load_features(p, ["x1", "x2"], (2,), "label")
    assert x.tolist() == [[1, 2], [3, 4]] and y.tolist() == ["cat", "dog"]
    x, y = load_features(p, ["x1", "x2"], (2,), "species")  # no target column: features only
    assert y is None
    with pytest.raises(DataError) as err:
        load_features(p, ["x1", "x2", "x3"], (3,), "label")
    assert str(err.value) == "input.csv: missing feature column 'x3'"
    x, _ = load_features(p, ["x1"], (1,), "label")   # columns the model does not use are ignored
    assert x.tolist() == [[1], [3]]
    with pytest.raises(DataError) as err:
        load_features(p, ["x1", "x2"], (3,), "label")
    assert str(err.value) == "input.csv: each sample has 2 values (shape [2]), the model expects 3 (input shape [3])"
    assert encode_labels(y if y is not None else ["dog", "cat"], ["cat", "dog"]).tolist() == [1, 0]


def test_encode_labels():
    assert encode_labels(np.array([3.0, 1.0, 3.0]), [1, 3]).tolist() == [1, 0, 1]
    assert encode_labels(np.array(["b", "a"]), ["a", "b"]).tolist() == [1, 0]
    assert encode_labels(np.array([2, 10]), ["10", "2", "x"]).tolist() == [1, 0]
    with pytest.raises(DataError) as err:
        encode_labels(np.array(["a", "zebra"]), ["a", "b"], "new.csv")
    assert str(err.value) == "new.csv: sample 1: label 'zebra' is not one of the 2 training classes: a, b"
    with pytest.raises(DataError) as err:
        encode_labels(np.array([1, 7]), [0, 1])
    assert str(err.value) == "sample 1: label 7 is not one of the 2 training classes: 0, 1"


@pytest.mark.parametrize("y, task", [
    (np.array(["a", "b", "a"]), "classification"),
    (np.array([True, False, True]), "classification"),
    (np.array([0, 1, 1, 2]), "classification"),
    (np.array([0.0, 1.0, 1.0]), "classification"),
    (np.array([0, 1, 2, 3]), "regression"),              # every value distinct
    (np.repeat(np.arange(51), 2), "regression"),         # more than 50 distinct values
    (np.array([0.5, 1.0, 1.0]), "regression"),
    (np.array([[0, 1], [1, 0], [1, 0]]), "regression"),  # two target columns
])
def test_infer_task(y, task):
    assert infer_task(y) == task


# ---------------------------------------------------------------------------- NumPy files

def test_npy_memmap_through_split_and_batches(tmp_path):
    x = np.arange(103 * 12, dtype=np.float32).reshape(103, 12)
    y = np.arange(103) % 3
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = load_dataset({"dataset": "x.npy", "target_path": "y.npy", "shape": [3, 4],
                       "val_split": 0.2, "test_split": 0.1}, 7, tmp_path)
    assert isinstance(ds.train.x, np.memmap) and ds.train.x is ds.val.x is ds.test.x
    assert ds.input_shape == (3, 4) and ds.feature_names is None and ds.classes == [0, 1, 2]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (73, 20, 10)
    seen = []
    for xb, yb in iterate_batches(ds.train, 16, rng(3), np.float32, None):
        rows = xb[:, 0, 0].astype(int) // 12
        assert np.all(np.diff(rows) > 0)  # memmap batches are gathered in file order
        assert np.array_equal(xb, x[rows].reshape(-1, 3, 4)) and np.array_equal(yb, y[rows])
        seen.extend(rows.tolist())
    assert sorted(seen) == ds.train.idx.tolist()


def test_npy_errors(tmp_path):
    x = np.ones((5, 2))
    x[2, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros(5))
    np.save(tmp_path / "y4.npy", np.zeros(4))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        ({"dataset": "x.npy"}, "x.npy: a .npy dataset needs data.target_path, the .npy file holding its targets"),
        ({"dataset": "x.npy", "target_path": "y.npy"}, "x.npy: x[2, 1] is nan; features must be finite"),
        ({"dataset": "obj.npy", "target_path": "y.npy"},
         "obj.npy: holds Python objects, which are not loaded (allow_pickle is off)"),
    ]
    for data, message in cases:
        with pytest.raises(DataError) as err:
            load_dataset(data, 0, tmp_path)
        assert str(err.value) == message
    np.save(tmp_path / "x.npy", np.ones((5, 2)))
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "x.npy", "target_path": "y4.npy"}, 0, tmp_path)
    assert str(err.value) == "x.npy: y4.npy has 4 rows but x.npy has 5"
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "x.npy", "target_path": "y.npy", "shape": [3]}, 0, tmp_path)
    assert str(err.value) == "x.npy: each sample has 2 values (shape [2]), but data.shape [3] needs 3"


def test_npy_nan_check_is_chunked(tmp_path, monkeypatch):
    import nnctl.data.files as files
    monkeypatch.setattr(files, "CHUNK_BYTES", 64)  # 4 rows of 2 float64 per chunk
    x = np.ones((50, 2))
    x[37, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(50.0) / 7)
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "x.npy", "target_path": "y.npy"}, 0, tmp_path)
    assert str(err.value) == "x.npy: x[37, 0] is inf; features must be finite"


def test_npz_with_given_splits(tmp_path):
    g = rng(0)
    np.savez(tmp_path / "d.npz", x=g.normal(size=(60, 2, 5)), y=np.arange(60) % 2,
             x_val=g.normal(size=(9, 2, 5)), y_val=np.arange(9) % 2)
    ds = load_dataset({"dataset": "d.npz", "test_split": 0.2}, 0, tmp_path)
    assert ds.input_shape == (2, 5) and ds.n_outputs == 2
    assert len(ds.val) == 9 and ds.val.idx is None and ds.val.x.shape == (9, 2, 5)
    assert (len(ds.train), len(ds.test)) == (48, 12)  # val_split unused; test_split of the 60 rows
    assert np.bincount(ds.test.targets()).tolist() == [6, 6]
    np.savez(tmp_path / "bad.npz", x=np.ones((3, 2)))
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "bad.npz"}, 0, tmp_path)
    assert str(err.value) == "bad.npz: no array 'y'; arrays are: x"
    np.savez(tmp_path / "half.npz", x=np.ones((3, 2)), y=np.zeros(3), x_test=np.ones((2, 2)))
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "half.npz"}, 0, tmp_path)
    assert str(err.value) == "half.npz: has 'x_test' but no 'y_test'"


def test_shape_option_on_digits():
    ds = load_dataset({"dataset": "digits", "shape": [1, 8, 8]}, 0, REPO)
    assert ds.input_shape == (1, 8, 8) and ds.train.x.shape == (1797, 1, 8, 8)
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "digits", "shape": [1, 8, 9]}, 0, REPO)
    assert str(err.value) == "digits (built-in): each sample has 64 values (shape [64]), but data.shape [1, 8, 9] needs 72"


def test_separate_val_csv(tmp_path):
    write(tmp_path / "train.csv", "a,b,label\n" + "".join(f"{i},{i % 5},{'xy'[i % 2]}\n" for i in range(40)))
    write(tmp_path / "val.csv", "b,a,label,extra_text\n1,2,y,q\n3,4,x,r\n")
    ds = load_dataset({"dataset": "train.csv", "target": "label", "val_path": "val.csv", "test_split": 0.25}, 0, tmp_path)
    assert ds.val.x.tolist() == [[2, 1], [4, 3]] and ds.val.y.tolist() == [1, 0]
    assert (len(ds.train), len(ds.test)) == (30, 10)
    # classes come from every file given, so a label seen only in val is still a class
    write(tmp_path / "val2.csv", "a,b,label\n1,2,z\n")
    ds = load_dataset({"dataset": "train.csv", "target": "label", "val_path": "val2.csv"}, 0, tmp_path)
    assert ds.classes == ["x", "y", "z"] and ds.n_outputs == 3 and ds.val.y.tolist() == [2]
    write(tmp_path / "val3.csv", "a,label\n1,x\n")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "train.csv", "target": "label", "val_path": "val3.csv"}, 0, tmp_path)
    assert str(err.value) == "val3.csv: no column 'b'; columns are: a, label"


# ---------------------------------------------------------------------------- splits

def test_stratified_split_counts_disjoint_covering():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    tr, va, te = split_indices(100, labels, 0.2, 0.1, rng(5))
    assert np.bincount(labels[te]).tolist() == [5, 3, 2]
    assert np.bincount(labels[va]).tolist() == [10, 6, 4]
    assert np.bincount(labels[tr]).tolist() == [35, 21, 14]
    allrows = np.concatenate([tr, va, te])
    assert sorted(allrows.tolist()) == list(range(100))
    for a in (tr, va, te):
        assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    again = split_indices(100, labels, 0.2, 0.1, rng(5))
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    other = split_indices(100, labels, 0.2, 0.1, rng(6))
    assert not np.array_equal(te, other[2])


def test_small_class_gets_a_row_in_every_split():
    labels = np.repeat([0, 1], [40, 3])
    tr, va, te = split_indices(43, labels, 0.1, 0.1, rng(0))
    assert (len(va), len(te)) == (4, 4)
    for a in (tr, va, te):
        assert np.bincount(labels[a], minlength=2)[1] == 1


def test_plain_split_for_regression():
    tr, va, te = split_indices(10, None, 0.3, 0.2, rng(0))
    assert (len(tr), len(va), len(te)) == (5, 3, 2)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(10))


def test_empty_split_errors():
    with pytest.raises(DataError) as err:
        split_indices(50, None, 0.01, 0.1, rng())
    assert str(err.value) == "val split is empty: 0.01 of 50 rows; use a larger val_split"
    with pytest.raises(DataError) as err:
        split_indices(50, np.zeros(50, dtype=int), 0.1, 0.01, rng())
    assert str(err.value) == "test split is empty: 0.01 of 50 rows; use a larger test_split"
    with pytest.raises(ConfigError) as err:
        load_dataset({"dataset": "xor", "val_split": 0.5, "test_split": 0.5}, 0, REPO)
    assert str(err.value) == "data.val_split + data.test_split must be < 1, got 0.5 + 0.5"


def test_load_dataset_splits_are_a_function_of_the_seed():
    a = load_dataset({"dataset": "moons"}, 3, REPO)
    b = load_dataset({"dataset": "moons"}, 3, REPO)
    c = load_dataset({"dataset": "moons"}, 4, REPO)
    assert np.array_equal(a.test.idx, b.test.idx) and np.array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.test.idx, c.test.idx)
    # the split stream is separate from the generator's: same data, splits still seeded
    d = load_dataset({"dataset": "iris"}, 3, REPO)
    e = load_dataset({"dataset": "iris"}, 4, REPO)
    assert np.array_equal(d.train.x, e.train.x) and not np.array_equal(d.test.idx, e.test.idx)
    assert np.bincount(d.test.targets()).tolist() == [8, 7, 7]


def test_params_data_declares_every_key():
    assert set(PARAMS_DATA) == {"dataset", "target", "task", "val_split", "test_split", "val_path",
                                "test_path", "standardize", "shape", "features", "target_path", "options",
                                "ignore", "categorical", "max_categories", "missing", "standardize_target",
                                "image_size", "color", "augment", "layout", "cache"}
    assert PARAMS_DATA["dataset"].required
    assert PARAMS_DATA["val_split"].default == 0.15 and PARAMS_DATA["val_split"].lt == 1
    assert PARAMS_DATA["task"].choices == ("classification", "regression")
    with pytest.raises(ConfigError) as err:
        load_dataset({"dataset": "xor", "val_splt": 0.1}, 0, REPO)
    assert str(err.value).startswith("data: unknown key 'val_splt'; did you mean 'val_split'?")


# ---------------------------------------------------------------------------- standardizer

def test_standardizer_uses_train_rows_only(monkeypatch):
    monkeypatch.setattr(standardize, "CHUNK_BYTES", 8 * 3 * 7)  # 7 rows per chunk
    g = rng(0)
    x = g.normal(3.0, 2.0, size=(100, 3))
    x[:, 2] = 4.2  # constant feature
    idx = np.arange(0, 100, 3)
    x[idx[0] + 1] = 1e6  # an outlier outside the training rows must not count
    s = Standardizer().fit(Split(x, None, idx))
    assert np.allclose(s.mean, x[idx].mean(axis=0), rtol=1e-12)
    assert np.allclose(s.scale[:2], x[idx, :2].std(axis=0), rtol=1e-12)
    assert s.scale[2] == 1.0
    z = s.transform(x[idx].astype(np.float32))
    assert z.dtype == np.float32
    assert np.allclose(z[:, :2].mean(axis=0), 0, atol=1e-5) and np.allclose(z[:, :2].std(axis=0), 1, atol=1e-5)
    assert np.all(z[:, 2] == 0)
    t = Standardizer.from_arrays(**s.to_arrays())
    assert np.array_equal(t.mean, s.mean) and np.array_equal(t.scale, s.scale)


def test_standardizer_on_a_memmap_image(tmp_path, monkeypatch):
    monkeypatch.setattr(standardize, "CHUNK_BYTES", 200)
    x = rng(1).integers(0, 17, size=(40, 1, 2, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    s = Standardizer().fit(Split(m, None, np.arange(5, 40)))
    ref = x[5:].astype(np.float64)
    assert s.mean.shape == (1, 2, 3) and np.allclose(s.mean, ref.mean(axis=0))
    assert np.allclose(s.scale, ref.std(axis=0))


# ---------------------------------------------------------------------------- batching

def test_batches_cover_every_row_once_and_reuse_buffers():
    x = np.arange(46, dtype=np.float64).reshape(23, 2)
    y = np.arange(23) % 4
    split = Split(x, y, np.arange(1, 23))
    g = rng(9)
    epochs = []
    for _ in range(2):
        order, sizes, pointers = [], [], set()
        for xb, yb in iterate_batches(split, 5, g, np.float32, None):
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            rows = (xb[:, 0] // 2).astype(int)
            assert np.array_equal(yb, y[rows]) and np.array_equal(xb[:, 1], x[rows, 1])
            pointers.add(xb.__array_interface__["data"][0])
            order.extend(rows.tolist())
            sizes.append(len(xb))
        assert sizes == [5, 5, 5, 5, 2] and sorted(order) == list(range(1, 23))
        assert len(pointers) == 1  # every batch is a view of the same buffer
        epochs.append(order)
    assert epochs[0] != epochs[1]
    seq = [xb[:, 0].copy() for xb, _ in iterate_batches(split, 5, None, np.float64, None)]
    assert np.concatenate(seq).tolist() == x[1:, 0].tolist()
    assert [len(b) for b, _ in iterate_batches(split, 5, None, np.float32, None, drop_last=True)] == [5] * 4


def test_batches_standardized_in_place_and_regression_targets():
    x = rng(2).normal(5, 3, size=(30, 4))
    y = rng(3).normal(size=(30, 2))
    split = Split(x, y, np.arange(30))
    s = Standardizer().fit(split)
    got = []
    for xb, yb in iterate_batches(split, 8, None, np.float32, s):
        assert xb.dtype == np.float32 and yb.dtype == np.float32 and yb.shape[1] == 2
        got.append(xb.copy())
    expect = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    assert np.allclose(np.concatenate(got), expect, atol=1e-5)
    assert [len(b) for b, _ in iterate_batches(Split(x, None), 8, None, np.float64, None)] == [8, 8, 8, 6]
    assert all(yb is None for _, yb in iterate_batches(Split(x, None), 8, None, np.float64, None))


def test_global_standardizer_pools_every_value():
    from nnctl.data import Split, Standardizer
    x = np.array([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    std = Standardizer().fit(Split(x=x, y=None), per_feature=False)
    np.testing.assert_allclose(std.mean, [x.mean(), x.mean()])
    np.testing.assert_allclose(std.scale, [x.std(), x.std()])
    z = std.transform(x)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
