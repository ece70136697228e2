"""The post-training commands `eval`, `predict`, `runs`, `show`, `diff` and `plot`, added to the CLI by `register`.

Each command parses its options, calls one function of nnctl.commands.{evaluate, predict,
runlist} or nnctl.report.plots, and renders the result; expected failures are NnctlErrors
handed to the CLI's `fail`. Heavy modules are imported inside the commands so `nnctl
--help` stays fast and a missing optional piece only affects the command that needs it.
"""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from nnctl.console import console, err_console
from nnctl.errors import NnctlError


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"


def _print_json(data: Any) -> None:
    # plain stdout, not Rich: exactly one strict JSON document (NaN -> null), never wrapped or styled
    from nnctl.report.metrics import finite_json
    sys.stdout.write(json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n")


def _print(renderable) -> None:
    """On a terminal Rich fits `renderable` to the window; into a pipe or a file it keeps its
    natural width (a runs listing piped to grep must not be cut to 80 columns)."""
    if console.is_terminal:
        console.print(renderable)
        return
    from rich.console import Console
    natural = console.measure(renderable, options=console.options.update_width(10_000)).maximum
    if natural <= console.width:
        console.print(renderable)
    else:
        # Console.print clamps width= to the console's own width, so widen a one-off console
        Console(file=console.file, width=natural, highlight=False, no_color=console.no_color).print(renderable)


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    """Add eval, predict, runs, show, diff and plot to `app`; `fail(err)` prints an error and exits 1."""

    @app.command("eval")
    def eval_command(
        target: Path = typer.Argument(..., help="A checkpoint (.npz) or a run directory (its best weights)."),
        data: Optional[str] = typer.Option(None, "--data", help="A .csv/.npz file or a built-in dataset name "
                                           "(default: the run's own split)."),
        split: Optional[SplitName] = typer.Option(None, "--split", help="Which of the run's splits (default: test)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="Rows per forward pass (default: the run's eval_batch_size)."),
    ) -> None:
        """Score a trained model: loss and metrics, per-class report and confusion matrix."""
        from nnctl.commands.evaluate import run_eval
        try:
            if data is not None and split is not None:
                raise NnctlError("--split picks one of the run's own splits; it cannot be combined with --data")
            result = run_eval(target, data, (split or SplitName.test).value, batch_size)
        except NnctlError as err:
            fail(err)
            return
        if as_json:
            _print_json(result)
        else:
            render_eval(result)
            if result.get("note"):  # data layer: e.g. categories the training split never had
                err_console.print(f"note: {result['note']}", markup=False, highlight=False, soft_wrap=True)

    @app.command("predict")
    def predict_command(
        target: Path = typer.Argument(..., help="A checkpoint (.npz) or a run directory (its best weights)."),
        input: Path = typer.Argument(..., help="Rows to predict: a CSV with the training feature columns, "
                                     ".npy or .npz."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the CSV here (default: stdout)."),
        proba: bool = typer.Option(False, "--proba", help="Add one p_<label> probability column per class."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="Rows per forward pass (default: the run's eval_batch_size)."),
        keep: List[str] = typer.Option([], "--keep", help="Copy this input column (e.g. an ID) into the output; "
                                       "repeatable."),
    ) -> None:
        """Predict labels (or values) for new rows, as CSV."""
        from nnctl.commands.evaluate import default_batch_size, load_model
        from nnctl.commands.predict import run_predict
        notes: list[str] = []
        try:
            lm = load_model(target)
            n = run_predict(lm, input, out, batch_size or default_batch_size(lm), proba, keep, notes)
        except NnctlError as err:
            fail(err)
            return
        except BrokenPipeError:
            # `nnctl predict ... | head`: the reader left; stop quietly like other Unix tools
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise typer.Exit(0)
        for note in notes:  # stderr: stdout may be the predictions themselves
            err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        if out is not None:
            console.print(f"wrote {n:,} predictions to {out}", markup=False, soft_wrap=True)

    @app.command("runs")
    def runs_command(
        runs_dir: Path = typer.Argument(Path("runs"), help="The folder holding run directories."),
        sort: Optional[str] = typer.Option(None, "--sort", help="A column (name, started, status, epochs, "
                                           "parameters, time, best) or a metric (val_accuracy, test_loss, ...), "
                                           "best first."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON list and nothing else."),
    ) -> None:
        """List runs: status, epochs, best validation metric, test metric, size and time."""
        from nnctl.commands.runlist import scan_runs, sort_runs
        from nnctl.report.tables import run_problems, runs_table
        try:
            runs = sort_runs(scan_runs(runs_dir), sort)
        except NnctlError as err:
            fail(err)
            return
        if as_json:
            _print_json([r.to_dict() for r in runs])
        elif not runs:
            console.print(f"no runs in {runs_dir}", markup=False)
        else:
            _print(runs_table(runs))
            for line in run_problems(runs):
                console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)

    @app.command("show")
    def show_command(
        run: Path = typer.Argument(..., help="A run directory."),
        rows: int = typer.Option(15, "--rows", min=3, help="At most this many history rows (spread evenly)."),
    ) -> None:
        """Show one run: config, model summary, history table and loss sparklines."""
        from nnctl.commands.runlist import open_run
        try:
            info = open_run(run)
        except NnctlError as err:
            fail(err)
            return
        problem = render_show(info, rows)
        if problem is not None:
            fail(problem)

    @app.command("diff")
    def diff_command(
        run_a: Path = typer.Argument(..., help="Run A."),
        run_b: Path = typer.Argument(..., help="Run B."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    ) -> None:
        """Compare two runs: the config keys that differ and the metrics, with B − A."""
        from nnctl.commands.runlist import config_diff, is_missing, metric_diff, open_run
        try:
            a, b = open_run(run_a), open_run(run_b)
        except NnctlError as err:
            fail(err)
            return
        config_rows = config_diff(a.config, b.config)
        metrics = metric_diff(a, b)
        if as_json:
            def plain(v):
                return None if is_missing(v) else v
            _print_json({
                "a": str(a.path), "b": str(b.path),
                "config": [{"key": k, "a": plain(va), "b": plain(vb), "a_set": not is_missing(va),
                            "b_set": not is_missing(vb)} for k, va, vb in config_rows],
                "metrics": [{"metric": m, "a": va, "b": vb, "delta": d} for m, va, vb, d in metrics],
            })
            return
        render_diff(a, b, config_rows, metrics)

    @app.command("plot")
    def plot_command(
        runs: List[Path] = typer.Argument(..., help="One or more run directories."),
        metric: List[str] = typer.Option([], "--metric", "-m", help="A logged metric to draw (repeatable); "
                                         "default: loss and accuracy or r2, train and val."),
        out: Path = typer.Option(Path("curves.png"), "--out", "-o", help="The PNG to write."),
        dpi: int = typer.Option(100, "--dpi", min=20, max=600, help="Pixels per inch (a panel is 5 x 4 inches)."),
    ) -> None:
        """Draw learning curves of one or more runs (one panel per metric) into a PNG."""
        from nnctl.commands.runlist import open_run
        from nnctl.report.plots import plot_runs, require_matplotlib
        try:
            require_matplotlib()
            infos = [open_run(p) for p in runs]
            for info in infos:
                if not info.history:
                    _warn(f"{info.path}: no finished epoch to plot")
            panels = plot_runs([(i.name, i.history) for i in infos], out, metric or None, dpi)
        except NnctlError as err:
            fail(err)
            return
        console.print(f"wrote {out} ({len(infos)} run{'s' if len(infos) != 1 else ''}; "
                      f"panels: {', '.join(panels)})", markup=False, soft_wrap=True)


# ---------------------------------------------------------------------------- rendering

def render_eval(result: dict[str, Any]) -> None:
    from rich.markup import escape

    from nnctl.report.tables import class_report_table, confusion_table, key_value_table, per_output_table
    console.print(f"[bold]{escape(result['checkpoint'])}[/] (epoch {result['epoch']}) on "
                  f"{escape(result['data'])}: {result['n']:,} rows", soft_wrap=True)
    if result["task"] == "classification":
        rows = [("loss", result["loss"]), ("accuracy", result["accuracy"])]
        rows += [(k.replace("_accuracy", " accuracy").replace("_", "-"), v)
                 for k, v in result.items() if k.startswith("top_")]
        rows += [("macro F1", result["macro_avg"]["f1"]), ("weighted F1", result["weighted_avg"]["f1"])]
        console.print(key_value_table(rows))
        labels = result["classes"]
        report = {
            "per_class": {k: [c[k] for c in result["per_class"]] for k in ("precision", "recall", "f1", "support")},
            "macro_avg": result["macro_avg"], "weighted_avg": result["weighted_avg"],
        }
        console.print(class_report_table(report, labels))
        console.print(confusion_table(result["confusion_matrix"], labels))
    else:
        rows = [(k, result[k]) for k in ("loss", "mse", "rmse", "mae", "r2")]
        console.print(key_value_table(rows))
        if "per_output" in result:
            console.print(per_output_table(result["per_output"], result["outputs"]))


def render_show(info, max_rows: int) -> NnctlError | None:
    """Print everything readable about a run; return the checkpoint problem, if any, to fail with."""
    from rich.markup import escape
    from rich.syntax import Syntax

    from nnctl.commands.evaluate import load_model
    from nnctl.report.tables import history_table, key_value_table, model_table, sparkline_rows, status_text
    from nnctl.runs.store import dump_yaml

    title = status_text(info.status, info.problem)
    console.print(f"[bold]{escape(info.name)}[/]  ", title, f"  {escape(str(info.path))}", soft_wrap=True)
    try:
        config_text = (info.path / "config.yaml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        config_text = dump_yaml(info.config) if info.config else None
    if config_text:
        console.rule("config", align="left", style="dim")
        _print(Syntax(config_text.rstrip("\n"), "yaml", theme="ansi_dark", background_color="default",
                      word_wrap=True))

    console.rule("model", align="left", style="dim")
    problem: NnctlError | None = None
    try:
        lm = load_model(info.path)
    except NnctlError as err:
        problem = err
        console.print("(the model cannot be rebuilt; see the error below)", style="red")
    else:
        console.print(model_table(lm.model.summary()))
        console.print(f"{lm.model.num_parameters():,} parameters; input {list(lm.input_shape)}, {lm.dtype}, "
                      f"{lm.task}; weights of epoch {lm.epoch} ({lm.path.name})", markup=False, soft_wrap=True)

    console.rule("history", align="left", style="dim")
    if info.history:
        best_epoch, _ = info.best
        _print(history_table(info.history, best_epoch, max_rows, title=None))
        main = info.main_metric
        groups = [["loss", "val_loss"]] + ([[main, f"val_{main}"]] if main != "loss" else [])
        pad = max(len(k) for group in groups for k in group)
        for group in groups:
            for line in sparkline_rows(info.history, group, pad=pad):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print("(no finished epoch)", style="dim")
    summary = []
    epoch, value = info.best
    if value is not None:
        summary.append((f"best {info.monitor}", f"{value:.4g} (epoch {epoch})"))
    summary += [(k, v) for k, v in info.test.items()]
    if info.seconds is not None:
        from nnctl.report.tables import duration
        summary.append(("time", duration(info.seconds)))
    if summary:
        console.rule("result", align="left", style="dim")
        console.print(key_value_table(summary))
    return problem


def render_diff(a, b, config_rows, metrics) -> None:
    from nnctl.commands.runlist import MISSING, better_direction
    from nnctl.report.tables import config_diff_table, metric_diff_table

    console.print(f"A  {a.path}  ({a.status})", markup=False, soft_wrap=True)
    console.print(f"B  {b.path}  ({b.status})", markup=False, soft_wrap=True)
    for label, run in (("A", a), ("B", b)):
        if run.config is None:
            console.print(f"{label} has no readable config.yaml", style="yellow")
    if config_rows:
        console.print(config_diff_table(config_rows, "A", "B", missing=MISSING))
    else:
        console.print("configs: identical (besides the name)")
    console.print(metric_diff_table(metrics, "A", "B", direction=better_direction))
