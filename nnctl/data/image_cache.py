"""Decode an image folder once: its pixels kept as a uint8 .npy in the cache folder, memory-mapped by later loads.

Decoding PNG/JPEG files is the slow part of reading an image folder (a 50,000-file folder takes
minutes), and every run and every sweep trial would otherwise repeat it. The first load writes
the decoded pixels, uint8 (N, C, H, W), to `<root>/images/<slot>-<content>.npy`; later loads
map that file instead of opening a single image.

The content part is a SHA-256 over what decides the pixels: each file's path relative to the
folder, its size and modification time (ns), and the image_size and color options. Editing,
adding, removing or renaming an image changes it, so a stale entry is never read; the new
entry replaces the old one of its slot (the folder's real path and the options).

<root> is the folder `data.cache` names (auto: NNCTL_CACHE_DIR, else $XDG_CACHE_HOME/nnctl,
else ~/.cache/nnctl; see table_cache.cache_root), beside the parsed-table cache. A cache that
cannot be written (read-only home, full disk) is skipped silently: it only ever saves time,
never changes a result.
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
    """"<slot>-<content>": slot, a digest of the folder's real path and the decoding options;
    content, of the file list (relative paths, sizes, mtimes) too.

    One slot holds one entry: a folder edited ten times leaves one cached copy, not ten
    (write_pixels removes the slot's older contents), while a sweep over image_size keeps
    one per size.
    """
    options = f"nnctl-images {FORMAT} {list(image_size) if image_size else None} {color}\n"
    slot = hashlib.sha256(f"{options}{Path(root).resolve()}".encode()).hexdigest()[:16]
    h = hashlib.sha256(options.encode())
    for p in paths:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{slot}-{h.hexdigest()}"


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
        _drop_older(folder, key)
    except OSError:
        return None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return cached_pixels(root, key)


def _drop_older(folder: Path, key: str) -> None:
    """Remove the other entries of key's slot: earlier contents of the same folder and options.

    A process still mapping one keeps reading it (an unlinked file lives on while mapped).
    """
    slot = key.split("-", 1)[0]
    for old in folder.glob(f"{slot}-*.npy"):
        if old.name != f"{key}.npy":
            try:
                old.unlink()
            except OSError:
                pass


def image_entries(root: Path) -> list[dict]:
    """One dict per decoded folder under root/images: file, images, shape (C, H, W) or None if
    unreadable, bytes, built (epoch s). For `nnctl cache list`."""
    folder = Path(root) / "images"
    out = []
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.npy")):
        try:
            st = p.stat()
        except OSError:
            continue
        x = cached_pixels(root, p.stem)
        out.append({"file": p, "images": None if x is None else len(x),
                    "shape": None if x is None else tuple(x.shape[1:]), "bytes": st.st_size, "built": st.st_mtime})
    return out


def clear_images(root: Path) -> tuple[int, int]:
    """Remove every decoded folder (and partial writes) under root/images; (entries, bytes) removed."""
    folder = Path(root) / "images"
    count = total = 0
    if not folder.is_dir():
        return 0, 0
    for p in folder.iterdir():
        if p.is_file() and p.suffix in (".npy", ".part"):
            try:
                size = p.stat().st_size
                p.unlink()
            except OSError:
                continue
            total += size
            count += p.suffix == ".npy"
    return count, total
