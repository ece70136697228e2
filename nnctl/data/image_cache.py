"""Decode an image folder once: its pixels kept as a uint8 .npy in the cache folder, memory-mapped by later loads.

Decoding PNG/JPEG files is the slow part of reading an image folder (a 50,000-file folder takes
minutes), and every run and every sweep trial would otherwise repeat it. The first load writes
the decoded pixels, uint8 (N, C, H, W), to `<cache dir>/images/<key>.npy`; later loads map
that file instead of opening a single image.

The key is a SHA-256 over what decides the pixels: each file's path relative to the folder,
its size and modification time (ns), and the image_size and color options. Editing, adding,
removing or renaming an image changes the key, so a stale cache is never read; it is simply
no longer used (delete the cache folder to reclaim the space).

Entries live under <root>/images/, root being the folder `data.cache` names (auto:
NNCTL_CACHE_DIR, else $XDG_CACHE_HOME/nnctl, else ~/.cache/nnctl; see table_cache.cache_root),
beside the parsed-table cache. A cache that cannot be written (read-only home, full disk) is skipped silently: it only ever
saves time, never changes a result.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

# Bump when the layout or the decoding changes, so old entries are not read.
FORMAT = 1


def cache_key(paths: list[Path], root: Path, image_size, color: str) -> str:
    """Hex digest of the file list (relative paths, sizes, mtimes) and the decoding options."""
    h = hashlib.sha256(f"nnctl-images {FORMAT} {list(image_size) if image_size else None} {color}\n".encode())
    for p in paths:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_pixels(root: Path, key: str) -> np.ndarray | None:
    """The uint8 (N, C, H, W) pixels stored under `key`, memory-mapped, or None if absent or unreadable."""
    path = Path(root) / "images" / f"{key}.npy"
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return x if x.dtype == np.uint8 and x.ndim == 4 else None


def write_pixels(root: Path, key: str, n: int, images: Iterator[np.ndarray]) -> np.ndarray | None:
    """Write n uint8 (C, H, W) images into the entry `key`, one at a time, and return it mapped.

    The .npy is written image by image (memory holds one image, not the folder), under a
    temporary name renamed into place when complete, so a reader
    never sees half a file. Returns None, having consumed nothing, if the cache folder cannot
    be created; None too if writing fails midway (a full disk); a DataError from `images`
    (an unreadable file) propagates, and the partial file is removed either way.
    """
    folder = Path(root) / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        os.close(fd)
    except OSError:
        return None
    try:
        # plain writes, not a writable memmap: a full disk is then an OSError, not a SIGBUS
        with open(tmp, "wb") as f:
            first = next(images)
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n,) + first.shape})
            f.write(first.tobytes())
            for image in images:
                f.write(image.tobytes())   # C order, also for a transposed view
        os.replace(tmp, folder / f"{key}.npy")
        tmp = None
    except OSError:
        return None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return cached_pixels(root, key)
