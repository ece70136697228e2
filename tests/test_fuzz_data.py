"""Fuzzing the data loaders: every broken CSV/.npy/.npz is a DataError naming file, row and column.

Two kinds of cases. Generated CSV tables (BOMs, CRLF, quoted fields with commas and line
breaks, blank lines) with exactly one defect injected at a known record and column, so
the expected message is known to the character, line number included. And free-form
input (random CSV text, random arrays of every dtype, random/truncated bytes), where
only the kind of outcome is checked: data, or a DataError that names the file.
"""
from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnctl.commands.predict import CsvFeatureReader
from nnctl.data import load_dataset, load_features
from nnctl.data.files import read_npz_data
from nnctl.errors import ConfigError, DataError

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.data_too_large])
NAME = "d.csv"


# ---------------------------------------------------------------------------- generated tables

def quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@st.composite
def table(draw):
    """A valid labelled CSV as records of cells, plus how to write it."""
    n = draw(st.integers(2, 8))
    k = draw(st.integers(1, 3))
    header = [f"f{j}" for j in range(k)] + ["label"]
    number = st.one_of(st.integers(-1000, 1000).map(str),
                       st.floats(-1e6, 1e6, allow_nan=False).map(repr),
                       st.sampled_from(["1e-3", " 2.5 ", "+3", "-0", ".5", "7."]))
    rows = [[draw(number) for _ in range(k)] + [draw(st.sampled_from(["0", "1", "2"]))] for _ in range(n)]
    # an id column of text: ignored as a feature, and its quoted line breaks shift the line numbers
    with_id = draw(st.booleans())
    ids = [draw(st.sampled_from(["a", "b,c", "line\nbreak", 'say "hi"', "x\r\ny"])) for _ in range(n)]
    return {
        "header": header, "rows": rows, "ids": ids if with_id else None,
        "bom": draw(st.booleans()), "crlf": draw(st.booleans()),
        "blank_after": draw(st.sets(st.integers(-1, n - 1), max_size=3)),   # -1: after the header
        "quote_numbers": draw(st.booleans()),
    }


def render(t: dict) -> tuple[str, list[int]]:
    """(CSV text, 1-based first line of every data record)."""
    nl = "\r\n" if t["crlf"] else "\n"
    header = (["id"] if t["ids"] else []) + t["header"]
    out = [",".join(header) + nl]
    line = 2
    if -1 in t["blank_after"]:
        out.append(nl)
        line += 1
    starts = []
    for i, row in enumerate(t["rows"]):
        cells = [quote(c) if (t["quote_numbers"] and c.strip()) or "," in c else c for c in row]
        if t["ids"]:
            cells = [quote(t["ids"][i])] + cells
        text = ",".join(cells) + nl
        starts.append(line)
        line += text.count("\n")
        out.append(text)
        if i in t["blank_after"]:
            out.append(nl)
            line += 1
    return ("\ufeff" if t["bom"] else "") + "".join(out), starts


DEFECTS = ("text", "empty", "huge", "nonfinite", "ragged_more", "ragged_less", "duplicate_header",
           "unnamed_header", "empty_target", "none")


@st.composite
def defective(draw):
    t = draw(table())
    defect = draw(st.sampled_from(DEFECTS))
    r = draw(st.integers(0, len(t["rows"]) - 1))
    c = draw(st.integers(0, len(t["header"]) - 2))                # a feature column
    return t, defect, r, c, draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity"])), \
        draw(st.sampled_from(["abc", "1,5", "1.2.3", "0x10", "--1", "\x00"]))


def expected_message(t: dict, defect: str, r: int, c: int, starts: list[int], bad: str) -> str | None:
    """The exact DataError the injected defect must produce (None: the file is valid)."""
    header = (["id"] if t["ids"] else []) + t["header"]
    col = t["header"][c]
    where = f"{NAME} row {starts[r]}, column '{col}'"
    width = len(header)
    return {
        "text": f"{where}: not a number: {bad!r} (the column's other cells are numbers; list it in "
                "data.categorical to use it as categories)",
        "empty": missing_message(where),
        "huge": f"{where}: not a finite number: '1e400'",
        "nonfinite": None,  # filled in by the caller (the cell text is part of it)
        "ragged_more": f"{NAME} row {starts[r]}: expected {width} fields, got {width + 1}",
        "ragged_less": f"{NAME} row {starts[r]}: expected {width} fields, got {width - 1}",
        "duplicate_header": f"{NAME}: duplicate column name 'label' (columns {header.index(col) + 1} and {width})",
        "unnamed_header": f"{NAME}: column {header.index(col) + 1} has no name in the header",
        "empty_target": missing_message(f"{NAME} row {starts[r]}, column 'label'"),
        "none": None,
    }[defect]


def missing_message(where: str) -> str:
    """Training's error for one missing cell (data.missing: error, the default)."""
    return (f"{NAME}: 1 missing value (empty, NA or NaN), first at {where}; set data.missing: drop (remove those "
            "rows) or impute (fill from the training split)")


def nonfinite_message(where: str, cell: str) -> str:
    # NaN is a missing value; inf is never one
    return missing_message(where) if cell.lower() == "nan" else f"{where}: not a finite number: {cell!r}"


def data_spec(t: dict, **more) -> dict:
    """The data section for a table: its target, and the text id column (if any) ignored."""
    return {"dataset": NAME, "target": "label", "ignore": ["id"] if t["ids"] else None, **more}


def inject(t: dict, defect: str, r: int, c: int, nonfinite: str, bad: str) -> None:
    row = t["rows"][r]
    if defect == "text":
        row[c] = bad
    elif defect == "empty":
        row[c] = "   "
    elif defect == "huge":
        row[c] = "1e400"
    elif defect == "nonfinite":
        row[c] = nonfinite
    elif defect == "ragged_more":
        row.append("1")
    elif defect == "ragged_less":
        row.pop(c)
    elif defect == "duplicate_header":
        t["header"][c] = "label"
    elif defect == "unnamed_header":
        t["header"][c] = " "
    elif defect == "empty_target":
        row[-1] = ""


def test_one_defect_at_a_known_cell(tmp_path, record_counts):
    counts = Counter()
    path = tmp_path / NAME

    @settings(max_examples=400, **FUZZ)
    @given(defective())
    def run(case):
        t, defect, r, c, nonfinite, bad = case
        inject(t, defect, r, c, nonfinite, bad)
        text, starts = render(t)
        path.write_text(text, encoding="utf-8", newline="")
        want = expected_message(t, defect, r, c, starts, bad)
        if defect == "nonfinite":
            want = nonfinite_message(f"{NAME} row {starts[r]}, column '{t['header'][c]}'", nonfinite)
        data = data_spec(t, val_split=0.0, test_split=0.0, task="classification")
        single_class = len({row[-1].strip() for row in t["rows"]}) == 1
        try:
            ds = load_dataset(data, 0, tmp_path)
        except DataError as err:
            if want is None and single_class:
                # a clean file whose target holds one class is refused: nothing to classify
                assert str(err).startswith(f"{NAME}: the training split has a single class ("), (text, str(err))
                counts["single class DataError"] += 1
                return
            assert str(err) == want, (defect, text)
            counts[f"{defect} DataError"] += 1
            return
        assert want is None, (defect, text, want)
        assert len(ds.train) == len(t["rows"]) and ds.input_shape == (len(t["header"]) - 1,)
        counts["valid"] += 1

    run()
    record_counts("data: CSV with one injected defect", counts)
    assert sum(counts.values()) >= 350
    for defect in DEFECTS[:-1]:
        assert counts[f"{defect} DataError"] > 0, counts


def test_predict_reader_names_the_same_cell(tmp_path, record_counts):
    """nnctl predict streams CSVs with its own reader; it must point at the same row and column."""
    counts = Counter()
    path = tmp_path / NAME

    @settings(max_examples=200, **FUZZ)
    @given(defective())
    def run(case):
        t, defect, r, c, nonfinite, bad = case
        if defect in ("duplicate_header", "unnamed_header", "empty_target", "text"):
            defect = "huge"   # header problems and labels are training-side; keep to cells
        inject(t, defect, r, c, nonfinite, bad)
        text, starts = render(t)
        path.write_text(text, encoding="utf-8", newline="")
        features = t["header"][:-1]
        want = expected_message(t, defect, r, c, starts, bad)
        where = f"{NAME} row {starts[r]}, column '{t['header'][c]}'"
        if defect == "empty" or (defect == "nonfinite" and nonfinite.lower() == "nan"):
            # predict fills a missing cell only for a model trained with data.missing: impute
            want = (f"{where}: missing value (1 in this column); the model was trained with data.missing: "
                    "error, so it has no fill value (use data.missing: impute)")
        elif defect == "nonfinite":
            want = nonfinite_message(where, nonfinite)
        if defect == "ragged_less":
            want = f"{NAME} row {starts[r]}: expected {len(t['header']) + bool(t['ids'])} fields, got " \
                   f"{len(t['header']) + bool(t['ids']) - 1}"
        reader = CsvFeatureReader(path, features, "label", (len(features),), chunk_rows=3)
        try:
            rows = sum(len(x) for x in reader.chunks())
        except DataError as err:
            assert str(err) == want, (defect, text)
            counts[f"{defect} DataError"] += 1
            return
        assert want is None and rows == len(t["rows"]), (defect, text)
        counts["valid"] += 1

    run()
    record_counts("data: predict's streaming CSV reader", counts)
    assert sum(counts.values()) >= 180


@pytest.mark.parametrize("text, message", [
    ("", "d.csv: file is empty"),
    ("\ufeff", "d.csv: file is empty"),
    ("\n\n  \n", "d.csv: file is empty"),
    ("a,b,label\n", "d.csv: no data rows, only a header"),
    ("a,b,label\n1,2,0\n3,4\n", "d.csv row 3: expected 3 fields, got 2"),
    # an unclosed quote runs to the end of the file: that record is then short of fields
    ('a,b,label\n1,"2,0\n', "d.csv row 2: expected 3 fields, got 2"),
    ("a,b,label\n1,1e400,0\n2,3,1\n", "d.csv row 2, column 'b': not a finite number: '1e400'"),
    ("a,a,label\n1,2,0\n", "d.csv: duplicate column name 'a' (columns 1 and 2)"),
    ("a,b,label\n1,2,0\n1,2,1e400\n", "d.csv row 3, column 'label': not a finite number: '1e400'"),
    ("a,b,label\n1,2,0\n1,2,1e300\n", "d.csv row 3, column 'label': '1e300' is not finite in float32 "
                                        "(the model's dtype)"),
])
def test_exact_messages(tmp_path, text, message):
    (tmp_path / NAME).write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset({"dataset": NAME, "target": "label", "val_split": 0.0, "test_split": 0.0}, 0, tmp_path)
    assert str(info.value) == message


def test_not_utf8_names_the_line_and_the_real_offset(tmp_path):
    # far past the text layer's first decoding chunk, whose offsets restart at 0
    (tmp_path / NAME).write_bytes(b"a,b,label\n" + b"1,2,0\n" * 5000 + b"1,2,\xff\n")
    message = "d.csv row 5002: not UTF-8 text (byte 30014: invalid start byte)"
    with pytest.raises(DataError) as info:
        load_dataset({"dataset": NAME, "target": "label"}, 0, tmp_path)
    assert str(info.value) == message
    with pytest.raises(DataError) as info:
        list(CsvFeatureReader(tmp_path / NAME, None, "label", (2,)).chunks())
    assert str(info.value) == message


# ---------------------------------------------------------------------------- free-form input

CSV_TOKENS = [",", "\n", "\r\n", "\r", '"', '""', "1", "2.5", "-3", "0", "nan", "inf", "1e400", "a", "label",
              "target", "x", " ", "\t", "\ufeff", "\x00", "é", ";", "#", "1,2", "True", "0x1"]
csv_text = st.one_of(st.lists(st.sampled_from(CSV_TOKENS), max_size=60).map("".join), st.text(max_size=80))


def _csv_outcome(call) -> str:
    try:
        call()
    except DataError as err:
        assert str(err).startswith(NAME), str(err)
        assert len(str(err).splitlines()) == 1, str(err)
        return "DataError"
    except ConfigError as err:
        return "ConfigError"   # a spec-level problem, e.g. binary_cross_entropy on 3 classes
    return "ok"


def test_random_csv_text(tmp_path, record_counts):
    counts = Counter()
    path = tmp_path / NAME

    @settings(max_examples=400, **FUZZ)
    @given(csv_text, st.sampled_from([None, "classification", "regression"]))
    def run(text, task):
        path.write_text(text, encoding="utf-8", newline="")
        data = {"dataset": NAME, "target": "label", "val_split": 0.0, "test_split": 0.0, "task": task}
        counts[f"train {_csv_outcome(lambda: load_dataset(data, 0, tmp_path))}"] += 1
        counts[f"eval {_csv_outcome(lambda: load_features(path, None, None, 'label'))}"] += 1
        reader = CsvFeatureReader(path, None, "label", (2,), chunk_rows=2)
        counts[f"predict {_csv_outcome(lambda: list(reader.chunks()))}"] += 1

    run()
    record_counts("data: random CSV text (x3 readers)", counts)
    assert sum(counts.values()) >= 1000


DTYPES = ["float32", "float64", "int8", "int64", "uint8", "bool", "complex64", "U3", "S2", "datetime64[s]",
          "object", "f2", [("a", "f4"), ("b", "i4")]]


@st.composite
def array(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.sampled_from([(), (0,), (5,), (5, 2), (5, 0), (0, 3), (4, 2, 2), (1, 1)]))
    size = int(np.prod(shape))
    if dtype.kind == "f":
        values = draw(st.lists(st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, 1e38]), min_size=size, max_size=size))
        with np.errstate(over="ignore"):   # 1e38 overflows float16 to inf: one more non-finite case
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    if dtype.kind == "O":
        return np.array([None] * size, dtype=object).reshape(shape)
    return np.zeros(shape, dtype=dtype)


def _array_outcome(call, names: tuple[str, ...]) -> str:
    try:
        call()
    except DataError as err:
        assert str(err).startswith(names), str(err)
        assert len(str(err).splitlines()) == 1, str(err)
        return "DataError"
    except ConfigError:
        return "ConfigError"
    return "ok"


def test_random_npy_and_npz(tmp_path, record_counts):
    counts = Counter()
    x_path, y_path, z_path = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "d.npz"

    @settings(max_examples=300, **FUZZ)
    @given(array(), array(), st.sampled_from([None, "classification", "regression"]))
    def run(x, y, task):
        for arr, path in ((x, x_path), (y, y_path)):
            np.save(path, arr, allow_pickle=True)       # object arrays go in pickled: loaders must refuse them
        np.savez(z_path, x=x, y=y)
        spec = {"val_split": 0.0, "test_split": 0.0, "task": task}
        counts["npy " + _array_outcome(lambda: load_dataset({**spec, "dataset": "x.npy", "target_path": "y.npy"},
                                                            0, tmp_path), ("x.npy", "y.npy"))] += 1
        counts["npz " + _array_outcome(lambda: load_dataset({**spec, "dataset": "d.npz"}, 0, tmp_path),
                                       ("d.npz",))] += 1
        counts["predict " + _array_outcome(lambda: load_features(x_path, None, (2,), None), ("x.npy",))] += 1

    run()
    record_counts("data: random .npy/.npz arrays (x3 loaders)", counts)
    assert sum(counts.values()) >= 850


def test_random_and_truncated_array_files(tmp_path, record_counts):
    counts = Counter()
    good = io.BytesIO()
    np.savez_compressed(good, x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    good_npz = good.getvalue()
    good = io.BytesIO()
    np.save(good, np.arange(40.0).reshape(20, 2))
    good_npy = good.getvalue()

    @settings(max_examples=300, **FUZZ)
    @given(st.one_of(st.binary(max_size=300).map(lambda b: ("npy", b)),
                     st.integers(0, len(good_npy) - 1).map(lambda n: ("npy", good_npy[:n])),
                     st.integers(0, len(good_npz) - 1).map(lambda n: ("npz", good_npz[:n])),
                     st.tuples(st.integers(0, len(good_npz) - 1), st.integers(0, 255)).map(
                         lambda e: ("npz", good_npz[:e[0]] + bytes([e[1]]) + good_npz[e[0] + 1:])),
                     st.binary(max_size=300).map(lambda b: ("npz", b"PK\x03\x04" + b))))
    def run(case):
        kind, data = case
        path = tmp_path / f"f.{kind}"
        path.write_bytes(data)
        counts[f"{kind} " + _array_outcome(lambda: load_features(path, None, None, None), ("f.",))] += 1

    run()
    record_counts("data: random/truncated/corrupted array files", counts)
    assert counts["npy DataError"] > 0 and counts["npz DataError"] > 0


def test_npz_member_that_is_not_an_array(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros((3, 2)))
        z.writestr("x.npy", buf.getvalue())
        z.writestr("y", b"not an array")
    with pytest.raises(DataError) as info:
        read_npz_data(path)
    assert str(info.value) == "d.npz: array 'y' is not a .npy array"


# ---------------------------------------------------------------------------- memmap rows by pread

def test_mapped_rows_read_what_the_mapping_holds(tmp_path, record_counts):
    """Batches of a .npy are read with pread (MappedRows) instead of through the mapping: for
    any dtype, byte order, sample shape, slice of the file and set of rows, the bytes must be
    exactly those np.take returns."""
    from nnctl.data.batching import iterate_batches
    from nnctl.data.files import MappedRows
    from nnctl.data.splits import Split
    counts = Counter()

    @settings(max_examples=120, **FUZZ)
    @given(st.sampled_from(["<f4", ">f8", "<i2", "u1", "<f8"]), st.sampled_from([(), (3,), (2, 3)]),
           st.integers(1, 300), st.integers(0, 2**32 - 1), st.booleans())
    def run(dtype, shape, n, seed, sliced):
        rng = np.random.default_rng(seed)
        a = (rng.standard_normal((n, *shape)) * 50).astype(dtype)
        np.save(tmp_path / "m.npy", a)
        x = np.load(tmp_path / "m.npy", mmap_mode="r")
        lo, hi = (sorted(rng.integers(0, n + 1, 2)) if sliced else (0, n))
        if hi - lo < 1:
            lo, hi = 0, n
        v = x[lo:hi]
        rows = np.sort(rng.choice(len(v), rng.integers(1, len(v) + 1), replace=False))
        reader = MappedRows.open(v)
        assert reader is not None
        out = np.empty((len(rows), *v.shape[1:]), dtype=v.dtype)
        reader.read(rows, out)
        reader.close()
        assert np.array_equal(out, np.asarray(v)[rows])
        # and whole epochs through iterate_batches equal the same epochs from memory
        got = [xb.copy() for xb, _ in iterate_batches(Split(v, None, rows), 7, None, np.float64)]
        want = [xb.copy() for xb, _ in iterate_batches(Split(np.asarray(v), None, rows), 7, None, np.float64)]
        assert all(np.array_equal(g, w) for g, w in zip(got, want)) and len(got) == len(want)
        counts["equal"] += 1

    run()
    record_counts("data: pread row gathers vs np.take", counts)
    assert counts["equal"] >= 100
