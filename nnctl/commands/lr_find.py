"""`nnctl lr-find`: the learning-rate range test on a spec's model; prints and saves the curve and suggestions."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer

from nnctl.console import console
from nnctl.errors import NnctlError


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    @app.command("lr-find")
    def lr_find(
        config: Path = typer.Argument(..., help="The train spec whose model, optimizer and data are tested."),
        min_lr: float = typer.Option(1e-7, "--min", help="The first learning rate."),
        max_lr: float = typer.Option(10.0, "--max", help="The last learning rate (the test stops earlier if the loss diverges)."),
        steps: int = typer.Option(100, "--steps", help="Mini-batches, one per learning rate, geometrically spaced."),
        apply: bool = typer.Option(False, "--apply", help="Print the --set option that trains with the suggested lr."),
        overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a spec value, e.g. --set training.batch_size=64."),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the lr-find folder is created."),
    ) -> None:
        """Find a learning rate: train a fresh model while the lr grows, until the loss diverges."""
        try:
            run_lr_find(config, min_lr, max_lr, steps, apply, overrides or [], runs_dir)
        except NnctlError as err:
            fail(err)


def run_lr_find(config: Path, min_lr: float, max_lr: float, steps: int, apply: bool, overrides: list[str],
                runs_dir: Path) -> Path:
    """Check the spec and the range, run the test, write lr_find.json (+ lr_find.png), print the suggestions."""
    from nnctl.config.spec import load_spec, safe_run_name
    from nnctl.runs.store import unique_dir, write_lr_find
    from nnctl.training.experiment import prepare
    from nnctl.training.lr_find import find_lr, lr_schedule

    lr_schedule(min_lr, max_lr, steps)   # a bad range fails before the data is loaded
    spec = load_spec(config, overrides)
    exp = prepare(spec)
    result = find_lr(exp, min_lr, max_lr, steps)
    folder = unique_dir(Path(runs_dir), safe_run_name(f"{spec.name}-lr-find"), what="run")
    try:
        write_lr_find(folder, spec.to_dict(), result.to_dict())
    except OSError as err:
        raise NnctlError(f"{folder}: cannot write: {err.strerror or err}") from None
    png = None
    try:
        from nnctl.report.search_plots import plot_lr_curve
        png = plot_lr_curve(result, folder / "lr_find.png")
    except NnctlError as err:   # matplotlib missing: the JSON is the record
        console.print(f"no PNG: {err}", markup=False, highlight=False, soft_wrap=True)

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"lr-find {spec.name}: {len(result.lrs)} steps from lr {min_lr:g} to {result.lrs[-1]:.3g}; {result.stopped}")
    if result.suggested is not None:
        line(f"suggested lr: {result.suggested:.3g} (half the lr where the smoothed loss bottoms out)")
    else:
        line("suggested lr: none (the smoothed loss never fell; widen --min/--max or add --steps)")
    also = [f"steepest descent at {result.steepest:.3g} (moves with --steps)"] if result.steepest is not None else []
    if result.min_over_10 is not None:
        also.append(f"lowest loss / 10 at {result.min_over_10:.3g}")
    if also:
        line("  also: " + ", ".join(also))
    line(f"curve: {folder / 'lr_find.json'}" + (f", {png}" if png else ""))
    if apply and result.suggested is not None:
        line(f"nnctl train {config} --set optimizer.lr={result.suggested:.3g}")
    return folder
