"""Decode an image folder once: its pixels kept as a uint8 .npy in the cache folder, memory-mapped by later loads.

Decoding PNG/JPEG files is the slow part of reading an image folder (a 50,000-file folder takes
minutes), and every run and every sweep trial would otherwise repeat it. The first load writes
the decoded pixels, uint8 (N, C, H, W), to `<cache dir>/images/<key>.npy`; later loads map
that file instead of opening a single image.

The key is a SHA-256 over what decides the pixels: each file's path relative to the folder,
its size and modification time (ns), and the image_size and color options. Editing, adding,
removing or renaming an image changes the key, so a stale cache is never read; it is simply
no longer used (delete the cache folder to reclaim the space).

The cache folder is NNCTL_CACHE_DIR if set, else $XDG_CACHE_HOME/nnctl, else ~/.cache/nnctl.
A cache that cannot be written (read-only home, full disk) is skipped silently: it only ever
saves time, never changes a result.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

# Bump when the layout or the decoding changes, so old entries are not read.
FORMAT = 1


def cache_dir() -> Path:
    """Where nnctl keeps caches: NNCTL_CACHE_DIR, else $XDG_CACHE_HOME/nnctl, else ~/.cache/nnctl."""
    if os.environ.get("NNCTL_CACHE_DIR"):
        return Path(os.environ["NNCTL_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nnctl"
    return Path.home() / ".cache" / "nnctl"


def cache_key(paths: list[Path], root: Path, image_size, color: str) -> str:
    """Hex digest of the file list (relative paths, sizes, mtimes) and the decoding options."""
    h = hashlib.sha256(f"nnctl-images {FORMAT} {list(image_size) if image_size else None} {color}\n".encode())
    for p in paths:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_pixels(key: str) -> np.ndarray | None:
    """The uint8 (N, C, H, W) pixels stored under `key`, memory-mapped, or None if absent or unreadable."""
    path = cache_dir() / "images" / f"{key}.npy"
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return x if x.dtype == np.uint8 and x.ndim == 4 else None


def store_pixels(key: str, pixels: np.ndarray) -> None:
    """Write uint8 pixels under `key` atomically (a reader never sees half a file); failures are ignored."""
    folder = cache_dir() / "images"
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(pixels, dtype=np.uint8), allow_pickle=False)
        os.replace(tmp, folder / f"{key}.npy")
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
