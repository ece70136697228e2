"""polars' CSV reader for the number columns of a plain block: the optional `csv` extra.

Why polars: on 4 MB blocks of 256 float columns (this project's 2-core machines, one
thread) numpy's loadtxt parsed 65k rows/s and polars 111k (167k on two threads); pyarrow
(42k) and pandas (71k) were no faster than numpy. Parsing is most of `nnctl predict`'s time
on a wide CSV and most of a first load's.

Why the numbers are the same as without it: polars parses Float64 correctly rounded, like
Python's float() (checked bitwise on 894k tokens of every shape: long mantissas,
subnormals, exponents past either end), and the tokens it accepts are a subset of numpy's
(it refuses trailing spaces, underscores and non-ASCII digits). Anything it does not parse
cleanly - an error, a null (an empty or missing field, or a blank line), NaN, a value out
of the model's range - gives None and the block goes to numpy's
reader and the exact cell checks, the only place messages come from. So a user's file
parses to the same arrays with or without polars; only the time differs.

Threads: polars sizes its pool once, when it is first imported, from POLARS_MAX_THREADS.
An explicit --threads goes there with the BLAS count (nnctl.threads.set_parser_threads)
unless the user set it; otherwise polars uses every CPU. `describe()` says what ran
(validate, config, the train header, predict --out).
"""
from __future__ import annotations

import numpy as np

MISSING = 'polars is not installed (CSV blocks are parsed by numpy, ~1.7x slower): pip install -e ".[csv]"'
# Files smaller than this are left to numpy's reader: importing polars costs ~0.13 s and ~35 MB,
# what numpy's reader needs for ~18 MB of CSV, and polars saves 40-70% of the parse, so it
# only pays from a few tens of MB (measured: a 5 MB file 0.10 s -> 0.27 s with polars, a
# 97 MB file 1.40 s -> 0.91 s)
MIN_BYTES = 32 * 2**20

_polars = None          # the module once imported; False when it is not installed
_disabled = False       # tests: force numpy's reader


def _module():
    global _polars
    if _polars is None:
        try:
            import polars
            _polars = polars
        except ImportError:
            _polars = False
    return _polars if not _disabled else False


def available() -> bool:
    return bool(_module())


def set_disabled(value: bool) -> bool:
    """Turn the polars path off (True) or back on; returns the previous setting (tests)."""
    global _disabled
    before, _disabled = _disabled, value
    return before


def used_for(size: int) -> bool:
    """Whether a CSV file of `size` bytes is parsed with polars (importing it only if so)."""
    return size >= MIN_BYTES and available()


def describe(size: int) -> str:
    """What parses the plain blocks of a CSV file of `size` bytes, as the headers show it."""
    if size < MIN_BYTES and not _disabled:
        return f"numpy's reader (a file under {MIN_BYTES >> 20} MB: loading polars would cost more than it saves)"
    pl = _module()
    if not pl:
        return "numpy's reader" + ("" if _disabled else f" ({MISSING})")
    from nnctl.threads import parser_threads_source
    n = pl.thread_pool_size()
    return f"polars {pl.__version__} on {n} thread{'s' if n != 1 else ''} ({parser_threads_source()})"


def numbers(data: bytes, width: int, columns: list[int], limit: float) -> np.ndarray | None:
    """Columns `columns` of a block of lines of `width` fields as float64 (lines, len(columns)), C
    order; None unless every one of those cells is a finite number within +-limit and every line
    has `width` fields (then numpy's reader and the exact checks take the block). A blank line
    is a row of nulls to polars, so a block taken has one row per line.

    C order costs a transposing copy (1.3 ms a 4 MB block, Fortran order 0.5 ms), but gathering
    batches of rows from a Fortran-order block took predict 0.55 s instead of 0.05 s at 200k rows.
    """
    pl = _module()
    if not pl or not columns:
        return None
    schema, picked, others = _layout(pl, width, tuple(columns))
    try:
        frame = pl.read_csv(data, has_header=False, schema=schema, quote_char=None, comment_prefix=None)
    except Exception:   # polars raises several error types; every one means "not a clean block"
        return None
    # a column not asked for is read as text, unparsed, so a short row still shows there (a null)
    if others and frame.select(others).null_count().sum_horizontal().item():
        return None
    values = (frame if picked is None else frame.select(picked)).to_numpy(order="c")
    if values.dtype != np.float64 or values.shape != (frame.height, len(columns)):
        return None
    # NaN (a null, or the word nan) and inf both fail these; numpy's path treats them exactly
    if not (values.max() <= limit and values.min() >= -limit):
        return None
    return values


_layouts: dict = {}


def _layout(pl, width: int, columns: tuple[int, ...]):
    """(schema, the columns to select or None for all in order, the text columns) for a block
    shape, made once: building a 256-column schema and selection cost 1 ms a block."""
    key = (width, columns)
    if key not in _layouts:
        names = [f"c{j}" for j in range(width)]
        wanted = set(columns)
        schema = {n: (pl.Float64 if j in wanted else pl.String) for j, n in enumerate(names)}
        picked = None if list(columns) == list(range(width)) else [names[j] for j in columns]
        _layouts[key] = schema, picked, [n for j, n in enumerate(names) if j not in wanted]
    return _layouts[key]
