"""`nnctl plot`: PNG size and content, panel selection, and the message when matplotlib is missing."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app

runner = CliRunner()
DPI = 40  # a 5 x 4 inch panel is 200 x 160 pixels


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_run(root: Path, name: str, scale: float, task: str = "classification") -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    history = []
    for e in range(1, 21):
        record = {"epoch": e, "lr": 0.01 / e, "loss": scale / e, "val_loss": scale / e + 0.1}
        if task == "classification":
            record.update(accuracy=1 - 0.25 * scale / e, val_accuracy=1 - 0.3 * scale / e)
        else:
            record.update(mae=0.3 / e, r2=1 - 1 / e, val_mae=0.4 / e, val_r2=1 - 1.2 / e)
        history.append({**record, "seconds": 0.1})
    (run / "history.json").write_text(json.dumps(history))
    (run / "status.json").write_text(json.dumps({"status": "completed"}))
    return run


@pytest.fixture
def two_runs(tmp_path):
    return make_run(tmp_path, "run-a", 1.0), make_run(tmp_path, "run-b", 2.0)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def has_color(img: np.ndarray, hex_color: str) -> bool:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return bool((np.abs(img[..., :3] - rgb).max(axis=-1) < 0.08).sum() > 20)


def test_default_plot_has_loss_and_accuracy_panels_with_both_runs(two_runs, tmp_path):
    import matplotlib.image
    out = tmp_path / "curves.png"
    res = invoke("plot", *two_runs, "--out", out, "--dpi", 80)
    assert res.exit_code == 0, res.output
    assert res.stdout == f"wrote {out} (2 runs; panels: loss, accuracy)\n"
    assert png_size(out) == (2 * 400, 320)
    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (320, 800)
    assert img[..., :3].std() > 0.05                  # not a blank canvas
    # run-a is drawn in matplotlib's first colour, run-b in the second, in both panels
    for half in (img[:, :400], img[:, 400:]):
        assert has_color(half, "#1f77b4") and has_color(half, "#ff7f0e")


def test_metric_selection_makes_one_panel_per_family(two_runs, tmp_path):
    out = tmp_path / "one.png"
    res = invoke("plot", two_runs[0], "--metric", "val_loss", "-o", out, "--dpi", DPI)
    assert res.exit_code == 0, res.output
    assert res.stdout == f"wrote {out} (1 run; panels: loss)\n"
    assert png_size(out) == (200, 160)
    res = invoke("plot", *two_runs, "-m", "loss", "-m", "lr", "-m", "val_loss", "-o", out, "--dpi", DPI)
    assert res.stdout == f"wrote {out} (2 runs; panels: loss, lr)\n"
    assert png_size(out) == (400, 160)


def test_regression_defaults_to_r2(tmp_path):
    run = make_run(tmp_path, "reg", 1.0, task="regression")
    out = tmp_path / "r.png"
    res = invoke("plot", run, "-o", out, "--dpi", DPI)
    assert res.stdout == f"wrote {out} (1 run; panels: loss, r2)\n"


def test_plot_errors(two_runs, tmp_path):
    res = invoke("plot", two_runs[0], "--metric", "f1", "-o", tmp_path / "x.png")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == ("error: --metric f1: no run logged it; logged: accuracy, loss, lr, val_accuracy, "
                          "val_loss\n")
    res = invoke("plot", tmp_path / "nope", "-o", tmp_path / "x.png")
    assert res.stderr == f"error: {tmp_path / 'nope'}: no such run directory\n"
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    res = invoke("plot", empty, "-o", tmp_path / "x.png")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"warning: {empty}: no finished epoch to plot",
                                       "error: nothing to plot: no run has a finished epoch yet"]
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_is_one_clear_line(two_runs, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    out = tmp_path / "c.png"
    res = invoke("plot", *two_runs, "-o", out)
    assert res.exit_code == 1
    assert res.stdout == ""
    assert res.stderr == 'error: plot needs matplotlib: pip install -e ".[plot]"\n'
    assert not out.exists()
