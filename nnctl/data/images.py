"""Image folders: one subfolder per class of PNG/JPEG files, decoded with Pillow (the `images` extra).

The layout of Keras' `image_dataset_from_directory` and torchvision's `ImageFolder`:

    digits_png/0/a.png  digits_png/0/b.png  digits_png/1/c.png ...

A model sees (N, C, H, W) values in [0, 1] (C = 1 for grayscale, 3 for rgb), resized to
`image_size` [H, W] when given (otherwise every image must already have one size). A training
folder is held as uint8 pixels (a memmap of the decode cache) that each batch divides by 255,
so memory holds the batches, not the folder as floats; files to predict are decoded to
float32 directly. Files
are read in sorted order (class folders, then file names), so the rows do not depend on the
file system's listing order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from nnctl.data.files import RawData
from nnctl.data.targets import CLASSIFICATION
from nnctl.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLORS = ("grayscale", "rgb")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError('Pillow is not installed: pip install -e ".[images]"') from None
    return Image


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def _decode_one(Image, p: Path, mode: str, size) -> np.ndarray:
    """One file as uint8 (H, W) or (H, W, 3); Pillow's errors propagate."""
    with Image.open(p) as im:
        im = im.convert(mode)
        if size is not None and im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def decoded(paths: list[Path], image_size, color: str, root: Path) -> Iterator[np.ndarray]:
    """Each file as uint8 (C, H, W), in order; a file that is not a readable image, or whose size
    differs from the first one's, is a DataError naming it."""
    Image = _pil()
    mode = "L" if color == "grayscale" else "RGB"
    size = None if image_size is None else (int(image_size[1]), int(image_size[0]))   # Pillow: (W, H)
    first = None
    for p in paths:
        shown = p.relative_to(root) if p.is_relative_to(root) else p
        try:
            a = _decode_one(Image, p, mode, size)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{shown}: not a readable image ({type(err).__name__}: {err})") from None
        if first is None:
            first = (a.shape, shown)
        elif a.shape != first[0]:
            raise DataError(f"{shown}: image is {a.shape[1]}x{a.shape[0]}, {first[1]} is "
                            f"{first[0][1]}x{first[0][0]}; set data.image_size: [H, W] to resize them all")
        yield a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_pixels(paths: list[Path], image_size, color: str, root: Path) -> np.ndarray:
    """uint8 (N, C, H, W) in memory (C-contiguous: a batch gather from a strided view is ~10x slower)."""
    return np.stack(list(decoded(paths, image_size, color, root)))


# uint8 pixels over this are the [0, 1] values a model sees
PIXEL_MAX = 255.0


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (exactly v / 255 in float32, cached or not)."""
    return np.asarray(pixels, dtype=np.float32) / np.float32(PIXEL_MAX)


def decode(paths: list[Path], image_size, color: str, root: Path) -> np.ndarray:
    """float32 (N, C, H, W) in [0, 1] (files to predict: decoded every time, never cached)."""
    return to_unit(decode_pixels(paths, image_size, color, root))


def load_pixels(paths: list[Path], image_size, color: str, root: Path, cache_root: Path | None) -> np.ndarray:
    """uint8 (N, C, H, W). With a `cache_root` (data.cache), a memmap of the decode cache; files
    (names, sizes, mtimes) never decoded with these options are decoded straight into a new
    cache file (see image_cache), so neither the first load nor training holds the folder in
    memory. Without one (data.cache: off), decoded into memory."""
    if cache_root is None:
        return decode_pixels(paths, image_size, color, root)
    from nnctl.data.image_cache import cache_key, cached_pixels, write_pixels
    key = cache_key(paths, root, image_size, color)
    pixels = cached_pixels(cache_root, key)
    if pixels is not None and len(pixels) == len(paths):
        return pixels
    pixels = write_pixels(cache_root, key, len(paths), decoded(paths, image_size, color, root))
    # None: the cache folder could not be written; decode into memory instead
    return pixels if pixels is not None else decode_pixels(paths, image_size, color, root)


def class_folders(path: Path, name: str) -> list[tuple[Path, list[Path]]]:
    """(class subfolder, its image files) of an image folder, sorted by class name; a folder with no
    class subfolders, or a class without images, is an error."""
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{name}: an image folder needs one subfolder per class (e.g. {name}/cat/*.png)")
    out = []
    for c in classes:
        files = image_files(c)
        if not files:
            raise DataError(f"{name}/{c.name}: no .png or .jpg images in this class folder")
        out.append((c, files))
    return out


def read_image_folder(path: Path, image_size, color: str, name: str, cache_root: Path | None = None) -> RawData:
    """A folder with one subfolder per class -> RawData with x uint8 (N, C, H, W) pixels (0-255, a
    Split divides them by 255) and the class names as labels."""
    paths, labels = [], []
    for c, files in class_folders(path, name):
        paths += files
        labels += [c.name] * len(files)
    x = load_pixels(paths, image_size, color, path, cache_root)
    return RawData(x=x, y=np.asarray(labels, dtype=str), feature_names=None, target_name=None,
                   source=name, task=CLASSIFICATION)


def read_images_to_predict(path: Path, image_size, color: str) -> tuple[np.ndarray, list[str]]:
    """One image file, or every image under a folder (recursively, sorted): x and the files' paths."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p))
        if not files:
            raise DataError(f"{path}: no .png or .jpg images in this folder")
    else:
        files = [path]
    return decode(files, image_size, color, path if path.is_dir() else path.parent), [str(p) for p in files]
