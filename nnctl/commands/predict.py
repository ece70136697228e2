"""`nnctl predict`: predictions for new rows, read and written in chunks so any input size runs in bounded memory.

Input: a CSV with the model's feature columns (by name, any order; categorical columns are
encoded with the training vocabulary, unseen values as "unknown"; other columns are
ignored, with one note naming them), a .npy of features (memory-mapped) or an .npz with
"x". Output: CSV with the `--keep` columns copied from the input (IDs), then the predicted
original labels (or values, in the target's own units), and with `proba` one `p_<label>`
column per class; to a file (written atomically) or to a stream.

A CSV input is parsed a block at a time by the training parser (polars or numpy's C reader,
see nnctl.data.fast_csv; with polars the next block is parsed while this one is predicted) and a .npy
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

from nnctl.data import Split, TableEncoder, fast_csv, load_features
from nnctl.data.files import CATEGORICAL, is_number, parsed_columns, suffix_of
from nnctl.data.stream import csv_chunks, head_records
from nnctl.runs.model import CLASSIFICATION, LoadedModel
from nnctl.errors import DataError, NnctlError
from nnctl.runs.store import atomic_write
from nnctl.training.metrics import predicted_classes

# A CSV input is parsed a block of text at a time (nnctl.data.files.BLOCK_BYTES); an .npy or
# an image folder is predicted CHUNK_ROWS rows at a time; a model without feature names
# guesses its numeric columns from the first chunk of rows, at most CHUNK_CELLS cells.
CHUNK_ROWS = 16384
CHUNK_CELLS = 1_000_000


class CsvFeatureReader:
    """Streams the model's feature columns out of a CSV file, a chunk of rows at a time.

    Same conventions and parser as training (nnctl.data.files, via nnctl.data.stream): header
    on the first non-blank line, UTF-8 with optional BOM, quoted fields, blank lines skipped,
    1-based file lines in messages. Columns are matched by name and encoded by the
    checkpoint's table encoding (categories one-hot, unseen ones to "unknown", imputed
    fills); every feature must be present; other columns are ignored (listed once in
    `notes`), and the `keep` columns are handed back as text beside each chunk.
    chunk_rows: cut each parsed block into chunks of at most this many rows.
    """

    def __init__(self, path: Path, feature_names: list[str] | None, target_name: str | None,
                 input_shape: tuple[int, ...], chunk_rows: int | None = None,
                 table: TableEncoder | None = None, keep: list[str] | tuple = (), dtype=np.float32):
        self.path = Path(path)
        self.name = self.path.name
        self.feature_names = feature_names
        self.target_name = target_name
        self.input_shape = tuple(input_shape)
        self.chunk_rows = chunk_rows
        self.table = table
        self.keep = list(keep)
        self.dtype = dtype
        self.notes: list[str] = []
        self.unknown = 0

    def _encoding(self, header: list[str]) -> TableEncoder:
        """The table encoding to apply; checks the header fits the model and notes ignored columns."""
        for k in self.keep:
            if k not in header:
                raise DataError(f"{self.name}: --keep names no column '{k}'; columns are: {', '.join(header)}")
        target = header.index(self.target_name) if self.target_name in header else None
        want = math.prod(self.input_shape)
        table = self.table
        if table is None and self.feature_names is None:
            # a model from before feature names were kept: the numeric columns of the first chunk
            first = head_records(self.path, self.chunk_rows or min(CHUNK_ROWS, max(64, CHUNK_CELLS // len(header))))

            def numeric(j: int) -> bool:
                return any(is_number(rec[j]) for rec in first if j < len(rec))
            names = [h for j, h in enumerate(header) if j != target and numeric(j) and h not in self.keep]
            if len(names) != want:
                raise DataError(f"{self.name}: {len(names)} numeric feature columns, the model expects {want} "
                                f"(input shape {list(self.input_shape)})")
            table = TableEncoder.numeric(names)
        elif table is None:
            table = TableEncoder.numeric(self.feature_names)
        for name, _ in table.kinds:
            if name not in header:
                raise DataError(f"{self.name}: missing feature column '{name}'")
        if len(table.feature_names) != want:
            raise DataError(f"{self.name}: the model has {len(table.feature_names)} features but "
                            f"input shape {list(self.input_shape)}")
        used = {n for n, _ in table.kinds} | set(self.keep) | ({self.target_name} if target is not None else set())
        ignored = [h for h in header if h not in used]
        if ignored:
            self.notes.append(f"{self.name}: ignored columns the model does not use: {', '.join(ignored)}")
        return table

    def chunks_with_kept(self) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
        """(features (b, *input_shape) float64, the --keep columns' cells), in file order."""
        tables: list[TableEncoder] = []
        numeric: list[str] = []
        text: list[str] = []

        def check(header: list[str]) -> None:
            table = self._encoding(header)
            tables.append(table)
            numeric.extend(n for n, kind in table.kinds if kind != CATEGORICAL)
            text.extend(dict.fromkeys([n for n, kind in table.kinds if kind == CATEGORICAL] + self.keep))

        # check() fills numeric/text before the parser reads them (lists are shared, not copied)
        for lines, values, cells in csv_chunks(self.path, self.name, numeric, text, self.dtype, check):
            x = self._features(tables[0], numeric, lines, values, cells)
            kept = [cells[k] for k in self.keep]
            step = self.chunk_rows or len(x) or 1
            for s in range(0, len(x), step):
                yield x[s:s + step].reshape((-1,) + self.input_shape), [k[s:s + step] for k in kept]
        if self.unknown:
            self.notes.append(f"{self.name}: {self.unknown} categorical value{'s' * (self.unknown != 1)} the "
                              "training split never had, encoded as 'unknown'")

    def _features(self, table: TableEncoder, numeric: list[str], lines: np.ndarray, values: np.ndarray,
                  cells: dict[str, list[str]]) -> np.ndarray:
        if table.is_plain and not np.isnan(values).any() and [n for n, _ in table.kinds] == numeric:
            return values   # nothing to encode: the parsed numbers, in the model's column order
        x, unknown = table.transform(parsed_columns(table.kinds, values, numeric, cells), self.name, lines)
        self.unknown += unknown
        return x

    def chunks(self) -> Iterator[np.ndarray]:
        for x, _ in self.chunks_with_kept():
            yield x


def feature_chunks(lm: LoadedModel, path: Path, keep: list[str] | tuple = (),
                   notes: list[str] | None = None) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """The input's features in chunks of (b, *input_shape), with the --keep columns (CSV only);
    .npy stays memory-mapped. Notes for the user (ignored columns, unseen categories) go to `notes`."""
    path = Path(path)
    if _images(lm, path):
        from nnctl.data.images import read_images_to_predict
        data = lm.meta["config"]["data"]
        x, files = read_images_to_predict(path, data.get("image_size"), data.get("color", "grayscale"))
        if tuple(x.shape[1:]) != lm.input_shape:
            raise DataError(f"{path.name}: images are {list(x.shape[1:])} (C, H, W), the model expects "
                            f"{list(lm.input_shape)}")
        for s in range(0, len(x), CHUNK_ROWS):
            yield x[s:s + CHUNK_ROWS], [files[s:s + CHUNK_ROWS]]
        return
    suffix = suffix_of(path, path.name)
    if suffix == ".csv":
        reader = CsvFeatureReader(path, lm.feature_names, lm.target_name, lm.input_shape,
                                  table=lm.preprocessor.table, keep=keep, dtype=lm.dtype)
        try:
            yield from reader.chunks_with_kept()
        finally:
            if notes is not None:
                notes.extend(reader.notes)
        return
    if keep:
        raise DataError(f"{path.name}: --keep copies CSV columns; a {suffix} file has none")
    # load_features maps a .npy (rows are read per batch) and checks the sample shape and values
    x, _ = load_features(path, lm.feature_names, lm.input_shape, lm.target_name, dtype=lm.dtype)
    for s in range(0, len(x), CHUNK_ROWS):
        yield x[s:s + CHUNK_ROWS], []


def _images(lm: LoadedModel, path: Path) -> bool:
    """An image file or folder, for a model trained on an image folder."""
    from nnctl.data.images import is_image
    return path.is_dir() or is_image(path)


def header(lm: LoadedModel, proba: bool, keep: list[str] | tuple = ()) -> list[str]:
    if lm.task == CLASSIFICATION:
        cols = [*keep, lm.target_name or "label"]
        if proba:
            cols += [f"p_{label}" for label in lm.classes]
        return cols
    return [*keep, *lm.output_names()]


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
            # back in the target's own units, in the model's dtype (shortest text that reads back)
            z2 = lm.preprocessor.unscale(z).astype(lm.dtype)
            cols = [_text(z2[:, j]) for j in range(z2.shape[1])]
        parts.append(cols)
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))] if parts else []


def write_predictions(lm: LoadedModel, source: Path, stream: IO[str], batch_size: int, proba: bool,
                      keep: list[str] | tuple = (), notes: list[str] | None = None) -> int:
    """Predict every row of `source` and write CSV to `stream`; returns the number of rows.

    Rows are predicted in batches of batch_size counted from the input's first row, whatever
    its chunks (a CSV's parse blocks, an .npy's CHUNK_ROWS): a BLAS product's last bits can
    depend on how many rows it multiplies, so batches cut at chunk ends made `--proba` and
    regression values depend on the block size. A chunk's last rows wait for the next chunk's
    first ones.
    """
    writer = csv.writer(stream, lineterminator="\n")
    n = 0
    held_x: np.ndarray | None = None   # fewer than batch_size rows, waiting for the next chunk
    held_kept: list[list[str]] = []

    def write(x: np.ndarray, kept: list[list[str]]) -> None:
        nonlocal n
        cols = predict_rows(lm, x, batch_size, proba)
        if n == 0:
            writer.writerow(header(lm, proba, keep))
        writer.writerows(zip(*kept, *(c.tolist() for c in cols)))
        n += len(x)

    # The header goes out only once the first chunk has parsed, so an input that does not
    # fit the model (missing column, wrong width) prints nothing but the error.
    for x, kept in feature_chunks(lm, source, keep, notes):
        if held_x is not None:
            need = batch_size - len(held_x)
            x, kept, head, head_kept = x[need:], [k[need:] for k in kept], x[:need], [k[:need] for k in kept]
            held_x = np.concatenate([held_x, head])
            held_kept = [a + list(b) for a, b in zip(held_kept, head_kept)]
            if len(held_x) < batch_size:
                continue
            write(held_x, held_kept)
            held_x, held_kept = None, []
        whole = len(x) - len(x) % batch_size
        if whole:
            write(x[:whole], [k[:whole] for k in kept])
        if whole < len(x):
            held_x, held_kept = x[whole:], [list(k[whole:]) for k in kept]
    if held_x is not None:
        write(held_x, held_kept)
    return n


def csv_parser(path: Path) -> str:
    """What parsed a CSV input: the parser, its threads, and that it reads ahead (see stream.py)."""
    size = Path(path).stat().st_size
    return fast_csv.describe(size) + (", one block ahead of the model" if fast_csv.used_for(size) else "")


def run_predict(lm: LoadedModel, source: Path, out: Path | None, batch_size: int, proba: bool,
                keep: list[str] | tuple = (), notes: list[str] | None = None) -> int:
    """`nnctl predict`: to `out` atomically (nothing is left behind on error), else to stdout.

    keep: input columns copied into the output first (IDs); notes receives one line per
    thing the user should know (ignored columns, categories mapped to unknown).
    """
    if lm.task in ("autoencoder", "vae"):
        raise NnctlError(f"predict: {lm.path} is a {lm.task}, which predicts no target; use nnctl encode, "
                         "decode or sample")
    if proba and lm.task != CLASSIFICATION:
        raise NnctlError(f"--proba needs a classification model; {lm.path} is {lm.task}")
    if len(set(keep)) != len(keep):
        raise NnctlError("--keep: a column is named twice")
    if _images(lm, Path(source)):
        if keep:
            raise NnctlError("--keep copies CSV columns; an image input gets a path column instead")
        keep = ["path"]   # one row per file, with its path
    if out is None:
        return write_predictions(lm, source, sys.stdout, batch_size, proba, keep, notes)
    out = Path(out)
    if out.is_dir():
        raise NnctlError(f"--out {out}: is a directory")
    count = [0]

    def write(f) -> None:
        count[0] = write_predictions(lm, source, f, batch_size, proba, keep, notes)

    try:
        atomic_write(out, write, binary=False)
    except OSError as err:
        raise NnctlError(f"--out {out}: cannot write: {err.strerror or err}") from None
    return count[0]
