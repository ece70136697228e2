"""BLAS threads: the default, the order of the sources, the train header, the record in the run, resume."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nnctl import threads
from nnctl.cli import app
from nnctl.config.spec import spec_from_dict
from nnctl.runs.checkpoint import load_checkpoint
from conftest import as_interrupted

runner = CliRunner()

SPEC = """\
name: t
seed: 3
data: {dataset: moons, options: {n_samples: 120}}
model: {hidden: [8]}
optimizer: {name: adam, lr: 0.01}
training: {epochs: 2, batch_size: 16}
"""


@pytest.fixture
def clean_env(monkeypatch):
    for var in threads.BLAS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_preset_default", None)
    return monkeypatch


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (64, 4)])
def test_default_is_half_the_physical_cores_between_1_and_4(cores, expected):
    assert threads.default_threads(cores) == expected


def test_sources_in_order_flag_spec_environment_default(clean_env):
    cores = threads.physical_cores()
    word = "core" if cores == 1 else "cores"
    assert threads.choose(None, None) == threads.Choice(threads.default_threads(cores),
                                                        f"default for {cores} physical {word}")
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose(None, None) == threads.Choice(3, "OMP_NUM_THREADS")
    clean_env.setenv("OPENBLAS_NUM_THREADS", "5")  # listed first: the one OpenBLAS itself reads
    assert threads.choose(None, None) == threads.Choice(5, "OPENBLAS_NUM_THREADS")
    assert threads.choose(None, 2) == threads.Choice(2, "training.threads")
    assert threads.choose(7, 2) == threads.Choice(7, "--threads")


def _spec(threads_value):
    raw = {"name": "t", "data": {"dataset": "xor"}, "model": {"hidden": [4]},
           "training": {"epochs": 1, "threads": threads_value}}
    return spec_from_dict(raw)


def test_resolve_records_the_count_and_a_resume_keeps_it(clean_env):
    spec = _spec(None)
    choice = threads.resolve(2, spec, resumed=False)
    assert choice == threads.Choice(2, "--threads") and spec.training.threads == 2
    assert spec.to_dict()["training"]["threads"] == 2
    resumed = _spec(3)
    assert threads.resolve(None, resumed, resumed=True) == threads.Choice(3, "recorded in the run")
    assert threads.resolve(3, resumed, resumed=True) == threads.Choice(3, "recorded in the run")
    with pytest.raises(threads.ThreadsError) as err:
        threads.resolve(1, resumed, resumed=True)
    assert str(err.value) == ("--threads 1: the run was trained with 3 BLAS threads and resumes with them "
                              "(results depend on the count); leave --threads out")
    # a run recorded before threads were recorded resumes with the usual choice
    old = _spec(None)
    assert threads.resolve(None, old, resumed=True).source.startswith("default for ")


def test_training_threads_is_validated_with_its_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("batch_size: 16}", "batch_size: 16, threads: 0}"))
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 1
    assert "training.threads: must be >= 1, got 0" in res.output and "line 6" in res.output, res.output


def test_limited_sets_and_restores_the_blas_pool():
    pytest.importorskip("threadpoolctl", reason="the threadpoolctl path needs the fast extra")
    before = threads.current_blas_threads()
    with threads.limited(1, "--threads"):
        assert threads.current_blas_threads() == 1
    assert threads.current_blas_threads() == before


def test_without_threadpoolctl_a_count_numpy_did_not_load_with_is_refused(clean_env):
    clean_env.setitem(sys.modules, "threadpoolctl", None)  # import threadpoolctl now raises ImportError
    clean_env.setenv("OPENBLAS_NUM_THREADS", "1")
    with threads.limited(1, "training.threads"):
        pass  # the environment NumPy loaded with already says 1: nothing to do
    with pytest.raises(threads.ThreadsError) as err:
        with threads.limited(2, "training.threads"):
            pass
    assert str(err.value) == ("training.threads: 2 BLAS threads cannot be set once NumPy is loaded "
                              "(NumPy loaded with OPENBLAS_NUM_THREADS=1); threadpoolctl is not installed: "
                              'pip install -e ".[fast]", or set OPENBLAS_NUM_THREADS=2')


def test_train_header_config_and_resume_with_the_recorded_count(tmp_path, clean_env):
    pytest.importorskip("threadpoolctl", reason="changing the count in-process needs the fast extra")
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    res = runner.invoke(app, ["train", str(spec), "--threads", "1", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    blas = threads.blas_name()
    assert res.output.splitlines()[0] == f"threads: 1 (--threads; BLAS {blas})"
    (run,) = sorted((tmp_path / "runs").iterdir())
    assert "threads: 1" in (run / "config.yaml").read_text()
    ckpt_path = run / "checkpoints" / "last.npz"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.meta["config"]["training"]["threads"] == 1
    as_interrupted(run, 3)   # a 3-epoch run interrupted after 2: resume it
    refused = runner.invoke(app, ["train", "--resume", str(run), "--threads", "2"])
    assert refused.exit_code == 1
    assert "--threads 2: the run was trained with 1 BLAS threads and resumes with them" in refused.output
    res = runner.invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"threads: 1 (recorded in the run; BLAS {blas})"
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_cli_import_loads_neither_numpy_nor_threadpoolctl():
    code = ("import sys, nnctl.cli; bad = [m for m in ('numpy', 'threadpoolctl') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_the_cli_puts_the_default_into_the_environment_before_numpy(tmp_path):
    """A fresh `nnctl train` process with no BLAS variables: NumPy loads with the default count."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {k: v for k, v in __import__("os").environ.items() if k not in threads.BLAS_VARS}
    code = ("import sys; from nnctl.cli import app; sys.argv = ['nnctl', 'train', sys.argv[1], '--runs-dir', "
            "sys.argv[2], '-q']\n"
            "import os\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('ENV', os.environ.get('OPENBLAS_NUM_THREADS'))")
    out = subprocess.run([sys.executable, "-c", code, str(spec), str(tmp_path / "runs")], capture_output=True,
                         text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert f"ENV {threads.default_threads()}" in out.stdout, out.stdout + out.stderr
    (run,) = sorted((tmp_path / "runs").iterdir())
    assert f"threads: {threads.default_threads()}" in (run / "config.yaml").read_text()


def test_a_sweep_trial_is_the_same_trial_whatever_thread_count_its_run_recorded():
    """The run writes training.threads; the trial's snapshot has null: resume must still see it done."""
    from nnctl.sweep.spec import config_hash
    trial = _spec(None).to_dict()
    ran = _spec(1).to_dict()
    assert trial["training"]["threads"] is None and ran["training"]["threads"] == 1
    assert config_hash(ran) == config_hash(trial)
    other = _spec(1).to_dict()
    other["training"]["epochs"] = 2
    assert config_hash(other) != config_hash(trial)
