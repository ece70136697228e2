"""Pruning inside a trial: a training callback that reports each epoch's metric to the study.

A trial process is `nnctl train SPEC --sweep-pruning '<json>'` (a hidden option the sweep's
executor adds), so the trial is still the normal train command and run directory, plus this
callback.

The trial process (a local worker's child, or one started by a Dask task) opens the sweep's
study from its journal file, finds its own trial by number, reports the monitored metric
after every epoch and, when the pruner says so, asks the trainer to stop with status
`pruned` (a clean end: checkpoints, history and test metrics are kept, exit code 0).

`job["pruning"]` carries what is needed, as plain data:
    {"journal": "/abs/sweep/study.journal", "trial": 7, "metric": "val_loss",
     "pruner": {"name": "median", "warmup_epochs": 5, ...}}
"""
from __future__ import annotations

import json
import math
from typing import Any

from nnctl.errors import NnctlError

from nnctl.training.callbacks import Callback


class PruningCallback(Callback):
    """Report `metric` after every epoch; stop the run as `pruned` when the study's pruner says so."""

    def __init__(self, journal: str, trial: int, metric: str, pruner: dict[str, Any] | None):
        self.journal = journal
        self.number = int(trial)
        self.metric = metric
        self.pruner_spec = pruner or {"name": "none"}
        self._trial = None

    def _open(self):
        if self._trial is None:
            from nnctl.sweep.search import STUDY_NAME, import_optuna, journal_storage, make_pruner
            optuna = import_optuna()
            storage = journal_storage(self.journal)
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=make_pruner(self.pruner_spec))
            study_id = storage.get_study_id_from_name(STUDY_NAME)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_train_begin(self, state) -> None:
        self._open()   # a journal that cannot be read fails the trial before its first epoch

    def on_epoch_end(self, state, record: dict, improved: bool) -> None:
        value = record.get(self.metric)
        if value is None:
            raise NnctlError(f"pruning: {self.metric} is not in the epoch's record (it has {', '.join(record)})")
        value = float(value)
        if not math.isfinite(value):
            return   # a NaN fails the trial by itself; the pruner must not see it
        trial = self._open()
        epoch = int(record.get("epoch", state.epoch))
        # A rerun (resume) reports epochs it reported before; Optuna keeps the first value.
        trial.report(value, epoch)
        if self.pruner_spec.get("name", "none") != "none" and trial.should_prune():
            state.request_stop("pruned", f"pruned by the {self.pruner_spec['name']} pruner at epoch {epoch} "
                                         f"({self.metric} {value:.4g})")


def pruning_callbacks(text: str) -> list:
    """The callbacks of `nnctl train --sweep-pruning JSON` (see the module notes)."""
    try:
        info = json.loads(text)
        return [PruningCallback(info["journal"], info["trial"], info["metric"], info.get("pruner"))]
    except (ValueError, KeyError, TypeError) as err:
        raise NnctlError(f"--sweep-pruning: not a pruning job ({type(err).__name__}: {err})") from None


def callbacks_for(job: dict[str, Any]) -> list:
    """The extra training callbacks a sweep trial runs with (pruning, when the sweep prunes)."""
    info = job.get("pruning")
    if not info:
        return []
    return [PruningCallback(info["journal"], info["trial"], info["metric"], info.get("pruner"))]
