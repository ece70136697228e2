"""Reading user data files (.csv, .npy, .npz) into raw arrays, with errors that name file, row and column.

CSV conventions
---------------
- The first non-blank line is the header; every column needs a distinct, non-empty name.
- Row numbers in messages are 1-based file lines, the header being line 1 (a quoted field
  spanning lines counts every line; a record is named by its first line).
- A UTF-8 byte-order mark, quoted fields (commas and newlines inside quotes) and blank
  lines (anywhere, e.g. trailing) are accepted.
- Target column: the `target` option, required (no column is ever guessed). Its cells are
  numbers if every present cell parses as one, otherwise text labels (stripped).
- Features: the `features` option, or every column but the target and `ignore`. With
  `categorical: auto` a column none of whose cells is a number is categorical (kept as
  text, one-hot encoded later); a list forces those columns to be categorical. A column
  that is otherwise numeric is an error at its first non-number cell.
- Missing cells (empty, NA, N/A, NaN, any case) are kept as missing (NaN / "") for
  `data.missing` to handle; "inf" and numbers beyond the model's dtype (1e300 in float32)
  are errors naming the cell.

NumPy conventions
-----------------
- `.npy`: features only, (N, *feature_shape); the targets come from a second .npy given as
  `target_path` (N,) or (N, k). Features are memory-mapped (mmap_mode="r"), so only the
  rows of the current batch are ever in memory; targets are read whole (they are small).
- `.npz`: arrays "x" and "y", optionally "x_val"/"y_val" and "x_test"/"y_test", which then
  are the validation/test splits. Read whole into memory (np.load cannot map compressed
  archives); use .npy for data larger than RAM.
- Both are opened with allow_pickle=False: arrays of Python objects are refused.
"""
from __future__ import annotations

import codecs
import csv
import math
import mmap
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnctl.errors import DataError
from nnctl.fileio import check_regular

SUFFIXES = (".csv", ".npy", ".npz")

# Finite-value checks and statistics over a memmap read this many bytes at a time.
CHUNK_BYTES = 16 * 2**20


def release_pages(x: np.ndarray) -> None:
    """Drop the pages of memory-mapped `x` that this process has touched (no-op for other arrays).

    Pages of a mapped file stay in the process's resident set once read, so a pass over a
    2 GB .npy would leave the process at 2 GB resident, although all of it is page cache
    the kernel could reclaim. MADV_DONTNEED unmaps them from this process only: the file
    is read-only here, the pages stay cached, and a later access reads them back.
    """
    mapping = getattr(x, "_mmap", None) if isinstance(x, np.memmap) else None
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass


class MappedRows:
    """Reads rows of a memory-mapped array with pread, bypassing the mapping.

    A gather through the mapping maps the pages it touches into the process, and on
    kernels with large page-cache folios one random row maps a megabyte or more of the
    file around it: a shuffled epoch over a 2 GB .npy then holds most of the file as
    resident memory. pread copies just the rows, so the resident set stays at the
    batch buffers; the data still comes from (and stays in) the page cache.

    Use `MappedRows.open(x)`, which returns None when x is not a C-ordered memmap of a
    file or the platform has no preadv; callers then gather with np.take.
    """

    def __init__(self, fd: int, start: int, row_bytes: int, name: str):
        self.fd, self.start, self.row_bytes, self.name = fd, start, row_bytes, name

    @classmethod
    def open(cls, x: np.ndarray) -> "MappedRows | None":
        mapping = getattr(x, "_mmap", None) if isinstance(x, np.memmap) else None
        filename = getattr(x, "filename", None)
        if mapping is None or filename is None or not x.flags.c_contiguous or not hasattr(os, "preadv") \
                or x.ndim == 0 or x.size == 0:
            return None
        # numpy maps from the offset rounded down to the allocation granularity; x's data
        # starts that far into the mapping plus however far x is a slice into it
        mapped_from = x.offset - x.offset % mmap.ALLOCATIONGRANULARITY
        base = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
        start = mapped_from + (x.ctypes.data - base)
        try:
            fd = os.open(filename, os.O_RDONLY)
        except OSError:
            return None
        return cls(fd, start, x.itemsize * math.prod(x.shape[1:]), Path(filename).name)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[:len(rows)] = x[rows]; rows sorted ascending, out C-contiguous with x's dtype."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        rb = self.row_bytes
        # one read per run of consecutive rows (an evaluation batch is a single run)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
            want = (b - a) * rb
            got = os.preadv(self.fd, [view[a * rb:b * rb]], self.start + int(rows[a]) * rb)
            if got != want:
                raise DataError(f"{self.name}: the file changed while it was read (short read at row {int(rows[a])})")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


@dataclass
class RawData:
    """One file's (or generator's) data before labels are encoded and splits are drawn.

    x: (N, *feature_shape) numeric features, possibly a read-only np.memmap.
    y: (N,) or (N, k) raw targets (numbers, strings or bools), or None.
    lines: CSV only, (N,) 1-based file line of each row, so later errors can point at it.
    task: a built-in generator's own task, used unless the spec sets one.
    parts: .npz only, the "val"/"test" arrays it carries.
    """

    x: np.ndarray
    y: np.ndarray | None
    feature_names: list[str] | None
    target_name: str | None
    source: str
    lines: np.ndarray | None = None
    task: str | None = None
    parts: dict[str, "RawData"] = field(default_factory=dict)
    columns: list["Column"] | None = None
    y_missing: np.ndarray | None = None
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x) if self.x is not None else len(self.y)


# ---------------------------------------------------------------------------- CSV

@dataclass
class CsvTable:
    """A CSV file as text: header names, data rows (lists of cells) and their file lines."""

    name: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, j: int) -> list[str]:
        return [r[j] for r in self.rows]

    def no_column(self, wanted: str) -> DataError:
        return DataError(f"{self.name}: no column '{wanted}'; columns are: {', '.join(self.header)}")


def read_csv(path: Path, name: str | None = None) -> CsvTable:
    """Parse a CSV file with a header into text cells, checking its structure.

    name: how messages call the file (default: its file name).
    Errors: empty file, header only, an unnamed or duplicate column, a row with the wrong
    number of fields ("digits.csv row 17: expected 65 fields, got 64").
    """
    path = Path(path)
    name = name or path.name
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    check_regular(path, DataError, name, missing_ok=True)
    try:
        # utf-8-sig drops a byte-order mark; newline="" lets csv see quoted line breaks.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            end_of_previous = 0
            for record in reader:
                start = end_of_previous + 1
                end_of_previous = reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                if header is None:
                    header = [h.strip() for h in record]
                    header_len = len(header)
                    continue
                if len(record) != header_len:
                    raise DataError(
                        f"{name} row {start}: expected {header_len} fields, got {len(record)}"
                    )
                rows.append(record)
                lines.append(start)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found ({path})") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not a CSV file ({path})") from None
    except UnicodeDecodeError:
        raise not_utf8(path, name) from None
    except csv.Error as err:
        raise DataError(f"{name} row {reader.line_num}: {err}") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror or err})") from None
    if header is None:
        raise DataError(f"{name}: file is empty")
    seen: dict[str, int] = {}
    for j, h in enumerate(header, start=1):
        if not h:
            raise DataError(f"{name}: column {j} has no name in the header")
        if h in seen:
            raise DataError(f"{name}: duplicate column name '{h}' (columns {seen[h]} and {j})")
        seen[h] = j
    if not rows:
        raise DataError(f"{name}: no data rows, only a header")
    return CsvTable(name, header, rows, lines)


def not_utf8(path: Path, name: str) -> DataError:
    """The DataError for a file that is not UTF-8, with the line and file offset of the first bad byte.

    The text layer decodes in chunks and reports offsets within a chunk, so the file is
    decoded again here (1 MiB at a time) to find the real position.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = newlines = 0
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(2**20)
                pending = decoder.getstate()[0]   # an unfinished character from the last chunk
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as err:
                    start = consumed - len(pending) + err.start
                    line = newlines + chunk.count(b"\n", 0, max(0, err.start - len(pending))) + 1
                    return DataError(f"{name} row {line}: not UTF-8 text (byte {start}: {err.reason})")
                if not chunk:
                    break
                consumed += len(chunk)
                newlines += chunk.count(b"\n")
    except OSError:
        pass
    return DataError(f"{name}: not UTF-8 text")


def parse_floats(cells: list[str]) -> np.ndarray | None:
    """The cells as float64, or None if any is not a number."""
    try:
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return None


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


NUMERIC = "numeric"
CATEGORICAL = "categorical"

# Cells that mean "no value" (compared stripped and lower-cased): empty, NA, N/A, NaN.
MISSING_CELLS = frozenset({"", "na", "n/a", "nan"})


def is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_CELLS


def float_limit(dtype) -> float:
    """The largest magnitude finite in `dtype` (float32 by default: the models' dtype)."""
    return float(np.finfo(np.dtype(dtype)).max)


@dataclass
class Column:
    """One CSV feature column as read, before any encoding.

    values: numeric float64 (N,) with NaN where missing; categorical str (N,) (cells
    stripped of surrounding spaces) with "" where missing.
    missing: bool (N,), True where the cell is empty, NA, N/A or NaN.
    """

    name: str
    kind: str
    values: np.ndarray
    missing: np.ndarray

    def take(self, rows: np.ndarray) -> "Column":
        return Column(self.name, self.kind, self.values[rows], self.missing[rows])


def numeric_column(file: str, name: str, cells: list[str], lines, dtype=np.float32) -> Column:
    """A column of numbers (missing cells allowed); a bad cell is a DataError naming file, row and column.

    Values must be finite in `dtype`, the dtype they will be used in: 1e300 is a float64
    but infinite in float32.
    """
    values = parse_floats(cells)
    limit = float_limit(dtype)
    if values is not None:
        missing = np.isnan(values)
        bad = ~missing & ~(np.abs(values) <= limit)
        if not bad.any():
            return Column(name, NUMERIC, values, missing)
    values = np.empty(len(cells), dtype=np.float64)
    missing = np.zeros(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        where = f"{file} row {int(lines[i])}, column '{name}'"
        try:
            v = float(cell)
        except ValueError:
            if is_missing(cell):
                values[i], missing[i] = np.nan, True
                continue
            raise DataError(f"{where}: not a number: {cell!r} (the column's other cells are numbers; "
                            "list it in data.categorical to use it as categories)") from None
        if math.isnan(v):
            values[i], missing[i] = np.nan, True
            continue
        if not math.isfinite(v):
            raise DataError(f"{where}: not a finite number: {cell!r}")
        if abs(v) > limit:
            raise DataError(f"{where}: {cell.strip()!r} is not finite in {np.dtype(dtype).name} "
                            "(the model's dtype)")
        values[i] = v
    return Column(name, NUMERIC, values, missing)


def categorical_column(name: str, cells: list[str]) -> Column:
    missing = np.array([is_missing(c) for c in cells], dtype=bool)
    values = np.array([c.strip() for c in cells], dtype=str)
    values[missing] = ""
    return Column(name, CATEGORICAL, values, missing)


def _target_column(table: CsvTable, j: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Column j as numbers if every present cell is one, else as text labels, and its missing mask."""
    cells = table.column(j)
    missing = np.array([is_missing(c) for c in cells], dtype=bool)
    present = [c for c, m in zip(cells, missing) if not m]
    if present and all(is_number(c) for c in present):
        col = numeric_column(table.name, table.header[j], cells, table.lines, dtype)
        return col.values, col.missing
    return np.array([c.strip() for c in cells], dtype=str), missing


def default_target(header: list[str]) -> str:
    """`nnctl init`'s guess, shown in the starter spec it writes (training never guesses):
    'label' if present, else 'target', else the last column."""
    for name in ("label", "target"):
        if name in header:
            return name
    return header[-1]


def _is_text_column(table: CsvTable, j: int) -> bool:
    """No present cell is a number (missing cells do not count)."""
    return not any(is_number(c) and not is_missing(c) for c in table.column(j))


def _names(table: CsvTable, names, key: str) -> list[str]:
    for n in names:
        if n not in table.header:
            raise table.no_column(n)
    return list(names)


def read_csv_data(path: Path, target: str | None, features: list[str] | None,
                  name: str | None = None, *, ignore: list[str] | None = None,
                  categorical="auto", max_categories: int = 50, dtype=np.float32) -> RawData:
    """A labelled CSV file: its feature columns (numeric or categorical, missing cells kept) and target.

    target: the target column (required: nnctl never guesses which column to predict).
    features: the feature columns; default every column but the target and `ignore`.
    categorical: "auto" (a column none of whose cells is a number is categorical) or a
    list of columns to treat as categories even if they hold numbers (integer codes).
    The result has `columns` (Column per feature) and x None: the features are encoded
    once the training split is known (see nnctl.data.preprocess).
    """
    table = read_csv(path, name)
    if target is None:
        raise DataError(f"{table.name}: data.target is required for a CSV file (the column to predict); "
                        f"columns are: {', '.join(table.header)}")
    if target not in table.header:
        raise table.no_column(target)
    t = table.header.index(target)
    ignore = _names(table, ignore or [], "ignore")
    if target in ignore:
        raise DataError(f"{table.name}: data.ignore lists the target column '{target}'")
    forced = [] if categorical == "auto" else _names(table, categorical, "categorical")
    if features is not None:
        _names(table, features, "features")
        for f in features:
            if f == target:
                raise DataError(f"{table.name}: data.features lists the target column '{target}'")
            if f in ignore:
                raise DataError(f"{table.name}: column '{f}' is in both data.features and data.ignore")
        cols = [table.header.index(f) for f in features]
    else:
        cols = [j for j in range(len(table.header)) if j != t and table.header[j] not in ignore]
        if not cols:
            raise DataError(f"{table.name}: no feature columns besides the target '{target}'"
                            + (" and the ignored ones" if ignore else ""))
    for f in forced:
        if f == target or f not in [table.header[j] for j in cols]:
            raise DataError(f"{table.name}: data.categorical lists '{f}', which is not a feature column")
    columns = []
    for j in cols:
        h = table.header[j]
        if h in forced or (categorical == "auto" and _is_text_column(table, j)):
            col = categorical_column(h, table.column(j))
            distinct = len(np.unique(col.values[~col.missing]))
            if distinct > max_categories:
                raise DataError(f"{table.name}: column '{h}' has {distinct} distinct values, more than "
                                f"data.max_categories ({max_categories}); an ID column is not a feature: "
                                "add it to data.ignore")
        else:
            col = numeric_column(table.name, h, table.column(j), table.lines, dtype)
        columns.append(col)
    y, y_missing = _target_column(table, t, dtype)
    return RawData(
        x=None,
        y=y,
        feature_names=[c.name for c in columns],
        target_name=target,
        source=table.name,
        lines=np.asarray(table.lines, dtype=np.int64),
        columns=columns,
        y_missing=y_missing,
        ignored=[h for h in table.header if h != target and h not in [c.name for c in columns]],
    )


def numeric_matrix(raw: RawData) -> np.ndarray:
    """The features of an all-numeric CSV without missing cells, (N, F) float64 (the shipped datasets)."""
    for c in raw.columns:
        if c.kind != NUMERIC or c.missing.any():
            raise DataError(f"{raw.source}: column '{c.name}' is not a complete numeric column")
    if raw.y_missing is not None and raw.y_missing.any():
        raise DataError(f"{raw.source}: the target has missing cells")
    return np.stack([c.values for c in raw.columns], axis=1)


def read_csv_columns(table: CsvTable, wanted: list[tuple[str, str]], dtype=np.float32) -> list[Column]:
    """The named columns of a table to predict on, each read as the kind training saw."""
    out = []
    for name, kind in wanted:
        if name not in table.header:
            raise DataError(f"{table.name}: missing feature column '{name}'")
        j = table.header.index(name)
        if kind == CATEGORICAL:
            out.append(categorical_column(name, table.column(j)))
        else:
            out.append(numeric_column(table.name, name, table.column(j), table.lines, dtype))
    return out


# ---------------------------------------------------------------------------- NumPy

def _npy(path: Path, name: str, mmap: bool) -> np.ndarray:
    check_regular(path, DataError, name, missing_ok=True)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found ({path})") from None
    except ValueError as err:
        if "object" in str(err).lower() or "pickle" in str(err).lower():
            raise DataError(f"{name}: holds Python objects, which are not loaded (allow_pickle is off)") from None
        raise DataError(f"{name}: not a valid .npy file ({err})") from None
    except (OSError, EOFError, MemoryError) as err:
        raise DataError(f"{name}: not a valid .npy file ({type(err).__name__}: {err})") from None


def check_features(x: np.ndarray, name: str, dtype=np.float32) -> np.ndarray:
    """Features must be numeric, non-empty and finite in `dtype`, the dtype training casts them
    to (a float64 1e300 is infinite in float32); (N,) becomes (N, 1).

    A memmap is checked CHUNK_BYTES at a time, so memory stays bounded.
    """
    if x.dtype.kind not in "iufb":
        raise DataError(f"{name}: features must be numeric, got dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{name}: no samples (array shape {tuple(x.shape)})")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.dtype.kind == "f":
        row_bytes = max(1, x.itemsize * math.prod(x.shape[1:]))
        step = max(1, CHUNK_BYTES // row_bytes)
        limit = float_limit(dtype) if x.itemsize > np.dtype(dtype).itemsize else np.inf
        for s in range(0, len(x), step):
            block = x[s:s + step]
            finite = np.isfinite(block)
            if limit < np.inf:
                finite &= np.abs(block) <= limit
            release_pages(x)
            if not finite.all():
                where = np.unravel_index(int(np.argmin(finite)), finite.shape)
                pos = (where[0] + s,) + tuple(where[1:])
                value = x[pos]
                idx = ", ".join(str(int(i)) for i in pos)
                if np.isfinite(value):
                    raise DataError(f"{name}: x[{idx}] is {value}, which is not finite in "
                                    f"{np.dtype(dtype).name} (the model's dtype); features must be finite")
                raise DataError(f"{name}: x[{idx}] is {value}; features must be finite")
    return x


def _check_rows(name: str, x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if y.ndim == 0 or len(y) != len(x):
        n = len(y) if y.ndim else 0
        raise DataError(f"{name}: {yname} has {n} rows but {xname} has {len(x)}")


def read_npy_data(path: Path, target_path: Path | None, name: str | None = None,
                  target_name: str | None = None, dtype=np.float32, need_y: bool = True) -> RawData:
    """Memory-mapped features from a .npy file and the targets from `target_path` (none when
    `need_y` is False and no target_path is given: an autoencoder's data)."""
    path = Path(path)
    name = name or path.name
    if target_path is None and not need_y:
        return RawData(x=check_features(_npy(path, name, mmap=True), name, dtype), y=None, feature_names=None,
                       target_name=None, source=name)
    if target_path is None:
        raise DataError(
            f"{name}: a .npy dataset needs data.target_path, the .npy file holding its targets"
        )
    target_path = Path(target_path)
    x = check_features(_npy(path, name, mmap=True), name, dtype)
    tname = target_name or target_path.name
    y = _npy(target_path, tname, mmap=False)
    _check_rows(name, x, y, name, target_path.name)
    return RawData(x=x, y=y, feature_names=None, target_name=None, source=name)


def read_npz_data(path: Path, name: str | None = None, need_y: bool = True, dtype=np.float32) -> RawData:
    """Arrays x/y (and x_val/y_val, x_test/y_test as `parts`) from an .npz archive."""
    path = Path(path)
    name = name or path.name
    check_regular(path, DataError, name, missing_ok=True)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found ({path})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{name}: not a valid .npz file ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{name}: holds a single array, not an .npz archive with 'x' and 'y'")
    with archive:
        keys = list(archive.files)

        def get(key: str) -> np.ndarray:
            if key not in keys:
                raise DataError(f"{name}: no array '{key}'; arrays are: {', '.join(keys) or '(none)'}")
            try:
                value = archive[key]
            except ValueError as err:
                if "pickle" in str(err).lower() or "object" in str(err).lower():
                    raise DataError(
                        f"{name}: array '{key}' holds Python objects, which are not loaded (allow_pickle is off)"
                    ) from None
                raise DataError(f"{name}: array '{key}' cannot be read ({err})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as err:
                # a damaged member fails in the zip layer (CRC, zlib) or claims an absurd size
                raise DataError(f"{name}: array '{key}' cannot be read ({type(err).__name__}: {err})") from None
            if not isinstance(value, np.ndarray):
                # np.load hands back a zip member that is not a .npy file as raw bytes
                raise DataError(f"{name}: array '{key}' is not a .npy array")
            return value

        x = check_features(get("x"), f"{name} 'x'", dtype)
        y = get("y") if (need_y or "y" in keys) else None
        if y is not None:
            _check_rows(name, x, y, "'x'", "'y'")
        raw = RawData(x=x, y=y, feature_names=None, target_name=None, source=name)
        for part in ("val", "test"):
            xk, yk = f"x_{part}", f"y_{part}"
            if xk in keys or yk in keys:
                if xk not in keys or yk not in keys:
                    have, missing = (xk, yk) if xk in keys else (yk, xk)
                    raise DataError(f"{name}: has '{have}' but no '{missing}'")
                xp = check_features(get(xk), f"{name} '{xk}'", dtype)
                yp = get(yk)
                _check_rows(name, xp, yp, f"'{xk}'", f"'{yk}'")
                raw.parts[part] = RawData(x=xp, y=yp, feature_names=None, target_name=None,
                                          source=f"{name} ({part})")
    return raw


# ---------------------------------------------------------------------------- shapes & entry point

def reshape_rows(x: np.ndarray, shape, name: str) -> np.ndarray:
    """x (N, ...) -> (N, *shape), a view (a memmap stays a memmap); sizes must agree."""
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[1:]) == shape:
        return x
    have = math.prod(x.shape[1:])
    want = math.prod(shape)
    if have != want:
        raise DataError(
            f"{name}: each sample has {have} values (shape {list(x.shape[1:])}), "
            f"but data.shape {list(shape)} needs {want}"
        )
    return x.reshape((len(x),) + shape)


def suffix_of(path: Path, name: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{name}: unsupported file type '{suffix or '(none)'}'; use .csv, .npy or .npz"
        )
    return suffix
