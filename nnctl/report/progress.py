"""How training looks: Rich progress and per-epoch rows on a terminal, plain lines elsewhere."""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from nnctl.training.callbacks import Callback, TrainState
from nnctl.training.trainer import Result

_FIRST = ("epoch", "lr")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def metric_columns(record: dict[str, Any]) -> list[str]:
    return [k for k in record if k not in ("epoch", "seconds", "lr")]


class PlainReporter(Callback):
    """One line per epoch, no control characters: for pipes, log files and CI."""

    def __init__(self, console: Console, run_path: Any = "", quiet: bool = False):
        self.console = console
        self.run_path = run_path
        self.quiet = quiet
        self.epochs = 0

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def on_train_begin(self, state: TrainState) -> None:
        self.epochs = state.epochs
        if not self.quiet:
            self._line(f"run {self.run_path}  data {state.dataset.source}  "
                       f"params {state.model.num_parameters():,}  epochs {self.epochs}")
            for line in state.dataset.describe():  # target, task, columns (data layer)
                self._line(line)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any], improved: bool) -> None:
        if self.quiet:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        parts += [f"{k} {fmt(record[k])}" for k in metric_columns(record)]
        parts += [f"lr {fmt(record['lr'])}", f"{record['seconds']:.2f}s"]
        self._line("  ".join(parts) + ("  *" if improved else ""))


def throughput(samples: int, seconds: float, remaining_samples: int) -> tuple[float | None, float | None]:
    """(samples per second, seconds left for the run) from what this process has trained so far;
    (None, None) before there is anything to measure."""
    if samples <= 0 or seconds <= 0:
        return None, None
    rate = samples / seconds
    return rate, remaining_samples / rate


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def table_widths(cols: list[str], width: int = 10) -> list[int]:
    """Each column at least as wide as its name; the caller puts a space between columns."""
    return [max(width, len(c)) for c in cols]


class RichReporter(PlainReporter):
    """A live bar per epoch (batches, running loss, samples/s, the run's ETA) and a table row per
    finished epoch."""

    def __init__(self, console: Console, run_path: Any = "", clock_fn=None):
        super().__init__(console, run_path)
        self.now = clock_fn or time.perf_counter   # injectable, so a test controls the numbers
        self.progress: Progress | None = None
        self.task = None
        self.cols: list[str] | None = None
        self.widths: list[int] = []
        self.rows = 0          # training rows per epoch
        self.batch_size = 1
        self.t0 = 0.0
        self.done_epochs = 0   # epochs trained by this process (a resume starts later)
        self.first_epoch = 0

    def on_train_begin(self, state: TrainState) -> None:
        self.epochs = state.epochs
        self.rows = len(state.dataset.train)
        self.batch_size = state.spec.training.batch_size
        self.first_epoch = state.epoch
        self.console.print(f"[bold]{state.spec.name}[/]  data [cyan]{state.dataset.source}[/]  "
                           f"{state.model.num_parameters():,} parameters  → {self.run_path}", highlight=False)
        for line in state.dataset.describe():  # target, task, columns (data layer)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                 TextColumn("batch {task.fields[batch]}"), TextColumn("loss {task.fields[loss]}"),
                                 TextColumn("{task.fields[speed]} samples/s"), TextColumn("ETA {task.fields[eta]}"),
                                 console=self.console, transient=True)
        self.progress.start()
        self.t0 = self.now()

    def _numbers(self, state: TrainState, batch: int) -> dict[str, str]:
        in_epoch = min(batch * self.batch_size, self.rows)
        samples = (state.epoch - self.first_epoch) * self.rows + in_epoch
        remaining = (state.epochs - state.epoch) * self.rows - in_epoch
        rate, eta = throughput(samples, self.now() - self.t0, remaining)
        return {"batch": f"{batch}/{state.steps_per_epoch}", "speed": "-" if rate is None else f"{rate:,.0f}",
                "eta": clock(eta)}

    def on_epoch_begin(self, state: TrainState) -> None:
        assert self.progress is not None
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=state.steps_per_epoch,
                                           epoch=f"{state.epoch + 1}/{state.epochs}", loss="-",
                                           **self._numbers(state, 0))

    def on_batch_end(self, state: TrainState, batch: int, loss: float) -> None:
        assert self.progress is not None
        self.progress.update(self.task, completed=batch, loss=f"{loss:.4f}", **self._numbers(state, batch))

    def on_epoch_end(self, state: TrainState, record: dict[str, Any], improved: bool) -> None:
        if self.cols is None:
            self.cols = ["epoch", *metric_columns(record), "lr", "seconds"]
            self.widths = table_widths(self.cols)
            self.console.print(" ".join(f"{c:>{w}}" for c, w in zip(self.cols, self.widths)),
                               style="bold", highlight=False)
        row = " ".join(f"{fmt(record[c]) if c != 'epoch' else record[c]:>{w}}" for c, w in zip(self.cols, self.widths))
        self.console.print(row + (" [green]*[/]" if improved else ""), highlight=False)

    def on_train_end(self, state: TrainState, result: Result) -> None:
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
