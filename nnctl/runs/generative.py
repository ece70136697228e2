"""An autoencoder or VAE read back from a run: encode rows to codes, decode codes, sample the prior.

Inputs and outputs are in the data's own units: the checkpoint's [0, 1] scaling (its
standardizer) is applied on the way in and undone on the way out, and reconstructions pass
through the loss's output activation (binary_cross_entropy's sigmoid) first.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnctl.engine.metrics import GENERATIVE_TASKS
from nnctl.errors import DataError, NnctlError
from nnctl.fileio import open_regular, shown
from nnctl.runs.model import LoadedModel

LATENT_MAX_BYTES = 1 << 30   # a codes file bigger than this is not one a person meant to decode


def autoencoder_of(lm: LoadedModel, command: str, needs_prior: bool = False):
    """The model's autoencoder layer; a supervised run (or, for sampling, a plain autoencoder) is an error."""
    if lm.task not in GENERATIVE_TASKS:
        raise NnctlError(f"{command}: {lm.path} is a {lm.task} model; {command} needs a run trained with "
                         "task: autoencoder or vae")
    if needs_prior and lm.task != "vae":
        raise NnctlError(f"{command}: {lm.path} is a plain autoencoder, which has no prior to draw from; "
                         "train with task: vae, or decode codes of your own with nnctl decode")
    return lm.model.layers[0]


def unscale_inputs(lm: LoadedModel, flat: np.ndarray) -> np.ndarray:
    """Flattened scaled inputs or reconstructions (N, D) back in the data's units."""
    if lm.standardizer is None:
        return flat
    return flat * lm.standardizer.scale.reshape(-1) + lm.standardizer.mean.reshape(-1)


def encode(lm: LoadedModel, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Codes (N, latent) of raw rows x (N, *input_shape): the posterior mean for a VAE."""
    ae = autoencoder_of(lm, "encode")
    out = np.empty((len(x), ae.latent), dtype=lm.dtype)
    for start in range(0, len(x), batch_size):
        xb = np.asarray(x[start:start + batch_size], dtype=lm.dtype)
        if lm.standardizer is not None:
            xb = lm.standardizer.transform(xb)
        out[start:start + len(xb)] = ae.encode(xb)
    return out


def decode(lm: LoadedModel, z: np.ndarray, batch_size: int) -> np.ndarray:
    """Samples (N, *input_shape) in the data's units from codes z (N, latent)."""
    ae = autoencoder_of(lm, "decode")
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != ae.latent:
        raise DataError(f"decode: codes must have shape (N, {ae.latent}) for this model's latent size "
                        f"{ae.latent}, got {list(z.shape)}")
    if z.dtype.kind not in "fiu" or not np.all(np.isfinite(z)):
        raise DataError("decode: codes must be finite numbers")
    out = np.empty((len(z),) + tuple(lm.input_shape), dtype=np.float64)
    flat = out.reshape(len(z), -1)
    for start in range(0, len(z), batch_size):
        recon = lm.loss.output(ae.decode(z[start:start + batch_size].astype(lm.dtype))).astype(np.float64)
        flat[start:start + len(recon)] = unscale_inputs(lm, recon)
    return out


def sample(lm: LoadedModel, n: int, seed: int, batch_size: int) -> np.ndarray:
    """n draws from the VAE's prior N(0, I), decoded: (n, *input_shape) in the data's units.

    The codes come from their own Generator seeded with `seed`, so the same (run, n, seed)
    always gives the same samples, and the first k of n are the samples of n = k.
    """
    ae = autoencoder_of(lm, "sample", needs_prior=True)
    if n < 1:
        raise NnctlError(f"sample: -n must be >= 1, got {n}")
    z = np.random.default_rng(seed).standard_normal((n, ae.latent))
    return decode(lm, z, batch_size)


def rows_to_encode(lm: LoadedModel, value: str) -> np.ndarray:
    """The rows `nnctl encode` reads, raw (encode scales them): image files or a folder of them,
    decoded with the run's own data.image_size and data.color, or a file or built-in dataset
    as `eval --data` reads it."""
    from nnctl.data.images import is_image
    path = Path(value)
    if path.is_dir() or (path.is_file() and is_image(path)):
        from nnctl.data.images import read_images_to_predict
        data = lm.meta["config"].get("data") or {}
        x, _ = read_images_to_predict(path, data.get("image_size"), data.get("color", "grayscale"))
        if tuple(x.shape[1:]) != tuple(lm.input_shape):
            raise DataError(f"{path.name}: images are {list(x.shape[1:])} (C, H, W), the model expects "
                            f"{list(lm.input_shape)}")
        return x
    from nnctl.runs.sources import data_source
    split = data_source(lm, value, need_targets=False).split
    return split.features()


def read_codes(path: Path) -> np.ndarray:
    """Codes from a .npy file (N, latent), read without pickles."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise DataError(f"{shown(path)}: codes must be a .npy file (as nnctl encode --out writes)")
    try:
        with open_regular(path, DataError) as f:
            size = os.fstat(f.fileno()).st_size
            if size > LATENT_MAX_BYTES:
                raise DataError(f"{shown(path)}: {size:,} bytes is more than {LATENT_MAX_BYTES:,} for a codes file")
            return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{shown(path)}: not a readable .npy array ({err})") from None
