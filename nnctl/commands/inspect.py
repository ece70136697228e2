"""The post-training commands `eval`, `predict`, `runs`, `show`, `diff` and `plot`, added to the CLI by `register`.

Each command parses its options, calls one function (nnctl.commands.evaluate/predict,
nnctl.runs.catalog/model, nnctl.report.plots) and renders the result with nnctl.report.views;
expected failures are NnctlErrors
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

from nnctl.completion import complete_run
from nnctl.console import console, err_console
from nnctl.errors import NnctlError


# `nnctl runs` fits this many columns when its output is not a terminal (a terminal: its width) unless --wide.
COMPACT_WIDTH = 100


class SplitName(str, Enum):
    test = "test"
    val = "val"
    train = "train"


def _print_json(data: Any) -> None:
    # plain stdout, not Rich: exactly one strict JSON document (NaN -> null), never wrapped or styled
    from nnctl.report.metrics import finite_json
    sys.stdout.write(json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n")


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    """Add eval, predict, runs, show, diff and plot to `app`; `fail(err)` prints an error and exits 1."""

    @app.command("eval")
    def eval_command(
        target: Path = typer.Argument(..., help="A checkpoint (.npz) or a run directory (its best weights).",
                                      autocompletion=complete_run),
        data: Optional[str] = typer.Option(None, "--data", help="A .csv/.npz file or a built-in dataset name "
                                           "(default: the run's own split)."),
        split: Optional[SplitName] = typer.Option(None, "--split", help="Which of the run's splits (default: test)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="Rows per forward pass (default: the run's eval_batch_size)."),
    ) -> None:
        """Score a trained model: loss and metrics, per-class report and confusion matrix."""
        from nnctl.threads import preset
        preset(None)  # training's default BLAS threads before NumPy loads, as predict does
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
            from nnctl.report.views import render_eval
            render_eval(result)
            if result.get("note"):  # data layer: e.g. categories the training split never had
                err_console.print(f"note: {result['note']}", markup=False, highlight=False, soft_wrap=True)

    @app.command("predict")
    def predict_command(
        target: Path = typer.Argument(..., help="A checkpoint (.npz) or a run directory (its best weights).",
                                      autocompletion=complete_run),
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
        from nnctl.threads import preset
        # training's default BLAS threads, before NumPy loads: OpenBLAS's own default (every
        # core, spin-waiting) halved predict's speed on a busy 2-core machine
        preset(None)
        from nnctl.runs.model import default_batch_size, load_model
        from nnctl.commands.predict import csv_parser, run_predict
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
            # the parser and its threads, as validate and the train header show them
            parsed = f"; CSV parsed by {csv_parser(input)}" if input.suffix.lower() == ".csv" else ""
            console.print(f"wrote {n:,} predictions to {out}{parsed}", markup=False, soft_wrap=True)

    @app.command("runs")
    def runs_command(
        runs_dir: Path = typer.Argument(Path("runs"), help="The folder holding run directories."),
        sort: Optional[str] = typer.Option(None, "--sort", help="A column (name, started, status, epochs, "
                                           "parameters, time, best) or a metric (val_accuracy, test_loss, ...), "
                                           "best first."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON list and nothing else."),
        wide: bool = typer.Option(False, "--wide", "-w", help="Every column and full run names, however wide."),
    ) -> None:
        """List runs: status, epochs, best and test metrics, time; fits the window."""
        from nnctl.runs.catalog import scan_runs, sort_runs
        from nnctl.report.tables import run_problems, runs_table
        from nnctl.report.views import print_fitted
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
            # the terminal's width; into a pipe or file, 100 columns (--wide: no limit)
            width = None if wide else console.width if console.is_terminal else COMPACT_WIDTH
            print_fitted(runs_table(runs, width))
            for line in run_problems(runs, width):
                console.print(line, style="dim", markup=False, highlight=False, soft_wrap=True)

    @app.command("show")
    def show_command(
        run: Path = typer.Argument(..., help="A run directory.", autocompletion=complete_run),
        rows: int = typer.Option(15, "--rows", min=3, help="At most this many history rows (spread evenly)."),
    ) -> None:
        """Show one run: config, model summary, history table and loss sparklines."""
        from nnctl.runs.catalog import open_run
        try:
            info = open_run(run)
        except NnctlError as err:
            fail(err)
            return
        from nnctl.report.views import render_show
        problem = render_show(info, rows)
        if problem is not None:
            fail(problem)

    @app.command("diff")
    def diff_command(
        run_a: Path = typer.Argument(..., help="Run A.", autocompletion=complete_run),
        run_b: Path = typer.Argument(..., help="Run B.", autocompletion=complete_run),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    ) -> None:
        """Compare two runs: the config keys that differ and the metrics, with B − A."""
        from nnctl.runs.catalog import config_diff, is_missing, metric_diff, open_run
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
        from nnctl.report.views import render_diff
        render_diff(a, b, config_rows, metrics)

    @app.command("plot")
    def plot_command(
        runs: List[Path] = typer.Argument(..., help="One or more run directories.", autocompletion=complete_run),
        metric: List[str] = typer.Option([], "--metric", "-m", help="A logged metric to draw (repeatable); "
                                         "default: loss and accuracy or r2, train and val."),
        out: Path = typer.Option(Path("curves.png"), "--out", "-o", help="The PNG to write."),
        dpi: int = typer.Option(100, "--dpi", min=20, max=600, help="Pixels per inch (a panel is 5 x 4 inches)."),
        latent: bool = typer.Option(False, "--latent", help="An autoencoder/VAE run: a 2-D map of its codes "
                                    "(first two dimensions or PCA), coloured by label."),
    ) -> None:
        """Draw learning curves of one or more runs (one panel per metric) into a PNG."""
        from nnctl.runs.catalog import open_run
        from nnctl.report.plots import plot_runs, require_matplotlib
        if latent:
            from nnctl.commands.generate import latent_map
            try:
                console.print(latent_map(runs, out, dpi), markup=False, soft_wrap=True)
            except NnctlError as err:
                fail(err)
            return
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
