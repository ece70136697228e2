"""A picture of augmentation: a few training samples before and after, as a PNG (matplotlib)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nnctl.errors import NnctlError
from nnctl.report.plots import MISSING_MATPLOTLIB
from nnctl.runs.store import atomic_write

CELL = 1.6  # inches per sample panel


def _label(y: np.ndarray | None, i: int, classes: list | None) -> str:
    if y is None:
        return ""
    row = np.asarray(y[i])
    if row.ndim == 1 and row.size > 1:
        # a soft target: its two largest classes with their weights
        top = np.argsort(row)[::-1][:2]
        parts = [f"{classes[k] if classes else k}:{row[k]:.2f}" for k in top if row[k] > 0.005]
        return " ".join(parts)
    value = row.item()
    if isinstance(value, float) and classes is None:
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"p={value:.2f}"
    return str(classes[value] if classes else value)


def draw_preview(before: np.ndarray, after: np.ndarray, y_before, y_after, layout: str,
                 out: Path, classes: list | None = None, dpi: int = 100) -> None:
    """Images as a grid (row 1 before, row 2 after, channel 0 or RGB); other layouts as line
    plots per sample (grey before, blue after; signals draw every channel over L, sequences
    every feature over T, tables the feature values). Written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NnctlError(MISSING_MATPLOTLIB) from None
    n = len(before)
    images = layout == "images"
    rows = 2 if images else 1
    fig = Figure(figsize=(CELL * n, CELL * rows * (1 if images else 1.3)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n, squeeze=False)
    for i in range(n):
        if images:
            for r, (x, y, what) in enumerate(((before, y_before, "before"), (after, y_after, "after"))):
                ax = axes[r][i]
                img = x[i]
                lo, hi = float(before[i].min()), float(before[i].max())
                if img.shape[0] == 3:
                    img = np.clip((np.moveaxis(img, 0, -1) - lo) / max(hi - lo, 1e-12), 0, 1)
                    ax.imshow(img)
                else:
                    ax.imshow(img[0], cmap="gray", vmin=lo, vmax=hi)
                ax.set_title(f"{what} {_label(y, i, classes)}", fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
            continue
        ax = axes[0][i]
        b, a = before[i], after[i]
        if layout == "signals":
            b, a = b.T, a.T            # (L, C): one line per channel
        elif layout == "table":
            b, a = b[:, None], a[:, None]
        ax.plot(b, color="0.6", linewidth=1)
        ax.plot(a, color="C0", linewidth=1)
        ax.set_title(f"{_label(y_before, i, classes)} → {_label(y_after, i, classes)}", fontsize=7)
        ax.tick_params(labelsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    try:
        atomic_write(Path(out), lambda f: f.write(data))
    except OSError as err:
        raise NnctlError(f"{out}: cannot write: {err.strerror or err}") from None
