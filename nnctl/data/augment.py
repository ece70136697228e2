"""Data augmentation declared in YAML: seeded transforms of training batches, vectorized over the batch.

A spec lists transforms under `data.augment`, run in that order on every training batch
(after standardization, so `noise.std` is in standardized units). Each transform is declared
once in `TRANSFORMS` with its options as `Param`s: the spec check, the README reference and
`describe()` all read those declarations.

Batches are arrays (N, *sample); the sample layout says which axes a transform may move:

    table      (N, F)          no spatial axis
    signals    (N, C, L)       moves L
    sequences  (N, T, F)       moves T
    images     (N, C, H, W)    moves H and W

Every draw comes from a Generator that is a pure function of (seed, epoch, step) (see
EpochStreams), so a batch is augmented the same way in every run of the spec, including a
resumed one.
mixup and cutmix mix pairs of samples and turn the targets into soft targets: a
probability matrix (N, K) for cross_entropy, a probability (N,) for binary_cross_entropy,
or mixed values for a regression loss (only with `allow_regression: true`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nnctl.hparams import Param, Registry, unknown_name_message

TRANSFORMS = Registry("augmentation")

# The stream number inside default_rng([seed, stream, epoch, step]): 0 is the model, 1 the shuffle.
AUGMENT_STREAM = 2


@dataclass(frozen=True)
class Layout:
    """How a sample's axes are read. Axes here are batch axes (0 is N)."""

    name: str
    shape: str                  # "(N, C, H, W)"
    spatial: tuple[int, ...]    # the axes shift/crop/flip/cutout/cutmix move
    features: int | None        # the axis feature_dropout zeroes along
    names: tuple[str, ...]      # the name of each sample axis (batch axes 1..)

    @property
    def rank(self) -> int:
        return len(self.names)

    def axis_names(self, axes: tuple[int, ...]) -> str:
        return ", ".join(self.names[a - 1] for a in axes)


LAYOUTS = {
    "table": Layout("table", "(N, F)", (), 1, ("F",)),
    "signals": Layout("signals", "(N, C, L)", (2,), None, ("C", "L")),
    "sequences": Layout("sequences", "(N, T, F)", (1,), 2, ("T", "F")),
    "images": Layout("images", "(N, C, H, W)", (2, 3), None, ("C", "H", "W")),
}

# A model's first layer tells how a 2-D sample is read: conv1d/pool1d take (C, L), the
# recurrent and attention layers (T, F).
_SIGNAL_LAYERS = ("conv1d", "maxpool1d", "avgpool1d")
_SEQUENCE_LAYERS = ("simple_rnn", "gru", "lstm", "multi_head_attention", "transformer_block",
                    "transformer_encoder", "sinusoidal_encoding", "positional_embedding")

P = Param("float", 1.0, ge=0.0, le=1.0, doc="probability that a sample is transformed")
FILL = Param("str", "zero", choices=("zero", "edge", "wrap"),
             doc="what enters at the border: zero (the mean, after standardization), edge (repeat), wrap")


def _p(default: float) -> Param:
    return Param("float", default, ge=0.0, le=1.0, doc="probability that a sample is transformed")


class Transform:
    """Base class: declared PARAMS, the layouts it fits, `apply(x, y, rng)`.

    `apply` changes x (N, *sample) in place and returns the targets: y unchanged, or for a
    mixing transform (MIXES) the soft targets mixed like x.

    Notes
    -----
    Augmentation runs once per training batch, so it is written for small batches where
    Python overhead and allocation cost as much as arithmetic: a transform draws all its
    per-sample numbers in one call (row 0 decides p unless p is 1, `draws()` more rows feed
    its parameters),
    works on the whole batch in place (a sample that p leaves alone gets the identity
    parameters: offset 0, angle 0, factor 1, noise 0, an empty box, a partner share 0;
    only flip copies out the samples it mirrors), keeps its scratch arrays between
    batches (`kept`), and returns at once when p picks no sample. Gathers call the
    ndarray method `a.take(...)`, not np.take, whose Python wrapper costs ~0.5 us a call.
    """

    NAME = "transform"
    PARAMS: dict[str, Param] = {"p": P}
    FITS: tuple[str, ...] = tuple(LAYOUTS)
    MIXES = False

    def __init__(self, layout: Layout, **options: Any):
        self.layout = layout
        self.options = options
        for key, value in options.items():
            setattr(self, key, value)
        self._kept: dict[tuple, np.ndarray] = {}

    def check(self, input_shape: tuple[int, ...]) -> tuple[str, str] | None:
        """(option, message) if the options do not fit samples of this shape, else None."""
        return None

    def moves(self) -> str:
        """Which axes it changes, for `describe`."""
        return "values"

    def draws(self) -> int:
        """How many uniforms each sample needs besides the one that decides p."""
        return 0

    def kept(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The array stored under key, made by make() the first time: a batch's shape repeats
        every step (and the last batch's every epoch), so scratch space is allocated once."""
        found = self._kept.get(key)
        if found is None:
            found = self._kept[key] = make()
        return found

    def apply(self, x: np.ndarray, y: Any, rng: np.random.Generator) -> Any:
        if self.p == 1:                           # no row to decide p: a draw saved on every batch
            draws = self.draws()
            return self.run(x, y, None, rng.random((draws, len(x))) if draws else _NO_DRAWS, rng)
        u = rng.random((self.draws() + 1, len(x)))
        active = u[0] < self.p
        if not active.any():
            return y
        return self.run(x, y, active, u[1:], rng)

    def run(self, x: np.ndarray, y: Any, active: np.ndarray | None, u: np.ndarray,
            rng: np.random.Generator) -> Any:
        """Transform the batch in place: active (n,) bool marks the samples p picked (None: all);
        u (draws, n) uniforms in [0, 1) for the per-sample parameters."""
        raise NotImplementedError


_NO_DRAWS = np.empty((0, 0))


def _fresh(key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
    """`Transform.kept` for a one-off call: nothing is kept."""
    return make()


def _length(value: float, size: int) -> int:
    """A length in samples: value itself if >= 1, else that fraction of `size` (rounded)."""
    return int(value) if value >= 1 else int(round(value * size))


def _whole_or_fraction(name: str, value: float) -> tuple[str, str] | None:
    if value >= 1 and value != int(value):
        return name, f"must be a whole number of samples or a fraction < 1, got {value:g}"
    return None


def _per_sample(values: np.ndarray, ndim: int, dtype) -> np.ndarray:
    """values (n,) as dtype, shaped (n, 1, ...) to broadcast over samples of rank ndim - 1."""
    return values.astype(dtype, copy=False).reshape((-1,) + (1,) * (ndim - 1))


def shift_samples(x: np.ndarray, axes: tuple[int, ...], offsets: list[np.ndarray], margins: list[int],
                  fill: str, kept: Callable = _fresh) -> None:
    """Shift every sample of x in place by its own offset along each of `axes`:
    out[n, .., i, ..] = x[n, .., i - offsets[k][n], ..] along axes[k], with |offsets[k]| <= margins[k].

    Notes
    -----
    One gather for all axes: x is copied into the middle of an array padded by the margins
    (its border stays zero: fill zero reads it), and every output element reads the padded
    array at a flat index = a part fixed by the shape (batch and channel axes, kept) plus
    one per-sample term per shifted axis. Fill edge clips and wrap folds the source
    position inside the copy instead of reading the border.
    """
    shape = x.shape
    padded_shape = list(shape)
    inner = [slice(None)] * x.ndim
    for axis, m in zip(axes, margins):
        padded_shape[axis] += 2 * m
        inner[axis] = slice(m, m + shape[axis])
    padded = kept(("padded", tuple(padded_shape), x.dtype), lambda: np.zeros(padded_shape, x.dtype))
    np.copyto(padded[tuple(inner)], x)
    strides = [s // padded.itemsize for s in padded.strides]

    def fixed() -> np.ndarray:
        part = np.zeros([1 if a in axes else size for a, size in enumerate(shape)], dtype=np.intp)
        for a, size in enumerate(shape):
            if a not in axes:
                view = [1] * x.ndim
                view[a] = size
                part += (np.arange(size) * strides[a]).reshape(view)
        return part

    index = kept(("index", shape), lambda: np.empty(shape, dtype=np.intp))
    total = kept(("fixed", shape, tuple(padded_shape)), fixed)
    for axis, off, m in zip(axes, offsets, margins):
        size = shape[axis]
        src = np.arange(size) - off[:, None]               # (n, size): where each output reads
        if fill == "wrap":
            src %= size
        elif fill == "edge":
            np.clip(src, 0, size - 1, out=src)
        src += m
        src *= strides[axis]
        view = [1] * x.ndim
        view[0], view[axis] = shape[0], size
        np.add(total, src.reshape(view), out=index)
        total = index
    # mode="clip": the indices are in range by construction, and "raise" would buffer `out`
    padded.reshape(-1).take(index, None, x, "clip")


def _boxes(layout: Layout, shape: tuple[int, ...], lengths: np.ndarray, u: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Random boxes clipped to the sample: a mask over the spatial axes and each box's area fraction.

    lengths (k, n): the box's side along each of the k spatial axes (0: no box); u (k, n)
    uniforms place its centre uniformly over each axis (the box may stick out and is
    clipped, as in cutout's paper).
    Returns mask (n, 1.., *spatial sizes) bool, broadcastable against x, and area (n,) in [0, 1].
    """
    n = shape[0]
    mask = None
    area = np.ones(n)
    for j, axis in enumerate(layout.spatial):
        size = shape[axis]
        lo = (u[j] * size).astype(np.int32) - (lengths[j] // 2).astype(np.int32)
        # pos - lo read as unsigned is below the length only inside [lo, lo + length):
        # one compare, and no clipping (what sticks out matches no position)
        offset = np.arange(size, dtype=np.int32) - lo[:, None]
        view = [1] * len(shape)
        view[0], view[axis] = n, size
        inside = (offset.view(np.uint32) < lengths[j][:, None].astype(np.uint32)).reshape(view)
        mask = inside if mask is None else mask & inside
        area *= np.maximum(np.minimum(lo + lengths[j], size) - np.maximum(lo, 0), 0) / size
    return mask, area


# -- geometric transforms -----------------------------------------------------------------

@TRANSFORMS.register("shift")
class Shift(Transform):
    """Random translation along every spatial axis, a whole number of samples each way.

    Notes
    -----
    Each chosen sample draws an offset s uniformly from -m..m per spatial axis (m = max, or
    round(max * length) for a fraction < 1); out[i] = x[i - s], so a one-hot pixel moves by s.
    """

    PARAMS = {
        "max": Param("float", 2, gt=0, doc="largest shift in samples, or a fraction < 1 of each axis"),
        "fill": FILL,
        "p": P,
    }
    FITS = ("signals", "sequences", "images")

    def check(self, input_shape):
        bad = _whole_or_fraction("max", self.max)
        if bad:
            return bad
        for axis in self.layout.spatial:
            size = input_shape[axis - 1]
            m = _length(self.max, size)
            if m >= size:
                return "max", f"{m} samples is not smaller than axis {self.layout.names[axis - 1]} ({size})"
        return None

    def moves(self):
        return f"{self.layout.axis_names(self.layout.spatial)} by up to {self.max:g}, {self.fill} fill"

    def draws(self):
        return len(self.layout.spatial)

    def run(self, x, y, active, u, rng):
        margins = [_length(self.max, x.shape[a]) for a in self.layout.spatial]
        offsets = [(u[j] * (2 * m + 1)).astype(np.intp) - m for j, m in enumerate(margins)]
        if active is not None:
            for off in offsets:
                off *= active
        shift_samples(x, self.layout.spatial, offsets, margins, self.fill, self.kept)
        return y


@TRANSFORMS.register("crop")
class Crop(Shift):
    """Pad every spatial axis by `padding`, then crop a random window of the original size.

    Notes
    -----
    A window at offset o in 0..2*padding of the padded sample is the sample shifted by
    padding - o, so this is `shift` with max = padding (the CIFAR recipe with zero padding).
    """

    PARAMS = {
        "padding": Param("float", 2, gt=0, doc="padding in samples, or a fraction < 1 of each axis"),
        "fill": FILL,
        "p": P,
    }

    def __init__(self, layout, **options):
        super().__init__(layout, **options)
        self.max = self.padding

    def check(self, input_shape):
        bad = super().check(input_shape)
        return ("padding", bad[1]) if bad else None

    def moves(self):
        return f"{self.layout.axis_names(self.layout.spatial)}: pad {self.padding:g} ({self.fill}), crop back"


@TRANSFORMS.register("flip")
class Flip(Transform):
    """Mirror along one spatial axis (default the last: images horizontally, signals in time)."""

    PARAMS = {
        "axis": Param("int", None, nullable=True,
                      doc="sample axis to mirror (-1: last); null: the last spatial axis"),
        "p": _p(0.5),
    }
    FITS = ("signals", "sequences", "images")

    def _axis(self) -> int:
        """The batch axis mirrored."""
        if self.axis is None:
            return self.layout.spatial[-1]
        return self.axis % self.layout.rank + 1

    def check(self, input_shape):
        rank = self.layout.rank
        if self.axis is not None and not -rank <= self.axis < rank:
            return "axis", f"{self.axis} is not an axis of {self.layout.name} samples ({', '.join(self.layout.names)})"
        if self._axis() not in self.layout.spatial:
            spatial = ", ".join(f"{a - 1 - rank} ({self.layout.names[a - 1]})" for a in self.layout.spatial)
            return "axis", (f"{self.axis} is axis {self.layout.names[self._axis() - 1]} of {self.layout.name} "
                            f"{self.layout.shape}; flip a spatial axis: {spatial}")
        return None

    def moves(self):
        return f"mirrors {self.layout.names[self._axis() - 1]}"

    def run(self, x, y, active, u, rng):
        axis = self._axis()
        if active is None:
            x[...] = np.flip(x, axis=axis)        # numpy copies an overlapping right side first
        else:
            x[active] = np.flip(x[active], axis=axis)
        return y


@TRANSFORMS.register("rotate")
class Rotate(Transform):
    """Rotate images by a random angle in [-degrees, degrees] about their centre, bilinear.

    Notes
    -----
    Output pixel (i, j) samples the input at the centre c plus R(-theta) (i - c_i, j - c_j),
    interpolating its four neighbours; neighbours outside the image count as 0 (fill: zero)
    or as the nearest border pixel (fill: edge).
    """

    PARAMS = {
        "degrees": Param("float", 10.0, gt=0, le=180, doc="largest rotation either way, in degrees"),
        "fill": Param("str", "zero", choices=("zero", "edge"), doc="value outside the image: zero or the nearest edge"),
        "p": P,
    }
    FITS = ("images",)

    def moves(self):
        return f"H, W: up to ±{self.degrees:g}°, bilinear, {self.fill} fill"

    def draws(self):
        return 1

    def run(self, x, y, active, u, rng):
        theta = np.deg2rad(self.degrees * (2 * u[0] - 1))
        if active is not None:
            theta *= active                       # angle 0 leaves a sample exactly as it is
        rotate_images(x, theta, self.fill, out=x, kept=self.kept)
        return y


def rotate_images(x: np.ndarray, theta: np.ndarray, fill: str = "zero", out: np.ndarray | None = None,
                  kept: Callable = _fresh) -> np.ndarray:
    """Images x (n, C, H, W) each rotated by its angle theta (n,) in radians, bilinear.

    Writes into `out` (default a new array; x itself works) and returns it. An angle of 0
    returns the image exactly.

    Notes
    -----
    x is copied into the middle of an array padded by B = the farthest a rotated source
    position can fall outside the image, plus 1, so the four neighbours of every source
    position are read by flat index without bounds checks: fill zero reads the zero border,
    fill edge clips rows and columns to the image first.
    """
    n, c, h, w = x.shape
    radius = math.hypot((h - 1) / 2, (w - 1) / 2)
    border = math.ceil(radius - min(h - 1, w - 1) / 2) + 1
    hp, wp = h + 2 * border, w + 2 * border
    padded = kept(("padded", x.shape, x.dtype), lambda: np.zeros((n, c, hp, wp), x.dtype))
    np.copyto(padded[:, :, border:border + h, border:border + w], x)
    base = kept(("base", x.shape), lambda: (np.arange(n)[:, None, None, None] * (c * hp * wp)
                                            + np.arange(c)[None, :, None, None] * (hp * wp)))
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    di = (np.arange(h) - (h - 1) / 2)[None, :, None]
    dj = (np.arange(w) - (w - 1) / 2)[None, None, :]
    si = (h - 1) / 2 + cos * di + sin * dj            # (n, h, w) source rows
    sj = (w - 1) / 2 - sin * di + cos * dj            # source columns
    i0, j0 = np.floor(si), np.floor(sj)
    fi = (si - i0).astype(x.dtype)[:, None]
    fj = (sj - j0).astype(x.dtype)[:, None]
    i0, j0 = i0.astype(np.intp), j0.astype(np.intp)
    if fill == "edge":
        rows = [np.minimum(np.maximum(i, 0), h - 1) + border for i in (i0, i0 + 1)]
        cols = [np.minimum(np.maximum(j, 0), w - 1) + border for j in (j0, j0 + 1)]
    else:
        rows, cols = [i0 + border, i0 + border + 1], [j0 + border, j0 + border + 1]
    flat = padded.reshape(-1)
    (a00, a01), (a10, a11) = [[flat[base + (r * wp + cl)[:, None]] for cl in cols] for r in rows]
    # bilinear as three interpolations: along columns in the two rows, then between the rows
    a01 -= a00
    a01 *= fj
    a00 += a01
    a11 -= a10
    a11 *= fj
    a10 += a11
    a10 -= a00
    a10 *= fi
    if out is None:
        out = np.empty_like(x)
    np.add(a00, a10, out=out)
    return out


# -- value transforms ---------------------------------------------------------------------

@TRANSFORMS.register("scale")
class Scale(Transform):
    """Multiply each sample's values by a factor drawn uniformly from [min, max] (signal amplitude)."""

    PARAMS = {
        "min": Param("float", 0.8, gt=0, doc="smallest factor"),
        "max": Param("float", 1.2, gt=0, doc="largest factor"),
        "p": P,
    }

    def check(self, input_shape):
        if self.min > self.max:
            return "min", f"{self.min:g} is larger than max ({self.max:g})"
        return None

    def moves(self):
        return f"every value × [{self.min:g}, {self.max:g}]"

    def draws(self):
        return 1

    def run(self, x, y, active, u, rng):
        factor = self.min + (self.max - self.min) * u[0]
        if active is not None:
            factor[~active] = 1
        x *= _per_sample(factor, x.ndim, x.dtype)
        return y


@TRANSFORMS.register("noise")
class Noise(Transform):
    """Add Gaussian noise of standard deviation `std` to every value (standardized units)."""

    PARAMS = {"std": Param("float", 0.1, gt=0, doc="standard deviation of the noise"), "p": P}

    def moves(self):
        return f"every value + N(0, {self.std:g}²)"

    def run(self, x, y, active, u, rng):
        noise = gaussian(rng, x.size, x.dtype, self.std, self.kept).reshape(x.shape)
        if active is not None:
            noise *= _per_sample(active, x.ndim, x.dtype)
        x += noise
        return y


def gaussian(rng: np.random.Generator, size: int, dtype, std: float, kept: Callable = _fresh) -> np.ndarray:
    """`size` draws from N(0, std^2) in dtype, by inverse-CDF sampling with 16-bit uniforms.

    Returns a view of a kept buffer (valid until the next call with the same kept).

    Notes
    -----
    Each value is std * q[k] for a uniform 16-bit k, q the 65536 midpoint quantiles of the
    standard normal (`normal_quantiles`): one raw draw of the bit generator gives four k,
    and one gather makes the values. The ziggurat (Generator.standard_normal) measured ~9 ns
    a value and Box-Muller ~7 us for a 64 x 32 batch; this ~3 us. The tails stop at 4.3 std,
    which augmentation noise never needs. The four k of a raw draw are read in the machine's
    byte order (the same draws on every little-endian machine).
    """
    dtype = np.dtype(dtype)
    table = _noise_table(kept, dtype, std)
    out = kept(("normals", size, dtype), lambda: np.empty(size, dtype))
    table.take(uniform16(rng, size), None, out, "clip")
    return out


def _noise_table(kept: Callable, dtype: np.dtype, std: float) -> np.ndarray:
    """The normal quantiles times std in dtype, kept."""
    return kept(("quantiles", dtype, std), lambda: (normal_quantiles() * std).astype(dtype))


def uniform16(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` uniform integers 0..65535 (uint16): four from each 64-bit draw of rng's bit generator."""
    return rng.bit_generator.random_raw(-(-size // 4)).view(np.uint16)[:size]


_QUANTILES: list[np.ndarray] = []


def normal_quantiles() -> np.ndarray:
    """The standard normal at the midpoints (k + 1/2) / 65536, k = 0..65535, scaled to variance 1
    (float64, made once: ~12 ms)."""
    if not _QUANTILES:
        _QUANTILES.append(midpoint_normals(65536))
    return _QUANTILES[0]


def midpoint_normals(levels: int) -> np.ndarray:
    """The standard normal at the midpoints (k + 1/2) / levels, k = 0..levels-1 (float64),
    symmetric about 0 and scaled to variance 1 (a single level is just 0)."""
    from statistics import NormalDist
    inv = NormalDist().inv_cdf
    half = np.array([inv((k + 0.5) / levels) for k in range(levels // 2)])
    q = np.concatenate([half, [0.0] * (levels % 2), -half[::-1]])
    if levels > 1:                              # the midpoints lose a little of the variance (~1e-4 at 65536)
        q /= np.sqrt(np.mean(q * q))
    return q


@TRANSFORMS.register("cutout")
class Cutout(Transform):
    """Zero a random square (images) or segment (signals, sequences) of side `size`, clipped at the border."""

    PARAMS = {
        "size": Param("float", 4, gt=0, doc="side in samples, or a fraction < 1 of each axis"),
        "p": _p(0.5),
    }
    FITS = ("signals", "sequences", "images")

    def check(self, input_shape):
        return _whole_or_fraction("size", self.size)

    def moves(self):
        return f"zeroes a {self.size:g}-sample box over {self.layout.axis_names(self.layout.spatial)}"

    def draws(self):
        return len(self.layout.spatial)

    def run(self, x, y, active, u, rng):
        sides = np.array([max(1, _length(self.size, x.shape[a])) for a in self.layout.spatial])
        lengths = sides[:, None] * (np.ones(len(x), np.intp) if active is None else active)
        box, _ = _boxes(self.layout, x.shape, lengths, u)
        x *= ~box
        return y


@TRANSFORMS.register("feature_dropout")
class FeatureDropout(Transform):
    """Zero each feature of each sample with probability p (tables; sequences: at every step).

    Unlike the dropout layer, the kept values are not rescaled: the model sees the same
    scale in training and evaluation.
    """

    PARAMS = {"p": Param("float", 0.1, ge=0.0, lt=1.0, doc="probability that a feature is zeroed (per sample)")}
    FITS = ("table", "sequences")

    def moves(self):
        return f"zeroes each F with probability {self.p:g}"

    def threshold(self) -> np.uint16:
        """A feature is dropped where its 16-bit uniform is below this: p in steps of 2^-16."""
        return np.uint16(min(round(self.p * 65536), 65535))

    def apply(self, x, y, rng):
        # p is per feature here, not per sample: one 16-bit uniform per (sample, feature)
        axis = self.layout.features
        shape = [1] * x.ndim
        shape[0], shape[axis] = len(x), x.shape[axis]
        shape = tuple(shape)
        keep = self.kept(("keep", shape), lambda: np.empty(shape, bool))
        np.greater_equal(uniform16(rng, keep.size).reshape(shape), self.threshold(), out=keep)
        x *= keep
        return y


# -- mixing transforms --------------------------------------------------------------------

ALLOW_REGRESSION = Param("bool", False, doc="also mix regression targets (off: an error with a regression loss)")


def _rotation(kept: Callable, n: int, k: int) -> np.ndarray:
    """The rows (i + k) mod n, i = 0..n-1: a view of a kept 0..n-1, 0..n-1 (no arithmetic per batch)."""
    return kept(("rotation", n), lambda: np.tile(np.arange(n), 2))[k:k + n]


class _Mix(Transform):
    """mixup and cutmix: each chosen sample takes a share of a random partner, and its targets alike.

    Notes
    -----
    Sample i's partner is sample (i + k) mod n of the batch, k uniform in 1..n-1: the
    batches are shuffled, so a random rotation pairs random samples, and a slice of a kept
    index array replaces a permutation. One lam ~ Beta(alpha, alpha) per batch, as in
    mixup's reference code; a sample p leaves alone keeps lam = 1. `paste` mixes the inputs
    and returns the partner share w (a number, or (n,)); the targets then become
    (1 - w) y_i + w y_partner.
    """

    MIXES = True

    def run(self, x, y, active, u, rng):
        n = len(x)
        k = 1 + int(rng.random() * (n - 1)) if n > 1 else 0
        lam = rng.beta(self.alpha, self.alpha)
        rows = _rotation(self.kept, n, k)
        other = self.kept(("partners", x.shape, x.dtype), lambda: np.empty_like(x))
        x.take(rows, 0, other, "clip")
        w = self.paste(x, other, lam, active, u)
        if y is None:
            return y
        mixed = y.take(rows, 0, self.kept(("targets", y.shape, y.dtype), lambda: np.empty_like(y)), "clip")
        mixed -= y
        mixed *= _per_sample(w, y.ndim, y.dtype) if isinstance(w, np.ndarray) else self.scalar(w, y.dtype)
        y += mixed
        return y

    def scalar(self, value: float, dtype) -> np.ndarray:
        """value as a kept 0-d array of dtype: a ufunc takes it ~0.2 us faster than a Python
        float, and the product is the same (NEP 50 casts the float to the array's dtype too)."""
        out = self.kept(("scalar", dtype), lambda: np.empty((), dtype))
        out[()] = value
        return out

    def paste(self, x: np.ndarray, other: np.ndarray, lam: float, active: np.ndarray | None,
              u: np.ndarray) -> float | np.ndarray:
        """Mix each partner other[i] into x[i] in place (other may be overwritten); the partner
        share: a number for every sample, or one per sample (n,) (0 where active is False)."""
        raise NotImplementedError


@TRANSFORMS.register("mixup")
class Mixup(_Mix):
    """Replace a sample by lam * itself + (1 - lam) * a random partner, targets alike (soft).

    Notes
    -----
    lam ~ Beta(alpha, alpha), one per batch; the partner is another sample of the batch
    (see _Mix). Targets become lam * y_i + (1 - lam) * y_j, one-hot vectors for
    classification.
    """

    PARAMS = {
        "alpha": Param("float", 0.2, gt=0, doc="Beta(alpha, alpha) of the mixing weight"),
        "p": P,
        "allow_regression": ALLOW_REGRESSION,
    }

    def moves(self):
        return f"mixes pairs, weight ~ Beta({self.alpha:g}, {self.alpha:g}); soft targets"

    def paste(self, x, other, lam, active, u):
        w = 1 - lam if active is None else (1 - lam) * active
        other -= x                                # x + w (other - x): in place, no second copy
        other *= self.scalar(w, x.dtype) if active is None else _per_sample(w, x.ndim, x.dtype)
        x += other
        return w


@TRANSFORMS.register("cutmix")
class Cutmix(_Mix):
    """Paste a random box of a partner sample into a sample; targets mixed by the box's area.

    Notes
    -----
    lam ~ Beta(alpha, alpha) per batch (see _Mix); each chosen sample's box covers about
    1 - lam of it (side length * sqrt(1 - lam) on images, length * (1 - lam) on 1-D),
    centred uniformly and clipped at the border; the target weight of the partner is the
    box's actual area fraction.
    """

    PARAMS = {
        "alpha": Param("float", 1.0, gt=0, doc="Beta(alpha, alpha) of the kept area"),
        "p": P,
        "allow_regression": ALLOW_REGRESSION,
    }
    FITS = ("signals", "sequences", "images")

    def moves(self):
        return f"pastes a partner's box over {self.layout.axis_names(self.layout.spatial)}; soft targets by area"

    def draws(self):
        return len(self.layout.spatial)

    def paste(self, x, other, lam, active, u):
        dims = len(self.layout.spatial)
        sizes = np.array([x.shape[a] for a in self.layout.spatial])
        sides = np.rint(sizes * (1 - lam) ** (1 / dims)).astype(np.intp)
        lengths = sides[:, None] * (np.ones(len(x), np.intp) if active is None else active)
        box, area = _boxes(self.layout, x.shape, lengths, u)
        np.copyto(x, other, where=box)
        return area


def _fused(transforms: list[Transform]) -> list[Callable]:
    """The apply of each transform in order, with noise (p 1) then feature_dropout on a table
    run as one step (`noise_then_dropout`)."""
    steps, i = [], 0
    while i < len(transforms):
        t, after = transforms[i], transforms[i + 1] if i + 1 < len(transforms) else None
        if (type(t) is Noise and t.p == 1 and type(after) is FeatureDropout
                and t.layout.name == after.layout.name == "table"):
            steps.append(lambda x, y, rng, noise=t, drop=after: noise_then_dropout(noise, drop, x, y, rng))
            i += 2
        else:
            steps.append(t.apply)
            i += 1
    return steps


def noise_then_dropout(noise: Noise, drop: FeatureDropout, x: np.ndarray, y: Any, rng: np.random.Generator) -> Any:
    """noise and then feature_dropout on a table batch (N, F) from one 16-bit uniform per value.

    Notes
    -----
    A value's uniform k picks a pair (n, keep) from a kept table (`_noise_drop_table`):
    k below the dropout threshold T gives (0, 0), a dropped value; k >= T gives keep 1 and
    n the normal quantile at (k - T + 1/2) / (65536 - T), so the kept values' noise is
    Gaussian (65536 - T levels) and independent of which values were dropped. Then
    x = x * keep + n: the same effect as the two transforms in turn, from half the random
    bits and in four NumPy calls (a table's MLP step is ~100 us, and each call costs
    ~0.5-1 us). The table is stored as two rows (n and keep), so one gather fills two
    contiguous planes: gathering (n, keep) pairs left the two products reading every other
    value, ~1.5 us each for a 64 x 32 batch against ~0.5 us.
    """
    shape, dtype = x.shape, x.dtype
    table = _noise_drop_table(noise, drop, dtype)
    picked = noise.kept(("planes", shape, dtype), lambda: np.empty((2,) + shape, dtype))
    table.take(uniform16(rng, x.size).reshape(shape), 1, picked, "clip")
    x *= picked[1]
    x += picked[0]
    return y


def _noise_drop_table(noise: Noise, drop: FeatureDropout, dtype: np.dtype) -> np.ndarray:
    """The (2, 65536) table of noise value (row 0) and keep (row 1) by 16-bit uniform for
    `noise_then_dropout`, kept."""
    def make() -> np.ndarray:
        t = int(drop.threshold())
        table = np.zeros((2, 65536))
        table[0, t:] = midpoint_normals(65536 - t) * noise.std
        table[1, t:] = 1.0
        return table.astype(dtype)
    return noise.kept(("noise_drop", dtype, noise.std, drop.p), make)


# -- the pipeline -------------------------------------------------------------------------

class Augmenter:
    """The spec's transforms in order, for samples of one layout.

    targets: how a mixing transform sees the labels: "onehot" (cross_entropy: int labels
    become a probability matrix (N, n_classes)), "binary" (binary_cross_entropy: a
    probability (N,)) or "values" (regression targets, mixed as they are).
    """

    def __init__(self, transforms: list[Transform] | None = None, layout: Layout | None = None,
                 targets: str = "onehot", n_classes: int = 0, why_layout: str = ""):
        self.transforms = list(transforms or [])
        self.layout = layout
        self.targets = targets
        self.n_classes = n_classes
        self.why_layout = why_layout
        self.mixes = any(t.MIXES for t in self.transforms)
        self._eye: dict[np.dtype, np.ndarray] = {}
        self._steps = _fused(self.transforms)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def soft_targets(self, y: np.ndarray, dtype, out: np.ndarray | None = None) -> np.ndarray:
        """Targets as floats that can be mixed: one-hot rows, probabilities or values (in `out`
        if given, shaped like the result, else a new array)."""
        if self.targets == "onehot":
            eye = self._eye.get(np.dtype(dtype))
            if eye is None:
                eye = self._eye[np.dtype(dtype)] = np.eye(self.n_classes, dtype=dtype)
            if out is None:
                return eye.take(y, 0)                 # one gather of the one-hot rows
            # mode clip writes straight into out ("raise" gathers through a temporary); the
            # labels of a training split are class indices below n_outputs by construction
            return eye.take(y, 0, out, "clip")
        if out is None:
            return np.array(y, dtype=dtype)
        np.copyto(out, y)
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator,
                 targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment the batch x (N, *sample) in place; returns (x, targets), soft if a transform
        mixes: a new array, or `targets` (a buffer shaped like them) if given."""
        if self.mixes and y is not None:
            y = self.soft_targets(y, x.dtype, targets)
        for step in self._steps:
            y = step(x, y, rng)
        return x, y

    def for_epoch(self, seed: int, epoch: int) -> Callable | None:
        """`augment(step, x, y)` for iterate_batches in epoch `epoch` (0-based), or None if there is nothing to do.

        Soft targets are written into buffers of this epoch (one per batch size), like the
        batches iterate_batches yields: valid until the next batch.
        """
        if not self.transforms:
            return None
        streams = EpochStreams(seed, epoch)
        buffers: dict[tuple, np.ndarray] = {}

        def augment(step: int, x: np.ndarray, y: np.ndarray | None):
            out = None
            if self.mixes and y is not None:
                key = (len(y), x.dtype)
                out = buffers.get(key)
                if out is None:
                    out = buffers[key] = np.empty(self._soft_shape(y), x.dtype)
            return self(x, y, streams.at(step), out)
        return augment

    def _soft_shape(self, y: np.ndarray) -> tuple[int, ...]:
        """The shape of y's soft targets."""
        return (len(y), self.n_classes) if self.targets == "onehot" else y.shape

    def describe(self) -> list[str]:
        """One line per active transform, for validate, show and the train header."""
        if not self.transforms:
            return []
        head = f"augment ({self.layout.name} {self.layout.shape}{self.why_layout}), training batches only:"
        lines = [head]
        for i, t in enumerate(self.transforms):
            p = "" if isinstance(t, FeatureDropout) or t.p == 1 else f", p {t.p:g}"
            lines.append(f"  {i + 1}. {t.NAME}: {t.moves()}{p}")
        return lines


class EpochStreams:
    """The augmentation Generators of one epoch's batches, each a pure function of (seed, epoch, step).

    Notes
    -----
    Step s draws from PCG64 seeded by SeedSequence([seed, 2, epoch]) and advanced by s * 2^64,
    so the batches' streams never overlap (2^64 draws each) and a resumed run redraws exactly.
    Advancing one bit generator costs a few microseconds; a fresh default_rng per batch
    measured ~200 us of a table batch's ~330 us of augmentation.
    """

    def __init__(self, seed: int, epoch: int):
        self.bits = np.random.PCG64(np.random.SeedSequence([int(seed), AUGMENT_STREAM, int(epoch)]))
        self.start = self.bits.state
        self.gen = np.random.Generator(self.bits)

    def at(self, step: int) -> np.random.Generator:
        """The Generator of batch `step`; the same object each call, rewound and advanced."""
        self.bits.state = self.start
        self.bits.advance(int(step) << 64)
        return self.gen


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The Generator of one training batch's augmentation (a fresh one; see EpochStreams)."""
    return EpochStreams(seed, epoch).at(step)


def describe(augmenter: Augmenter | None) -> str:
    """The active augmentations as text ('' when there are none)."""
    return "\n".join(augmenter.describe()) if augmenter else ""


def describe_entries(entries: list[dict[str, dict[str, Any]]] | None) -> str:
    """A stored config's `data.augment` on one line, without the data (for `nnctl show`):
    'shift(max=2, fill=zero), mixup(alpha=0.2, p=0.5)'; options at their default are left out."""
    parts = []
    for entry in entries if isinstance(entries, list) else []:
        # a stored config may have been edited by hand: show what cannot be read as it is
        if not (isinstance(entry, dict) and len(entry) == 1 and next(iter(entry)) in TRANSFORMS
                and isinstance(next(iter(entry.values())), dict)):
            parts.append(repr(entry))
            continue
        (name, options), = entry.items()
        params = TRANSFORMS.get(name).PARAMS
        shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()
                 if k not in params or v != params[k].default]
        parts.append(f"{name}({', '.join(shown)})" if shown else name)
    return ", ".join(parts)


# -- from the spec ------------------------------------------------------------------------

def _entry(item: Any) -> tuple[Any, Any] | None:
    """(name, options) of one list entry: `shift`, `{shift: {max: 4}}` or `{shift: null}`."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        name, options = next(iter(item.items()))
        return name, {} if options is None else options
    return None


def check_augment(chk, raw: Any) -> list[dict[str, dict[str, Any]]]:
    """Check `data.augment` (names, option types and ranges) with a config Checker.

    Returns the canonical list [{name: {every option}}, ...]; errors go to `chk` with their
    YAML path, e.g. data.augment[1].shift.max.
    """
    path = ("data", "augment")
    if raw is None:
        return []
    if not isinstance(raw, list):
        chk.error(path, "must be a list of transforms, e.g. [{shift: {max: 2}}, {noise: {std: 0.1}}]")
        return []
    out = []
    for i, item in enumerate(raw):
        entry = _entry(item)
        if entry is None:
            chk.error(path + (i,), "must be a transform name or a one-key mapping like {shift: {max: 2}}")
            continue
        name, options = entry
        if not isinstance(name, str) or name not in TRANSFORMS:
            chk.error(path + (i,), unknown_name_message("augmentation", name, TRANSFORMS.names()))
            continue
        canon = TRANSFORMS.canonical(name)
        if not isinstance(options, dict):
            chk.error(path + (i, name), f"{canon} takes options as a mapping, got {options!r}")
            continue
        checked = chk.section(path + (i, name), options, TRANSFORMS.entries[canon].PARAMS, {})
        out.append({canon: checked})
    return out


def layout_of(data: dict, layers: list[dict], input_shape: tuple[int, ...]) -> tuple[Layout, str, tuple]:
    """The sample layout: data.layout if given, else from the sample rank and the first layer.

    Returns (layout, why, path): why says where it came from (shown to the user); path is
    the YAML key to blame when it does not fit. Raises ValueError(message) if it cannot tell.
    """
    rank = len(input_shape)
    declared = data.get("layout")
    if declared is not None:
        layout = LAYOUTS[declared]
        if layout.rank != rank:
            raise ValueError(f"{declared} samples have {layout.rank} axes ({', '.join(layout.names)}), "
                             f"the data's samples are {list(input_shape)}")
        return layout, ", data.layout", ("data", "layout")
    if rank == 1:
        return LAYOUTS["table"], "", ("data",)
    if rank == 3:
        return LAYOUTS["images"], "", ("data",)
    first = layers[0]["type"] if layers else None
    if rank == 2 and first in _SIGNAL_LAYERS:
        return LAYOUTS["signals"], f", as {first} reads it", ("data",)
    if rank == 2 and first in _SEQUENCE_LAYERS:
        return LAYOUTS["sequences"], f", as {first} reads it", ("data",)
    if rank == 2:
        raise ValueError(f"samples {list(input_shape)} may be signals (C, L) or sequences (T, F); "
                         "set data.layout: signals or sequences")
    raise ValueError(f"samples of rank {rank} ({list(input_shape)}) have no layout to augment")


def build_augmenter(spec, input_shape: tuple[int, ...], task: str, loss_name: str, n_classes: int) -> Augmenter:
    """The spec's `data.augment` fitted to the data, or a ConfigError naming the key and line.

    spec: a checked Spec (its data.augment canonical); the layout comes from data.layout,
    else the sample rank and the model's first layer. Checks that each transform fits the
    layout and the sample size, and that mixing transforms meet a loss that takes their
    targets (a regression loss only with allow_regression: true).
    """
    entries = spec.data.get("augment") or []
    declared = spec.data.get("layout") is not None
    if not entries and not declared:
        return Augmenter()
    try:
        layout, why, _ = layout_of(spec.data, spec.layers, tuple(input_shape))
    except ValueError as err:
        raise spec.error_at(("data", "layout") if declared else ("data", "augment"), str(err)) from None
    transforms = []
    for i, entry in enumerate(entries):
        (name, options), = entry.items()
        path = ("data", "augment", i, name)
        cls = TRANSFORMS.get(name)
        if layout.name not in cls.FITS:
            fits = ", ".join(f"{LAYOUTS[f].name} {LAYOUTS[f].shape}" for f in cls.FITS)
            raise spec.error_at(path, f"does not apply to {layout.name} {layout.shape} "
                                      f"(samples {list(input_shape)}); it applies to {fits}")
        t = cls(layout, **options)
        bad = t.check(tuple(input_shape))
        if bad is not None:
            raise spec.error_at(path + (bad[0],), bad[1])
        if t.MIXES and task == "regression" and not options.get("allow_regression"):
            raise spec.error_at(path, f"mixes targets, and {loss_name} is a regression loss; set "
                                      "allow_regression: true to mix regression targets")
        transforms.append(t)
    targets = "values" if task == "regression" else ("binary" if loss_name == "binary_cross_entropy" else "onehot")
    return Augmenter(transforms, layout, targets, n_classes, why)


def preview(augmenter: Augmenter, split, standardizer, dtype, n: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x before, x after, y before, y after) for the first n rows of a split (standardized).

    The draws are those of step 0 of epoch 0, for a batch of these n rows.
    """
    from nnctl.data.batching import iterate_batches
    xb, yb = next(iterate_batches(split, min(n, len(split)), None, dtype, standardizer))
    before = xb.copy()
    y_before = None if yb is None else yb.copy()
    after, y_after = augmenter(xb.copy(), None if yb is None else yb.copy(), batch_rng(seed, 0, 0))
    return before, after, y_before, y_after
