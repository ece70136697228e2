"""Conv, recurrent and attention models from YAML: shapes checked before training, with paths."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from nnctl.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arch.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_kernel_larger_than_input_names_the_layer_path(tmp_path):
    path = spec(tmp_path, """\
        data: {dataset: digits, shape: [1, 8, 8]}
        model:
          layers:
            - conv2d: {filters: 4, kernel_size: 3}
            - conv2d: {filters: 4, kernel_size: 7}
            - flatten
        """)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 1
    assert res.output == ("error: model.layers[1]: conv2d: kernel size 7 is larger than its padded input of "
                          "size 6 (input 6, padding 0+0) (arch.yaml line 5)\n")


def test_data_shape_that_does_not_fit_the_rows(tmp_path):
    path = spec(tmp_path, "data: {dataset: digits, shape: [2, 8, 8]}\n")
    res = runner.invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 1
    assert res.output == ("error: digits (built-in): each sample has 64 values (shape [64]), "
                          "but data.shape [2, 8, 8] needs 128\n")
    assert not (tmp_path / "runs").exists()


def test_validate_shows_every_output_shape_of_a_cnn():
    res = runner.invoke(app, ["validate", str(ROOT / "configs" / "cnn-digits.yaml")])
    assert res.exit_code == 0, res.output
    for row in ("layers.0 conv2d", "(32, 8, 8)", "layers.1 maxpool2d", "(32, 4, 4)", "(64, 2, 2)",
                "layers.4 flatten", "(256,)", "layers.6 dense", "(10,)", "21,386"):
        assert row in res.output, row


def test_gru_from_yaml_learns_marked_xor_where_an_mlp_cannot(tmp_path):
    """The sequence task through the whole CLI: a GRU solves it, an MLP with the same budget does not."""
    base = """\
        name: {name}
        seed: 0
        data: {{dataset: marked_xor, options: {{n_samples: 2500, length: 16}}, standardize: false}}
        model:
          layers: {layers}
        optimizer: {{name: adam, lr: 0.003, clip_norm: 5.0}}
        training: {{epochs: 25, batch_size: 32}}
        """
    accs = {}
    for name, layers in (("gru", "[{gru: {units: 32}}]"),
                         ("mlp", "[flatten, {dense: {units: 128, activation: relu}}, "
                                 "{dense: {units: 128, activation: relu}}]")):
        path = spec(tmp_path, base.format(name=name, layers=layers))
        runs = tmp_path / name
        res = runner.invoke(app, ["train", str(path), "--runs-dir", str(runs), "--quiet"])
        assert res.exit_code == 0, res.output
        (run,) = runs.iterdir()
        accs[name] = json.loads((run / "metrics.json").read_text())["test"]["test_accuracy"]
    assert accs["gru"] >= 0.95, accs
    assert accs["mlp"] <= 0.62, accs


def test_gradcheck_command_passes_and_catches_a_wrong_gradient(monkeypatch):
    import re
    res = runner.invoke(app, ["gradcheck", str(ROOT / "configs" / "xor.yaml")])
    assert res.exit_code == 0, res.output
    worst = float(re.search(r"worst relative error ([0-9.e+-]+)", res.output).group(1))
    assert worst < 1e-6 and "layers.1.layers.1.W" in res.output and "input" in res.output
    from nnctl.engine.layers import Dense
    right = Dense.backward

    def wrong(self, dy):
        dx = right(self, dy)
        self.grads["W"] *= 1.01  # a 1% error in one gradient must be caught
        return dx
    monkeypatch.setattr(Dense, "backward", wrong)
    res = runner.invoke(app, ["gradcheck", str(ROOT / "configs" / "xor.yaml")])
    assert res.exit_code == 1 and "FAIL" in res.output
