"""The MLflow logger: one MLflow run per nnctl run, with the resolved spec as params, every
epoch's metrics (step = epoch), the final test metrics, and the run's status as a tag."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnctl.loggers import NEEDS, GuardedLogger, Warn, epoch_values, require
from nnctl.runs.store import read_run_file, write_run_file
from nnctl.training.callbacks import TrainState

# The MLflow run id, kept in the nnctl run folder so a resume logs into the same MLflow run.
RUN_ID_FILE = "mlflow_run_id"
# nnctl status -> MLflow's run status
TERMINAL = {"completed": "FINISHED", "stopped_early": "FINISHED", "pruned": "FINISHED",
            "interrupted": "KILLED", "failed": "FAILED"}


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings -> dotted keys (`training.batch_size`); lists and leaves as JSON text."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data if isinstance(data, str) else json.dumps(data)}


class MLflowLogger(GuardedLogger):
    name = "mlflow"

    def __init__(self, run_path: Path, warn: Warn, tracking_uri: str = "./mlruns", experiment: str | None = None):
        super().__init__(warn)
        self.run_path = run_path
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None

    def begin(self, state: TrainState) -> None:
        mlflow = require(*NEEDS["mlflow"])
        from mlflow.tracking import MlflowClient
        uri = self.tracking_uri
        if ":" not in uri:
            # A plain path is MLflow's local file store, which MLflow 3 only opens when asked
            # to; the spec asking for a path is that request.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path(uri).resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        logged_to = 0
        kept_id = read_run_file(self.run_path, RUN_ID_FILE) if state.resumed else None
        if kept_id is not None:
            self.run_id = kept_id.strip()
            self.client.update_run(self.run_id, status="RUNNING")
            # epochs this MLflow run already has: the next process logs only what is missing
            steps = [m.step for m in self.client.get_metric_history(self.run_id, "loss")]
            logged_to = max(steps, default=0)
        else:
            name = self.experiment or state.spec.name
            found = self.client.get_experiment_by_name(name)
            exp_id = found.experiment_id if found is not None else self.client.create_experiment(name)
            run = self.client.create_run(exp_id, run_name=self.run_path.name,
                                         tags={"nnctl.run_dir": str(self.run_path), "nnctl.status": "running"})
            self.run_id = run.info.run_id
            write_run_file(self.run_path, RUN_ID_FILE, self.run_id + "\n")
            params = [mlflow.entities.Param(k, v[:6000]) for k, v in flatten(state.spec.to_dict()).items()]
            for i in range(0, len(params), 100):   # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        for record in state.history:
            if record["epoch"] > logged_to:
                self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        stamp = 0   # the step (epoch) orders the values; wall-clock stamps would differ on re-runs
        metrics = [Metric(k, v, stamp, record["epoch"]) for k, v in epoch_values(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def epoch(self, state: TrainState, record: dict[str, Any]) -> None:
        self._log(record)

    def end(self, state: TrainState, result) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        if result.test_metrics:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), 0, result.epochs_run)
                                                        for k, v in result.test_metrics.items()])
        self.client.set_tag(self.run_id, "nnctl.status", result.status)
        self.client.set_terminated(self.run_id, status=TERMINAL.get(result.status, "FAILED"))
