"""Own data, second round: class weights by label, the image decode cache, `init` on text
columns and image folders, and the bundled public tables.

Failing cases assert the exact one-line message and that nothing was written; passing cases
assert values computed independently (by hand, or from the files themselves).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.spec import load_spec
from nnctl.training.experiment import prepare
from test_own_data import folder_hash

runner = CliRunner()


def weighted_spec(tmp_path: Path, weights: str, labels=("no", "yes")) -> Path:
    """40 rows, 30 of the first label and 10 of the second; loss with the given class_weights."""
    rows = "".join(f"{i % 7},{labels[0] if i < 30 else labels[1]}\n" for i in range(40))
    (tmp_path / "w.csv").write_text("x,answer\n" + rows)
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: weights
        seed: 0
        data: {{dataset: w.csv, target: answer, val_split: 0, test_split: 0}}
        model: {{hidden: [4]}}
        loss: {{name: cross_entropy, class_weights: {weights}}}
        training: {{epochs: 1, batch_size: 8}}
        """))
    return path


# ---------------------------------------------------------------------------- class weights by label

def test_class_weights_by_label_give_the_hand_computed_weighted_mean(tmp_path):
    exp = prepare(load_spec(weighted_spec(tmp_path, "{yes: 3.0, no: 0.5}"), []))
    # yes/no are read by YAML as true/false; they still name the classes spelled yes/no
    assert exp.dataset.classes == ["no", "yes"]
    assert exp.loss_spec["class_weights"] == [0.5, 3.0]
    z = np.array([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.5]], dtype=np.float32)
    y = np.array([0, 1, 1])
    loss, _ = exp.loss(z, y)
    # by hand: l_i = log(sum exp z_i) - z_i[y_i]; weighted mean with w = (0.5, 3, 3)
    l0 = np.log(np.exp(2.0) + np.exp(-1.0)) - 2.0
    l1 = np.log(2 * np.exp(0.5)) - 0.5
    l2 = np.log(np.exp(-1.0) + np.exp(1.5)) - 1.5
    assert loss == pytest.approx((0.5 * l0 + 3 * l1 + 3 * l2) / 6.5, rel=1e-6)


def test_class_weights_by_integer_label_default_to_one_for_classes_not_named(tmp_path):
    exp = prepare(load_spec(weighted_spec(tmp_path, "{7: 2.5}", labels=(3, 7)), []))
    assert exp.dataset.classes == [3, 7]
    assert exp.loss_spec["class_weights"] == [1.0, 2.5]


def test_class_weights_are_shown_by_validate_and_config(tmp_path):
    spec = weighted_spec(tmp_path, "{'yes': 4}")
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0, res.output
    assert "class weights: no 1, yes 4\n" in res.output
    res = runner.invoke(app, ["config", str(spec)])
    assert "  class_weights: [1.0, 4.0]\n" in res.output


def test_train_header_shows_the_class_weights(tmp_path):
    spec = weighted_spec(tmp_path, "balanced")
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    # 40 / (2 * 30), 40 / (2 * 10)
    assert "class weights: no 0.6667, yes 2\n" in res.output


@pytest.mark.parametrize("weights, labels, message", [
    ("{maybe: 2}", ("no", "yes"), "loss.class_weights: no class 'maybe'; the 2 classes are: no, yes (spec.yaml line 5)"),
    ("{on: 2}", ("cat", "dog"), "loss.class_weights: no class True (YAML reads unquoted yes/no/on/off as "
                                "true/false); the 2 classes are: cat, dog (spec.yaml line 5)"),
    ("{yes: -1}", ("no", "yes"), "loss.class_weights.True: must be >= 0, got -1 (spec.yaml line 5)"),
])
def test_a_weight_for_an_unknown_label_is_one_line_and_writes_nothing(tmp_path, weights, labels, message):
    spec = weighted_spec(tmp_path, weights, labels)
    runs = tmp_path / "runs"
    before = folder_hash(runs)
    res = runner.invoke(app, ["train", str(spec), "--runs-dir", str(runs)])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines() == [f"error: {message}"]
    assert folder_hash(runs) == before


# ---------------------------------------------------------------------------- image decode cache

def image_folder(root: Path, n_per_class: int = 3) -> Path:
    """Two classes of 4x5 grayscale PNGs with distinct, known pixels."""
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the images extra) is not installed")
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            a = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 10 + 40 * c + i)
            Image.fromarray(a, mode="L").save(root / name / f"{i}.png")
    return root


@pytest.fixture
def decodes(monkeypatch, tmp_path):
    """Counts files decoded by Pillow, with the cache in a folder of this test's own."""
    from nnctl.data import images
    monkeypatch.setenv("NNCTL_CACHE_DIR", str(tmp_path / "cache"))
    count = {"files": 0}
    real = images._decode_one

    def counting(*args):
        count["files"] += 1
        return real(*args)

    monkeypatch.setattr(images, "_decode_one", counting)
    return count


def test_an_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path, decodes):
    from nnctl.data import load_dataset
    folder = image_folder(tmp_path / "imgs")
    opts = {"dataset": str(folder), "val_split": 0, "test_split": 0}
    first = load_dataset(opts, 0, tmp_path)
    assert decodes["files"] == 6
    cached = list((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).dtype == np.uint8
    second = load_dataset(opts, 0, tmp_path)
    assert decodes["files"] == 6                      # nothing decoded the second time
    assert np.array_equal(first.train.x, second.train.x)
    # the cache holds the files in sorted order: cat/0.png first, whose first row is 0, 10, ... 40;
    # dog/2.png last (+ 40 + 2)
    stored = np.load(cached[0])
    assert stored.shape == (6, 1, 4, 5)
    assert stored[0, 0, 0].tolist() == [0, 10, 20, 30, 40] and stored[5, 0, 0].tolist() == [42, 52, 62, 72, 82]
    # training reads the cache through a memmap (memory holds batches, not the folder) ...
    assert isinstance(second.train.x, np.memmap) and second.train.x.dtype == np.uint8
    assert isinstance(first.train.x, np.memmap)       # the first load maps what it just wrote
    # ... and every batch is float in [0, 1]: v / 255 in the model's dtype
    from nnctl.data.batching import iterate_batches
    (xb, yb), = list(iterate_batches(second.train, 6, None, np.float32))
    assert xb.dtype == np.float32 and np.array_equal(xb, stored.astype(np.float32) / np.float32(255))
    assert second.train.features().tolist() == xb.tolist()
    off = load_dataset({**opts, "cache": "off"}, 0, tmp_path)
    assert decodes["files"] == 12                     # data.cache: off always decodes
    assert not isinstance(off.train.x, np.memmap) and np.array_equal(off.train.x, stored)
    # validate and the train header name the cache file (to find or delete it)
    assert second.describe()[-1] == f"image cache: {cached[0]}"
    assert off.describe() == ["target: classification, 2 classes: cat, dog"]


def test_editing_an_image_or_the_options_invalidates_the_cache(tmp_path, decodes):
    import os
    from nnctl.data import load_dataset
    from PIL import Image
    folder = image_folder(tmp_path / "imgs")
    opts = {"dataset": str(folder), "val_split": 0, "test_split": 0}
    before = np.array(load_dataset(opts, 0, tmp_path).train.x)
    Image.fromarray(np.full((4, 5), 255, np.uint8), mode="L").save(folder / "dog" / "1.png")
    st = (folder / "dog" / "1.png").stat()
    os.utime(folder / "dog" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a distinct mtime
    after = np.array(load_dataset(opts, 0, tmp_path).train.x)
    assert decodes["files"] == 12
    changed = np.flatnonzero(np.any(before != after, axis=(1, 2, 3)))
    assert changed.tolist() == [4] and np.all(after[4] == 255)      # dog/1.png, the 5th file
    load_dataset({**opts, "image_size": [2, 2]}, 0, tmp_path)
    assert decodes["files"] == 18
    (folder / "cat" / "2.png").unlink()               # a removed file changes the key too
    assert len(load_dataset(opts, 0, tmp_path).train) == 5
    assert decodes["files"] == 23
    # one entry per folder and options: the edits replaced theirs, the 2x2 size has its own
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 2


# ---------------------------------------------------------------------------- nnctl init

def shop_csv(path: Path, n: int = 90) -> Path:
    """order_id (an ID), city (text), plan (codes 1/2/3), amount (a number), returned (yes/no)."""
    lines = ["order_id,city,plan,amount,returned"]
    for i in range(n):
        city = ("oslo", "rome", "lima", "kyiv")[i % 4]
        amount = 10 + (i * 7) % 50
        lines.append(f"A{i:04d},{city},{1 + i % 3},{amount}.5,{'yes' if (i % 4 == 1) or amount > 50 else 'no'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_init_declares_text_columns_under_categorical_and_offers_integer_codes(tmp_path, monkeypatch):
    import yaml
    monkeypatch.chdir(tmp_path)
    shop_csv(tmp_path / "shop.csv")
    res = runner.invoke(app, ["init", "shop.csv", "--target", "returned"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "categorical city: 4 categories, one-hot encoded (plus one for unknown)" in out
    assert ("maybe categorical plan: 3 whole numbers (1, 2, 3): if they are codes, not amounts, add it to "
            "data.categorical") in out
    text = (tmp_path / "shop.yaml").read_text()
    assert "# Maybe categorical: column 'plan': 3 whole numbers (1, 2, 3): if they are codes, not amounts, " \
           "add it to data.categorical.\n" in text
    spec = yaml.safe_load(text)
    assert spec["data"]["categorical"] == ["city"] and spec["data"]["ignore"] == ["order_id"]
    # city one-hot (4 + unknown), plan and amount as numbers
    res = runner.invoke(app, ["validate", "shop.yaml"])
    assert res.exit_code == 0 and "input (7,), 2 outputs" in res.stdout, res.output
    assert "features: 2 numeric (plan, amount); 1 categorical (city (4); one-hot + unknown); " \
           "ignored: order_id\n" in res.stdout
    # taking the offer: plan as a category too
    res = runner.invoke(app, ["validate", "shop.yaml", "--set", "data.categorical=[city, plan]"])
    assert res.exit_code == 0 and "input (10,), 2 outputs" in res.stdout, res.output  # amount, 5 + 4 one-hot


def test_init_on_an_image_folder_writes_a_cnn_spec_that_trains(tmp_path, monkeypatch):
    import yaml
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the images extra) is not installed")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square", "stripe")):
        (tmp_path / "shapes" / name).mkdir(parents=True)
        for i in range(8):
            size = (20, 12) if i else (10, 6)     # one smaller image per class: resized to 20x12
            a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a, mode="RGB").save(tmp_path / "shapes" / name / f"{i}.png")
    res = runner.invoke(app, ["init", "shapes"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "data shapes: 24 images of 3x12x20" in out
    assert "task classification (an image folder, 3 classes: circle, square, stripe)" in out
    assert "images 12x20 rgb (21 of 24 are 12x20, the others are resized; color images)" in out
    assert "model CNN, conv filters [16, 32], batch 14, up to 50 epochs" in out
    spec = yaml.safe_load((tmp_path / "shapes.yaml").read_text())
    assert spec["data"] == {"dataset": "shapes/", "image_size": [12, 20], "color": "rgb",
                            "task": "classification", "val_split": 0.2, "test_split": 0.2, "standardize": "global"}
    assert spec["model"]["layers"] == [
        {"conv2d": {"filters": 16, "kernel_size": 3, "padding": "same", "activation": "relu"}},
        {"maxpool2d": {"size": 2}},
        {"conv2d": {"filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"}},
        {"maxpool2d": {"size": 2}}, "flatten"]
    res = runner.invoke(app, ["validate", "shapes.yaml"])
    assert res.exit_code == 0 and "input (3, 12, 20), 3 outputs" in res.stdout, res.output
    res = runner.invoke(app, ["train", "shapes.yaml", "--set", "training.epochs=1", "--runs-dir", "runs", "-q"])
    assert res.exit_code == 0 and res.stdout.startswith("completed: 1 epochs"), res.output
    monkeypatch.chdir(tmp_path / "shapes")            # `init .` names the spec after the folder
    res = runner.invoke(app, ["init", "."])
    assert res.exit_code == 0 and (tmp_path / "shapes" / "shapes.yaml").exists(), res.output
    assert yaml.safe_load((tmp_path / "shapes" / "shapes.yaml").read_text())["data"]["dataset"] == "./"
    res = runner.invoke(app, ["init", ".", "--target", "x", "-o", "other.yaml"])
    assert res.exit_code == 1
    assert res.stderr == ("error: --target: an image folder's classes are its subfolders; --target is for "
                          "CSV columns and .npy target files\n")


# ---------------------------------------------------------------------------- public tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config, rows, features, counts", [
    ("breast-cancer.yaml", 569, 30, {"benign": 357, "malignant": 212}),
    ("wine.yaml", 178, 13, {"cultivar_1": 59, "cultivar_2": 71, "cultivar_3": 48}),
])
def test_the_public_tables_load_as_their_readme_describes(config, rows, features, counts):
    exp = prepare(load_spec(ROOT / "configs" / config, []))
    d = exp.dataset
    assert d.input_shape == (features,) and d.classes == sorted(counts)
    splits = [d.train, d.val, d.test]
    assert sum(len(s) for s in splits) == rows
    labels = np.concatenate([s.targets() for s in splits])
    assert dict(zip(d.classes, np.bincount(labels).tolist())) == counts
    assert (ROOT / "datasets" / Path(exp.spec.data["dataset"]).name).stat().st_size < 2 * 2**20


def test_the_public_bench_compares_on_nnctls_own_test_rows():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the --public bench needs it)")
    from nnctl.bench.own_data import run_public
    scores, n_test = run_public("wine.yaml", "cultivar", 0)
    assert n_test == 44 and set(scores) == {"nnctl", "logistic", "sklearn MLP"}
    assert all(0.8 <= v <= 1.0 for v in scores.values())


def test_a_broken_or_unwritable_cache_only_costs_a_decode(tmp_path, decodes, monkeypatch):
    from nnctl.data import load_dataset
    folder = image_folder(tmp_path / "imgs")
    opts = {"dataset": str(folder), "val_split": 0, "test_split": 0}
    good = np.array(load_dataset(opts, 0, tmp_path).train.x)
    (cached,) = (tmp_path / "cache" / "images").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:100])     # truncated: not a readable .npy any more
    assert np.array_equal(load_dataset(opts, 0, tmp_path).train.x, good)
    assert decodes["files"] == 12 and np.array_equal(np.load(cached), good)   # decoded and rewritten
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("NNCTL_CACHE_DIR", str(blocker))   # the cache folder cannot be created
    for _ in range(2):
        assert np.array_equal(load_dataset(opts, 0, tmp_path).train.x, good)
    assert decodes["files"] == 24 and blocker.read_text() == ""
