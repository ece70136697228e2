"""Hostile and odd inputs (issue 17): nothing hangs, nothing runs away, no file contents or
markup in errors, no tracebacks, and YAML merge keys work.

Every CLI case runs in-process under a SIGALRM deadline (a hang fails the test instead of
the suite), asserts the exact one-line message and exit code, and hashes the folders it
could have written to before and after.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.config.source import MAX_NODES, parse_yaml, read_spec
from nnctl.config.spec import load_spec
from nnctl.engine.memory import estimate_memory, format_bytes
from nnctl.errors import ConfigError, NnctlError, excerpt, one_line
from nnctl.fileio import SPEC_MAX_BYTES, check_regular, read_text
from nnctl.sweep.spec import MAX_TRIALS, expand, load_sweep

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10  # seconds; every case takes well under one

TINY = "data: {dataset: xor, val_split: 0.25, options: {n_samples: 80}}\nmodel: {hidden: [4]}\ntraining: {epochs: 2, batch_size: 8}\n"
SECRET = ("root:x:0:0:root:/root:/bin/bash\n" * 30
          + "API_TOKEN=sk-0123456789abcdef :x: :smile: [red]boom[/red]\n")


class Hung(Exception):
    pass


@contextmanager
def deadline(seconds: float = DEADLINE):
    """Raise Hung in the main thread if the block takes longer than `seconds` (an open() of a
    FIFO blocks in the kernel; the signal interrupts it)."""
    def on_alarm(signum, frame):
        raise Hung(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args: str) -> tuple[int, list[str]]:
    """(exit code, output lines) of the real CLI; a hang or a traceback fails the test."""
    with deadline():
        res = runner.invoke(app, [str(a) for a in args])
    if not isinstance(res.exception, (SystemExit, type(None))):
        raise AssertionError(f"{type(res.exception).__name__}: {res.exception}\n{res.output}")
    assert "Traceback" not in res.output
    return res.exit_code, res.output.splitlines()


def tree_hash(folder: Path) -> str:
    """A fingerprint of every entry under `folder`: names, kinds and regular files' bytes
    (FIFOs and devices are never opened)."""
    h = hashlib.sha256()
    if not os.path.lexists(folder):
        return "absent"
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        dirnames.sort()
        for name in sorted(filenames) + dirnames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            h.update(f"{p.relative_to(folder)}:{stat.S_IFMT(st.st_mode)}\n".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished tiny run to point eval/predict/show/resume at."""
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.yaml").write_text(TINY)
    code, out = cli("train", root / "tiny.yaml", "--runs-dir", root / "runs", "-q")
    assert code == 0, out
    (run,) = (root / "runs").iterdir()
    return run


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# -- 1. hangs: only regular files are opened ------------------------------------------------

def _nonregular(tmp_path: Path, kind: str, name: str) -> Path:
    p = tmp_path / name
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "loop":
        os.symlink(p.name + ".b", p)
        os.symlink(p.name, str(p) + ".b")
    elif kind == "chardev":
        os.symlink("/dev/zero", p)
    elif kind == "socket":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    return p


KINDS = {"fifo": "is a FIFO (named pipe), not a regular file", "loop": "is a symlink loop",
         "chardev": "is a character device, not a regular file", "socket": "is a socket, not a regular file"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_spec_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    spec = _nonregular(tmp_path, kind, "spec.yaml")
    runs = tmp_path / "runs"
    for command in (["validate", spec], ["config", spec], ["train", spec, "--runs-dir", runs]):
        code, out = cli(*command)
        assert (code, out) == (1, [f"error: {spec}: {KINDS[kind]}"])
    assert not runs.exists()


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_a_sweep_spec_or_its_base_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    sweep = _nonregular(tmp_path, kind, "sweep.yaml")
    code, out = cli("sweep", sweep, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert (code, out) == (1, [f"error: {sweep}: {KINDS[kind]}"])
    base = _nonregular(tmp_path, kind, "base.yaml")
    (tmp_path / "s.yaml").write_text("base: base.yaml\nparameters: {seed: [1, 2]}\nmetric: val_loss\n")
    code, out = cli("sweep", tmp_path / "s.yaml", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert (code, out) == (1, [f"error: base: {base}: {KINDS[kind]} (s.yaml line 1)"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind,key,name", [
    ("fifo", "dataset", "d.csv"), ("loop", "dataset", "d.csv"), ("fifo", "dataset", "d.npy"),
    ("socket", "dataset", "d.npz"), ("fifo", "val_path", "v.csv"), ("chardev", "target_path", "t.npy"),
])
def test_a_data_file_that_is_not_a_regular_file_is_refused(tmp_path, kind, key, name):
    path = _nonregular(tmp_path, kind, name)
    np.save(tmp_path / "x.npy", np.zeros((40, 2), np.float32))
    np.savez(tmp_path / "ok.npz", x=np.zeros((40, 2), np.float32), y=np.arange(40) % 2)
    if key == "target_path":
        data = {"dataset": "x.npy", "target_path": name}
    elif key == "dataset":
        data = {"dataset": name, "target": "y"} if name.endswith(".csv") else {"dataset": name}
    else:
        data = {"dataset": "ok.npz", key: name}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"data": data, "training": {"epochs": 1}}))
    shown = "/dev/zero" if kind == "chardev" else str(path)
    code, out = cli("train", spec, "--runs-dir", tmp_path / "runs")
    assert (code, out) == (1, [f"error: data.{key}: {shown}: {KINDS[kind]}"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["fifo", "loop", "chardev", "socket"])
def test_init_refuses_a_data_file_that_is_not_a_regular_file(tmp_path, kind):
    data = _nonregular(tmp_path, kind, "d.csv")
    code, out = cli("init", data, "--out", tmp_path / "d.yaml")
    assert (code, out) == (1, [f"error: {data}: {KINDS[kind]}"])
    assert not (tmp_path / "d.yaml").exists()


@pytest.mark.parametrize("kind", ["fifo", "loop", "chardev"])
def test_a_checkpoint_or_predict_input_that_is_not_a_regular_file_is_refused(tmp_path, trained_run, kind):
    run = _copy_run(trained_run, tmp_path / "run")
    (run / "checkpoints" / "best.npz").unlink()
    best = _nonregular(run / "checkpoints", kind, "best.npz")
    before = tree_hash(run)
    for command in (["eval", run], ["predict", run, ROOT / "README.md"], ["show", run]):
        code, out = cli(*command)
        assert code == 1
        assert out[-1] == f"error: {best}: {KINDS[kind]}"
    # the resume loads last.npz; an input file of predict that is not regular is refused too
    inp = _nonregular(tmp_path, kind, "in.csv")
    code, out = cli("predict", trained_run, inp, "--out", tmp_path / "p.csv")
    assert (code, out) == (1, [f"error: in.csv: {KINDS[kind]}"])
    assert tree_hash(run) == before and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("kind", ["fifo", "chardev", "loop"])
def test_run_folder_json_that_is_not_a_regular_file_is_reported_not_read(tmp_path, trained_run, kind):
    run = _copy_run(trained_run, tmp_path / "runs" / "r")
    for name in ("status.json", "metrics.json"):
        (run / name).unlink()
        _nonregular(run, kind, name)
    before = tree_hash(tmp_path / "runs")
    code, out = cli("runs", tmp_path / "runs", "--json")
    assert code == 0
    (entry,) = json.loads("\n".join(out))
    assert (entry["status"], entry["problem"]) == (
        "broken", f"status.json is unreadable ({KINDS[kind]}); metrics.json is unreadable ({KINDS[kind]})")
    code, out = cli("show", run)
    assert out[0].startswith("r   broken (status.json is unreadable (")
    assert tree_hash(tmp_path / "runs") == before


def test_check_regular_names_each_kind(tmp_path):
    for kind, why in KINDS.items():
        p = _nonregular(tmp_path, kind, f"{kind}.x")
        with pytest.raises(ConfigError) as info:
            check_regular(p, ConfigError, "the spec")
        assert str(info.value) == f"the spec: {why}"
    check_regular(tmp_path / "missing", missing_ok=True)
    with pytest.raises(NnctlError, match=r"missing: no such file$"):
        check_regular(tmp_path / "missing", label="missing")
    (tmp_path / "ok").write_text("fine")
    check_regular(tmp_path / "ok")
    with pytest.raises(NnctlError) as info:
        read_text(tmp_path / "ok", 3, label="ok")
    assert str(info.value) == "ok: 4 bytes is over the 3-byte limit for a file"
    assert read_text(tmp_path / "ok", 4) == "fine"


# -- 2. runaway sizes: bounded before parsing, counting or allocating ------------------------

def test_a_spec_over_the_size_limit_is_refused_before_parsing(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("# a comment line\n" * (SPEC_MAX_BYTES // 17 + 1))
    size = spec.stat().st_size
    code, out = cli("validate", spec)
    assert (code, out) == (1, [f"error: {spec}: {size:,} bytes is over the 1,000,000-byte limit for a spec"])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: big.yaml\nparameters: {seed: [1]}\nmetric: val_loss\n")
    code, out = cli("sweep", sweep, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert (code, out) == (1, [f"error: base: {spec}: {size:,} bytes is over the 1,000,000-byte limit "
                                f"for a spec (sweep.yaml line 1)"])


@pytest.mark.parametrize("body,line", [
    # the line is where the 100,001st node starts: root, key, list, then the values
    ("model:\n  hidden: [" + ", ".join(["1"] * (MAX_NODES + 10)) + "]\n", 2),
    # root, seed, 1, xs, the list: item i (on line i + 3) is node i + 6
    ("seed: 1\nxs:\n" + "".join(f"- {i}\n" for i in range(MAX_NODES + 10)), MAX_NODES + 1 - 6 + 3),
    ("m: {" + ", ".join(f"k{i}: {i}" for i in range(MAX_NODES // 2 + 10)) + "}\n", 1),
])
def test_a_spec_with_too_many_values_is_refused_while_it_is_composed(tmp_path, body, line):
    spec = tmp_path / "many.yaml"
    spec.write_text(body)
    assert spec.stat().st_size < SPEC_MAX_BYTES
    code, out = cli("validate", spec)
    assert (code, out) == (1, [f"error: many.yaml line {line}: more than 100,000 values; a spec is never that large"])


def _sweep(tmp_path: Path, body: str) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sweep.yaml").write_text("base: tiny.yaml\nmetric: val_loss\n" + body)
    return tmp_path / "sweep.yaml"


@pytest.mark.parametrize("body,message", [
    ("method: random\ntrials: 1000000000000\nparameters: {seed: {distribution: int_uniform, min: 0, max: 9}}\n",
     "error: trials: must be <= 10000, got 1000000000000 (sweep.yaml line 4)"),
    ("method: random\ntrials: 10001\nparameters: {optimizer.lr: [0.1, 0.2]}\n",
     "error: trials: must be <= 10000, got 10001 (sweep.yaml line 4)"),
    ("parameters:\n  seed: [" + ", ".join(map(str, range(101))) + "]\n  training.epochs: ["
     + ", ".join(map(str, range(1, 101))) + "]\n",
     "error: parameters: the grid has 10,100 combinations, more than the 10,000 trials a sweep may have "
     "(sweep.yaml line 3)"),
    ("parameters:\n" + "".join(f"  {k}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" for k in (
        "seed", "training.epochs", "training.batch_size", "training.eval_batch_size", "optimizer.lr",
        "optimizer.beta1", "optimizer.beta2", "optimizer.eps")),
     "error: parameters: the grid has 100,000,000 combinations, more than the 10,000 trials "
     "a sweep may have (sweep.yaml line 3)"),
])
def test_sweep_trial_counts_are_bounded_before_expansion(tmp_path, body, message):
    sweep = _sweep(tmp_path, body)
    code, out = cli("sweep", sweep, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert out[-1] == message and code == 1
    assert not (tmp_path / "runs").exists()


def test_expand_refuses_a_huge_sweep_built_in_code(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, "method: random\ntrials: 3\nparameters: {optimizer.lr: [0.1, 0.2]}\n"))
    assert len(expand(sweep)) == 3
    sweep.trials = MAX_TRIALS + 1
    with pytest.raises(ConfigError, match=r"^sweep.yaml: 10,001 trials, more than the 10,000 a sweep may have$"):
        with deadline(2):
            expand(sweep)


def test_the_memory_estimate_is_hand_computed_and_matches_the_built_model():
    # dense 2 -> 4 -> 2: 2*4+4 + 4*2+2 = 22 parameters, float32
    est = estimate_memory([{"type": "dense", "units": 4, "activation": "relu"}, {"type": "dense", "units": 2}],
                          (2,), "float32", batch_rows=10, optimizer_arrays=3)
    assert [(s.output_shape, s.parameters) for s in est.layers] == [((4,), 12), ((2,), 10)]
    assert (est.parameter_bytes, est.gradient_bytes, est.optimizer_bytes) == (88, 88, 264)
    # rows * sum(2*out + in) * itemsize = 10 * ((8 + 2) + (4 + 4)) * 4
    assert est.activation_bytes == 720
    assert est.total_bytes == 88 + 88 + 264 + 720
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(1000) == "1000 B"


@pytest.mark.parametrize("config", ["cnn-digits.yaml", "gru-marked-xor.yaml", "transformer-marked-xor.yaml",
                                    "residual-mlp.yaml", "digits.yaml"])
def test_the_shape_only_sizing_agrees_with_the_real_model(config):
    from nnctl.training.experiment import prepare
    exp = prepare(load_spec(ROOT / "configs" / config))
    est = estimate_memory(exp.layer_specs, exp.dataset.input_shape, exp.dtype, 32, 3)
    assert est.complete
    assert [(s.output_shape, s.parameters) for s in est.layers] == \
        [(tuple(r.output_shape), r.params) for r in exp.model.summary()]


def test_sizing_a_huge_model_allocates_nothing():
    tracemalloc.start()
    try:
        with deadline(5):
            est = estimate_memory([{"type": "dense", "units": 100_000_000}, {"type": "dense", "units": 100_000_000},
                                   {"type": "dense", "units": 3}], (64,), "float32", 32, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est.parameters == 64 * 10**8 + 10**8 + 10**16 + 10**8 + 3 * 10**8 + 3
    assert peak < 5_000_000


# xor: 2 features, 2 classes; 120 rows -> 30 validation rows, the largest evaluation batch (> batch 8).
# Adam keeps m, v and one scratch array per parameter: optimizer state = 3 x parameters.
@pytest.mark.parametrize("model,limit,message", [
    # 2*16+16 + 16*2+2 = 82 parameters = 328 B; activations 30 rows * ((2*16+2) + (2*2+16)) * 4 B = 6480 B;
    # total 328 + 328 + 984 + 6480 = 8120 B; the limit 1e-6 GiB = 1073 B
    ("{hidden: [16]}", 1e-6,
     "error: model: 82 parameters need about 7.9 KiB to train (parameters 328 B, gradients 328 B, optimizer "
     "state 984 B, activations 6.3 KiB at 30 rows), more than training.memory_limit_gb (1.0 KiB); make the "
     "model smaller or raise training.memory_limit_gb (spec.yaml line 2)"),
    # 2*8+8 + 8*8+8 + 8*2+2 = 114 = 456 B; 30 * ((16+2) + (16+8) + (4+8)) * 4 = 6480 B; total 8760 B
    ("{layers: [{type: dense, units: 8}, {type: dense, units: 8}]}", 1e-7,
     "error: model: 114 parameters need about 8.6 KiB to train (parameters 456 B, gradients 456 B, optimizer "
     "state 1.3 KiB, activations 6.3 KiB at 30 rows), more than training.memory_limit_gb (107 B); make the "
     "model smaller or raise training.memory_limit_gb (spec.yaml line 2)"),
])
def test_a_memory_limit_in_the_spec_is_enforced_before_the_run_exists(tmp_path, model, limit, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {{dataset: xor, val_split: 0.25, options: {{n_samples: 120}}}}\nmodel: {model}\n"
                    f"training: {{epochs: 1, batch_size: 8, memory_limit_gb: {limit}}}\n")
    for command in (["validate", spec], ["train", spec, "--runs-dir", tmp_path / "runs"]):
        assert cli(*command) == (1, [message])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("hidden,params", [
    ("[100000000]", "500,000,002"),                        # 2*1e8+1e8 + 1e8*2+2
    ("[100000000, 100000000]", "10,000,000,600,000,002"),  # 3e8 + (1e16+1e8) + (2e8+2)
    ("[4, 100000000000]", "700,000,000,014"),              # 12 + 5e11 + (2e11+2)
])
def test_a_model_too_large_for_memory_fails_validate_and_train_with_one_line(tmp_path, hidden, params):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {{dataset: xor, options: {{n_samples: 100}}}}\nmodel: {{hidden: {hidden}}}\n")
    for command in (["validate", spec], ["train", spec, "--runs-dir", tmp_path / "runs"]):
        code, out = cli(*command)
        assert code == 1 and len(out) == 1
        assert out[0].startswith(f"error: model: {params} parameters need about ")
        assert "of memory available; make the model or batch smaller, or set training.memory_limit_gb" in out[0]
        assert out[0].endswith("(spec.yaml line 2)")
    assert not (tmp_path / "runs").exists()


def test_a_layer_too_large_to_describe_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {dataset: xor}\nmodel: {hidden: [10000000000000, 10000000000000]}\n"
                    "training: {memory_limit_gb: 1000000000000}\n")
    code, out = cli("validate", spec)
    assert (code, out) == (1, ["error: model: layers.1 dense is too large to size: it would need more memory "
                               "than any machine has; make the model smaller (spec.yaml line 2)"])


# -- 3. secrets: short, escaped excerpts; no emoji or markup ---------------------------------

def _assert_no_leak(out: list[str]) -> None:
    text = "\n".join(out)
    assert "API_TOKEN" not in text and "\u274c" not in text and "\U0001f604" not in text
    assert all(len(line) < 600 for line in out)


def test_a_spec_that_is_a_whole_file_of_text_is_quoted_as_an_excerpt(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("'" + SECRET.replace("'", "''").replace("\n", "\n\n") + "'\n")
    code, out = cli("validate", spec)
    head = repr(SECRET[:60])
    assert (code, out) == (1, [f"error: spec.yaml: a spec must be a mapping of sections, got {head}... "
                               f"({len(SECRET):,} characters)"])
    _assert_no_leak(out)


@pytest.mark.parametrize("where", ["base", "basefile", "dataset", "optimizer", "set", "key"])
def test_long_user_text_in_any_value_is_excerpted(tmp_path, where):
    (tmp_path / "tiny.yaml").write_text(TINY)
    text = yaml.safe_dump(SECRET, width=10**6)
    if where == "base":
        (tmp_path / "s.yaml").write_text(f"base: {text}\nparameters: {{seed: [1]}}\nmetric: val_loss\n")
        args = ["sweep", tmp_path / "s.yaml", "--dry-run", "--runs-dir", tmp_path / "runs"]
        expected = "error: base: must be a train spec file (a path) or an inline train spec, got"
    elif where == "basefile":  # base: names a file that is not a spec at all
        (tmp_path / "secret.txt").write_text(text)
        (tmp_path / "s.yaml").write_text("base: secret.txt\nparameters: {seed: [1]}\nmetric: val_loss\n")
        args = ["sweep", tmp_path / "s.yaml", "--dry-run", "--runs-dir", tmp_path / "runs"]
        expected = (f"error: secret.txt: a spec must be a mapping of sections, got {SECRET[:60]!r}... "
                    f"({len(SECRET):,} characters)")
    elif where == "dataset":
        (tmp_path / "s.yaml").write_text(f"data:\n  dataset: {text}\n")
        args = ["validate", tmp_path / "s.yaml"]
        # a suffix-less name that is no file is a misspelt built-in name: quoted as given, not as a
        # path (issue 16 item 5), and excerpted
        expected = f"error: data.dataset: unknown dataset '{excerpt(yaml.safe_load(text))}'; valid: blobs,"
    elif where == "optimizer":
        (tmp_path / "s.yaml").write_text(TINY + f"optimizer: {text}\n")
        args = ["validate", tmp_path / "s.yaml"]
        expected = f"error: optimizer: unknown optimizer '{excerpt(yaml.safe_load(text))}'; valid: adagrad,"
    elif where == "key":
        (tmp_path / "s.yaml").write_text(TINY + f"? {text}\n: 1\n")
        args = ["validate", tmp_path / "s.yaml"]
        key = yaml.safe_load(text)
        # the list of valid keys follows; the line may be cut at 1,000 characters after it
        expected = f"error: [{key[:60]!r}...]: unknown key '{excerpt(key)}'; valid: data, "
    else:
        args = ["validate", tmp_path / "tiny.yaml", "--set", f"name={SECRET}"]
        expected = f"error: --set {excerpt('name=' + SECRET, 300)}: value line "
    code, out = cli(*args)
    assert code == 1 and len(out) == 1 and out[0].startswith(expected), out
    _assert_no_leak(out)


def test_every_problem_is_one_escaped_line(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text('"a\nb","a\nb",y\n1,2,3\n')
    (tmp_path / "s.yaml").write_text("data: {dataset: d.csv, target: y}\n")
    assert cli("validate", tmp_path / "s.yaml") == (1, ["error: d.csv: duplicate column name 'a\\nb' (columns 1 and 2)"])
    # several problems stay several lines, each escaped
    (tmp_path / "t.yaml").write_text("seed: -1\ntraining: {epochs: 0}\n\"odd\\nkey\\e[31m\": 1\n")
    code, out = cli("validate", tmp_path / "t.yaml")
    assert code == 1
    from nnctl.config.spec import TOP_PARAMS
    assert out == ["error: ['odd\\nkey\\x1b[31m']: unknown key 'odd\\nkey\\x1b[31m'; valid: "
                   f"{', '.join(sorted(TOP_PARAMS))} (t.yaml line 3)",
                   "error: seed: must be >= 0, got -1 (t.yaml line 1)",
                   "error: data.dataset: is required (t.yaml line 1)",
                   "error: training.epochs: must be >= 1, got 0 (t.yaml line 2)"]


@pytest.mark.parametrize("key, value", [("model/layers.0.W", np.nan), ("model/layers.1.b", np.inf),
                                        ("standardize/scale", -np.inf)])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "resume"])
def test_a_checkpoint_holding_nan_or_inf_is_refused_not_used(tmp_path, trained_run, key, value, command):
    """Training never writes a non-finite array, so one is damage: predictions from it (argmax of
    NaN is class 0) would be silent garbage."""
    from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
    run = _resumable(trained_run, tmp_path / "r")
    for name in ("last.npz", "best.npz"):
        path = run / "checkpoints" / name
        ckpt = load_checkpoint(path)
        arrays = dict(ckpt.arrays)
        arrays[key] = arrays[key].copy()
        arrays[key].flat[:2] = value
        save_checkpoint(path, {k: v for k, v in ckpt.meta.items()
                               if k not in ("format", "format_version", "nnctl_version")}, arrays)
    (tmp_path / "in.csv").write_text("x1,x2\n0.1,0.2\n")
    before = tree_hash(run)
    args = {"eval": ("eval", run), "predict": ("predict", run, tmp_path / "in.csv"),
            "export": ("export", run, "--format", "npz-weights", "--out", tmp_path / "w.npz"),
            "resume": ("train", "--resume", run, "-q")}[command]
    which = "last.npz" if command == "resume" else "best.npz"
    assert cli(*args) == (1, [f"error: {run / 'checkpoints' / which}: array '{key}' holds 2 non-finite values "
                              f"(NaN or inf); the checkpoint is damaged"])
    assert tree_hash(run) == before and not (tmp_path / "w.npz").exists()


@pytest.mark.parametrize("field", ["task", "model.dtype", "early_stopping.best"])
def test_long_text_in_a_checkpoint_is_quoted_as_an_excerpt(tmp_path, trained_run, field):
    """A checkpoint's metadata is a user's file too: a field holding a whole file is an excerpt."""
    from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
    run = _copy_run(trained_run, tmp_path / "r")
    (run / "status.json").write_text('{"status": "interrupted"}')
    ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "format_version", "nnctl_version")}
    holder, key = {"task": (meta, "task"), "model.dtype": (meta["model"], "dtype"),
                   "early_stopping.best": (meta["early_stopping"], "best")}[field]
    holder[key] = SECRET
    save_checkpoint(run / "checkpoints" / "last.npz", meta, ckpt.arrays)
    before = tree_hash(run)
    path = run / "checkpoints" / "last.npz"
    want = {"task": f"{path}: metadata field task must be one of classification, regression, autoencoder, vae, "
                    f"got {excerpt(repr(SECRET))}",
            "model.dtype": f"{path}: metadata field model.dtype must be float32 or float64, got {excerpt(repr(SECRET))}",
            "early_stopping.best": f"{path}: cannot resume from this checkpoint (early_stopping.best must be a "
                                   f"number or null, got {excerpt(repr(SECRET))})"}[field]
    code, out = cli("train", "--resume", run, "-q") if field.startswith("early") else cli("eval", path)
    assert (code, out) == (1, [f"error: {want}"])
    assert "API_TOKEN" not in "".join(out) and len(out[0]) < 300
    assert tree_hash(run) == before


def test_print_error_escapes_caps_and_never_substitutes(capsys):
    from nnctl.console import print_error
    print_error(NnctlError("first\nstill first \x1b[31m:x: [bold]b[/bold]", "second " + "z" * 2000))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: first\\nstill first \\x1b[31m:x: [bold]b[/bold]"
    assert err[1] == "error: second " + "z" * 993 + "... (1,007 more characters)"
    assert len(err) == 2
    assert excerpt("abc") == "abc" and excerpt("a\tb" * 40, 6) == "a\\tba\\tb... (120 characters)"
    assert one_line("x\ny") == "x\\ny"
    assert str(NnctlError("a", "b")) == "a\nb" and NnctlError("a", "b").problems == ["a", "b"]


# -- 4. no tracebacks from damaged run folders or unwritable ones ----------------------------

@pytest.mark.parametrize("garbage", [bytes(range(256)) * 4, b"\xff\xfe{\"status\": 1}", b"[" * 100_000,
                                     b'{"status": "completed"'])
def test_damaged_run_json_is_reported_not_a_traceback(tmp_path, trained_run, garbage):
    run = _copy_run(trained_run, tmp_path / "runs" / "r")
    for name in ("status.json", "history.json", "metrics.json"):
        (run / name).write_bytes(garbage)
    before = tree_hash(tmp_path / "runs")
    for command in (["runs", tmp_path / "runs"], ["runs", tmp_path / "runs", "--json"], ["show", run],
                    ["eval", run], ["diff", run, trained_run]):
        code, out = cli(*command)
        assert code in (0, 1)
    code, out = cli("show", run)
    assert out[0].startswith("r   broken (")
    assert tree_hash(tmp_path / "runs") == before


def test_resume_on_an_unwritable_run_folder_is_one_line_and_changes_nothing(tmp_path, trained_run):
    run = _copy_run(trained_run, tmp_path / "r")
    (run / "status.json").write_text('{"status": "interrupted"}')
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").mkdir()  # as on a read-only mount, the lock file cannot be opened for writing
    before = tree_hash(run)
    code, out = cli("train", "--resume", run)
    assert (code, out) == (1, [f"error: {run}: cannot write to the run folder (Is a directory); nothing was changed"])
    assert tree_hash(run) == before


def _resumable(trained_run: Path, dest: Path) -> Path:
    run = _copy_run(trained_run, dest)
    (run / "status.json").write_text('{"status": "interrupted"}')
    return run


def _edit_config(run: Path, edit) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    edit(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize("edit, key, now, was", [
    (lambda c: c["training"].update(epochs=5), "training.epochs", "5", "2"),
    (lambda c: c["model"].update(hidden=[8, 8]), "model.hidden", "[8, 8]", "[4]"),
    (lambda c: c["optimizer"].update(lr=0.5), "optimizer.lr", "0.5", "0.001"),
    (lambda c: c["data"]["options"].update(noise=0.3), "data.options.noise", "0.3", "0.1"),
    (lambda c: c.update(seed=7), "seed", "7", "0"),
])
def test_resume_refuses_an_edited_config_yaml_naming_the_key(tmp_path, trained_run, edit, key, now, was):
    """--resume continues with the config in last.npz; an edit to config.yaml would be ignored."""
    run = _resumable(trained_run, tmp_path / "r")
    _edit_config(run, edit)
    before = tree_hash(run)
    code, out = cli("train", "--resume", run, "-q")
    cfg = run / "config.yaml"
    assert (code, out) == (1, [f"error: {cfg}: {key} is {now}, the run was trained with {was} (the config "
                               f"stored in last.npz, which --resume continues with); undo the edit, or start "
                               f"a new run with it: nnctl train {cfg}"])
    assert tree_hash(run) == before


def test_resume_refuses_a_config_yaml_edited_into_an_invalid_spec(tmp_path, trained_run):
    run = _resumable(trained_run, tmp_path / "r")
    text = (run / "config.yaml").read_text()
    assert text.count("epochs: 2,") == 1
    (run / "config.yaml").write_text(text.replace("epochs: 2,", "epochs: 0,"))
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "epochs: 2," in s)
    before = tree_hash(run)
    code, out = cli("train", "--resume", run, "-q")
    assert (code, out) == (1, [f"error: training.epochs: must be >= 1, got 0 (config.yaml line {line})"])
    assert tree_hash(run) == before


@pytest.mark.parametrize("change", ["comments", "layout", "defaults", "name", "removed"])
def test_resume_accepts_a_config_yaml_that_says_the_same(tmp_path, trained_run, change):
    """Comments, layout, a default left out, the run name and a missing config.yaml are no edits."""
    run = _resumable(trained_run, tmp_path / "r")
    cfg = run / "config.yaml"
    if change == "comments":
        cfg.write_text("# tried lr 0.01 first\n" + cfg.read_text() + "# end\n")
    elif change == "layout":
        cfg.write_text(json.dumps(yaml.safe_load(cfg.read_text()), indent=1))
    elif change == "defaults":
        _edit_config(run, lambda c: [c.pop("description"), c["training"].pop("shuffle")])
    elif change == "name":
        _edit_config(run, lambda c: c.update(name="renamed"))
    else:
        cfg.unlink()
    code, out = cli("train", "--resume", run, "-q")
    assert code == 0, out
    assert out[-1].startswith("completed: 2 epochs")


@pytest.mark.parametrize("name, kind", [("history.json", "dir"), ("metrics.json", "dir"), ("metrics.json", "fifo"),
                                        ("history.json", "loop"), ("status.json", "chardev")])
def test_resume_refuses_a_run_file_it_could_not_replace_before_writing(tmp_path, trained_run, name, kind):
    """A run file that is a folder, FIFO, device or loop is found before the first write, not by it."""
    run = _resumable(trained_run, tmp_path / "r")
    if name == "status.json":   # still resumable: the checkpoint alone says the run is not done
        _edit_config(run, lambda c: c["training"].update(epochs=3))
        from nnctl.runs.checkpoint import load_checkpoint, save_checkpoint
        ckpt = load_checkpoint(run / "checkpoints" / "last.npz")
        ckpt.meta["config"]["training"]["epochs"] = 3
        save_checkpoint(run / "checkpoints" / "last.npz", {k: v for k, v in ckpt.meta.items()
                        if k not in ("format", "format_version", "nnctl_version")}, ckpt.arrays)
    (run / name).unlink(missing_ok=True)
    if kind == "dir":
        (run / name).mkdir()
    else:
        _nonregular(run, kind, name)
    before = tree_hash(run)
    code, out = cli("train", "--resume", run, "-q")
    assert (code, out) == (1, [f"error: {run / name}: {KINDS.get(kind, 'is a directory, not a regular file')}; "
                               f"resuming would replace it, so nothing was changed"])
    assert tree_hash(run) == before


LONG = "Z" * 300   # over the 255-byte limit of a file name: the OS refuses to look it up


@pytest.mark.parametrize("args", [
    ("train", "--resume", LONG), ("eval", LONG), ("eval", "{run}", "--data", LONG + ".csv"),
    ("predict", "{run}", LONG + ".csv"), ("show", LONG), ("runs", LONG), ("diff", LONG, LONG),
    ("export", LONG), ("sweep", "--resume", LONG), ("init", LONG + ".csv"), ("plot", LONG),
])
def test_a_path_the_os_refuses_is_one_line_for_every_command(tmp_path, trained_run, monkeypatch, args):
    """Path.is_dir() and friends raise ENAMETOOLONG instead of answering; the CLI's one net
    turns it into `error: <excerpt of the path>: File name too long`."""
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{run}", str(trained_run)) for a in args]
    named = next(a for a in args if a.startswith("Z"))
    before = tree_hash(tmp_path), tree_hash(trained_run)
    assert cli(*args) == (1, [f"error: {excerpt(named)}: File name too long"])
    assert (tree_hash(tmp_path), tree_hash(trained_run)) == before


def test_a_dataset_name_the_os_refuses_is_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY)
    path = str(tmp_path / LONG)
    code, out = cli("train", tmp_path / "s.yaml", "--set", f"data.dataset={LONG}", "--runs-dir", tmp_path / "runs")
    assert (code, out) == (1, [f"error: {excerpt(path)}: File name too long"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, where, line", [
    ('data: {dataset: "d\\0.csv"}\nmodel: {hidden: [4]}\n', "data.dataset", 1),
    ('data: {dataset: xor, val_path: "v\\0.csv"}\nmodel: {hidden: [4]}\n', "data.val_path", 1),
    ('name: "x\\0y"\ndata: {dataset: xor}\nmodel: {hidden: [4]}\n', "name", 1),
    ('data: {dataset: xor}\nmodel: {hidden: [4]}\nloggers: [{mlflow: {tracking_uri: "./m\\0"}}]\n',
     "loggers[0].mlflow.tracking_uri", 3),
    ('data: {dataset: xor}\nmodel: {hidden: [4]}\n"k\\0": 1\n', "['k\\x00']", 3),
])
def test_a_nul_character_anywhere_in_a_spec_is_one_line(tmp_path, text, where, line):
    """A NUL is refused while the YAML is read (open() would raise ValueError deep inside)."""
    (tmp_path / "s.yaml").write_text(text)
    want = (1, [f"error: {where}: contains a NUL character (\\0), which no setting or file name can hold "
                f"(s.yaml line {line})"])
    assert cli("validate", tmp_path / "s.yaml") == want
    assert cli("train", tmp_path / "s.yaml", "--runs-dir", tmp_path / "runs") == want
    assert not (tmp_path / "runs").exists()


def test_a_symlink_loop_anywhere_in_the_spec_paths_is_one_line(tmp_path):
    _nonregular(tmp_path, "loop", "d.csv")
    (tmp_path / "s.yaml").write_text("data: {dataset: xor, val_path: d.csv}\n")
    assert cli("validate", tmp_path / "s.yaml") == (1, [f"error: data.val_path: {tmp_path / 'd.csv'}: is a symlink loop"])


# -- 5. YAML merge keys -----------------------------------------------------------------------

MERGES = """\
shared: &shared
  epochs: 5
  batch_size: 8
more: &more
  epochs: 7
  shuffle: false
  dtype: float64
a:
  <<: *shared
  epochs: 2
b:
  <<: [*shared, *more]
c:
  epochs: 3
  <<: [*more, *shared]
d:
  <<: {eval_batch_size: 64, <<: *more}
  dtype: float32
"""


def test_merge_keys_follow_yaml_1_1():
    src = parse_yaml(MERGES, "m.yaml")
    assert src.data["a"] == {"epochs": 2, "batch_size": 8}                       # explicit wins
    assert src.data["b"] == {"epochs": 5, "batch_size": 8, "shuffle": False, "dtype": "float64"}  # earlier wins
    assert src.data["c"] == {"epochs": 3, "shuffle": False, "dtype": "float64", "batch_size": 8}
    assert src.data["d"] == {"eval_batch_size": 64, "epochs": 7, "shuffle": False, "dtype": "float32"}
    # explicit keys keep their line; merged keys point at the line of the block they came from
    assert src.lines[("a", "epochs")] == 10 and src.lines[("a", "batch_size")] == 3
    assert src.lines[("b", "epochs")] == 2 and src.lines[("b", "shuffle")] == 6
    assert src.lines[("c", "epochs")] == 14 and src.lines[("c", "batch_size")] == 3
    assert src.lines[("d", "eval_batch_size")] == 17 and src.lines[("d", "dtype")] == 18
    assert src.lines[("d", "epochs")] == 5  # merged into the merged block from `more`


@pytest.mark.parametrize("text,message", [
    ("a:\n  <<: {x: 1}\n  y: 2\n  y: 3\n", "a.y: duplicate key (lines 3 and 4)"),
    ("a:\n  <<: {x: 1, x: 2}\n", "a.x: duplicate key (lines 2 and 2)"),
    ("a:\n  <<: 5\n", "a.<<: merges a mapping or a list of mappings, got a scalar (m.yaml line 2)"),
    ("a:\n  <<: [{x: 1}, [2]]\n", "a.<<: merges a mapping or a list of mappings, got a list (m.yaml line 2)"),
])
def test_merge_keys_still_catch_real_duplicates_and_bad_sources(text, message):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "m.yaml")
    assert str(info.value) == message


def test_a_spec_sharing_a_block_through_merge_keys_trains_with_the_explicit_values(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {dataset: xor, val_split: 0.25, options: {n_samples: 80}}\n"
                    "model: {hidden: [4]}\n"
                    "training:\n  <<: &defaults {epochs: 5, batch_size: 8, shuffle: false}\n  epochs: 2\n"
                    "optimizer:\n  <<: [{name: sgd, lr: 0.5}, {name: adam, lr: 0.1, weight_decay: 0.01}]\n  lr: 0.05\n")
    s = load_spec(spec)
    assert (s.training.epochs, s.training.batch_size, s.training.shuffle) == (2, 8, False)
    assert (s.optimizer["name"], s.optimizer["lr"], s.optimizer["weight_decay"]) == ("sgd", 0.05, 0.01)
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("epochs: 2", "epochs: 0"))
    assert cli("validate", bad) == (1, ["error: training.epochs: must be >= 1, got 0 (bad.yaml line 5)"])
    bad.write_text(spec.read_text().replace("shuffle: false", "shuffle: maybe"))
    assert cli("validate", bad) == (1, ["error: training.shuffle: must be true or false, got 'maybe' (bad.yaml line 4)"])


def test_read_spec_is_the_bounded_reader(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"seed: 1\n\xff\n")
    with pytest.raises(ConfigError, match=r"s.yaml: not UTF-8 text \(byte 8\)$"):
        read_spec(p)


@pytest.mark.parametrize("libyaml", [True, False])
def test_both_parsers_bound_values_and_resolve_merges_alike(monkeypatch, libyaml):
    import nnctl.config.source as source
    if not libyaml:
        monkeypatch.setattr(source, "_CLoader", None)  # the pure-Python loader counts while composing
    elif source._CLoader is None:
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(source, "MAX_NODES", 50)
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\nxs:\n" + "".join(f"- {i}\n" for i in range(60)), "s.yaml")
    # root, a, 1, xs, the list: item i (line i + 3) is node i + 6, so node 51 is item 45
    assert str(info.value) == "s.yaml line 48: more than 50 values; a spec is never that large"
    src = parse_yaml(MERGES, "m.yaml")
    assert src.data["b"]["epochs"] == 5 and src.data["a"]["epochs"] == 2
    with pytest.raises(ConfigError, match=r"^m.yaml line 2 column 2: .*expected .,. or .]."):
        parse_yaml("a: [1, 2\nb: c: d\n", "m.yaml")


@pytest.mark.parametrize("where", ["feature cell", "label cell", "header"])
def test_a_csv_holding_a_whole_file_in_one_place_is_quoted_as_an_excerpt(tmp_path, where):
    """A cell or header line of a user's CSV may be a whole pasted file: the error names the
    place and shows its start, never the secret at its end."""
    blob = SECRET.replace("\n", " ")
    rows = ["x,y,label"] + [f"{i},{i % 3},{'a' if i % 2 else 'b'}" for i in range(20)]
    if where == "feature cell":
        rows[5] = f'"{blob}",1,a'
    elif where == "label cell":
        rows = ["x,y,price"] + [f"{i},{i % 3},{i * 1.5}" for i in range(20)]
        rows[5] = f'1,2,"{blob}"'
    else:
        rows[0] = "x,y," + blob.replace(",", " ")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    target = {"label cell": "price", "header": "label"}.get(where, "label")
    task = "regression" if where == "label cell" else "classification"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"data: {{dataset: t.csv, target: {target}, task: {task}}}\nmodel: {{hidden: [4]}}\n"
                    "training: {epochs: 1}\n")
    before = tree_hash(tmp_path)
    code, out = cli("validate", spec)
    assert code == 1 and len(out) == 1, out
    assert "API_TOKEN" not in out[0] and len(out[0]) < 400, out[0]
    assert "t.csv" in out[0]
    assert tree_hash(tmp_path) == before
