"""Loggers from the spec: CSV, TensorBoard (event files read back) and MLflow (a file store read
with MlflowClient), each compared value by value with history.json; a failing logger only warns."""
from __future__ import annotations

import csv
import json
import struct
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from nnctl.commands.train import run_training
from nnctl.errors import ConfigError, NnctlError
from nnctl.training.callbacks import Callback

SPEC = """\
name: logged
seed: 5
data: {dataset: blobs, options: {n_samples: 40}, val_split: 0.25, test_split: 0.25}
model: {hidden: [3]}
training: {epochs: 3, batch_size: 16}
loggers: LOGGERS
"""


def spec_file(tmp_path: Path, loggers: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC).replace("LOGGERS", loggers))
    return path


def only_run(runs: Path) -> Path:
    found = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(found) == 1, found
    return found[0]


def numbers(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k != "epoch"}


def read_csv(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars of every event file in `folder` (TFRecord framing, tensorboardX's Event proto),
    by tag and step; a later file's value for a step replaces an earlier one (purge on resume)."""
    from tensorboardX.proto.event_pb2 import Event
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out[value.tag][event.step] = value.simple_value
    return out


def test_csv_tensorboard_and_mlflow_log_what_history_json_holds(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 opens a file store only when asked
    store = tmp_path / "mlruns"
    spec = spec_file(tmp_path, f"[tensorboard, csv, {{mlflow: {{tracking_uri: {store}, experiment: exp1}}}}]")
    assert run_training(spec, [], None, tmp_path / "runs", True) == 0
    run = only_run(tmp_path / "runs")
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(history) == 3

    # CSV: the same rows, every float exact
    assert read_csv(run) == history

    # TensorBoard: one scalar per metric per epoch (stored as float32), plus the test metrics
    events = read_events(run / "tensorboard")
    for record in history:
        for key, value in numbers(record).items():
            assert events[key][record["epoch"]] == np.float32(value), (key, record["epoch"])
    assert set(events) == set(numbers(history[0])) | set(metrics["test"])
    for key, value in metrics["test"].items():
        assert events[key] == {3: np.float32(value)}

    # MLflow: params = the flattened resolved spec, metrics per epoch, test metrics, status
    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("exp1")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_id == (run / "mlflow_run_id").read_text().strip()
    assert mrun.info.status == "FINISHED"
    assert mrun.data.tags["nnctl.status"] == "completed"
    assert mrun.data.params["training.epochs"] == "3"
    assert mrun.data.params["training.batch_size"] == "16"
    assert mrun.data.params["data.dataset"] == "blobs"
    assert mrun.data.params["model.hidden"] == "[3]"
    for key in numbers(history[0]):
        logged = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, key)}
        assert logged == {r["epoch"]: r[key] for r in history}, key
    for key, value in metrics["test"].items():
        assert mrun.data.metrics[key] == value


class InterruptAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, state, record, improved):
        if state.epoch == self.epoch:
            state.request_stop("interrupted", "test")


def test_a_resumed_run_logs_each_epoch_once(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 opens a file store only when asked
    store = tmp_path / "mlruns"
    spec = spec_file(tmp_path, f"[csv, tensorboard, {{mlflow: {{tracking_uri: {store}}}}}]")
    assert run_training(spec, [], None, tmp_path / "runs", True, callbacks=[InterruptAt(2)]) == 130
    run = only_run(tmp_path / "runs")
    client = MlflowClient(tracking_uri=store.as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("logged").experiment_id])
    assert mrun.info.status == "KILLED" and mrun.data.tags["nnctl.status"] == "interrupted"
    assert [r["epoch"] for r in read_csv(run)] == [1, 2]
    assert run_training(None, [], run, tmp_path / "runs", True) == 0
    history = json.loads((run / "history.json").read_text())
    assert read_csv(run) == history and len(history) == 3
    events = read_events(run / "tensorboard")
    assert events["loss"] == {r["epoch"]: np.float32(r["loss"]) for r in history}
    (mrun,) = client.search_runs([client.get_experiment_by_name("logged").experiment_id])
    assert mrun.info.status == "FINISHED" and mrun.data.tags["nnctl.status"] == "completed"
    steps = [m.step for m in client.get_metric_history(mrun.info.run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3]


def test_a_failing_logger_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    """MLflow down (nothing listens on the port): one warning, the run completes, the CSV is complete."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    spec = spec_file(tmp_path, "[{mlflow: {tracking_uri: 'http://127.0.0.1:9'}}, csv]")
    assert run_training(spec, [], None, tmp_path / "runs", True) == 0
    run = only_run(tmp_path / "runs")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("warning: mlflow logger failed to start (")
    assert warnings[0].endswith("); training goes on without it")
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert read_csv(run) == json.loads((run / "history.json").read_text())


def test_a_missing_extra_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # makes `import tensorboardX` fail
    spec = spec_file(tmp_path, "[csv, tensorboard]")
    with pytest.raises(NnctlError) as err:
        run_training(spec, [], None, tmp_path / "runs", True)
    assert str(err.value) == 'tensorboardX is not installed: pip install -e ".[tensorboard]"'
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("loggers, message", [
    ("[tensorbord]", "loggers[0]: unknown logger 'tensorbord'"),
    ("csv", "loggers: must be a list of logger names or {name: options} mappings, got 'csv'"),
    ("[csv, csv]", "loggers[1]: logger csv is listed twice"),
    ("[{mlflow: {tracking_url: x}}]", "loggers[0].mlflow.tracking_url: unknown key 'tracking_url'"),
    ("[{csv: 1, mlflow: 2}]", "loggers[0]: must be a logger name or a one-key mapping {name: options}, got a mapping"),
])
def test_bad_loggers_name_the_key_and_line(tmp_path, loggers, message):
    spec = spec_file(tmp_path, loggers)
    with pytest.raises(ConfigError) as err:
        run_training(spec, [], None, tmp_path / "runs", True)
    assert str(err.value).startswith(message), str(err.value)
    assert "(spec.yaml line 6" in str(err.value), str(err.value)
