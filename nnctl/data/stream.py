"""A CSV's columns in chunks, for inputs of any length (predict): the training parser's blocks, not kept.

Each chunk is one block of the file (files.BLOCK_BYTES of text) parsed as in training
(files.BlockParser: polars or numpy's C reader, the same cell checks and messages); memory
is a few blocks' text and numbers, whatever the file's length.

With polars, a second thread parses the next block while the caller works on this one:
polars releases the GIL while it parses, so parsing overlaps predict's forward pass and
writing (numpy's reader holds the GIL, so without polars there is nothing to overlap).
"""
from __future__ import annotations

import csv
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nnctl.data import fast_csv
from nnctl.data.files import BlockParser, is_blank, open_csv

# blocks parsed ahead of the caller, besides the one being parsed: memory is a few blocks
AHEAD = 1


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
        fast = fast_csv.used_for(blocks.size)
        parser = BlockParser(name, chunks, header, numeric, None, set(numeric), set(text), list(text), dtype, fast)
        yield from (parsed_ahead(parser.chunks()) if fast else parser.chunks())
    finally:
        blocks.close()


def parsed_ahead(chunks: Iterator) -> Iterator:
    """The items of `chunks`, produced by a second thread up to AHEAD items ahead.

    An error in that thread is raised here, at the item where it happened. When the caller
    stops early (an error of its own, Ctrl-C, a closed pipe), the thread is told to stop and
    joined before this returns, so the file is not closed under it; it finishes at most the
    block it is parsing.
    """
    done = object()
    items: queue.Queue = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def hand(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in chunks:
                if not hand((None, item)):
                    return
            hand((None, done))
        except BaseException as err:   # handed over and raised in the caller's thread
            hand((err, None))

    worker = threading.Thread(target=produce, name="nnctl-csv-ahead", daemon=True)
    worker.start()
    try:
        while True:
            err, item = items.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


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
