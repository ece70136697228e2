"""The CSV logger: `history.csv` in the run folder, one row per epoch, the same numbers as history.json."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from nnctl.loggers import GuardedLogger, Warn
from nnctl.runs.store import write_run_file
from nnctl.training.callbacks import TrainState


FILE = "history.csv"


class CSVLogger(GuardedLogger):
    name = "csv"

    def __init__(self, run_path: Path, warn: Warn):
        super().__init__(warn)
        self.run_path = run_path

    def _write(self, history: list[dict[str, Any]]) -> None:
        # Rewritten whole (atomically) each epoch from the trainer's history, so after a resume
        # or an interrupted epoch it still holds exactly the rows of history.json.
        columns: list[str] = []
        for record in history:
            columns += [k for k in record if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in history:
            # repr keeps every float's full precision, so the CSV parses back to history.json's values
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in record.items()})
        text = buf.getvalue()
        write_run_file(self.run_path, FILE, text)

    def begin(self, state: TrainState) -> None:
        if state.history:
            self._write(state.history)

    def epoch(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write(state.history)
