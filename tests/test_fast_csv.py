"""polars as the CSV block parser (nnctl.data.fast_csv) and predict's parse-ahead thread (stream.parsed_ahead).

The promise: with or without polars a file parses to the same arrays, bit for bit, or to the
same error message; polars only changes the time.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nnctl.data import fast_csv, files
from nnctl.data.stream import parsed_ahead
from nnctl.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
needs_polars = pytest.mark.skipif(not fast_csv.available(), reason='polars is not installed (pip install -e ".[csv]")')


@pytest.fixture
def counted(monkeypatch):
    """How many blocks polars took (fast_csv.numbers gave an array); polars for files of any size."""
    monkeypatch.setattr(fast_csv, "MIN_BYTES", 0)
    taken = [0]
    real = fast_csv.numbers

    def numbers(*args):
        values = real(*args)
        taken[0] += values is not None
        return values
    monkeypatch.setattr(fast_csv, "numbers", numbers)
    return taken


def parse_both(path: Path, **kw):
    """parse_csv with polars and with numpy's reader: each a (numbers, target, lines, text) or an error line."""
    out = []
    for off in (False, True):
        before = fast_csv.set_disabled(off)
        try:
            got = files.parse_csv(path, **kw)
            out.append(("ok", got.numbers.view(np.uint32).tobytes(),
                        None if got.target is None else got.target.view(np.uint64).tobytes(),
                        got.lines.tolist(), {k: v.tolist() for k, v in got.text.items()}))
        except DataError as err:
            out.append(("error", str(err)))
        finally:
            fast_csv.set_disabled(before)
    return out


@needs_polars
def test_polars_parses_floats_bitwise_like_python(counted):
    rng = np.random.default_rng(3)
    rand = random.Random(3)
    cells = []
    for _ in range(3000):
        cells.append(f"{rand.randint(0, 10 ** rand.randint(1, 19))}e{rand.randint(-330, 280)}")
        cells.append(repr(float(rng.standard_normal() * 10.0 ** rng.integers(-30, 30))))
        cells.append(f"{rng.random():.{rand.randint(1, 24)}f}")
    want = np.array([float(c) for c in cells]).reshape(-1, 3)
    data = "".join(",".join(row) + "\n" for row in np.array(cells).reshape(-1, 3)).encode()
    got = fast_csv.numbers(data, 3, [0, 1, 2], float(np.finfo(np.float64).max))
    assert got is not None and got.flags.c_contiguous
    assert got.view(np.uint64).tolist() == want.view(np.uint64).tolist()
    # columns picked out of order, the rest read as unchecked text
    got = fast_csv.numbers(data, 3, [2, 0], float(np.finfo(np.float64).max))
    assert got.view(np.uint64).tolist() == want[:, [2, 0]].view(np.uint64).tolist()


@needs_polars
@pytest.mark.parametrize("block, why", [
    (b"1,2\n3\n", "a short row"), (b"1,2\n3,4,5\n", "a long row"), (b"1,2\n\n3,4\n", "a blank line"),
    (b"1,2\n3,4\n\n", "a blank last line"), (b"1,2\n3,4\n\n\n", "blank last lines"), (b"\n1,2\n", "a blank first line"),
    (b"1,\n", "an empty cell"), (b"1,nan\n", "NaN"), (b"1,inf\n", "inf"), (b"1,1e39\n", "beyond float32"),
    (b"1,2 \n", "a trailing space"), (b"1,1_0\n", "an underscore"), (b"1,\xd9\xa1\n", "a non-ASCII digit"),
    (b"1,x\n", "text"), (b"1,2\n", None)])
def test_polars_refuses_every_block_it_does_not_take_cleanly(block, why):
    got = fast_csv.numbers(block, 2, [0, 1], float(np.finfo(np.float32).max))
    assert (got is None) == (why is not None), why


TOKENS = ["1", "-2.5", "3e-7", ".5", "5.", "+4", "0", "1e5", "1E+05", "12345678.9", "-0"]
ODD = ["", " ", "1 ", " 1", "nan", "NaN", "NA", "n/a", "inf", "-inf", "1e400", "4e38", "1_0", "0x10",
       "abc", "\u0661", "1e", "--1", "1.5.2", "\u00a01"]


def random_csv(path: Path, rand: random.Random) -> dict:
    """A small CSV of numbers with, sometimes, an odd cell, a ragged row, a blank line, CRLF or a text column."""
    width = rand.randint(2, 5)
    header = [f"c{j}" for j in range(width - 1)] + ["label"]
    text_col = rand.random() < 0.3
    rows = []
    for i in range(rand.randint(1, 60)):
        row = [rand.choice(TOKENS) for _ in range(width)]
        if text_col:
            row[0] = rand.choice(["red", "blue", "green"])
        if rand.random() < 0.04:
            row[rand.randrange(width)] = rand.choice(ODD)
        if rand.random() < 0.02:
            row = row[:-1] if rand.random() < 0.5 else row + ["7"]
        rows.append(",".join(row))
        if rand.random() < 0.02:
            rows.append("")
    eol = "\r\n" if rand.random() < 0.2 else "\n"
    path.write_bytes((eol.join([",".join(header)] + rows) + eol).encode())
    return {"target": "label", "features": header[1:-1] if text_col and rand.random() < 0.5 else None}


@needs_polars
def test_same_arrays_or_same_message_with_and_without_polars(tmp_path, monkeypatch, counted):
    # small blocks, so a file is many blocks, some taken by polars and some not
    monkeypatch.setattr(files, "BLOCK_BYTES", 97)
    rand = random.Random(11)
    outcomes = {"ok": 0, "error": 0}
    for case in range(150):
        path = tmp_path / f"r{case}.csv"
        kw = random_csv(path, rand)
        with_polars, without = parse_both(path, **kw)
        assert with_polars == without, (path.read_text(), kw)
        outcomes[with_polars[0]] += 1
    # not vacuous: both outcomes occur, and polars took many blocks
    assert outcomes["ok"] >= 40 and outcomes["error"] >= 20, outcomes
    assert counted[0] >= 300, counted[0]


@needs_polars
def test_a_clean_file_is_parsed_by_polars_block_by_block(tmp_path, monkeypatch, counted):
    monkeypatch.setattr(files, "BLOCK_BYTES", 4096)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 6))
    path = tmp_path / "clean.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,e,label\n")
        np.savetxt(f, x, delimiter=",", fmt="%.17g")
    blocks = -(-path.stat().st_size // 4096)
    got = files.parse_csv(path, target="label", dtype=np.float64)
    assert counted[0] >= blocks - 1   # the last block may be the rest of a line only
    assert got.numbers.view(np.uint64).tolist() == x[:, :5].view(np.uint64).tolist()
    assert got.lines.tolist() == list(range(2, 2002))


def test_describe_names_the_parser_and_its_threads():
    big = fast_csv.MIN_BYTES
    assert fast_csv.describe(big - 1) == ("numpy's reader (a file under 32 MB: loading polars would cost more "
                                          "than it saves)")
    assert not fast_csv.used_for(big - 1)
    before = fast_csv.set_disabled(True)
    try:
        assert fast_csv.describe(big) == "numpy's reader" and not fast_csv.used_for(big)
    finally:
        fast_csv.set_disabled(before)
    if fast_csv.available():
        import polars
        n = polars.thread_pool_size()
        assert fast_csv.describe(big).startswith(f"polars {polars.__version__} on {n} thread")
        assert fast_csv.used_for(big)
    else:
        assert fast_csv.describe(big) == f"numpy's reader ({fast_csv.MISSING})"


# -- reading ahead ------------------------------------------------------------------------------

def test_parsed_ahead_hands_on_every_item_then_the_error_where_it_happened():
    def source():
        yield from range(5)
        raise DataError("t.csv row 7: bad")
    got = []
    with pytest.raises(DataError, match="row 7: bad"):
        for item in parsed_ahead(source()):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name == "nnctl-csv-ahead"]


def test_parsed_ahead_stops_its_thread_when_the_caller_stops_early():
    produced, closed = [], []

    def source():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.append(True)
    items = parsed_ahead(source())
    assert [next(items), next(items)] == [0, 1]
    items.close()
    # the thread is joined before close returns, and it stopped within the lookahead
    assert not [t for t in threading.enumerate() if t.name == "nnctl-csv-ahead"]
    assert len(produced) <= 5


def test_ctrl_c_during_predict_stops_at_once_and_writes_nothing(tmp_path):
    """SIGINT while the parse-ahead thread works: exit 130 within seconds, no output, no traceback."""
    spec = tmp_path / "spec.yaml"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    with open(tmp_path / "train.csv", "w") as f:
        f.write(",".join(f"f{j}" for j in range(8)) + ",label\n")
        np.savetxt(f, np.column_stack([x, x[:, 0] > 0]), delimiter=",", fmt="%.5g")
    spec.write_text("name: t\nseed: 0\ndata: {dataset: train.csv, target: label, cache: off}\n"
                    "model: {hidden: [8]}\ntraining: {epochs: 1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "nnctl", "train", str(spec), "--runs-dir", str(tmp_path / "runs"),
                          "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    big = tmp_path / "big.csv"
    block = "".join(",".join(f"{v:.6g}" for v in row) + "\n" for row in rng.standard_normal((20_000, 8)))
    with open(big, "w") as f:
        f.write(",".join(f"f{j}" for j in range(8)) + "\n")
        while f.tell() < fast_csv.MIN_BYTES:   # polars' size, predicted one row at a time: minutes
            f.write(block)
    out = tmp_path / "pred.csv"
    run_dir = next((tmp_path / "runs").iterdir())
    known = {"big.csv", "runs", "spec.yaml", "train.csv"}
    proc = subprocess.Popen([sys.executable, "-m", "nnctl", "predict", str(run_dir), str(big), "--out", str(out),
                             "--batch-size", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # predicting has begun once the output's temporary file exists (atomic write)
    deadline = time.monotonic() + 30
    while not {p.name for p in tmp_path.iterdir()} - known and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - start < 5
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert {p.name for p in tmp_path.iterdir()} == known


# -- threads, and where they are shown -----------------------------------------------------------

def test_parser_threads_follow_an_explicit_count_unless_the_user_set_polars_own(monkeypatch):
    from nnctl import threads
    monkeypatch.delitem(sys.modules, "polars", raising=False)   # as before polars first loads
    monkeypatch.setattr(threads, "_parser_threads_set", False)
    monkeypatch.delenv(threads.PARSER_VAR, raising=False)
    assert threads.parser_threads_source() == "polars' default: every CPU"
    threads.set_parser_threads(3)
    assert os.environ[threads.PARSER_VAR] == "3" and threads.parser_threads_source() == "nnctl's thread count"
    threads.set_parser_threads(2)   # a later explicit count (nnctl set the first) replaces it
    assert os.environ[threads.PARSER_VAR] == "2"
    monkeypatch.setattr(threads, "_parser_threads_set", False)
    monkeypatch.setenv(threads.PARSER_VAR, "5")   # the user's own
    threads.set_parser_threads(1)
    assert os.environ[threads.PARSER_VAR] == "5" and threads.parser_threads_source() == threads.PARSER_VAR


@needs_polars
def test_threads_flag_sizes_polars_pool_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    code = ("from nnctl import threads; threads.preset(1); from nnctl.data import fast_csv; "
            "print(fast_csv.describe(fast_csv.MIN_BYTES))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    import polars
    assert out.stdout == f"polars {polars.__version__} on 1 thread (nnctl's thread count)\n", out.stderr


@needs_polars
def test_train_header_and_config_name_the_parser(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_csv, "MIN_BYTES", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 3))
    with open(tmp_path / "d.csv", "w") as f:
        f.write("a,b,c,label\n")
        np.savetxt(f, np.column_stack([x, x[:, 0] > 0]), delimiter=",", fmt="%.5g")
    (tmp_path / "s.yaml").write_text("name: t\nseed: 0\ndata: {dataset: d.csv, target: label, cache: off}\n"
                                     "model: {hidden: [4]}\ntraining: {epochs: 1}\n")
    from typer.testing import CliRunner
    from nnctl.cli import app
    shown = fast_csv.describe(0)
    assert shown.startswith("polars ")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0 and f"csv parser: {shown}\n" in res.stdout, res.output
    res = CliRunner().invoke(app, ["config", str(tmp_path / "s.yaml")])
    assert res.exit_code == 0 and f"# csv parser: {shown}\n" in res.stdout
