"""`nnctl predict`: predictions for new rows, read and written in chunks so any input size runs in bounded memory.

Input: a CSV with the model's feature columns (by name, any order; a target column and
text columns such as ids are ignored), a .npy of features (memory-mapped) or an .npz with
"x". Output: CSV with the predicted original labels (or values), and with `proba` one
`p_<label>` column per class; to a file (written atomically) or to a stream.

A CSV input is parsed in chunks (at most CHUNK_ROWS rows and CHUNK_CELLS cells) and a .npy
is memory-mapped, and each chunk's predictions are written before the next is read, so
memory is bounded for an input of any length (an .npz is read whole: np.load cannot map a zip).
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from nnctl.runs.model import CLASSIFICATION, LoadedModel
from nnctl.data import Split, load_features
from nnctl.data.files import not_utf8, suffix_of
from nnctl.errors import DataError, NnctlError
from nnctl.fileio import check_regular
from nnctl.runs.store import atomic_write
from nnctl.training.metrics import predicted_classes

# Rows parsed per chunk of a CSV input (each chunk is then cut into batch_size batches)...
CHUNK_ROWS = 16384
# ... and at most this many cells: a parsed cell is a Python string of ~55 bytes, so 16384
# rows of 256 columns would hold ~230 MB of strings at once.
CHUNK_CELLS = 1_000_000


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


class CsvFeatureReader:
    """Streams the model's feature columns out of a CSV file, a chunk of rows at a time.

    Same conventions as training's CSV reader (nnctl.data.files): header on the first
    non-blank line, UTF-8 with optional BOM, quoted fields, blank lines skipped, 1-based
    file lines in messages. Columns are matched by name: every feature must be present; a
    column that is neither a feature nor the target is ignored if it holds text (an id) and
    an error if it holds numbers (the file does not fit the model). Because the file is
    streamed, "holds text" is judged on the first chunk.
    """

    def __init__(self, path: Path, feature_names: list[str] | None, target_name: str | None,
                 input_shape: tuple[int, ...], chunk_rows: int | None = None):
        self.path = Path(path)
        self.name = self.path.name
        self.feature_names = feature_names
        self.target_name = target_name
        self.input_shape = tuple(input_shape)
        self.chunk_rows = chunk_rows

    def _open(self) -> IO[str]:
        check_regular(self.path, DataError, self.name, missing_ok=True)
        try:
            return open(self.path, encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise DataError(f"{self.name}: file not found ({self.path})") from None
        except IsADirectoryError:
            raise DataError(f"{self.name}: is a directory, not a CSV file ({self.path})") from None
        except OSError as err:
            raise DataError(f"{self.name}: cannot read ({err.strerror or err})") from None

    def _records(self, f: IO[str]) -> Iterator[tuple[int, list[str]]]:
        """(first file line, fields) of every non-blank record."""
        reader = csv.reader(f)
        end = 0
        try:
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                yield start, record
        except csv.Error as err:
            raise DataError(f"{self.name} row {reader.line_num}: {err}") from None
        except UnicodeDecodeError:
            raise not_utf8(self.path, self.name) from None

    def _columns(self, header: list[str], first: list[tuple[int, list[str]]]) -> list[int]:
        """Indices of the feature columns in the model's order; checks the header fits the model."""
        seen: dict[str, int] = {}
        for j, h in enumerate(header, start=1):
            if not h:
                raise DataError(f"{self.name}: column {j} has no name in the header")
            if h in seen:
                raise DataError(f"{self.name}: duplicate column name '{h}' (columns {seen[h]} and {j})")
            seen[h] = j
        target = header.index(self.target_name) if self.target_name in header else None

        def numeric(j: int) -> bool:
            return any(_is_number(rec[j]) for _, rec in first if j < len(rec))

        want = math.prod(self.input_shape)
        if self.feature_names is None:
            cols = [j for j in range(len(header)) if j != target and numeric(j)]
            if len(cols) != want:
                raise DataError(f"{self.name}: {len(cols)} numeric feature columns, the model expects {want} "
                                f"(input shape {list(self.input_shape)})")
            return cols
        for f in self.feature_names:
            if f not in header:
                raise DataError(f"{self.name}: missing feature column '{f}'")
        known = set(self.feature_names)
        for j, h in enumerate(header):
            if h not in known and j != target and numeric(j):
                raise DataError(f"{self.name}: unknown column '{h}'; the model's features are: "
                                f"{', '.join(self.feature_names)}")
        if len(self.feature_names) != want:
            raise DataError(f"{self.name}: the model has {len(self.feature_names)} feature names but "
                            f"input shape {list(self.input_shape)}")
        return [header.index(f) for f in self.feature_names]

    def _parse(self, header: list[str], cols: list[int], chunk: list[tuple[int, list[str]]]) -> np.ndarray:
        x = np.empty((len(chunk), len(cols)), dtype=np.float64)
        width = len(header)
        for i, (line, record) in enumerate(chunk):
            if len(record) != width:
                raise DataError(f"{self.name} row {line}: expected {width} fields, got {len(record)}")
            for k, j in enumerate(cols):
                cell = record[j]
                try:
                    value = float(cell)
                except ValueError:
                    where = f"{self.name} row {line}, column '{header[j]}'"
                    if not cell.strip():
                        raise DataError(f"{where}: empty cell (missing values are not supported)") from None
                    raise DataError(f"{where}: not a number: {cell!r}") from None
                if not math.isfinite(value):
                    raise DataError(f"{self.name} row {line}, column '{header[j]}': not a finite number: {cell!r}")
                x[i, k] = value
        return x.reshape((len(chunk),) + self.input_shape)

    def chunks(self) -> Iterator[np.ndarray]:
        """Feature arrays (b, *input_shape) float64, b <= chunk_rows, in file order."""
        with self._open() as f:
            records = self._records(f)
            header_record = next(records, None)
            if header_record is None:
                raise DataError(f"{self.name}: file is empty")
            header = [h.strip() for h in header_record[1]]
            size = self.chunk_rows or min(CHUNK_ROWS, max(64, CHUNK_CELLS // len(header)))
            chunk: list[tuple[int, list[str]]] = []
            cols: list[int] | None = None
            any_rows = False
            for rec in records:
                chunk.append(rec)
                if len(chunk) == size:
                    if cols is None:
                        cols = self._columns(header, chunk)
                    yield self._parse(header, cols, chunk)
                    any_rows = True
                    chunk = []
            if chunk:
                if cols is None:
                    cols = self._columns(header, chunk)
                yield self._parse(header, cols, chunk)
                any_rows = True
            if not any_rows:
                raise DataError(f"{self.name}: no data rows, only a header")


def feature_chunks(lm: LoadedModel, path: Path) -> Iterator[np.ndarray]:
    """The input's features in chunks of (b, *input_shape); .npy stays memory-mapped."""
    path = Path(path)
    suffix = suffix_of(path, path.name)
    if suffix == ".csv":
        yield from CsvFeatureReader(path, lm.feature_names, lm.target_name, lm.input_shape).chunks()
        return
    # load_features maps a .npy (rows are read per batch) and checks the sample shape
    x, _ = load_features(path, lm.feature_names, lm.input_shape, lm.target_name)
    for s in range(0, len(x), CHUNK_ROWS):
        yield x[s:s + CHUNK_ROWS]


def header(lm: LoadedModel, proba: bool) -> list[str]:
    if lm.task == CLASSIFICATION:
        cols = [lm.target_name or "label"]
        if proba:
            cols += [f"p_{label}" for label in lm.classes]
        return cols
    return lm.output_names()


def _text(values: np.ndarray) -> np.ndarray:
    """Shortest text that reads back as the same value in the array's own dtype."""
    return values.astype(str)


def predict_rows(lm: LoadedModel, x: np.ndarray, batch_size: int, proba: bool) -> list[np.ndarray]:
    """Output columns (as text arrays of len(x)) for one chunk of raw features."""
    labels = np.asarray([str(c) for c in lm.classes]) if lm.task == CLASSIFICATION else None
    parts: list[list[np.ndarray]] = []
    for z, _ in lm.batches(Split(x, None, None), batch_size):
        if labels is not None:
            cols = [labels[predicted_classes(z)]]
            if proba:
                p = lm.probabilities(z)
                cols += [_text(p[:, c]) for c in range(p.shape[1])]
        else:
            z2 = np.asarray(z).reshape(len(z), -1)
            cols = [_text(z2[:, j]) for j in range(z2.shape[1])]
        parts.append(cols)
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))] if parts else []


def write_predictions(lm: LoadedModel, source: Path, stream: IO[str], batch_size: int, proba: bool) -> int:
    """Predict every row of `source` and write CSV to `stream`; returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    n = 0
    # The header goes out only once the first chunk has parsed, so an input that does not
    # fit the model (missing column, wrong width) prints nothing but the error.
    for x in feature_chunks(lm, source):
        cols = predict_rows(lm, x, batch_size, proba)
        if n == 0:
            writer.writerow(header(lm, proba))
        writer.writerows(zip(*(c.tolist() for c in cols)))
        n += len(x)
    return n


def run_predict(lm: LoadedModel, source: Path, out: Path | None, batch_size: int, proba: bool) -> int:
    """`nnctl predict`: to `out` atomically (nothing is left behind on error), else to stdout."""
    if proba and lm.task != CLASSIFICATION:
        raise NnctlError(f"--proba needs a classification model; {lm.path} is {lm.task}")
    if out is None:
        return write_predictions(lm, source, sys.stdout, batch_size, proba)
    out = Path(out)
    if out.is_dir():
        raise NnctlError(f"--out {out}: is a directory")
    count = [0]

    def write(f) -> None:
        count[0] = write_predictions(lm, source, f, batch_size, proba)

    try:
        atomic_write(out, write, binary=False)
    except OSError as err:
        raise NnctlError(f"--out {out}: cannot write: {err.strerror or err}") from None
    return count[0]
