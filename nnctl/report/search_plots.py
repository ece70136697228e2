"""PNGs for search: a sweep's optimization history and parameter importances, and the lr-find curve.

matplotlib (the plot extra) draws on an Agg canvas; Optuna (the search extra) computes the
importances. Both are imported only here, when a plot is asked for.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from nnctl.errors import NnctlError
from nnctl.report.plots import MISSING_MATPLOTLIB
from nnctl.runs.store import atomic_write


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NnctlError(MISSING_MATPLOTLIB) from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as err:
        raise NnctlError(f"{out}: cannot write: {err.strerror or err}") from None
    return out


# -- lr-find ----------------------------------------------------------------------------------

def plot_lr_curve(result, out: Path) -> Path:
    """The loss (raw and smoothed) against the lr on a log axis, the suggestions marked."""
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="C0", alpha=0.35, label="loss (batch)")
    ax.plot(result.lrs, result.smoothed, color="C0", label="loss (smoothed, centred)")
    if result.suggested is not None:
        ax.axvline(result.suggested, color="C3", linestyle="-", label=f"suggested {result.suggested:.3g}")
    if result.steepest is not None:
        ax.axvline(result.steepest, color="C2", linestyle="--", label=f"steepest {result.steepest:.3g}")
    if result.min_over_10 is not None:
        ax.axvline(result.min_over_10, color="C1", linestyle=":", label=f"min/10 {result.min_over_10:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if finite:   # the divergence at the end would flatten everything else
        ax.set_ylim(top=max(finite[: max(1, len(finite) // 10)] + [min(finite) * 2]) * 1.1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


# -- sweeps -----------------------------------------------------------------------------------

def manifest_study(sd, sweep):
    """An in-memory Optuna study holding the sweep's finished trials (any method, grid included)."""
    from nnctl.sweep import search
    from nnctl.sweep.runner import DONE
    optuna = search.import_optuna()
    space = search.search_space(sweep.parameters)
    study = optuna.create_study(direction=sweep.goal)
    labels = {p.name: search.choice_labels(p.values) if p.distribution == "choice" else None
              for p in sweep.parameters}
    for t in sd.trials:
        if t.metric is None or not math.isfinite(t.metric) or t.status not in DONE:
            continue
        params = {}
        for p in sweep.parameters:
            value = t.overrides.get(p.name)
            if labels[p.name] is not None:
                value = labels[p.name][p.values.index(value)]
            params[p.name] = value
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=t.metric))
    return study


def plot_pareto(sd, front: set[int], out: Path) -> Path:
    """The finished trials on the first two objectives, the Pareto front marked and numbered."""
    from nnctl.sweep.runner import DONE
    pts = [(t.index, t.values[0], t.values[1]) for t in sd.trials
           if t.status in DONE and t.values and len(t.values) == len(sd.metrics)
           and all(v is not None and math.isfinite(v) for v in t.values[:2])]
    fig = _figure(6.0, 4.5)
    ax = fig.subplots()
    rest = [p for p in pts if p[0] not in front]
    on = sorted((p for p in pts if p[0] in front), key=lambda p: (p[1], p[2]))
    if rest:
        ax.scatter([p[1] for p in rest], [p[2] for p in rest], color="C7", label="dominated")
    ax.plot([p[1] for p in on], [p[2] for p in on], color="C3", marker="o", label="Pareto front")
    for index, x, y in on:
        ax.annotate(str(index), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    m, g = sd.metrics, sd.goals
    ax.set_xlabel(f"{m[0]} ({g[0]})")
    ax.set_ylabel(f"{m[1]} ({g[1]})")
    more = f"; {len(m) - 2} more objective(s) not drawn" if len(m) > 2 else ""
    ax.set_title(f"{sd.name}: {len(on)} of {len(pts)} trials on the Pareto front{more}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


def plot_sweep(path: Path) -> list[Path]:
    """history.png, importances.png and (several metrics) pareto.png in the sweep directory `path`;
    returns the files written."""
    from nnctl.sweep import search
    from nnctl.sweep.runner import DONE, SweepDir
    from nnctl.sweep.spec import load_sweep
    optuna = search.import_optuna()
    sd = SweepDir.open(Path(path))
    sweep = load_sweep(sd.path / "sweep.yaml")
    maximize = sd.goal == "maximize"
    done = [t for t in sd.trials if t.metric is not None and math.isfinite(t.metric)]
    if not done:
        raise NnctlError(f"{sd.path}: no trial has a {sd.metric} value yet; nothing to plot")

    fig = _figure(7.0, 4.0)
    ax = fig.subplots()
    for status, color, marker in (("completed", "C0", "o"), ("stopped_early", "C0", "o"), ("pruned", "C7", "x")):
        pts = [(t.index, t.metric) for t in done if t.status == status]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker,
                       label=status.replace("_", " "))
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.index):
        if t.status in DONE and (best is None or (t.metric > best if maximize else t.metric < best)):
            best = t.metric
        if best is not None:
            xs.append(t.index)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{sd.metric} ({sd.goal})")
    ax.set_title(f"{sd.name}: optimization history ({sd.meta.get('method')})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    out = [_save(fig, sd.path / "history.png")]
    front = sd.pareto()
    if front:
        out.append(plot_pareto(sd, front, sd.path / "pareto.png"))

    study = manifest_study(sd, sweep)
    varied = [p.name for p in sweep.parameters if p.distribution != "choice" or len(p.values) > 1]
    if len(study.trials) >= 2 and varied:
        # PED-ANOVA needs no extra package (fANOVA would need scikit-learn).
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        try:
            importances: dict[str, Any] = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                                  params=varied)
        except (ValueError, RuntimeError) as err:
            raise NnctlError(f"{sd.path}: cannot compute parameter importances: {err}") from None
        fig = _figure(6.0, 1.0 + 0.5 * len(importances))
        ax = fig.subplots()
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C0")
        ax.set_xlabel(f"importance for {sd.metric} (PED-ANOVA)")
        ax.set_title(f"{sd.name}: parameter importances ({len(study.trials)} trials)")
        out.append(_save(fig, sd.path / "importances.png"))
    return out
