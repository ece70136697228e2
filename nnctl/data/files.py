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
import io
import itertools
import math
import mmap
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nnctl.data import fast_csv
from nnctl.errors import DataError, excerpt, quoted
from nnctl.fileio import check_regular

SUFFIXES = (".csv", ".npy", ".npz")

# Finite-value checks and statistics over a memmap read this many bytes at a time.
CHUNK_BYTES = 16 * 2**20

# A message lists a file's columns up to this many characters: the "header" may be the first
# line of a file that is no table at all (a key file, a log), which must not be echoed whole.
COLUMN_LIST_CHARS = 300


def column_list(header: list[str]) -> str:
    return excerpt(", ".join(header), COLUMN_LIST_CHARS)


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
    # CSV: every feature column numeric, side by side (N, F) in the model's dtype; the
    # features themselves when no cell is missing (read_csv_data)
    numbers: np.ndarray | None = None

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
        return DataError(f"{self.name}: no column '{wanted}'; columns are: {column_list(self.header)}")


def is_blank(record: list[str]) -> bool:
    """A csv record of a blank line (or of one blank field): skipped, never a row."""
    return not record or (len(record) == 1 and not record[0].strip())


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
                if is_blank(record):
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
    check_header_names(name, header)
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


def _any_number(cells) -> bool:
    """Some cell is a number (a missing marker such as 'NaN' parses as a float but is not one)."""
    return any(is_number(c) and not is_missing(c) for c in cells)


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


# Why a numeric column's text cell is an error, and the fix; under a data.categorical list
# a column without numbers is numeric because the list leaves it out, not because of its cells.
NOT_A_NUMBER_AUTO = "the column's other cells are numbers; list it in data.categorical to use it as categories"
NOT_A_NUMBER_LISTED = "data.categorical lists the text columns and does not name this one; add it to use it as categories"


def numeric_column(file: str, name: str, cells: list[str], lines, dtype=np.float32,
                   why: str = NOT_A_NUMBER_AUTO) -> Column:
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
            raise DataError(f"{where}: not a number: {quoted(cell)} ({why})") from None
        if math.isnan(v):
            values[i], missing[i] = np.nan, True
            continue
        if not math.isfinite(v):
            raise DataError(f"{where}: not a finite number: {quoted(cell)}")
        if abs(v) > limit:
            raise DataError(f"{where}: {quoted(cell.strip())} is not finite in {np.dtype(dtype).name} "
                            "(the model's dtype)")
        values[i] = v
    return Column(name, NUMERIC, values, missing)


def categorical_column(name: str, cells) -> Column:
    missing = np.array([is_missing(c) for c in cells], dtype=bool)
    values = np.char.strip(np.asarray(cells, dtype=str))
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


# ---------------------------------------------------------------------------- CSV: the block parser

# A CSV is read this many bytes at a time (extended to the end of a line): polars or numpy's C
# reader parses each block, so the parse holds one block of text and its float64 numbers at
# once (predict: a few, see stream.py). 8 MB, not 4: polars' two threads split a block between
# them, and predict of 1M rows x 256 floats took 8.0-8.1 s with 8 MB blocks against 8.9-10.0 s
# with 4 MB (16 MB: 7.6-7.9 s, for ~90 MB more peak memory).
BLOCK_BYTES = 8 * 2**20
# Records per batch once a file needs Python's csv module (quoted fields, bare CR line ends).
RECORD_BATCH = 20000


class _Restart(Exception):
    """A column read as numbers turned out to hold text: parse again with it as a text column."""

    def __init__(self, columns: list[str]):
        self.columns = columns


@dataclass
class CsvColumns:
    """The asked columns of a CSV file, parsed (what `parse_csv` returns and the table cache stores).

    lines: int64 (N,), the 1-based file line of each data row.
    numbers: (N, len(numeric)) in the model's dtype, NaN where a cell is missing.
    target: the target column as float64 (N,) (NaN where missing) when every present cell is
    a number, else None and its raw cells are in `text`.
    text: raw cells (str (N,), as in the file) of the text columns.
    """

    name: str
    header: list[str]
    lines: np.ndarray
    numbers: np.ndarray
    numeric: list[str]
    target: np.ndarray | None
    text: dict[str, np.ndarray]

    def target_column(self, target: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, missing) of the target: floats when every present cell is a number, else
        the stripped text cells."""
        if self.target is not None:
            return self.target, np.isnan(self.target)
        cells = self.text[target]
        return np.char.strip(cells), np.array([is_missing(c) for c in cells], dtype=bool)


def check_header_names(name: str, header: list[str]) -> None:
    """Every column has a name, and no name is used twice (a header of stripped cells)."""
    seen: dict[str, int] = {}
    for j, h in enumerate(header, start=1):
        if not h:
            raise DataError(f"{name}: column {j} has no name in the header")
        if h in seen:
            raise DataError(f"{name}: duplicate column name '{h}' (columns {seen[h]} and {j})")
        seen[h] = j


def _header_names(name: str, header: list[str]) -> list[str]:
    header = [h.strip() for h in header]
    check_header_names(name, header)
    return header


class PlainBlock:
    """Whole lines of a CSV without quotes or bare CRs: `data` ("\\n"-separated bytes, CRLF made
    LF) holding `n` lines (counted on first use, unless a parser that took the block set it).

    Decoded on first use: polars parses the bytes, and a block it takes holds only ASCII
    numbers and text cells it checked as UTF-8 itself, so it is never decoded (a bad byte
    anywhere else makes polars refuse, and decoding here then names its row).
    """

    __slots__ = ("data", "_n", "_decode", "_text")

    def __init__(self, data: bytes, decode: Callable[[bytes], str]):
        self.data, self._n, self._decode, self._text = data, None, decode, None

    @property
    def n(self) -> int:
        if self._n is None:
            self._n = self.data.count(b"\n") + (not self.data.endswith(b"\n"))
        return self._n

    @n.setter
    def n(self, rows: int) -> None:
        self._n = rows

    def lines(self) -> list[str]:
        if self._text is None:
            self._text = self._decode(self.data)
        lines = self._text.split("\n")
        if lines[-1] == "":
            lines.pop()   # the block ended with a line break
        return lines


class _Blocks:
    """A CSV file cut into blocks of whole lines; blocks with quotes or bare CRs become csv records.

    Yields ("lines", first line number, PlainBlock) for plain blocks and ("records", [(first
    line number, fields), ...]) once a block holds a quote or a bare carriage return: from
    there on Python's csv module reads the rest of the file, since a quoted field may span
    lines and blocks. The header (first non-blank record) is read first into `header`.
    """

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        check_regular(path, DataError, name, missing_ok=True)
        try:
            self.f = open(path, "rb")
        except FileNotFoundError:
            raise DataError(f"{name}: file not found ({path})") from None
        except IsADirectoryError:
            raise DataError(f"{name}: is a directory, not a CSV file ({path})") from None
        except OSError as err:
            raise DataError(f"{name}: cannot read ({err.strerror or err})") from None
        self.size = os.fstat(self.f.fileno()).st_size   # which block parser pays (fast_csv.used_for)
        self.header: list[str] | None = None

    def close(self) -> None:
        self.f.close()

    def _read_block(self) -> bytes:
        block = self.f.read(BLOCK_BYTES)
        if block and not block.endswith(b"\n"):
            block += self.f.readline()
        return block

    def _decode(self, block: bytes) -> str:
        try:
            return block.decode("utf-8")
        except UnicodeDecodeError:
            raise not_utf8(self.path, self.name) from None

    def __iter__(self):
        try:
            yield from self._blocks()
        except OSError as err:
            raise DataError(f"{self.name}: cannot read ({err.strerror or err})") from None

    def _blocks(self):
        offset, line = 0, 1
        first = True
        while True:
            block = self._read_block()
            if not block:
                break
            if first and block.startswith(codecs.BOM_UTF8):
                block, offset = block[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            first = False
            if b'"' in block or (b"\r" in block and block.count(b"\r") != block.count(b"\r\n")):
                yield from self._records(offset, line)
                return
            data = block.replace(b"\r\n", b"\n") if b"\r" in block else block
            if self.header is None:
                data, line = self._take_header(data, line)
            if data:
                plain = PlainBlock(data, self._decode)
                yield "lines", line, plain
                line += plain.n
            offset += len(block)

    def _take_header(self, data: bytes, line: int) -> tuple[bytes, int]:
        """The first non-blank line of `data` into `header`: (the bytes after it, its next line number)."""
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end
            first, pos, line = self._decode(data[pos:end]), end + 1, line + 1
            if first.strip():
                self.header = first.split(",")
                break
        return data[pos:], line

    def _records(self, offset: int, line: int):
        self.f.seek(offset)
        text = io.TextIOWrapper(self.f, encoding="utf-8", newline="")
        reader = csv.reader(text)
        end_of_previous = 0
        batch: list[tuple[int, list[str]]] = []
        try:
            for record in reader:
                start = end_of_previous + 1
                end_of_previous = reader.line_num
                if is_blank(record):
                    continue  # a blank line
                if self.header is None:
                    self.header = record
                    continue
                batch.append((line - 1 + start, record))
                if len(batch) == RECORD_BATCH:
                    yield "records", batch
                    batch = []
        except UnicodeDecodeError:
            raise not_utf8(self.path, self.name) from None
        except csv.Error as err:
            raise DataError(f"{self.name} row {line - 1 + reader.line_num}: {err}") from None
        finally:
            text.detach()
        if batch:
            yield "records", batch


def _count_lines(path: Path) -> int:
    """Line breaks in the file plus one: a bound on its data rows, to size the arrays once."""
    n = 1
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK_BYTES):
            n += chunk.count(b"\n")
    return n


class BlockParser:
    """Parses a CSV's blocks (from _Blocks) into chunks; see parse_csv for the rules.

    numeric: columns read as numbers; target: the target column (numbers unless it is in
    `text`); strict: numeric columns whose text is an error (others may turn out to be text,
    see _Restart); forced: text columns never checked for numbers; text: columns read as text.
    `chunks()` yields (lines int64 (n,), float64 (n, len(numeric) + target) with NaN where
    missing, {text column: [cells]}) per block.
    """

    def __init__(self, name: str, blocks, header: list[str], numeric: list[str], target: str | None,
                 strict: set[str], forced: set[str], text: list[str], dtype, fast: bool = False):
        self.name, self.header, self.blocks = name, header, blocks
        self.fast = fast   # plain blocks to polars first (fast_csv.used_for the file's size)
        self.width = len(header)
        self.dtype, self.limit = np.dtype(dtype), float_limit(dtype)
        self.strict, self.forced, self.target = strict, forced, target
        self.numeric = list(numeric)
        self.number_cols = [header.index(c) for c in self.numeric]
        self.target_numeric = target is not None and target not in text
        if self.target_numeric:
            self.number_cols.append(header.index(target))
        self.text = text
        self.text_cols = [header.index(c) for c in text]
        self.all_columns = sorted(self.number_cols) == list(range(self.width))
        # every column, in file order (features then a last-column target): no reordering copy
        self.in_order = self.number_cols == list(range(self.width))
        self.others_numeric = not self.text   # the columns not asked for may be numbers too
        self.has_number = np.zeros(len(self.number_cols), dtype=bool)
        # a text feature under categorical: auto with a number in it is numeric after all; the
        # error then names its first text cell (line, cell)
        self.first_text: dict[str, tuple[int, str]] = {}
        self.text_number: set[str] = set()

    def chunks(self):
        for kind, *rest in self.blocks:
            chunk = self._lines(*rest) if kind == "lines" else self._records(rest[0])
            lines, values, cells = chunk
            if len(values) and not self.has_number.all():   # true for every column after a block or so
                self.has_number |= (~np.isnan(values)).any(axis=0)
            yield chunk
        for c in self.text:
            if c in self.text_number and c in self.first_text:
                line, cell = self.first_text[c]
                numeric_column(self.name, c, [cell], [line], self.dtype)   # raises its message

    def _lines(self, start: int, block: PlainBlock):
        """A block without quotes: polars or numpy's C reader, or the exact checks when both refuse."""
        values = None
        if self.number_cols and self.fast:
            # polars takes a clean block (see fast_csv); anything else gets numpy's reader
            values = fast_csv.numbers(block.data, self.width, self.number_cols, self.limit)
            if values is not None:
                block.n = len(values)   # a blank line would have been a row of nulls (refused)
        if values is not None and not self.text:
            return np.arange(start, start + block.n, dtype=np.int64), values, {}
        lines = block.lines()
        if values is None and self.number_cols:
            try:
                with warnings.catch_warnings():
                    # a block of blank lines: "input contained no data"; the row count catches it
                    warnings.simplefilter("ignore")
                    values = self._loadtxt(lines)
            except ValueError:
                values = None
            # blank lines skipped, or a value out of range: the exact checks say where
            if values is not None and (len(values) != len(lines) or not self._in_range(values)):
                values = None
        elif values is None and self._fields_ok(lines):
            values = np.empty((len(lines), 0))
        if values is None or (self.text and not all(lines)):
            reader = csv.reader(lines)
            return self._records([(start + i, rec) for i, rec in enumerate(reader)
                                  if not is_blank(rec)])
        cells = {}
        if self.text:
            # the fields are counted already: split no further than the last text column (an ID
            # column first costs one split per line, not one per field)
            most = max(self.text_cols) + 1
            split = [line.split(",", most) for line in lines]
            cells = self._text([(start + i, fields) for i, fields in enumerate(split)])
        return np.arange(start, start + len(lines), dtype=np.int64), values, cells

    def _in_range(self, values: np.ndarray) -> bool:
        """Every value is missing (NaN) or finite in the model's dtype."""
        if not values.size:
            return True
        # one reduction settles the usual block (no NaN: the peak is a number); NaN needs the full mask
        peak = np.abs(values).max()
        if peak <= self.limit:
            return True
        return bool(np.isnan(peak)) and bool((np.isnan(values) | (np.abs(values) <= self.limit)).all())

    def _loadtxt(self, lines: list[str]) -> np.ndarray | None:
        """The number columns of a block as float64 (rows, k), or None if the fields do not line up."""
        if self.all_columns or self.others_numeric:
            # every column at once: numpy checks every line has the first line's number of
            # fields, which saves counting them in Python
            try:
                values = np.loadtxt(lines, delimiter=",", comments=None, dtype=np.float64, ndmin=2)
                if values.shape[1] != self.width:
                    return None
                return values if self.in_order else values[:, self.number_cols]
            except ValueError:
                if self.all_columns:
                    raise
                self.others_numeric = False   # an unused column holds text: count fields from now on
        if not self._fields_ok(lines):
            return None
        return np.loadtxt(lines, delimiter=",", comments=None, dtype=np.float64, ndmin=2, usecols=self.number_cols)

    def _fields_ok(self, lines: list[str]) -> bool:
        """Every line has the header's number of fields (no quotes here: fields = commas + 1)."""
        want = self.width - 1
        return all(line.count(",") == want for line in lines)

    def _text(self, records: list[tuple[int, list[str]]]) -> dict[str, list[str]]:
        out = {}
        for c, j in zip(self.text, self.text_cols):
            cells = out[c] = [rec[j] for _, rec in records]
            if c in self.forced or c == self.target or c in self.text_number:
                continue
            if c not in self.first_text:
                for (line, _), cell in zip(records, cells):
                    if not is_missing(cell) and not is_number(cell):
                        self.first_text[c] = (line, cell)
                        break
            if _any_number(cells):
                self.text_number.add(c)
        return out

    def _records(self, records: list[tuple[int, list[str]]]):
        """csv records (first line, fields): Python's checks, with today's exact messages."""
        for line, rec in records:
            if len(rec) != self.width:
                raise DataError(f"{self.name} row {line}: expected {self.width} fields, got {len(rec)}")
        lines = [line for line, _ in records]
        values = np.empty((len(records), len(self.number_cols)), dtype=np.float64)
        names = self.numeric + ([self.target] if self.target_numeric else [])
        restart = []
        for k, (c, j) in enumerate(zip(names, self.number_cols)):
            cells = [rec[j] for _, rec in records]
            if c not in self.strict:
                # a column whose kind its cells decide: text if it has no number (target: any text)
                if any(not is_number(cell) and not is_missing(cell) for cell in cells):
                    if c == self.target or not (self.has_number[k] or _any_number(cells)):
                        restart.append(c)
                        continue
            # "the other cells are numbers" only where some are (a text column left out of the list)
            listed_text = c in self.strict and not (self.has_number[k] or _any_number(cells))
            why = NOT_A_NUMBER_LISTED if listed_text else NOT_A_NUMBER_AUTO
            values[:, k] = numeric_column(self.name, c, cells, lines, self.dtype, why).values
        if restart:
            raise _Restart(restart)   # every column this block shows to be text, in one more pass
        return np.asarray(lines, dtype=np.int64), values, self._text(records)


def open_csv(path: Path, name: str):
    """(_Blocks, header, the first block) of a CSV file; errors for an empty file, a bad header, no rows."""
    blocks = _Blocks(path, name)
    try:
        it = iter(blocks)
        first = next(it, None)
        if blocks.header is None:
            raise DataError(f"{name}: file is empty")
        header = _header_names(name, blocks.header)
        if first is None:
            raise DataError(f"{name}: no data rows, only a header")
    except BaseException:
        blocks.close()
        raise
    return blocks, header, itertools.chain([first], it)


def feature_columns(header: list[str], features: list[str] | None, target: str | None,
                    ignore: list[str] | None) -> list[str]:
    """data.features if given, else every column but the target and data.ignore's, in file order."""
    if features is not None:
        return list(features)
    return [h for h in header if h != target and h not in (ignore or [])]


def parse_csv(path: Path, name: str | None = None, *, features: list[str] | None = None,
              target: str | None = None, categorical="auto", ignore: list[str] | None = None,
              dtype=np.float32, check=None) -> CsvColumns:
    """Parse the feature and target columns of a CSV file, in blocks, at numpy's C speed.

    features: feature columns (default: every column but the target and `ignore`).
    categorical: "auto" (a feature with no number in it is text) or the feature columns
    read as text; the others must be numbers. The target is numbers if every present cell
    is one, else text.
    check(header): called with the header before the rows are read (option checks).

    Notes
    -----
    Each block of whole lines (BLOCK_BYTES) is handed to np.loadtxt, float64, and copied
    into arrays sized once from the file's line count; memory is the result plus one block.
    A block numpy refuses (a missing or text cell, a wrong number of fields, blank lines,
    a value not finite in `dtype`) is parsed again by Python's csv module and checked cell
    by cell, so every error names file, row and column as before. From the first block with
    a quote or a bare carriage return, Python's csv module reads the rest of the file. Text
    columns are split in Python. When a column read as numbers turns out to be text (a
    target of labels, or a categorical feature whose first blocks were all missing), the
    file is parsed again with that column as text.
    """
    path = Path(path)
    name = name or path.name
    text: list[str] = [] if categorical == "auto" else list(categorical)
    while True:
        blocks, header, chunks = open_csv(path, name)
        try:
            if check is not None:
                check(header)
            feats = feature_columns(header, features, target, ignore)
            forced = set() if categorical == "auto" else set(categorical)
            strict = set() if categorical == "auto" else set(feats) - forced
            numeric = [f for f in feats if f not in text]
            parser = BlockParser(name, chunks, header, numeric, target, strict, forced, text, dtype,
                                 fast=fast_csv.used_for(blocks.size))
            try:
                return _collect(parser, _count_lines(path))
            except _Restart as again:
                text.extend(again.columns)
        finally:
            blocks.close()


def _collect(parser: BlockParser, capacity: int) -> CsvColumns:
    """Every chunk of `parser` copied into arrays of `capacity` rows (the file's line count bounds them)."""
    k = len(parser.numeric)
    numbers = np.empty((capacity, k), dtype=parser.dtype)
    target = np.empty(capacity if parser.target_numeric else 0, dtype=np.float64)
    lines = np.empty(capacity, dtype=np.int64)
    cells: dict[str, list[str]] = {c: [] for c in parser.text}
    n = 0
    for chunk_lines, values, chunk_cells in parser.chunks():
        a, b = n, n + len(chunk_lines)
        numbers[a:b] = values[:, :k]
        if parser.target_numeric:
            target[a:b] = values[:, k]
        lines[a:b] = chunk_lines
        for c, v in chunk_cells.items():
            cells[c].extend(v)
        n = b
    if n == 0:
        raise DataError(f"{parser.name}: no data rows, only a header")
    # views: the arrays were sized from the line count, so only the header and blank lines
    # are left over at their ends
    return CsvColumns(name=parser.name, header=parser.header, lines=lines[:n], numbers=numbers[:n],
                      numeric=parser.numeric, target=target[:n] if parser.target_numeric else None,
                      text={c: np.asarray(v, dtype=str) for c, v in cells.items()})


def parsed_columns(kinds: list[tuple[str, str]], numbers: np.ndarray, numeric: list[str],
                   text: dict) -> list[Column]:
    """A Column per (name, kind) of `kinds` out of a parse: a categorical one from its text cells,
    a numeric one from the column of `numbers` that `numeric` names (missing where NaN)."""
    # which columns hold a NaN, in one pass down the rows (max propagates NaN): a mask per
    # strided column cost a cache hit of 1M x 50 0.39 s, this pass 0.04 s
    has_nan = np.isnan(numbers.max(axis=0)) if numbers.size else np.zeros(numbers.shape[1], dtype=bool)
    none = np.zeros(len(numbers), dtype=bool)
    none.flags.writeable = False   # shared by the complete columns: never written through one
    out = []
    for n, kind in kinds:
        if kind == CATEGORICAL:
            out.append(categorical_column(n, text[n]))
        else:
            j = numeric.index(n)
            values = numbers[:, j]
            out.append(Column(n, NUMERIC, values, np.isnan(values) if has_nan[j] else none))
    return out


def default_target(header: list[str]) -> str:
    """`nnctl init`'s guess, shown in the starter spec it writes (training never guesses):
    'label' if present, else 'target', else the last column."""
    for name in ("label", "target"):
        if name in header:
            return name
    return header[-1]


def _is_text_column(table: CsvTable, j: int) -> bool:
    """No present cell is a number (missing cells do not count)."""
    return not _any_number(table.column(j))


def read_csv_data(path: Path, target: str | None, features: list[str] | None,
                  name: str | None = None, *, ignore: list[str] | None = None,
                  categorical="auto", max_categories: int = 50, dtype=np.float32,
                  parse=None, need_target: bool = True) -> RawData:
    """A labelled CSV file: its feature columns (numeric or categorical, missing cells kept) and target.

    target: the target column (required: nnctl never guesses which column to predict),
    unless need_target is False (an autoencoder's table): then y is None.
    features: the feature columns; default every column but the target and `ignore`.
    categorical: "auto" (a column none of whose cells is a number is categorical) or a
    list of columns to treat as categories even if they hold numbers (integer codes).
    parse: how to get the parsed columns, parse(**parse_csv's keywords) -> CsvColumns
    (the table cache passes its own); default parse_csv.
    The result has `columns` (Column per feature) and x None: the features are encoded
    once the training split is known (see nnctl.data.preprocess); `numbers` holds the
    numeric columns side by side, which is x itself when every feature is numeric.
    """
    path = Path(path)
    name = name or path.name

    def check(header: list[str]) -> None:
        def no_column(wanted: str) -> DataError:
            return DataError(f"{name}: no column '{wanted}'; columns are: {column_list(header)}")
        if target is None and need_target:
            raise DataError(f"{name}: data.target is required for a CSV file (the column to predict); "
                            f"columns are: {column_list(header)}")
        named = [] if target is None else [target]
        for n in [*named, *(ignore or []), *(features or []), *([] if categorical == "auto" else categorical)]:
            if n not in header:
                raise no_column(n)
        if target in (ignore or []):
            raise DataError(f"{name}: data.ignore lists the target column '{target}'")
        if features is not None:
            for f in features:
                if f == target:
                    raise DataError(f"{name}: data.features lists the target column '{target}'")
                if f in (ignore or []):
                    raise DataError(f"{name}: column '{f}' is in both data.features and data.ignore")
            cols = list(features)
        else:
            cols = feature_columns(header, None, target, ignore)
            if not cols:
                raise DataError(f"{name}: no feature columns besides the target '{target}'"
                                + (" and the ignored ones" if ignore else ""))
        for f in ([] if categorical == "auto" else categorical):
            if f == target or f not in cols:
                raise DataError(f"{name}: data.categorical lists '{f}', which is not a feature column")

    table = (parse or parse_csv)(path=path, name=name, features=features, target=target,
                                 categorical=categorical, ignore=ignore, dtype=dtype, check=check)
    feats = feature_columns(table.header, features, target, ignore)
    columns = parsed_columns([(h, CATEGORICAL if h in table.text else NUMERIC) for h in feats],
                             table.numbers, table.numeric, table.text)
    for col in columns:
        if col.kind == CATEGORICAL:
            distinct = len(np.unique(col.values[~col.missing]))
            if distinct > max_categories:
                raise DataError(f"{name}: column '{col.name}' has {distinct} distinct values, more than "
                                f"data.max_categories ({max_categories}); an ID column is not a feature: "
                                "add it to data.ignore")
    y, y_missing = table.target_column(target) if target is not None else (None, None)
    numeric_only = all(c.kind == NUMERIC for c in columns) and table.numeric == [c.name for c in columns]
    return RawData(
        x=None,
        y=y,
        feature_names=[c.name for c in columns],
        target_name=target,
        source=name,
        lines=table.lines,
        columns=columns,
        y_missing=y_missing,
        ignored=[h for h in table.header if h != target and h not in feats],
        numbers=table.numbers if numeric_only else None,
    )


def numeric_matrix(raw: RawData) -> np.ndarray:
    """The features of an all-numeric CSV without missing cells, (N, F) float64 (the shipped datasets)."""
    for c in raw.columns:
        if c.kind != NUMERIC or c.missing.any():
            raise DataError(f"{raw.source}: column '{c.name}' is not a complete numeric column")
    if raw.y_missing is not None and raw.y_missing.any():
        raise DataError(f"{raw.source}: the target has missing cells")
    return raw.numbers if raw.numbers is not None else np.stack([c.values for c in raw.columns], axis=1)


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
