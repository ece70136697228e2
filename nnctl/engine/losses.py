"""Losses on raw model outputs (logits), each paired explicitly with its output activation.

A model ends in a linear layer and emits raw outputs z. A loss declares which activation
turns z into predictions (`OUTPUT`: "softmax", "sigmoid" or "identity"); its `output(z)`
applies it, and its gradient already includes it (the fused softmax + cross-entropy
gradient p - q lives only in `cross_entropy`). Every loss returns the batch mean.

    value, dz = loss(z, y)      # same as loss.loss(z, y); dz has z's shape and dtype
    value = loss.value(z, y)    # without the gradient

Targets: int class indices (N,), or soft targets (a probability matrix (N, C) as mixup
makes; their values are checked where they enter, by soft_target_problem), for
cross_entropy; 0/1 (or soft, in [0, 1]) values with z's number of elements for
binary_cross_entropy; floats with z's number of elements for
the regression losses. Targets are cast to z's dtype, so a float32 model stays float32.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nnctl.engine.activations import sigmoid, softmax
from nnctl.hparams import Configurable, Param, Registry
from nnctl.errors import ConfigError, DataError

LOSSES = Registry("loss")


class Loss(Configurable):
    """Base class: declared PARAMS, keyword constructor, `loss`/`value`/`output`."""

    NAME = "loss"
    PARAMS: dict[str, Param] = {}
    OUTPUT = "identity"
    TASK = "regression"

    def __call__(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return self.loss(z, y)

    def loss(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean loss, dL/dz) for raw outputs z and targets y."""
        raise NotImplementedError

    def value(self, z: np.ndarray, y: np.ndarray) -> float:
        """The mean loss alone."""
        raise NotImplementedError

    def output(self, z: np.ndarray) -> np.ndarray:
        """Predictions from raw outputs: probabilities for classification, z itself for regression."""
        return z

    def loss_and_parts(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, dict[str, float] | None]:
        """`loss(z, y)` and the terms of the value that are logged beside it: None, but for a
        loss made of terms (Reconstruction, ELBO) whose value is derived from the same terms."""
        value, dz = self.loss(z, y)
        return value, dz, None

    def value_and_parts(self, z: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float] | None]:
        """`value(z, y)` and its logged terms, as loss_and_parts without the gradient."""
        return self.value(z, y), None


# numpy >= 2 has a row-wise dot about twice as fast as einsum on a batch's few classes
_rowdot = getattr(np, "vecdot", lambda a, b: np.einsum("ij,ij->i", a, b))


def soft_target_problem(q: np.ndarray) -> str | None:
    """What makes q (N, C) not a matrix of soft targets (rows of finite probabilities >= 0
    summing to 1), or None.

    Notes
    -----
    cross_entropy does not check soft targets on every call: on a small MLP the checks
    measured ~13 us of a ~100 us training step. The targets nnctl trains on are valid by
    construction (int labels, or mixup/cutmix's convex mixes of one-hot rows); targets from
    anywhere else are checked once where they enter, with this.
    """
    q = np.asarray(q)
    if q.size and not (np.all(np.isfinite(q)) and q.min() >= 0):
        return "soft targets must be finite probabilities >= 0"
    sums = q.reshape(-1, q.shape[-1]).sum(axis=1) if q.size else q
    # float32 mixing rounds; a row off by more than this is not a distribution
    if q.size and np.abs(sums - 1).max() > 1e-4:
        return f"each row of soft targets must sum to 1, got {sums[np.argmax(np.abs(sums - 1))]:.6g}"
    return None


@LOSSES.register("cross_entropy", "categorical_cross_entropy", "ce")
class CrossEntropy(Loss):
    """Softmax cross-entropy on logits, optionally with label smoothing and class weights.

    Shapes: z (N, C) (or (..., C) with y (...)), y int (N,) in [0, C), or soft targets y
    float (N, C) (z's shape), rows of probabilities summing to 1; dz (N, C).

    Notes
    -----
    With p = softmax(z), t_i = onehot(y_i) (or the soft row y_i) and the smoothed target
    q = (1 - eps) t + eps / C, the per-sample loss is
    l_i = -sum_c q_ic log p_ic = lse(z_i) - (1 - eps) t_i . z_i - (eps/C) sum_c z_ic,
    lse the log-sum-exp (computed shifted by the row max). The batch loss is the mean of l_i,
    or with class weights the weighted mean sum_i w_i l_i / sum_i w_i, w_i = t_i . class_weights
    (class_weights[y_i] for a hard label, the expected weight of a soft one; PyTorch's
    normalization; PyTorch additionally weights each class term of the smoothing part by its
    own class weight, here the sample's weight scales its whole smoothed loss).
    dz_i = (w_i / sum w) (p_i - q_i), or (p_i - q_i) / N without weights. A batch whose
    weights sum to 0 has loss 0 and a zero gradient.
    """

    PARAMS = {
        "label_smoothing": Param("float", 0.0, ge=0.0, lt=1.0, doc="mix eps of the uniform distribution into the targets"),
        "class_weights": Param("float_list_or_map", None, ge=0.0, nullable=True, choices=("balanced",),
                               doc="one weight per class (weighted mean), a mapping label -> weight (classes "
                                   "not named weigh 1), or balanced: n_samples / (n_classes * count) from the "
                                   "training split; resolved to a list before training"),
    }
    OUTPUT = "softmax"
    TASK = "classification"

    def _check(self, z: np.ndarray, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        z = np.asarray(z)
        if z.ndim < 2:
            raise ConfigError(f"{self.NAME}: needs logits of shape (N, classes), got {z.shape}")
        c = z.shape[-1]
        z2 = z.reshape(-1, c)
        y = np.asarray(y)
        if y.dtype.kind == "b":
            y = y.astype(np.int64)
        if y.dtype.kind == "f" and y.shape == z.shape:
            # the values are not checked here (see soft_target_problem): this runs every batch
            q2 = y.reshape(-1, c).astype(z.dtype, copy=False)
            return z2, q2, self._weights(z2, None, q2)
        if y.dtype.kind not in "iu":
            raise DataError(f"{self.NAME}: targets must be integer class indices, got {y.dtype} values "
                            f"(or probabilities shaped like the logits {z.shape})")
        y2 = y.reshape(-1)
        if y2.shape[0] != z2.shape[0]:
            raise DataError(f"{self.NAME}: {y2.shape[0]} targets for {z2.shape[0]} rows of logits {z.shape}")
        if y2.size and (y2.min() < 0 or y2.max() >= c):
            bad = y2.min() if y2.min() < 0 else y2.max()
            raise DataError(f"{self.NAME}: target class {bad} is out of range for {c} classes (0..{c - 1})")
        return z2, y2, self._weights(z2, y2, None)

    def _weights(self, z2: np.ndarray, y2: np.ndarray | None, q2: np.ndarray | None) -> np.ndarray | None:
        """Per-sample weights (N,) from class_weights: of the label, or expected under soft targets."""
        cw = self.hparams["class_weights"]
        if cw is None:
            return None
        c = z2.shape[1]
        if len(cw) != c:
            raise ConfigError(f"{self.NAME}: class_weights has {len(cw)} entries but the model outputs {c} classes")
        cw = np.asarray(cw, dtype=z2.dtype)
        return cw[y2] if q2 is None else q2 @ cw

    @staticmethod
    def _target_dot(z2: np.ndarray, t: np.ndarray) -> np.ndarray:
        """t_i . z_i per row: z at the label for int targets, the probability-weighted sum for soft ones."""
        if t.ndim == 1:
            return z2[np.arange(z2.shape[0]), t]
        return _rowdot(z2, t)

    def _per_sample(self, z2: np.ndarray, y2: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample losses (N,), and the row sums of exp(z - max) (N, 1); `e` receives exp(z - max)."""
        eps, c = self.hparams["label_smoothing"], z2.shape[1]
        m = z2.max(axis=1, keepdims=True)
        np.subtract(z2, m, out=e)
        np.exp(e, out=e)
        s = e.sum(axis=1, keepdims=True)
        lse = (m + np.log(s))[:, 0]
        l = lse - (1.0 - eps) * self._target_dot(z2, y2)
        if eps:
            l -= (eps / c) * z2.sum(axis=1)
        return l, s

    @staticmethod
    def _mean(l: np.ndarray, w: np.ndarray | None) -> float:
        if w is None:
            return float(l.mean()) if l.size else 0.0
        total = w.sum()
        return float((w * l).sum() / total) if total > 0 else 0.0

    def value(self, z, y):
        z2, y2, w = self._check(z, y)
        l, _ = self._per_sample(z2, y2, np.empty_like(z2))
        return self._mean(l, w)

    def loss(self, z, y):
        z2, y2, w = self._check(z, y)
        eps, (n, c) = self.hparams["label_smoothing"], z2.shape
        dz = np.empty_like(z2)
        l, s = self._per_sample(z2, y2, dz)
        value = self._mean(l, w)
        # fused softmax + cross-entropy gradient, in place: p - q, then the mean's weights
        dz /= s
        if y2.ndim == 1:
            dz[np.arange(n), y2] -= 1.0 - eps
        elif eps:
            dz -= (1.0 - eps) * y2
        else:
            dz -= y2
        if eps:
            dz -= eps / c
        if w is None:
            dz *= 1.0 / max(n, 1)
        else:
            total = w.sum()
            dz *= (w / total)[:, None] if total > 0 else 0.0
        return value, dz.reshape(np.shape(z))

    def output(self, z):
        return softmax(np.asarray(z))


@LOSSES.register("binary_cross_entropy", "bce")
class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits: one logit per sample (z (N, 1) or (N,)), or per label.

    Shapes: z (N, 1), (N,) or (N, k); y with as many elements, values in [0, 1]; dz like z.

    Notes
    -----
    l = -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)) = max(z, 0) - z y + log1p(exp(-|z|)),
    which never exponentiates a positive number: finite and exact at z = +-1000.
    dz = (sigmoid(z) - y) / n over the n elements.
    """

    OUTPUT = "sigmoid"
    TASK = "classification"

    def _check(self, z: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(z)
        y = np.asarray(y)
        if y.size != z.size:
            raise DataError(f"{self.NAME}: {y.size} targets for {z.size} logits (logits shape {z.shape})")
        y = y.reshape(z.shape).astype(z.dtype, copy=False)
        if y.size and (y.min() < 0 or y.max() > 1):
            bad = y.min() if y.min() < 0 else y.max()
            raise DataError(f"{self.NAME}: targets must be in [0, 1], got {bad}")
        return z, y

    @staticmethod
    def _elementwise(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        l = np.abs(z)
        np.negative(l, out=l)
        np.exp(l, out=l)
        np.log1p(l, out=l)
        l += np.maximum(z, 0.0)
        l -= z * y
        return l

    def value(self, z, y):
        z, y = self._check(z, y)
        return float(self._elementwise(z, y).mean()) if z.size else 0.0

    def loss(self, z, y):
        z, y = self._check(z, y)
        value = float(self._elementwise(z, y).mean()) if z.size else 0.0
        dz = sigmoid(z)
        dz -= y
        dz *= 1.0 / max(z.size, 1)
        return value, dz

    def output(self, z):
        return sigmoid(np.asarray(z))


class _Regression(Loss):
    """Elementwise losses of the residual r = z - y, averaged over every element."""

    def _residual(self, z: Any, y: Any) -> np.ndarray:
        z = np.asarray(z)
        y = np.asarray(y)
        if y.size != z.size:
            raise DataError(f"{self.NAME}: targets of shape {y.shape} do not match outputs of shape {z.shape}")
        return np.subtract(z, y.reshape(z.shape).astype(z.dtype, copy=False))

    def _elementwise(self, r: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _slope(self, r: np.ndarray) -> np.ndarray:
        """d l / d r, elementwise, may overwrite r."""
        raise NotImplementedError

    def value(self, z, y):
        r = self._residual(z, y)
        return float(self._elementwise(r).mean()) if r.size else 0.0

    def loss(self, z, y):
        r = self._residual(z, y)
        value = float(self._elementwise(r).mean()) if r.size else 0.0
        dz = self._slope(r)
        dz *= 1.0 / max(r.size, 1)
        return value, dz


@LOSSES.register("mse", "mean_squared_error")
class MSE(_Regression):
    """Mean squared error: mean(r^2), dz = 2 r / n."""

    def _elementwise(self, r):
        return r * r

    def _slope(self, r):
        r *= 2.0
        return r


@LOSSES.register("mae", "l1", "mean_absolute_error")
class MAE(_Regression):
    """Mean absolute error: mean(|r|), dz = sign(r) / n (0 where r = 0)."""

    def _elementwise(self, r):
        return np.abs(r)

    def _slope(self, r):
        return np.sign(r, out=r)


@LOSSES.register("huber", "smooth_l1")
class Huber(_Regression):
    """Huber loss: r^2 / 2 where |r| <= delta, delta (|r| - delta / 2) beyond (PyTorch's HuberLoss).

    Notes
    -----
    The slope is r inside and delta * sign(r) outside, i.e. clip(r, -delta, delta); dz is that / n.
    """

    PARAMS = {"delta": Param("float", 1.0, gt=0.0, doc="where the loss turns from quadratic to linear")}

    def _elementwise(self, r):
        d = self.hparams["delta"]
        a = np.abs(r)
        return np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))

    def _slope(self, r):
        d = self.hparams["delta"]
        return np.clip(r, -d, d, out=r)


def kl_divergence(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample (N,), summed over the latent dimensions.

    Notes
    -----
    Closed form for diagonal Gaussians: KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j),
    so dKL/dmu = mu and dKL/dlogvar = (exp(logvar) - 1) / 2.
    """
    return 0.5 * (mu * mu + np.exp(logvar) - 1.0 - logvar).sum(axis=1)


@LOSSES.register("reconstruction")
class Reconstruction(Loss):
    """An autoencoder's loss: the reconstruction error of its input, summed over features.

    Shapes: z (N, D) raw reconstructions, y (N, D) the (scaled) inputs; dz like z.

    Notes
    -----
    reconstruction = D * inner(z, y), inner the elementwise mean of mse or binary_cross_entropy
    (on logits, its sigmoid fused), i.e. the per-sample sum over features averaged over the
    batch: the scale of the ELBO's likelihood term, so that a VAE's KL weighs against the whole
    sample, not one pixel. dz = D * d inner / dz.

    The value is always `total(parts)`: the logged terms and the loss are one computation, so
    they cannot disagree.
    """

    PARAMS = {"reconstruction": Param("str", "mse", choices=("mse", "binary_cross_entropy"),
                                      doc="the elementwise error: mse (identity or sigmoid output) or "
                                          "binary_cross_entropy (inputs scaled to [0, 1], sigmoid output)")}
    TASK = "autoencoder"

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.inner: Loss = LOSSES.create(self.hparams["reconstruction"])
        self.OUTPUT = self.inner.OUTPUT

    def _split(self, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return np.asarray(z), None, None

    @staticmethod
    def _parts(inner_value: float, d: int, mu: np.ndarray | None, logvar: np.ndarray | None,
               n: int) -> dict[str, float]:
        """The terms from the inner loss's mean over n samples of d features (and the latent heads)."""
        out = {"reconstruction": d * inner_value if n else 0.0}
        if mu is not None:
            # in float64 whatever the model's dtype: a float32 KL summed over the latent dimensions
            # would put the model's rounding into the logged term
            out["kl"] = float(kl_divergence(mu.astype(np.float64), logvar.astype(np.float64)).mean()) if n else 0.0
        return out

    def total(self, parts: dict[str, float]) -> float:
        """The loss's value from its terms."""
        return parts["reconstruction"]

    def parts(self, z: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The terms of the loss for the logs: {"reconstruction": ...} (and "kl" for a VAE)."""
        recon, mu, logvar = self._split(z, y)
        return self._parts(self.inner.value(recon, y), recon.shape[1], mu, logvar, len(y))

    def value_and_parts(self, z, y):
        p = self.parts(z, y)
        return self.total(p), p

    def value(self, z, y):
        return self.value_and_parts(z, y)[0]

    def loss_and_parts(self, z, y):
        recon, _, _ = self._split(z, y)
        value, dz = self.inner.loss(recon, y)
        d = recon.shape[1]
        dz *= d
        p = self._parts(value, d, None, None, len(y))
        return self.total(p), dz, p

    def loss(self, z, y):
        value, dz, _ = self.loss_and_parts(z, y)
        return value, dz

    def output(self, z):
        """Reconstructions in the scaled input units: the inner loss's output activation applied."""
        return self.inner.output(np.asarray(z))


@LOSSES.register("elbo")
class ELBO(Reconstruction):
    """A VAE's negative evidence lower bound: reconstruction + beta * KL(q(z|x) || N(0, I)).

    Shapes: z (N, D + 2L) = [reconstruction (D), mean (L), log-variance (L)] as the autoencoder
    layer emits them; y (N, D); dz like z.

    Notes
    -----
    Per sample, KL = 1/2 sum_j (mu_j^2 + exp(lv_j) - 1 - lv_j) (engine/generative.py), averaged
    over the batch like the reconstruction term (see Reconstruction), so the value is the mean
    negative ELBO per sample when beta = 1. dz of the mean is beta * mu / N, of the log-variance
    beta * (exp(lv) - 1) / (2N); the reconstruction's gradient flows back through the sampling
    layer to the same heads.
    """

    PARAMS = {**Reconstruction.PARAMS,
              "beta": Param("float", 1.0, ge=0.0, doc="weight of the KL term (beta-VAE; 1 is the ELBO)")}
    TASK = "vae"

    def _split(self, z, y):
        z = np.asarray(z)
        d = int(np.asarray(y).reshape(len(y), -1).shape[1])
        latent = (z.shape[1] - d) // 2
        if z.ndim != 2 or latent < 1 or d + 2 * latent != z.shape[1]:
            raise DataError(f"{self.NAME}: outputs of shape {z.shape} are not [reconstruction ({d}), "
                            f"mean, log-variance] for inputs of {d} features")
        return z[:, :d], z[:, d:d + latent], z[:, d + latent:]

    def total(self, parts):
        return parts["reconstruction"] + self.hparams["beta"] * parts["kl"]

    def loss_and_parts(self, z, y):
        recon, mu, logvar = self._split(z, y)
        n, beta = max(len(recon), 1), self.hparams["beta"]
        value, drecon = self.inner.loss(recon, y)
        d = recon.shape[1]
        p = self._parts(value, d, mu, logvar, len(y))
        dz = np.empty_like(np.asarray(z))
        np.multiply(drecon, d, out=dz[:, :d])
        np.multiply(mu, beta / n, out=dz[:, d:d + mu.shape[1]])
        # in the model's dtype, so the gradient stays float32 for a float32 model
        var = np.exp(logvar)
        var -= 1.0
        np.multiply(var, 0.5 * beta / n, out=dz[:, d + mu.shape[1]:])
        return self.total(p), dz, p


def get_loss(spec: Any) -> Loss:
    """A Loss from a name, a mapping {"name": ..., **options}, or an instance."""
    if isinstance(spec, Loss):
        return spec
    return LOSSES.create(spec)


def default_loss(task: str, n_classes: int | None = None) -> str:
    """"cross_entropy" for classification (any number of classes), "mse" for regression."""
    if task == "classification":
        return "cross_entropy"
    if task == "regression":
        return "mse"
    raise ConfigError(f"unknown task '{task}'; valid: classification, regression")
