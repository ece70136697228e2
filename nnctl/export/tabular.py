"""A CSV model's column encoding as ONNX nodes, and the raw rows its parity check runs on.

Training turns a CSV's columns into one float row (nnctl.data.preprocess.TableEncoder):
numbers as they are, each text column one-hot over its sorted categories plus one
"unknown" slot, and under `data.missing: impute` a missing cell replaced by the training
split's fill (numbers: the mean; text: the most frequent category). The exported graph
does the same from the raw columns, so a deployed model is fed what the CSV holds:

- a table with a text column: one input per column, named as the column, `[batch, 1]`;
  a number column is float (NaN = missing), a text column is string (the cell stripped of
  surrounding spaces; "", NA, N/A and NaN in any letter case = missing);
- a table of numbers only: the one `features` matrix `[batch, columns]` as before, NaN =
  missing.

Per text column the graph has an ai.onnx.ml LabelEncoder (category -> its index, a missing
marker -> the fill's index, anything else -> the unknown slot) and Equal against
0..categories, cast to the float type: exactly the one-hot row training built. A number
column with a fill is Where(IsNaN(x), fill, x). Without a fill (data.missing: error or
drop) nnctl refuses a missing cell; the graph cannot refuse, so a missing number stays NaN
(and so do the outputs) and a missing text cell lands in the unknown slot.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnctl.data.files import CATEGORICAL, MISSING_CELLS, NUMERIC, Column
from nnctl.data.preprocess import unseen
from nnctl.export.graph import ExportError, Graph

ML_DOMAIN = "ai.onnx.ml"
# LabelEncoder-2 is the first with string keys -> int64 values and a default; every
# onnxruntime of the last years runs it.
ML_OPSET = 2
MATRIX_INPUT = "features"
# Base rows each probe block copies: enough to vary the other columns, few enough to stay cheap.
PROBE_BASE_ROWS = 6


def encoded_table(lm: Any):
    """The TableEncoder the graph must reproduce, or None when the input needs no encoding
    (not a CSV, or numbers only without fill values: the `features` matrix is already the row)."""
    table = lm.preprocessor.table
    return None if table is None or table.is_plain else table


def column_inputs(lm: Any) -> bool:
    """True when the graph takes one input per CSV column (the table has a text column)."""
    table = encoded_table(lm)
    return table is not None and any(c["kind"] == CATEGORICAL for c in table.columns)


def missing_markers() -> list[str]:
    """Every spelling of a missing text cell the data layer accepts: its markers in every letter case."""
    out = set()
    for marker in MISSING_CELLS:
        out.update("".join(p) for p in itertools.product(*[{ch.lower(), ch.upper()} for ch in marker]))
    return sorted(out)


def _reserve_inputs(g: Graph, names: list[str], outputs: tuple[str, ...]) -> None:
    for name in names:
        if name in outputs:
            raise ExportError(f"column '{name}' has the name of a graph output ({', '.join(outputs)}); "
                              "the ONNX inputs are named as the columns, so rename that column and retrain")
        g.reserve(name)


def table_inputs(g: Graph, lm: Any, outputs: tuple[str, ...]) -> tuple[list, str]:
    """The graph inputs (value infos) for raw CSV columns and the node holding the encoded
    feature row (batch, F), before reshape and standardization."""
    helper, tp = g.helper, g.TensorProto
    table = encoded_table(lm)
    if not column_inputs(lm):
        # numbers only, some with a fill: the matrix, NaN replaced column by column
        _reserve_inputs(g, [MATRIX_INPUT], outputs)
        fills = np.array([np.nan if c["fill"] is None else c["fill"] for c in table.columns])
        x = g.op("Where", g.op("IsNaN", MATRIX_INPUT, hint="pre.missing"), g.const("pre.fill", fills),
                 MATRIX_INPUT, hint="pre.impute")
        info = helper.make_tensor_value_info(MATRIX_INPUT, g.elem_type, ["batch", len(table.columns)])
        return [info], x
    _reserve_inputs(g, [c["name"] for c in table.columns], outputs)
    infos, parts = [], []
    for c in table.columns:
        name = c["name"]
        if c["kind"] == NUMERIC:
            infos.append(helper.make_tensor_value_info(name, g.elem_type, ["batch", 1]))
            h = name
            if c["fill"] is not None:
                h = g.op("Where", g.op("IsNaN", name, hint=f"pre.{name}.missing"),
                         g.const(f"pre.{name}.fill", c["fill"]), name, hint=f"pre.{name}.impute")
            parts.append(h)
            continue
        infos.append(helper.make_tensor_value_info(name, tp.STRING, ["batch", 1]))
        cats = c["categories"]
        slot_of = {v: i for i, v in enumerate(cats)}
        if c["fill"] is not None:
            # a marker is a missing cell to the data layer whatever the vocabulary says, so it wins
            # (a fill outside the vocabulary, which only a hand-edited checkpoint has, is unknown there too)
            slot_of.update(dict.fromkeys(missing_markers(), slot_of.get(c["fill"], len(cats))))
        index = g.op("LabelEncoder", name, hint=f"pre.{name}.index", domain=ML_DOMAIN,
                     keys_strings=list(slot_of), values_int64s=list(slot_of.values()), default_int64=len(cats))
        slots = g.ints(f"pre.{name}.slots", np.arange(len(cats) + 1))
        hot = g.op("Equal", index, slots, hint=f"pre.{name}.is")          # (batch, categories + 1)
        parts.append(g.op("Cast", hot, hint=f"pre.{name}.onehot", to=g.elem_type))
    x = parts[0] if len(parts) == 1 else g.op("Concat", *parts, hint="pre.row", axis=1)
    return infos, x


def input_metadata(lm: Any) -> dict[str, Any]:
    """What the `input` metadata says about raw columns: each input's name, type and encoding."""
    table = encoded_table(lm)
    cols = []
    for c in table.columns:
        entry = {"name": c["name"], "kind": c["kind"], "fill": c["fill"]}
        if c["kind"] == CATEGORICAL:
            entry["categories"] = c["categories"]
        cols.append(entry)
    return {"columns": cols, "missing": table.missing, "per_column_inputs": column_inputs(lm)}


# ---------------------------------------------------------------------------- check rows

@dataclass
class TableRows:
    """Raw rows of a table: `columns` as the data layer reads them (what TableEncoder.transform
    takes), `text` each text column's cells as written (stripped; a missing cell keeps its
    marker, "NA" say), which is what the graph is fed."""

    columns: list[Column]
    text: dict[str, np.ndarray]
    lines: Any = None

    def __len__(self) -> int:
        return len(self.columns[0].values) if self.columns else 0


def read_table(path, table, dtype) -> TableRows:
    """A CSV's feature columns, read as `nnctl predict` reads them, with their cells as written."""
    from nnctl.data.files import read_csv, read_csv_columns
    csv = read_csv(path)
    columns = read_csv_columns(csv, table.kinds, dtype)
    text = {c.name: np.array([cell.strip() for cell in csv.column(csv.header.index(c.name))], dtype=object)
            for c in columns if c.kind == CATEGORICAL}
    return TableRows(columns, text, csv.lines)


def decode(table, x: np.ndarray) -> TableRows:
    """Encoded rows (N, F) (any shape with F values per row) back to raw columns, by the
    table's own inverse with the unknown slot as a value training never had (so the parity
    check's decoding cannot drift from nnctl's). Encoding the result again gives x back exactly."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    columns, text = [], {}
    for c, values in zip(table.columns, table.inverse(x, unknown=True)):
        if c["kind"] == NUMERIC:
            values = values.copy()   # a column of its own, not a view of x
        else:
            text[c["name"]] = values.astype(object)   # the graph's string input: Python str cells
        columns.append(Column(c["name"], c["kind"], values, np.zeros(len(x), dtype=bool)))
    return TableRows(columns, text)


def probes(table, rows: TableRows) -> TableRows:
    """Copies of the first rows with one column at a time made missing (where a fill exists)
    or, for text, a value training never had: every imputation and unknown slot is checked
    even when the check rows have none. Missing text cycles through the markers' spellings."""
    n = min(len(rows), PROBE_BASE_ROWS)
    base = np.arange(n)
    blocks: list[TableRows] = []
    spellings = ["", "NA", "n/a", "NaN", "nan", "N/A"]
    for j, c in enumerate(table.columns):
        kinds = (["unknown"] if c["kind"] == CATEGORICAL else []) + (["missing"] if c["fill"] is not None else [])
        for kind in kinds:
            cols = [col.take(base) for col in rows.columns]
            text = {k: v[base].copy() for k, v in rows.text.items()}
            name = c["name"]
            if c["kind"] == NUMERIC:
                cols[j] = Column(name, NUMERIC, np.full(n, np.nan), np.ones(n, dtype=bool))
            elif kind == "missing":
                cols[j] = Column(name, CATEGORICAL, np.full(n, "", dtype=str), np.ones(n, dtype=bool))
                text[name] = np.array([spellings[i % len(spellings)] for i in range(n)], dtype=object)
            else:
                value = unseen(c["categories"])
                cols[j] = Column(name, CATEGORICAL, np.full(n, value, dtype=object).astype(str),
                                 np.zeros(n, dtype=bool))
                text[name] = np.full(n, value, dtype=object)
            blocks.append(TableRows(cols, text))
    return concat(blocks) if blocks else TableRows([col.take(base[:0]) for col in rows.columns],
                                                    {k: v[:0] for k, v in rows.text.items()})


def concat(parts: list[TableRows]) -> TableRows:
    """Rows of `parts` one after another (file lines are dropped: probe rows have none)."""
    first = parts[0]
    columns = [Column(c.name, c.kind, np.concatenate([p.columns[j].values for p in parts]),
                      np.concatenate([p.columns[j].missing for p in parts])) for j, c in enumerate(first.columns)]
    text = {k: np.concatenate([p.text[k] for p in parts]) for k in first.text}
    return TableRows(columns, text)


def feeds(lm: Any, rows: TableRows, lo: int, hi: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The graph's inputs for rows lo:hi: per column, or the `features` matrix (NaN = missing)."""
    if not column_inputs(lm):
        return {MATRIX_INPUT: np.stack([np.where(c.missing[lo:hi], np.nan, c.values[lo:hi]) for c in rows.columns],
                                       axis=1).astype(dtype)}
    out = {}
    for c in rows.columns:
        if c.kind == NUMERIC:
            out[c.name] = np.where(c.missing[lo:hi], np.nan, c.values[lo:hi]).astype(dtype).reshape(-1, 1)
        else:
            out[c.name] = np.asarray(rows.text[c.name][lo:hi], dtype=object).reshape(-1, 1)
    return out
