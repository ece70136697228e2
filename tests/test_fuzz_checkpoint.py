"""Fuzzing checkpoints: truncated, random, corrupted, mismatched or pickled files are only ever a CheckpointError.

Every case goes through `load_checkpoint` and then the model rebuild
(`model_from_checkpoint`), so metadata that does not fit its arrays is caught as well;
a sample of metadata damage also goes through `nnctl train --resume`'s restore. Pickled
payloads are real: loading them with allow_pickle=True would create a marker file, and
the test first shows that it does, then that nnctl never does.
"""
from __future__ import annotations

import copy
import io
import json
import pickle
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.runs.model import model_from_checkpoint
from nnctl.commands.train import run_training
from nnctl.errors import CheckpointError, NnctlError
from nnctl.runs.checkpoint import META_KEY, load_checkpoint, save_checkpoint
from nnctl.runs.store import RunDir

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SPEC = """\
name: ck
data: {dataset: blobs, options: {n_samples: 120}}
model:
  layers: [{dense: 8}, layer_norm, {residual: {layers: [{dense: 8}, relu]}}, {dropout: 0.1}, batch_norm]
training: {epochs: 2, batch_size: 16}
"""


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    # thousands of checkpoint writes: durability is not what these tests are about (test_faults is)
    import nnctl.runs.store as store
    monkeypatch.setattr(store.os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real two-epoch run: its directory, its last.npz bytes and the loaded checkpoint."""
    root = tmp_path_factory.mktemp("ck")
    (root / "spec.yaml").write_text(SPEC)
    res = CliRunner().invoke(app, ["train", str(root / "spec.yaml"), "--runs-dir", str(root / "runs"), "--quiet"])
    assert res.exit_code == 0, res.output
    run = next((root / "runs").iterdir())
    last = run / "checkpoints" / "last.npz"
    return {"run": run, "raw": last.read_bytes(), "ckpt": load_checkpoint(last), "root": root}


def attempt(path: Path) -> str:
    """'valid' or 'CheckpointError' through load + model rebuild; any other exception fails the test."""
    try:
        model_from_checkpoint(load_checkpoint(path))
    except CheckpointError as err:
        text = str(err)
        assert text.startswith(str(path)), text          # names the file
        assert len(text.splitlines()) == 1, text          # one line
        return "CheckpointError"
    return "valid"


def rewrite(path: Path, meta: dict, arrays: dict) -> Path:
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "nnctl_version")}
    save_checkpoint(path, meta, arrays)
    return path


def test_the_unmodified_checkpoint_is_valid(trained, tmp_path):
    path = tmp_path / "same.npz"
    path.write_bytes(trained["raw"])
    assert attempt(path) == "valid"


# ---------------------------------------------------------------------------- bytes

def test_every_truncation_is_refused(trained, tmp_path, record_counts):
    raw, path = trained["raw"], tmp_path / "cut.npz"
    counts = Counter()
    # every cut point near both ends (headers, central directory), every 7th byte between
    cuts = sorted(set(range(0, 64)) | set(range(64, len(raw), 7)) | set(range(max(0, len(raw) - 200), len(raw))))
    for n in cuts:
        path.write_bytes(raw[:n])
        counts[attempt(path)] += 1
    record_counts("checkpoint: truncated files", counts)
    assert counts == {"CheckpointError": len(cuts)}


def test_random_bytes_are_refused(tmp_path, record_counts):
    counts = Counter()
    path = tmp_path / "noise.npz"

    @settings(max_examples=300, **FUZZ)
    @given(st.one_of(st.binary(max_size=600),
                     st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b),
                     st.binary(max_size=600).map(lambda b: b"PK\x05\x06" + b)))
    def run(data):
        path.write_bytes(data)
        counts[attempt(path)] += 1

    run()
    record_counts("checkpoint: random bytes", counts)
    assert counts == {"CheckpointError": sum(counts.values())} and sum(counts.values()) >= 250


def test_corrupted_bytes(trained, tmp_path, record_counts):
    raw = trained["raw"]
    counts = Counter()
    path = tmp_path / "flip.npz"

    @settings(max_examples=400, **FUZZ)
    @given(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=4))
    def run(edits):
        data = bytearray(raw)
        for pos, value in edits:
            data[pos] = value
        path.write_bytes(bytes(data))
        counts[attempt(path)] += 1

    run()
    record_counts("checkpoint: corrupted bytes", counts)
    assert counts["CheckpointError"] > 0 and sum(counts.values()) >= 350


def test_zip_member_that_is_not_an_array(trained, tmp_path):
    path = tmp_path / "extra.npz"
    with zipfile.ZipFile(io.BytesIO(trained["raw"])) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("notes.txt", b"hello")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: member 'notes.txt' is not a .npy array"


# ---------------------------------------------------------------------------- arrays

ARRAY_OPS = ("remove", "reshape", "retype", "nonfinite", "extra", "scalar")


@st.composite
def array_case(draw, keys):
    key = draw(st.sampled_from(keys))
    op = draw(st.sampled_from(ARRAY_OPS))
    return key, op, draw(st.integers(0, 3))


def mutate_array(arrays: dict, key: str, op: str, k: int) -> None:
    a = arrays[key]
    if op == "remove":
        del arrays[key]
    elif op == "reshape":
        arrays[key] = [a.reshape(-1)[:-1] if a.size > 1 else np.zeros(2, a.dtype), a.reshape(-1, 1),
                       np.zeros(a.shape + (2,), a.dtype), np.zeros(tuple(d + 1 for d in a.shape), a.dtype)][k]
    elif op == "retype":
        arrays[key] = a.astype([np.float16, np.int64, np.bool_, np.complex64][k])
    elif op == "nonfinite":
        arrays[key] = np.full_like(a, [np.nan, np.inf, -np.inf, 1e38][k])
    elif op == "extra":
        arrays[key.rsplit("/", 1)[0] + f"/bogus.{k}"] = np.zeros(3, np.float32)
    else:
        arrays[key] = np.asarray(a.reshape(-1)[0] if a.size else 0, dtype=a.dtype)


def test_arrays_removed_reshaped_retyped_or_corrupted(trained, tmp_path, record_counts):
    base = trained["ckpt"]
    keys = sorted(base.arrays)
    counts = Counter()
    path = tmp_path / "arr.npz"

    @settings(max_examples=300, **FUZZ)
    @given(array_case(keys))
    def run(case):
        key, op, k = case
        arrays = dict(base.arrays)
        mutate_array(arrays, key, op, k)
        result = attempt(rewrite(path, copy.deepcopy(base.meta), arrays))
        counts[f"{op} {result}"] += 1
        if key.startswith("model/") and op in ("remove", "reshape", "retype", "extra", "scalar"):
            assert result == "CheckpointError", (key, op, k)   # weights that don't fit the model
        if key.startswith("standardize/") and op in ("remove", "reshape", "extra", "scalar"):
            assert result == "CheckpointError", (key, op, k)

    run()
    record_counts("checkpoint: array mutations", counts)
    assert sum(counts.values()) >= 250


# ---------------------------------------------------------------------------- metadata

def _meta_paths(node, prefix=()):
    out = []
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return out
    for k, v in items:
        out.append(prefix + (k,))
        if prefix[:1] not in (("config",), ("history",)):  # the config is fuzzed by test_fuzz_config
            out += _meta_paths(v, prefix + (k,))
    return out


ODD_VALUES = [None, True, -1, 0, 1, 3, 10**12, 2**70, 1.5, float("nan"), float("inf"), "", "x", "float16",
              [], [0], [None], {}, {"name": "nope"}, {"type": "dense", "units": 10**12}, [[1]]]


@st.composite
def meta_case(draw, paths):
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["remove", "retype"]))
    return path, op, draw(st.sampled_from(ODD_VALUES))


def mutate_meta(meta: dict, path: tuple, op: str, value) -> None:
    parent = meta
    for part in path[:-1]:
        parent = parent[part]
    if op == "remove":
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)


def test_metadata_removed_or_retyped(trained, tmp_path, record_counts):
    base = trained["ckpt"]
    paths = [p for p in _meta_paths(base.meta) if p[0] not in ("format", "format_version", "nnctl_version")]
    counts = Counter()
    path = tmp_path / "meta.npz"

    @settings(max_examples=400, **FUZZ)
    @given(meta_case(paths))
    def run(case):
        where, op, value = case
        meta = copy.deepcopy(base.meta)
        mutate_meta(meta, where, op, value)
        try:
            rewrite(path, meta, dict(base.arrays))
        except ValueError:
            counts["unsavable"] += 1     # e.g. a NaN-free JSON writer would refuse; nothing to load
            return
        counts[f"{op} {attempt(path)}"] += 1

    run()
    record_counts("checkpoint: metadata mutations (rebuild)", counts)
    assert sum(counts.values()) >= 350


def test_metadata_envelope(trained, tmp_path):
    """The JSON entry itself: missing, wrong dtype, not JSON, not an object, other format, too new."""
    base = trained["ckpt"]
    path = tmp_path / "env.npz"
    cases = {
        "missing": None,
        "2-D": np.zeros((2, 2), np.uint8),
        "float": np.frombuffer(b"{}", np.uint8).astype(np.float32),
        "not utf-8": np.frombuffer(b"\xff\xfe", np.uint8),
        "not json": np.frombuffer(b"{nope", np.uint8),
        "deep json": np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8),
        "list": np.frombuffer(b"[1, 2]", np.uint8),
        "other format": np.frombuffer(json.dumps({"format": "keras"}).encode(), np.uint8),
        "too new": np.frombuffer(json.dumps({**base.meta, "format_version": 99}).encode(), np.uint8),
        "version text": np.frombuffer(json.dumps({**base.meta, "format_version": "1"}).encode(), np.uint8),
    }
    for name, entry in cases.items():
        arrays = dict(base.arrays)
        if entry is not None:
            arrays[META_KEY] = entry
        np.savez(path, **arrays)
        assert attempt(path) == "CheckpointError", name


def test_resume_with_damaged_state(trained, tmp_path, record_counts):
    """`nnctl train --resume` restores optimizer, schedule, early stopping, rng and history from
    last.npz: damage there is a CheckpointError (or a ConfigError for the stored spec), never a crash."""
    base = trained["ckpt"]
    paths = [p for p in _meta_paths(base.meta)
             if p[0] in ("epoch", "step", "optimizer", "schedule", "early_stopping", "rng", "history", "elapsed")]
    paths += [("history", 0), ("history", 1), ("history", 0, "epoch")]
    optim = sorted(k for k in base.arrays if k.startswith("optim/"))
    counts = Counter()
    run_dir = tmp_path / "run"

    @settings(max_examples=120, **FUZZ)
    @given(st.one_of(meta_case(paths).map(lambda c: ("meta", c)),
                     array_case(optim).map(lambda c: ("array", c))))
    def run(case):
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(trained["run"], run_dir)
        meta, arrays = copy.deepcopy(base.meta), dict(base.arrays)
        kind, detail = case
        if kind == "meta":
            mutate_meta(meta, *detail)
        else:
            mutate_array(arrays, *detail)
        # the run was cut short at epoch 2 of 3, so a sound checkpoint trains one more epoch
        meta["config"]["training"]["epochs"] = 3
        RunDir(run_dir).write_config(meta["config"])  # config.yaml says so too, or resume refuses the edit
        (run_dir / "status.json").write_text(json.dumps({"status": "interrupted"}))
        try:
            rewrite(run_dir / "checkpoints" / "last.npz", meta, arrays)
        except ValueError:
            counts["unsavable"] += 1
            return
        try:
            code = run_training(None, [], run_dir, tmp_path / "unused", True)
            counts[f"{kind} resumed (exit {code})"] += 1
        except NnctlError as err:
            assert len(str(err).splitlines()) == 1, str(err)
            counts[f"{kind} {type(err).__name__}"] += 1

    run()
    record_counts("checkpoint: damaged resume state", counts)
    assert sum(counts.values()) >= 100
    assert counts["meta CheckpointError"] > 0


# ---------------------------------------------------------------------------- pickles

class Marker:
    """Unpickling this creates `path`: proof that something unpickled it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_arrays(base, marker: Path, where: str) -> dict:
    arrays = dict(base.arrays)
    payload = np.array([Marker(marker)], dtype=object)
    if where == "meta":
        arrays[META_KEY] = payload
    else:
        arrays[where] = payload
    return arrays


@pytest.mark.parametrize("where", ["meta", "model/layers.0.W", "standardize/mean", "optim/m/layers.0.W"])
def test_pickled_object_arrays_are_never_unpickled(trained, tmp_path, where):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "evil.npz"
    np.savez(path, **evil_arrays(trained["ckpt"], marker, where))
    # the payload is live: numpy with allow_pickle=True would run it
    key = META_KEY if where == "meta" else where
    with np.load(path, allow_pickle=True) as npz:
        npz[key]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path))
    assert str(info.value) == f"{path}: contains pickled object arrays, which nnctl never loads"
    assert not marker.exists()


def test_a_raw_pickle_is_not_a_checkpoint(tmp_path):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not an .npz checkpoint (no zip header)"
    assert not marker.exists()


def test_pickled_checkpoint_through_eval_predict_and_resume(trained, tmp_path):
    marker = tmp_path / "UNPICKLED"
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    for name in ("last.npz", "best.npz"):
        np.savez(run / "checkpoints" / name, **evil_arrays(trained["ckpt"], marker, "model/layers.0.W"))
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (tmp_path / "x.csv").write_text("x1,x2\n0.1,0.2\n")
    runner = CliRunner()
    for args in (["eval", str(run)], ["predict", str(run), str(tmp_path / "x.csv")],
                 ["train", "--resume", str(run)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        assert res.output.strip().endswith("contains pickled object arrays, which nnctl never loads"), res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not marker.exists()
