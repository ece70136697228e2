"""How training looks: Rich progress and per-epoch rows on a terminal, plain lines elsewhere."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nnctl.training.trainer import Listener, Result, Trainer

_FIRST = ("epoch", "lr")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def metric_columns(record: dict[str, Any]) -> list[str]:
    return [k for k in record if k not in ("epoch", "seconds", "lr")]


class PlainReporter(Listener):
    """One line per epoch, no control characters: for pipes, log files and CI."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.epochs = 0

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def on_train_begin(self, trainer: Trainer) -> None:
        self.epochs = trainer.exp.spec.training.epochs
        if not self.quiet:
            exp = trainer.exp
            self._line(f"run {trainer.run.path}  data {exp.dataset.source}  "
                       f"params {exp.model.num_parameters():,}  epochs {self.epochs}")
            for line in exp.dataset.describe():  # target, task, columns (data layer)
                self._line(line)

    def on_epoch_end(self, record: dict[str, Any], improved: bool) -> None:
        if self.quiet:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        parts += [f"{k} {fmt(record[k])}" for k in metric_columns(record)]
        parts += [f"lr {fmt(record['lr'])}", f"{record['seconds']:.2f}s"]
        self._line("  ".join(parts) + ("  *" if improved else ""))


class RichReporter(PlainReporter):
    """A live progress bar per epoch with the running loss, and a table row per finished epoch."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress: Progress | None = None
        self.task = None
        self.header_done = False

    def on_train_begin(self, trainer: Trainer) -> None:
        self.epochs = trainer.exp.spec.training.epochs
        exp = trainer.exp
        self.console.print(f"[bold]{exp.spec.name}[/]  data [cyan]{exp.dataset.source}[/]  "
                           f"{exp.model.num_parameters():,} parameters  → {trainer.run.path}", highlight=False)
        for line in exp.dataset.describe():  # target, task, columns (data layer)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.progress.start()

    def on_epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        assert self.progress is not None
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", loss="-")

    def on_batch_end(self, epoch: int, batch: int, loss: float) -> None:
        assert self.progress is not None
        self.progress.update(self.task, completed=batch, loss=f"{loss:.4f}")

    def on_epoch_end(self, record: dict[str, Any], improved: bool) -> None:
        cols = ["epoch", *metric_columns(record), "lr", "seconds"]
        width = 12
        if not self.header_done:
            # runsui: a space between columns, so a 12-letter name (val_accuracy) is not glued to the one before
            self.console.print(" ".join(f"{c:>{width}}" for c in cols), style="bold", highlight=False)
            self.header_done = True
        row = " ".join(f"{fmt(record[c]) if c != 'epoch' else record[c]:>{width}}" for c in cols)
        self.console.print(row + (" [green]*[/]" if improved else ""), highlight=False)

    def on_train_end(self, result: Result) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_table(result: Result, run_path: str) -> Table:
    table = Table(title="summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", result.status)
    table.add_row("epochs", str(result.epochs_run))
    if result.best_epoch is not None:
        table.add_row("best epoch", f"{result.best_epoch} ({result.monitor} {fmt(result.best_value)})")
    for k, v in result.test_metrics.items():
        table.add_row(k, fmt(v))
    table.add_row("run", run_path)
    table.add_row("time", f"{result.seconds:.1f}s")
    return table


def summary_line(result: Result, run_path: str) -> str:
    parts = [f"{result.status}: {result.epochs_run} epochs"]
    if result.best_epoch is not None:
        parts.append(f"best epoch {result.best_epoch} ({result.monitor} {fmt(result.best_value)})")
    parts += [f"{k} {fmt(v)}" for k, v in result.test_metrics.items()]
    parts += [f"run {run_path}", f"{result.seconds:.1f}s"]
    return ", ".join(parts)
