"""Shape arithmetic shared by the convolution, pooling and sequence layers.

Everything here is pure integer bookkeeping done at build time, plus the strided
window helpers (`windows`, `add_windows`) that the conv and pooling layers use for
im2col / col2im. Shape errors are raised as ConfigError naming the layer and the sizes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nnctl.errors import ConfigError


def as_tuple(value: Any, n: int, what: str, layer: str) -> tuple[int, ...]:
    """An int or a length-`n` list of ints as an n-tuple (`what` names the option in errors)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise ConfigError(f"{layer}: {what} must be an int or a list of {n} ints, got {value!r}")


def expect_rank(layer: str, input_shape: tuple[int, ...], rank: int, layout: str) -> None:
    """Raise unless the input (without batch) has `rank` axes; `layout` reads like "(C, H, W)"."""
    if len(input_shape) != rank:
        raise ConfigError(
            f"{layer}: expects input of shape (N, {layout.strip('()')}), "
            f"got (N, {', '.join(str(d) for d in input_shape)})")


def resolve_padding(layer: str, padding: Any, sizes: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis.

    "valid": none. An int or a tuple: that many on both sides of each axis.
    "same": Keras/TensorFlow semantics. The output length is ceil(L / stride) and the total
    padding max((out - 1) * stride + d * (k - 1) + 1 - L, 0) is split with the odd element
    at the end; with stride 1 the output has the input's length, for any dilation.
    """
    n = len(sizes)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * n
        if padding == "same":
            out = []
            for L, k, s, d in zip(sizes, kernel, stride, dilation):
                o = -(-L // s)
                total = max((o - 1) * s + d * (k - 1) + 1 - L, 0)
                out.append((total // 2, total - total // 2))
            return out
        raise ConfigError(f"{layer}: padding must be 'valid', 'same' or ints, got '{padding}'")
    pads = as_tuple(padding, n, "padding", layer)
    if any(p < 0 for p in pads):
        raise ConfigError(f"{layer}: padding must be >= 0, got {padding!r}")
    return [(p, p) for p in pads]


def conv_output_sizes(layer: str, sizes: Sequence[int], kernel: Sequence[int],
                      stride: Sequence[int], dilation: Sequence[int],
                      pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """floor((L + p_before + p_after - d*(k-1) - 1) / s) + 1 per axis; ConfigError if < 1."""
    out = []
    for L, k, s, d, (lo, hi) in zip(sizes, kernel, stride, dilation, pads):
        span = d * (k - 1) + 1
        padded = L + lo + hi
        if span > padded:
            dil = f" (dilation {d} spans {span})" if d > 1 else ""
            raise ConfigError(
                f"{layer}: kernel size {k}{dil} is larger than its padded input of size {padded} "
                f"(input {L}, padding {lo}+{hi})")
        out.append((padded - span) // s + 1)
    return tuple(out)


def padded(x: np.ndarray, pads: Sequence[tuple[int, int]], buf: np.ndarray | None,
           fill: float = 0.0, channels_last: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(x (N, C, *S) with its spatial axes padded by `fill`, the buffer to pass next time);
    x (N, *S, C) with `channels_last`.

    Without padding x itself is returned. A buffer is allocated (and its border written)
    only when no earlier one is large enough; a smaller batch uses a view of its first
    rows, whose border is still intact because each call only copies the interior.
    """
    if not any(lo or hi for lo, hi in pads):
        return x, buf
    first = 1 if channels_last else 2
    spatial = x.shape[first:first + len(pads)]
    around = (x.shape[:1], x.shape[-1:]) if channels_last else (x.shape[:2], ())
    shape = around[0] + tuple(L + lo + hi for L, (lo, hi) in zip(spatial, pads)) + around[1]
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != x.dtype:
        buf = np.full(shape, fill, dtype=x.dtype)
    xp = buf[: shape[0]]
    inner = (slice(None),) * first + tuple(slice(lo, lo + L) for L, (lo, _) in zip(spatial, pads))
    xp[inner] = x
    return xp, buf


def windows(xp: np.ndarray, kernel: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int], out_sizes: Sequence[int]) -> np.ndarray:
    """A read-only view (N, C, *O, *K) of the kernel windows of padded input xp (N, C, *S)."""
    nd = len(kernel)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    v = sliding_window_view(xp, spans, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None))
    sl += tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sizes, stride))
    sl += tuple(slice(None, None, d) for d in dilation)
    return v[sl]


def kernel_offsets(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Every kernel index tuple, in C order (matches a reshape of the kernel axes)."""
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*kernel)]


def offset_slices(offset: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                  out_sizes: Sequence[int]) -> tuple[slice, ...]:
    """Spatial slices of the padded input touched by kernel element `offset` over all outputs."""
    return tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                 for i, s, d, o in zip(offset, stride, dilation, out_sizes))


def interior_offset_slices(offset: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                           out_sizes: Sequence[int], pads: Sequence[tuple[int, int]],
                           sizes: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(slices of the unpadded input, slices of the outputs) where kernel element `offset` of the
    outputs lands inside the input, not on its padding; None if it lands only on padding.
    Output o reads padded position o*stride + offset*dilation, input position that - pad_before."""
    inputs, outputs = [], []
    for i, s, d, o, (lo, _), size in zip(offset, stride, dilation, out_sizes, pads, sizes):
        first = max(0, -((i * d - lo) // s))             # ceil((lo - i*d) / s), the first output inside
        last = min(o - 1, (size - 1 + lo - i * d) // s)  # the last output inside
        if first > last:
            return None
        at = first * s + i * d - lo
        inputs.append(slice(at, at + (last - first) * s + 1, s))
        outputs.append(slice(first, last + 1))
    return tuple(inputs), tuple(outputs)


def strip_padding(dxp: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """The interior (unpadded) part of a padded gradient (N, C, *S_padded)."""
    if not any(lo or hi for lo, hi in pads):
        return dxp
    sl = (slice(None), slice(None)) + tuple(slice(lo, dxp.shape[2 + i] - hi)
                                            for i, (lo, hi) in enumerate(pads))
    return dxp[sl]
