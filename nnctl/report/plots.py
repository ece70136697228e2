"""Learning curves of one or more runs as a PNG (matplotlib, Agg canvas, imported only when plotting)."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

from nnctl.errors import NnctlError
from nnctl.runs.store import atomic_write

MISSING_MATPLOTLIB = 'plot needs matplotlib: pip install -e ".[plot]"'

# One panel is PANEL_SIZE inches at the chosen dpi, so the PNG is
# (panels * width * dpi) x (height * dpi) pixels exactly.
PANEL_SIZE = (5.0, 4.0)


def require_matplotlib() -> None:
    """Fail early, with the install hint, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NnctlError(MISSING_MATPLOTLIB) from None


def panel_of(metric: str) -> str:
    """The panel a metric is drawn in: val_loss goes with loss, val_accuracy with accuracy."""
    return metric.removeprefix("val_")


def default_metrics(histories: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
    """loss and the main metric (accuracy for classification, r2 for regression), train and val."""
    logged = {k for h in histories for r in h for k in r}
    out = ["loss", "val_loss"]
    for main in ("accuracy", "r2"):
        if main in logged or f"val_{main}" in logged:
            out += [main, f"val_{main}"]
    return [m for m in out if m in logged]


def plot_runs(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], out: Path,
              metrics: Sequence[str] | None = None, dpi: int = 100) -> list[str]:
    """Draw `runs` ((label, history records) pairs) into the PNG `out`; returns the panel names.

    One panel per metric family (loss and val_loss share one); every run has one colour,
    its training curve solid and its validation curve dashed. The file is written atomically.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise NnctlError(MISSING_MATPLOTLIB) from None

    histories = [h for _, h in runs]
    if not any(histories):
        raise NnctlError("nothing to plot: no run has a finished epoch yet")
    logged = sorted({k for h in histories for r in h for k in r if k not in ("epoch", "seconds")})
    if metrics:
        for m in metrics:
            if m not in logged:
                raise NnctlError(f"--metric {m}: no run logged it; logged: {', '.join(logged)}")
        wanted = list(dict.fromkeys(metrics))
    else:
        wanted = default_metrics(histories)
    panels: dict[str, list[str]] = {}
    for m in wanted:
        panels.setdefault(panel_of(m), []).append(m)

    width, height = PANEL_SIZE
    fig = Figure(figsize=(width * len(panels), height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, keys) in zip(axes, panels.items()):
        for (label, history), color in zip(runs, colors):
            for key in keys:
                points = [(r.get("epoch", i + 1), r.get(key)) for i, r in enumerate(history)]
                points = [(e, float(v)) for e, v in points
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
                if not points:
                    continue
                val = key.startswith("val_")
                ax.plot([p[0] for p in points], [p[1] for p in points], color=color,
                        linestyle="--" if val else "-", marker="." if len(points) < 30 else None,
                        label=f"{label} ({'val' if val else 'train'})" if len(keys) > 1 else label)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(panel)
        if panel == "lr" or (panel == "loss" and _spans_decades(ax)):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    out = Path(out)
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as err:
        raise NnctlError(f"{out}: cannot write: {err.strerror or err}") from None
    return list(panels)


def _spans_decades(ax) -> bool:
    """A loss falling over more than two orders of magnitude reads better on a log scale."""
    ys = [y for line in ax.lines for y in line.get_ydata()]
    positive = [y for y in ys if y > 0]
    return bool(positive) and len(positive) == len(ys) and max(positive) / min(positive) > 100
