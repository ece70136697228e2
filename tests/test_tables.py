"""Tables at scale: the block parser agrees with the cell-by-cell checks, and the parsed-table cache
is hit, invalidated, rebuilt when damaged, and built once by racing processes and by a sweep."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnctl.cli import app
from nnctl.data import fast_csv, files, table_cache
from nnctl.data.dataset import load_dataset
from nnctl.data.table_cache import TableCache
from nnctl.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def table_csv(path: Path, rows: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).round(4)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    path.write_text("a,b,c,label\n" + "".join(f"{p},{q},{r},{t}\n" for (p, q, r), t in zip(x, y)))
    return path


def builds(cache_dir: Path) -> int:
    log = cache_dir / "tables" / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def data_spec(path: Path, **extra) -> dict:
    return {"dataset": str(path), "target": "label", "val_split": 0.2, "test_split": 0.2, **extra}


def x_of(ds) -> np.ndarray:
    return np.asarray(ds.train.x)[ds.train.rows()]


# -- the block parser -----------------------------------------------------------------------------

MIXED = (
    "\ufeffid,num,color,label\n"
    + "".join(f"{i},{i * 0.5},{'red' if i % 3 else 'blue'},{'yes' if i % 2 else 'no'}\n" for i in range(1, 40))
    + "\n"                                        # a blank line
    + "40,,red,no\n41,NA,blue,yes\n"               # missing cells
    + '42,21.0,"gr,een",no\n'                     # a quoted field: csv module from here on
    + '43,21.5,"multi\nline",yes\n'
    + "44,22.0,red,no\r\n"
)


@pytest.mark.parametrize("block", [40, 97, 4 * 2**20])
def test_blocks_of_any_size_parse_as_one(tmp_path, monkeypatch, block):
    """Numbers, missing cells, categories, line numbers are the same whatever the block boundaries."""
    path = tmp_path / "mixed.csv"
    path.write_text(MIXED, newline="")
    monkeypatch.setattr(files, "BLOCK_BYTES", block)
    raw = files.read_csv_data(path, "label", None)
    num = raw.columns[1]
    assert [c.kind for c in raw.columns] == ["numeric", "numeric", "categorical"]
    assert num.values[:3].tolist() == [0.5, 1.0, 1.5] and np.isnan(num.values[39:41]).all()
    assert num.missing.sum() == 2 and num.values[41] == 21.0
    assert raw.columns[2].values[41:43].tolist() == ["gr,een", "multi\nline"]
    assert raw.y[:2].tolist() == ["yes", "no"] and raw.y[-1] == "no"
    assert raw.lines[:2].tolist() == [2, 3] and raw.lines[38:].tolist() == [40, 42, 43, 44, 45, 47]


@pytest.mark.parametrize("block", [30, 4 * 2**20])
def test_an_error_in_a_later_block_names_its_cell(tmp_path, monkeypatch, block):
    monkeypatch.setattr(files, "BLOCK_BYTES", block)
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "1,2,0\n" * 20 + "1,x,1\n" + "3,4\n")
    with pytest.raises(DataError) as err:
        files.read_csv_data(path, "label", None)
    assert str(err.value) == "d.csv row 23: expected 3 fields, got 2"   # the block's structure first
    path.write_text("a,b,label\n" + "1,2,0\n" * 20 + "1,x,1\n")
    with pytest.raises(DataError) as err:
        files.read_csv_data(path, "label", None)
    assert str(err.value) == ("d.csv row 22, column 'b': not a number: 'x' (the column's other cells are "
                              "numbers; list it in data.categorical to use it as categories)")
    path.write_text("a,b,label\n" + "1,2,0\n" * 20 + "1,1e300,1\n")
    with pytest.raises(DataError) as err:
        files.read_csv_data(path, "label", None)
    assert str(err.value) == "d.csv row 22, column 'b': '1e300' is not finite in float32 (the model's dtype)"


def test_labels_after_numbers_and_text_after_missing_restart_as_text(tmp_path, monkeypatch):
    """A target whose text starts in a later block is labels; a feature missing in the first blocks
    and text later is categorical."""
    monkeypatch.setattr(files, "BLOCK_BYTES", 16)
    path = tmp_path / "d.csv"
    path.write_text("a,c,label\n" + "1,,1.0\n" * 10 + "2,k,other\n")
    raw = files.read_csv_data(path, "label", None)
    assert raw.y.tolist() == ["1.0"] * 10 + ["other"]
    assert raw.columns[1].kind == "categorical" and raw.columns[1].values[-1] == "k"
    assert raw.numbers is None and raw.columns[0].values.tolist() == [1.0] * 10 + [2.0]


def test_block_parser_bits_are_float_then_one_cast(tmp_path, monkeypatch):
    """Cells of 1 to 25 significant digits, tiny and large exponents, signs, spaces: the block
    parser reads float64 bits equal to Python's float(), and the model's float32 by one cast."""
    rng = np.random.default_rng(7)
    rows, cols = 400, 6
    digits = rng.integers(0, 10, size=(rows, cols, 25))
    lengths = rng.integers(1, 26, size=(rows, cols))
    exps = rng.integers(-45, 37, size=(rows, cols))

    def cell(i: int, j: int) -> str:
        d, n = digits[i, j], lengths[i, j]
        sign = "-" if (i + j) % 3 == 0 else ""
        return sign + (f"{d[0]}.{''.join(map(str, d[1:n]))}e{exps[i, j]}" if n > 1 else str(d[0]))

    cells = [[cell(i, j) for j in range(cols)] for i in range(rows)]
    cells[0][0], cells[1][1], cells[2][2] = " 1.5 ", "+.5", "3.4028234663852886e38"
    path = tmp_path / "bits.csv"
    path.write_text("a,b,c,d,e,label\n" + "".join(",".join(r) + "\n" for r in cells))
    want = np.array([[float(c) for c in r[:5]] for r in cells])
    # the C reader takes every block: none goes to the cell checks
    monkeypatch.setattr(files, "numeric_column", lambda *a, **k: pytest.fail("a block went to the cell checks"))
    got = files.parse_csv(path, target="label", dtype=np.float64)
    assert got.numbers.view(np.int64).tolist() == want.view(np.int64).tolist()
    assert got.target.view(np.int64).tolist() == np.array([float(r[5]) for r in cells]).view(np.int64).tolist()
    f32 = files.parse_csv(path, target="label").numbers
    assert f32.dtype == np.float32 and f32.view(np.int32).tolist() == want.astype(np.float32).view(np.int32).tolist()


# -- the cache ------------------------------------------------------------------------------------

def test_second_load_is_a_cache_hit_with_the_same_arrays(tmp_path):
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    path = table_csv(tmp_path / "t.csv")
    first = load_dataset(data_spec(path), 0, tmp_path)
    before = table_cache.BUILDS
    second = load_dataset(data_spec(path), 0, tmp_path)
    assert table_cache.BUILDS == before and builds(cache) == 1
    assert first.describe()[-2:] == [f"csv parser: {fast_csv.describe(path.stat().st_size)}",
                                     f"table cache: {cache / 'tables'} (parsed and stored)"]
    # a hit parses nothing, so it names no parser
    assert second.describe()[-2:] == [first.describe()[-3], f"table cache: {cache / 'tables'} (hit)"]
    assert isinstance(second.train.x, np.memmap)
    assert np.array_equal(x_of(first), x_of(second)) and np.array_equal(first.test.y, second.test.y)
    # the parsed values are the file's, rounded to float32
    expect = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float32)
    assert np.array_equal(np.asarray(second.train.x), expect)
    # other options are another entry; off never writes
    load_dataset(data_spec(path, features=["a", "b"]), 0, tmp_path)
    assert builds(cache) == 2
    off = load_dataset(data_spec(path, cache="off"), 0, tmp_path)
    assert builds(cache) == 2 and off.describe()[-1] == "table cache: off"


def test_an_edit_keeping_size_and_mtime_is_seen_by_its_hash(tmp_path, monkeypatch):
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    hashed = []
    real_digest = table_cache.hashlib.file_digest

    def file_digest(f, name):
        hashed.append(f.name)
        return real_digest(f, name)
    monkeypatch.setattr(table_cache.hashlib, "file_digest", file_digest)
    path = table_csv(tmp_path / "t.csv")
    load_dataset(data_spec(path, val_split=0, test_split=0), 0, tmp_path)
    st = os.stat(path)
    text = path.read_text()
    first_value = text.splitlines()[1].split(",")[0]
    edited = text.replace(first_value, first_value[:-1] + ("1" if first_value[-1] != "1" else "2"), 1)
    assert len(edited) == len(text) and edited != text
    path.write_text(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    hashed.clear()
    ds = load_dataset(data_spec(path, val_split=0, test_split=0), 0, tmp_path)
    assert builds(cache) == 2
    assert ds.train.x[0, 0] == np.float32(float(edited.splitlines()[1].split(",")[0]))
    # the stale check, the check under the lock and the new entry's stamp share one read of the file
    assert hashed == [str(path)]
    # a touch without an edit: rehashed once, the same bytes, still a hit
    os.utime(path, None)
    hashed.clear()
    load_dataset(data_spec(path, val_split=0, test_split=0), 0, tmp_path)
    assert builds(cache) == 2 and hashed == [str(path)]


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "foreign"])
def test_a_damaged_or_foreign_entry_is_rebuilt(tmp_path, damage):
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    path = table_csv(tmp_path / "t.csv")
    good = x_of(load_dataset(data_spec(path), 0, tmp_path))   # a copy: the damage below is in place
    (entry,) = [p for p in (cache / "tables").iterdir() if p.is_dir()]
    if damage == "truncate":
        data = (entry / "numbers.npy").read_bytes()
        (entry / "numbers.npy").write_bytes(data[:len(data) // 2])
    elif damage == "garbage_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        meta = json.loads((entry / "meta.json").read_text())
        meta["shapes"]["numbers"][0][0] += 1      # claims a row the array does not have
        (entry / "meta.json").write_text(json.dumps(meta))
    killed = cache / "tables" / f".{entry.name}.999999.tmp"   # a builder killed midway
    killed.mkdir()
    (killed / "numbers.npy").write_bytes(b"half")
    again = load_dataset(data_spec(path), 0, tmp_path)
    assert builds(cache) == 2 and again.describe()[-1].endswith("(parsed and stored)")
    assert sorted(p.name for p in (cache / "tables").iterdir()) == sorted(
        [entry.name, f"{entry.name}.lock", "builds.log"])
    assert np.array_equal(good, x_of(again))


RACER = """
import hashlib, sys
import numpy as np
from nnctl.data.dataset import load_dataset
ds = load_dataset({"dataset": sys.argv[1], "target": "label"}, 0, ".")
print(hashlib.sha256(np.ascontiguousarray(ds.train.x).tobytes()).hexdigest(), ds.describe()[-1].split("(")[-1])
"""


def test_two_processes_racing_build_once_and_read_equal_arrays(tmp_path):
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    path = table_csv(tmp_path / "t.csv", rows=3000)
    key, _, _ = TableCache.key(path, features=None, target="label", categorical="auto", ignore=None)
    (cache / "tables").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # hold the build lock so both processes reach it before either can build
    with open(cache / "tables" / f"{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path)], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(0.5)
        assert all(p.poll() is None for p in procs)   # both wait on the lock
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(o.strip() for o, _ in outs)
    assert lines[0].split()[0] == lines[1].split()[0]
    assert sorted(line.split()[-1] for line in lines) == ["hit)", "stored)"]
    assert builds(cache) == 1


def test_a_sweep_of_four_trials_parses_once(tmp_path):
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    table_csv(tmp_path / "t.csv", rows=60)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent("""\
        name: tables
        base:
          data: {dataset: t.csv, target: label, val_split: 0.2, test_split: 0.2}
          model: {hidden: [4]}
          optimizer: {name: sgd, lr: 0.05}
          training: {epochs: 1, batch_size: 16}
        parameters:
          optimizer.lr: [0.01, 0.02, 0.03, 0.04]
        metric: val_loss
        """))
    # four workers: the trials start together, so they also race for the entry's lock, and the
    # test waits for one round of process starts instead of four
    result = runner.invoke(app, ["sweep", str(spec), "--runs-dir", str(tmp_path / "runs"), "--workers", "4"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "runs").glob("tables-*/trials/*"))) == 4
    assert builds(cache) == 1


def test_cache_list_and_clear(tmp_path):
    """Both caches under the folder: parsed tables and decoded image folders."""
    from nnctl.data.image_cache import write_pixels
    from nnctl.engine.memory import format_bytes
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    path = table_csv(tmp_path / "t.csv")
    load_dataset(data_spec(path), 0, tmp_path)
    write_pixels(cache, "0123abcd-ef", 3, iter([np.full((1, 2, 5), i, np.uint8) for i in range(3)]))
    out = runner.invoke(app, ["cache", "list"])
    assert out.exit_code == 0 and str(path.resolve()) in out.output and "fresh" in out.output
    assert "1 table," in out.output
    # the table's line: its rows, and its size as the entry's files add up
    (entry,) = [p for p in (cache / "tables").iterdir() if p.is_dir()]
    size = format_bytes(sum(f.stat().st_size for f in entry.iterdir()))
    (line,) = [x for x in out.output.splitlines() if x.startswith(f"  {path.resolve()}: ")]
    assert re.fullmatch(rf"  {re.escape(str(path.resolve()))}: 300 rows, \d+ columns, {re.escape(size)}, "
                        r"built \d{4}-\d\d-\d\d \d\d:\d\d, fresh", line), line
    assert f"\n1 table, {size}\n" in out.output
    assert "  0123abcd-ef.npy: 3 images of 1x2x5, 158 B, built " in out.output   # 128-byte header + 30
    assert out.output.rstrip().endswith("1 image folder, 158 B")
    out = runner.invoke(app, ["cache", "clear"])
    assert out.exit_code == 0 and out.output.startswith(f"{cache / 'tables'}: removed 1 table (")
    assert out.output.splitlines()[-1] == f"{cache / 'images'}: removed 1 image folder (158 B)"
    assert not [p for p in (cache / "tables").iterdir() if p.is_dir()]
    assert not list((cache / "images").iterdir())
    assert runner.invoke(app, ["cache", "list"]).output.splitlines() == [
        f"{cache / 'tables'}: no cached tables", f"{cache / 'images'}: no decoded image folders"]


def test_cache_list_only_reads(tmp_path):
    """A touched file with the same bytes is listed as fresh, and listing leaves meta.json as it was;
    the next real load restamps it (so later loads skip the hash)."""
    import hashlib
    cache = Path(os.environ["NNCTL_CACHE_DIR"])
    path = table_csv(tmp_path / "t.csv")
    load_dataset(data_spec(path), 0, tmp_path)
    (entry,) = [p for p in (cache / "tables").iterdir() if p.is_dir()]
    meta = entry / "meta.json"
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()
    out = runner.invoke(app, ["cache", "list"])
    assert out.exit_code == 0 and out.output.count(", fresh") == 1
    assert hashlib.sha256(meta.read_bytes()).hexdigest() == digest
    load_dataset(data_spec(path), 0, tmp_path)
    assert json.loads(meta.read_text())["file"]["mtime_ns"] == os.stat(path).st_mtime_ns
    assert builds(cache) == 1


def test_cache_off_unquoted_is_yaml_false_and_means_off(tmp_path):
    from nnctl.config.spec import load_spec
    path = table_csv(tmp_path / "t.csv")
    (tmp_path / "s.yaml").write_text(f"data: {{dataset: {path}, target: label, cache: off}}\nmodel: {{hidden: [4]}}\n")
    assert load_spec(tmp_path / "s.yaml").data["cache"] == "off"
    ds = load_dataset({**data_spec(path), "cache": False}, 0, tmp_path)
    assert ds.describe()[-1] == "table cache: off"


def test_an_unwritable_cache_folder_does_not_stop_a_run(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("NNCTL_CACHE_DIR", str(blocker))
    path = table_csv(tmp_path / "t.csv")
    ds = load_dataset(data_spec(path), 0, tmp_path)
    assert ds.describe()[-1] == f"table cache: {blocker / 'tables'} (not writable: Not a directory)"
    assert len(ds.train) + len(ds.val) + len(ds.test) == 300


@pytest.mark.parametrize("block", [50, 4 * 2**20])
def test_predict_chunks_are_the_same_whatever_the_block_size(tmp_path, monkeypatch, block):
    """predict's stream: features encoded with the training vocabulary, --keep cells, notes."""
    from nnctl.commands.predict import CsvFeatureReader
    from nnctl.data.preprocess import TableEncoder
    monkeypatch.setattr(files, "BLOCK_BYTES", block)
    path = tmp_path / "new.csv"
    path.write_text("id,num,color,extra\n" + "".join(
        f"r{i},{i / 4},{['red', 'blue', 'teal'][i % 3]},{i}\n" for i in range(30)) + 'r30,7.5,"red",x\n')
    table = TableEncoder([{"name": "num", "kind": "numeric", "fill": None},
                          {"name": "color", "kind": "categorical", "categories": ["blue", "red"], "fill": None}])
    reader = CsvFeatureReader(path, None, "label", (4,), table=table, keep=["id"], chunk_rows=4)
    chunks = list(reader.chunks_with_kept())
    x = np.concatenate([c[0] for c in chunks])
    ids = [i for c in chunks for i in c[1][0]]
    assert all(len(c[0]) <= 4 for c in chunks)
    assert x.shape == (31, 4) and x[:, 0].tolist() == [i / 4 for i in range(30)] + [7.5]
    assert x[:3, 1:].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]   # red, blue, teal -> unknown
    assert ids == [f"r{i}" for i in range(31)]
    assert reader.notes == ["new.csv: ignored columns the model does not use: extra",
                            "new.csv: 10 categorical values the training split never had, encoded as 'unknown'"]


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_takes_trainings_default_blas_threads(tmp_path, command):
    """OpenBLAS's own default (every core, spin-waiting) doubled predict's CPU on a busy machine:
    predict and eval, in a fresh process, set training's default before NumPy loads."""
    from nnctl import threads
    path = table_csv(tmp_path / "t.csv", rows=100)
    (tmp_path / "s.yaml").write_text(f"data: {{dataset: {path}, target: label}}\nmodel: {{hidden: [4]}}\n"
                                     "training: {epochs: 1, batch_size: 32}\n")
    assert runner.invoke(app, ["train", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "runs"),
                               "--quiet"]).exit_code == 0
    run = next((tmp_path / "runs").iterdir())
    args = (["predict", str(run), str(path), "--out", str(tmp_path / "p.csv")] if command == "predict"
            else ["eval", str(run), "--json"])
    script = textwrap.dedent(f"""\
        import os, sys
        from nnctl.cli import app
        try:
            app({args!r})
        except SystemExit as end:
            assert not end.code, end.code
        from nnctl.threads import current_blas_threads
        print(os.environ["OPENBLAS_NUM_THREADS"], current_blas_threads())
        """)
    env = {k: v for k, v in os.environ.items() if k not in threads.BLAS_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    want = threads.default_threads(threads.physical_cores())
    blas = threads.current_blas_threads()
    assert proc.stdout.splitlines()[-1].split() == [str(want), str(want) if blas is not None else "None"]
    if command == "predict":
        assert len((tmp_path / "p.csv").read_text().splitlines()) == 101
