"""A CSV's columns in chunks, for inputs of any length (predict): the training parser's blocks, not kept.

Each chunk is one block of the file (files.BLOCK_BYTES of text) parsed by numpy's C reader,
with the same cell checks and messages as training (files.BlockParser); memory is one
block's text and numbers, whatever the file's length.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nnctl.data.files import BlockParser, is_blank, open_csv


def csv_chunks(path: Path, name: str, numeric: list[str], text: list[str], dtype,
               check: Callable[[list[str]], None] | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, list[str]]]]:
    """(file lines (n,), float64 (n, len(numeric)) with NaN where missing, {text column: cells}) per block.

    numeric: columns that must hold numbers (a text cell is an error naming it); text:
    columns handed back as their cells, unchecked. check(header) runs before any row is read
    (it may raise, e.g. for a missing column). Every row must have the header's fields.
    """
    blocks, header, chunks = open_csv(Path(path), name)
    try:
        if check is not None:
            check(header)
        parser = BlockParser(name, chunks, header, numeric, None, set(numeric), set(text), list(text), dtype)
        yield from parser.chunks()
    finally:
        blocks.close()


def head_records(path: Path, n: int) -> list[list[str]]:
    """Up to n non-blank records after the header, or fewer if the file is shorter or unreadable
    there (the full parse then names the problem): a peek to guess columns from."""
    out: list[list[str]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header_seen = False
            for record in csv.reader(f):
                if is_blank(record):
                    continue
                if header_seen:
                    out.append(record)
                    if len(out) >= n:
                        break
                header_seen = True
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return out
