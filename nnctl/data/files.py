"""Reading user data files (.csv, .npy, .npz) into raw arrays, with errors that name file, row and column.

CSV conventions
---------------
- The first non-blank line is the header; every column needs a distinct, non-empty name.
- Row numbers in messages are 1-based file lines, the header being line 1 (a quoted field
  spanning lines counts every line; a record is named by its first line).
- A UTF-8 byte-order mark, quoted fields (commas and newlines inside quotes) and blank
  lines (anywhere, e.g. trailing) are accepted.
- Target column: the `target` option; by default "label" if there is such a column, else
  "target", else the last column. Its cells are numbers if every cell parses as one,
  otherwise they are kept as text labels (stripped of surrounding spaces).
- Features: the `features` option (a list of column names, all must be numeric); by default
  every other column that holds numbers. A column in which no cell is a number (an id or a
  name) is left out; a column that is partly numeric is an error at its first bad cell.
  Empty cells, text, "nan" and "inf" are errors in a feature column.

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

    def __len__(self) -> int:
        return len(self.x)


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


def _floats(cells: list[str]) -> np.ndarray | None:
    """The cells as float64, or None if any is not a number."""
    try:
        return np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError:
        return None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _feature_column(table: CsvTable, j: int) -> np.ndarray:
    """Column j as finite float64 values; the first bad cell is a DataError naming it."""
    cells = table.column(j)
    values = _floats(cells)
    col = table.header[j]
    if values is None:
        i = next(i for i, c in enumerate(cells) if not _is_number(c))
        where = f"{table.name} row {table.lines[i]}, column '{col}'"
        if not cells[i].strip():
            raise DataError(f"{where}: empty cell (missing values are not supported)")
        raise DataError(f"{where}: not a number: {cells[i]!r}")
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(
            f"{table.name} row {table.lines[i]}, column '{col}': not a finite number: {cells[i]!r}"
        )
    return values


def _target_column(table: CsvTable, j: int) -> np.ndarray:
    """Column j as numbers if every cell is one, else as text labels; empty cells are errors."""
    cells = table.column(j)
    for i, c in enumerate(cells):
        if not c.strip():
            raise DataError(
                f"{table.name} row {table.lines[i]}, column '{table.header[j]}': empty target cell"
            )
    values = _floats(cells)
    if values is not None:
        return values
    return np.array([c.strip() for c in cells], dtype=str)


def default_target(header: list[str]) -> str:
    """'label' if present, else 'target', else the last column."""
    for name in ("label", "target"):
        if name in header:
            return name
    return header[-1]


def _is_text_column(table: CsvTable, j: int) -> bool:
    return not any(_is_number(c) for c in table.column(j))


def read_csv_data(path: Path, target: str | None, features: list[str] | None,
                  name: str | None = None) -> RawData:
    """A labelled CSV file: features (N, F) float64 and the raw target column (N,)."""
    table = read_csv(path, name)
    target = target if target is not None else default_target(table.header)
    if target not in table.header:
        raise table.no_column(target)
    t = table.header.index(target)
    if features is not None:
        for f in features:
            if f not in table.header:
                raise table.no_column(f)
            if f == target:
                raise DataError(f"{table.name}: data.features lists the target column '{target}'")
        cols = [table.header.index(f) for f in features]
    else:
        cols = [j for j in range(len(table.header)) if j != t and not _is_text_column(table, j)]
        if not cols:
            raise DataError(f"{table.name}: no numeric feature columns besides the target '{target}'")
    x = _stack_features(table, cols)
    return RawData(
        x=x,
        y=_target_column(table, t),
        feature_names=[table.header[j] for j in cols],
        target_name=target,
        source=table.name,
        lines=np.asarray(table.lines, dtype=np.int64),
    )


def _stack_features(table: CsvTable, cols: list[int]) -> np.ndarray:
    x = np.empty((len(table.rows), len(cols)), dtype=np.float64)
    for k, j in enumerate(cols):
        x[:, k] = _feature_column(table, j)
    return x


def read_csv_features(path: Path, feature_names: list[str] | None, target_name: str | None,
                      name: str | None = None) -> RawData:
    """A CSV file to predict on: the model's feature columns (any order), target optional.

    With `feature_names`, every one must be present ("input.csv: missing feature column
    'x3'"), and any other numeric column that is not the target is an error (the file does
    not match the model); text columns such as ids are ignored, as in training.
    """
    table = read_csv(path, name)
    t = table.header.index(target_name) if target_name in table.header else None
    if feature_names is None:
        cols = [j for j in range(len(table.header)) if j != t and not _is_text_column(table, j)]
        if not cols:
            raise DataError(f"{table.name}: no numeric feature columns")
    else:
        for f in feature_names:
            if f not in table.header:
                raise DataError(f"{table.name}: missing feature column '{f}'")
        known = set(feature_names)
        for j, h in enumerate(table.header):
            if h not in known and j != t and not _is_text_column(table, j):
                raise DataError(
                    f"{table.name}: unknown column '{h}'; the model's features are: "
                    f"{', '.join(feature_names)}"
                )
        cols = [table.header.index(f) for f in feature_names]
    return RawData(
        x=_stack_features(table, cols),
        y=_target_column(table, t) if t is not None else None,
        feature_names=[table.header[j] for j in cols],
        target_name=target_name if t is not None else None,
        source=table.name,
        lines=np.asarray(table.lines, dtype=np.int64),
    )


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


def check_features(x: np.ndarray, name: str) -> np.ndarray:
    """Features must be numeric, non-empty and finite; (N,) becomes (N, 1).

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
        for s in range(0, len(x), step):
            finite = np.isfinite(x[s:s + step])
            release_pages(x)
            if not finite.all():
                where = np.unravel_index(int(np.argmin(finite)), finite.shape)
                pos = (where[0] + s,) + tuple(where[1:])
                value = x[pos]
                idx = ", ".join(str(int(i)) for i in pos)
                raise DataError(f"{name}: x[{idx}] is {value}; features must be finite")
    return x


def _check_rows(name: str, x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if y.ndim == 0 or len(y) != len(x):
        n = len(y) if y.ndim else 0
        raise DataError(f"{name}: {yname} has {n} rows but {xname} has {len(x)}")


def read_npy_data(path: Path, target_path: Path | None, name: str | None = None,
                  target_name: str | None = None) -> RawData:
    """Memory-mapped features from a .npy file and the targets from `target_path`."""
    path = Path(path)
    name = name or path.name
    if target_path is None:
        raise DataError(
            f"{name}: a .npy dataset needs data.target_path, the .npy file holding its targets"
        )
    target_path = Path(target_path)
    x = check_features(_npy(path, name, mmap=True), name)
    tname = target_name or target_path.name
    y = _npy(target_path, tname, mmap=False)
    _check_rows(name, x, y, name, target_path.name)
    return RawData(x=x, y=y, feature_names=None, target_name=None, source=name)


def read_npz_data(path: Path, name: str | None = None, need_y: bool = True) -> RawData:
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

        x = check_features(get("x"), f"{name} 'x'")
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
                xp = check_features(get(xk), f"{name} '{xk}'")
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


def load_features(path: Path, feature_names: list[str] | None, input_shape,
                  target_name: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of a new file for predict/eval, shaped like the training samples.

    Returns x (N, *input_shape) and the raw target column (N,)/(N, k) if the file has one
    (a CSV column named `target_name`, or "y" in an .npz), else None. A .npy file carries
    features only (memory-mapped); give an .npz or a CSV to evaluate with targets.
    CSV feature columns are matched by name (see `read_csv_features`).
    """
    path = Path(path)
    name = path.name
    suffix = suffix_of(path, name)
    if suffix == ".csv":
        raw = read_csv_features(path, feature_names, target_name)
    elif suffix == ".npy":
        raw = RawData(x=check_features(_npy(path, name, mmap=True), name), y=None,
                      feature_names=None, target_name=None, source=name)
    else:
        raw = read_npz_data(path, need_y=False)
    x = raw.x
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if tuple(x.shape[1:]) != shape:
            have, want = math.prod(x.shape[1:]), math.prod(shape)
            if have != want:
                raise DataError(
                    f"{name}: each sample has {have} values (shape {list(x.shape[1:])}), "
                    f"the model expects {want} (input shape {list(shape)})"
                )
            x = x.reshape((len(x),) + shape)
    return x, raw.y
