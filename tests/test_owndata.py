"""Own data, second round: class weights by label, the image decode cache, `init` on text
columns and image folders, and the bundled public tables.

Failing cases assert the exact one-line message and that nothing was written; passing cases
assert values computed independently (by hand, or from the files themselves).
"""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.spec import load_spec
from nnctl.training.experiment import prepare

runner = CliRunner()


def folder_hash(path: Path) -> str:
    h = hashlib.sha256()
    if path.exists():
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


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
