"""Convolution, pooling and reshaping layers for channels-first inputs (N, C, L) / (N, C, H, W).

Convolutions are im2col + matrix products: the kernel windows of the padded input are
gathered (through a strided view) into a matrix per sample whose columns are output positions,
so each sample is one GEMM written straight into the channels-first output; the backward pass
is two GEMMs per sample (dW and d(cols)) and a col2im that adds the kernel's k_h*k_w shifted
slices back, with no loop over output positions.
"""
from __future__ import annotations

import math

import numpy as np

from nnctl.engine import shapes
from nnctl.engine.activations import Identity, ReLU, get_activation
from nnctl.engine.base import CACHE_BLOCK_BYTES, LAYERS
from nnctl.hparams import REQUIRED, Param
from nnctl.engine.initializers import DEFAULT_BIAS_INITIALIZER, default_initializer, get_initializer
from nnctl.engine.layers import CheckedLayer
from nnctl.errors import ConfigError

_PADDING_DOC = ("'valid' (none), 'same' (Keras: output = ceil(input / stride)), "
                "or zeros per side as an int or one int per spatial axis")


def _check_padding(layer: str, padding, nd: int) -> None:
    """Reject a malformed padding option when the layer is constructed."""
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ConfigError(f"{layer}: padding must be 'valid', 'same' or ints, got '{padding}'")
        return
    pads = shapes.as_tuple(padding, nd, "padding", layer)
    if any(p < 0 for p in pads):
        raise ConfigError(f"{layer}: padding must be >= 0, got {padding!r}")


# im2col matrices with at most this many rows (C_in * prod(kernel)) use the per-sample layout.
_FEW_ROWS = 32

# The rows layout runs the dx GEMM + col2im of training, and the im2col + GEMM of evaluation,
# over blocks of samples whose im2col part takes at most CACHE_BLOCK_BYTES, so each block's dcols
# (or cols) is still in the (2 MB per core) L2 cache when the next call reads it. For a 32->64
# 3x3 conv on 14x14 inputs, float32 (9 samples a block): the dx GEMM + col2im at batch 64
# 6.2-6.5 ms with blocks of 4 or 8 samples, 6.6-6.9 with 18, 6.9-7.4 with 32; an evaluation
# forward of 300 samples 35 ms with 8 to 37 a block, against 44 with 64 a block and 46 in one.
# The training forward stays in one block: its backward reads the batch's cols.


class _Conv(CheckedLayer):
    """N-d convolution over the trailing `ND` axes of a channels-first input.

    Shapes: x (N, C_in, *S) -> y (N, filters, *O); W (filters, C_in, *kernel), b (filters,).
    O per axis = floor((S + p_before + p_after - dilation*(k-1) - 1) / stride) + 1.

    Notes
    -----
    y[n, f, o] = act( b[f] + sum_{c, k} W[f, c, k] * xp[n, c, o*stride + k*dilation] ),
    xp the zero-padded input. The im2col matrix holds xp[n, c, o*stride + k*dilation] for
    every (n, o) and (c, k), in a layout chosen at build time:

    Rows are output positions (many input channels): cols[(n, o), (k, c)], channels
    innermost, and W2 = W laid out as (filters, prod(kernel)*C_in):
        Z = cols @ W2^T  (one GEMM for the batch),     dW2 = dZ^T @ cols,   db = sum dZ,
        dcols = dZ @ W2  (one GEMM per block of samples).
    Offset k's column block of dcols, an (N, *O, C_in) view, is added in one strided slice-add
    to a channels-last gradient, where it lands inside the input. With stride and dilation 1
    along the last axis, dZ is first shifted once per last-axis offset j (dzs[.., X, j, :] =
    dZ[.., X - j + pad, :]) so the GEMM also sums over j: dcols then holds only the other
    axes' offsets, at every input position X of the last axis, and the col2im adds those.
    The dcols products and their col2im (and an evaluation forward's im2col and GEMM) run
    over blocks of samples sized to stay in cache (CACHE_BLOCK_BYTES). x, dx, Z and dZ are
    channels-first, each one transpose away from this layout, except beside a pool that
    hands them over channels-last (link_convs_and_pools).

    Columns are output positions (few input channels, C_in*prod(kernel) <= 32):
    cols[n][(c, k), o] and W2 = W.reshape(filters, C_in*prod(kernel)) (a view):
        Z[n] = W2 @ cols[n]  (one GEMM per sample, straight into (N, F, *O)),
        dW2 = sum_n dZ[n] @ cols[n]^T,   dcols[n] = W2^T @ dZ[n],
    with a bias as a last row of ones in cols[n] and a last column b in W2, so the first
    two products also add b and give db.
    Here the first layout would spend several times its (tiny) GEMMs' time transposing
    activation-sized arrays; this one transposes nothing, and offset k's block
    dcols[:, :, k] is an (N, C_in, *O) array added to a channels-first padded gradient.

    Stride-1 conv1d uses a third, shifted layout instead (see _zt_shifted): the input
    channels-major and padded, each im2col row block one contiguous shifted copy of it; two
    such convolutions in a row hand act(z) and dx over in that padded layout
    (link_convs_and_pools), and an evaluation forward runs in cache-sized sample blocks.

    Either way col2im is one slice-add per kernel offset, never a loop over output
    positions, and the padding is then cut off. "same" padding follows Keras for every
    stride (output = ceil(S / stride), the odd pad element at the end).
    """

    ND = 2
    LAYOUT = "(C, H, W)"
    PARAMS = {
        "filters": Param("int", REQUIRED, ge=1, doc="number of output channels"),
        "kernel_size": Param("int_or_tuple", REQUIRED, ge=1, doc="kernel extent, one int or one per spatial axis"),
        "stride": Param("int_or_tuple", 1, ge=1, doc="step between windows, one int or one per spatial axis"),
        "padding": Param("any", "valid", doc=_PADDING_DOC),
        "dilation": Param("int_or_tuple", 1, ge=1, doc="spacing between kernel elements (1 = dense kernel)"),
        "bias": Param("bool", True, doc="add a learned bias per filter"),
        "bias_initializer": Param("initializer", DEFAULT_BIAS_INITIALIZER, doc="initializer of the per-filter bias b"),
        "activation": Param("activation", "identity", doc="activation applied to the output"),
        "initializer": Param("initializer", None, nullable=True,
                             doc="weight initializer; null: the default for the activation (see Defaults), recorded in the run"),
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        self.kernel = shapes.as_tuple(h["kernel_size"], self.ND, "kernel_size", self.NAME)
        self.stride = shapes.as_tuple(h["stride"], self.ND, "stride", self.NAME)
        self.dilation = shapes.as_tuple(h["dilation"], self.ND, "dilation", self.NAME)
        for what, t in (("kernel_size", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            if any(v < 1 for v in t):
                raise ConfigError(f"{self.NAME}: {what} must be >= 1, got {h[what]!r}")
        _check_padding(self.NAME, h["padding"], self.ND)
        self.act = get_activation(h["activation"])
        # Set by link_convs_and_pools: the max pool after this layer applies the relu instead,
        # and (rows layout) takes z and gives dz channels-last, (N, *O, F); a pool before this
        # layer gives x and takes dx channels-last, (N, *S, C).
        self.act_deferred = False
        # training: the pool after runs this layer's forward (_Pool._forward_with_conv) and, in
        # the channels layout, its backward, handing back dx for this layer's backward to pass on
        self.pooled = False
        self.dx_from_pool = False
        self.channels_last_out = False
        self.channels_last_in = False
        # Set by link_convs_and_pools between two shifted-layout convolutions: this layer
        # writes act(z) straight into the next one's padded channels-major input, whose left
        # padding `shifted_next` is; the next takes it so and gives dx back so (`shifted_in`).
        self.shifted_next = None
        self.shifted_in = False
        self._xp_buf = None
        self._slope = None  # f'(z) kept by a training forward (see Dense)

    def _build(self, input_shape, rng):
        shapes.expect_rank(self.NAME, input_shape, self.ND + 1, self.LAYOUT)
        c_in, sizes = input_shape[0], input_shape[1:]
        self.pads = shapes.resolve_padding(self.NAME, self.hparams["padding"], sizes,
                                           self.kernel, self.stride, self.dilation)
        self.out_sizes = shapes.conv_output_sizes(self.NAME, sizes, self.kernel, self.stride,
                                                  self.dilation, self.pads)
        f = self.hparams["filters"]
        k = math.prod(self.kernel)
        init = get_initializer(self.hparams["initializer"] or default_initializer(self.hparams["activation"]))
        self.params["W"] = init((f, c_in) + self.kernel, c_in * k, f * k, rng, self.dtype)
        if self.hparams["bias"]:
            self.params["b"] = get_initializer(self.hparams["bias_initializer"])((f,), c_in * k, f * k, rng,
                                                                                 self.dtype)
        self.offsets = shapes.kernel_offsets(self.kernel)
        # Stride 1 and dilation 1 along the last axis: the rows layout's dx GEMM also sums that
        # axis's kernel offsets (see _backward_rows), leaving the col2im the others.
        self.fold = self.ND > 1 and self.stride[-1] == 1 and self.dilation[-1] == 1
        # (j, one output's slices) per last-axis offset j, None where it reads only padding
        one = (1,)
        self.fold_cuts = [shapes.interior_offset_slices((j,), one, one, self.out_sizes[-1:], self.pads[-1:], sizes[-1:])
                          for j in range(self.kernel[-1])]
        # The rows layout's col2im adds each offset's gradient only where it lands inside the
        # input (so no padded buffer to zero, add to and cut out), starting with a copy of one
        # offset that covers the input exactly once when there is one ("same", stride 1).
        # Folded, the offsets are those of the other axes, and the last axis is already the input's.
        if self.fold:
            cut_args = (self.stride[:-1] + one, self.dilation[:-1] + one, self.out_sizes[:-1] + sizes[-1:],
                        tuple(self.pads[:-1]) + ((0, 0),))
            cut_offsets = [off + (0,) for off in shapes.kernel_offsets(self.kernel[:-1])]
        else:
            cut_args, cut_offsets = (self.stride, self.dilation, self.out_sizes, self.pads), self.offsets
        self.interior = [(j,) + cut for j, off in enumerate(cut_offsets)
                         if (cut := shapes.interior_offset_slices(off, *cut_args, sizes)) is not None]
        self.covering = next((j for j, into, frm in self.interior
                              if all(t.step == 1 and t.stop - t.start == L and fr.stop - fr.start == L
                                     for t, fr, L in zip(into, frm, sizes))), None)
        self.interior.sort(key=lambda cut: cut[0] != self.covering)   # the copy goes first
        # Layout of the im2col matrix (see Notes), from per-layer timings: the per-sample layout
        # is 2-3x faster forward with 9 rows (1 channel, 3x3) or 27 (RGB, 3x3); the one-big-GEMM
        # layout is 1.3-2x faster with 125 rows (25 channels, k=5) or 288 (32 channels, 3x3).
        self.channels_layout = c_in * k <= _FEW_ROWS
        self.block = max(1, CACHE_BLOCK_BYTES // (math.prod(self.out_sizes) * c_in * k * self.dtype.itemsize))
        # Samples per block when a linked pool runs this layer (_Pool._forward_with_conv): a block's
        # cols, z and the pool's buffers (about z's size again) within the L2. CNN step in context,
        # conv1 (1->32, 28x28) 8 a block: 29.1 ms, 4: 28.8, 15: 29.5, the whole batch of 64: 33.4.
        self.pool_block = max(1, CACHE_BLOCK_BYTES // (math.prod(self.out_sizes) * (c_in * k + 1 + 2 * f)
                                                  * self.dtype.itemsize))
        # Stride-1 1-D convolutions use the shifted layout (see _zt_shifted): on the issue-15
        # conv1d workload (25 channels, k=5, L=40) its contiguous block copies beat the strided
        # im2col gather of either layout above, forward and backward, for 1 or 25 input channels.
        self.shifted_layout = self.ND == 1 and all(s == 1 for s in self.stride)
        self.rows_layout = not (self.channels_layout or self.shifted_layout)
        if self.shifted_layout:
            sp = self.padded_sizes = tuple(L + lo + hi for L, (lo, hi) in zip(sizes, self.pads))
            strides = [math.prod(sp[a + 1:]) for a in range(self.ND)]
            self.shifts = [sum(i * d * st for i, d, st in zip(off, self.dilation, strides))
                           for off in self.offsets]
            # (C or F, N, *padded) views: the input inside its padding, the outputs at its start
            lead = (slice(None), slice(None))
            self.inner = lead + tuple(slice(lo, lo + L) for L, (lo, _) in zip(sizes, self.pads))
            self.outer = lead + tuple(slice(0, o) for o in self.out_sizes)
            # its evaluation forward runs in blocks of samples of at most CACHE_BLOCK_BYTES of cols:
            # on the issue-15 stack, 500 samples 8.5 ms in one block, 6.2 in blocks of 100
            self.block = max(1, CACHE_BLOCK_BYTES // ((c_in * k + 1) * math.prod(sp) * self.dtype.itemsize))
        return (f,) + self.out_sizes

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        self.dx_from_pool = False
        if training and self.pooled:
            # x goes on to the pool after, which computes z a block at a time (_Pool._forward_with_conv)
            self._slope = self._z = self._y = None
            return x
        if self.shifted_next is not None:
            return self._forward_into_next(x, training)
        if self.shifted_layout:
            z = self._forward_shifted(x, training)
        else:
            z = self._forward_channels(x) if self.channels_layout else self._forward_rows(x, training)
        self._slope = None
        if self.act_deferred:
            self._z, self._y = None, z
        elif training and self.act.SLOPE_IN_FORWARD:  # as Dense: keep f'(z), y over z
            self._z = None
            self._slope = self.ws.get("slope", z.shape, self.dtype)
            self._y = self.act.forward_slope(z, z, self._slope)
        elif self.act.USES_X:
            self._z = z
            self._y = self.act.forward(z, out=self.ws.get("y", z.shape, self.dtype))
        else:
            self._z = None
            self._y = self.act.forward(z, out=z)
        return self._y

    def backward(self, dy):
        if self.dx_from_pool:
            self.dx_from_pool = False
            return dy
        dy = np.asarray(dy, dtype=self.dtype)
        if self.shifted_next is not None:
            return self._backward_from_next(dy)
        if self.act_deferred or isinstance(self.act, Identity):
            dz = dy
        elif self._slope is not None:
            dz = np.multiply(dy, self._slope, out=self.ws.get("dz", dy.shape, self.dtype))
        else:
            dz = self.act.backward(self._z, self._y, dy, out=self.ws.get("dz", dy.shape, self.dtype))
        if self.shifted_layout:
            return self._backward_shifted(self._flat_padded("dzt_s", dz, self.outer))
        return self._backward_channels(dz) if self.channels_layout else self._backward_rows(dz)

    # -- shifted: stride 1, channels-major padded input, columns are padded positions -----
    # With stride 1, kernel offset j reads the flattened padded input of every sample at one
    # fixed shift s_j, so with the input laid out channels-major as xf (C_in, N*Sp) (samples
    # back to back, each with its zero padding), the im2col matrix rows (j, c) are plain
    # contiguous shifted copies: cols[(j, c), i] = xf[c, i + s_j]. Then
    #     Z = W2 @ cols  (F, N*Sp),   dW2 = dZ @ cols^T,   db = sum dZ,
    #     dxf[:, i + s_j] += (W2^T @ dZ)[(j, .), i],
    # where column n*Sp + o of Z is output (n, o) and the other columns (windows that run
    # over a sample's end) are computed and dropped; dZ is zero there, so they add exact
    # zeros to dW and dx. The tail of each block of cols (past the end of xf) is zero.
    # cols ends with a row of ones and W2 with a column b (0 without bias), so the GEMMs
    # also add the bias and give db: no separate passes over Z.
    def _zt_shifted(self, x, training) -> np.ndarray:
        """Z as (F, N, *padded): output (n, o) at [:, n, o] (self.outer), the rest dropped."""
        if self.shifted_in:     # x is the previous convolution's output, already laid out
            c_in, n = x.shape[:2]
            xf = x.reshape(c_in, -1)
        else:
            n, c_in = x.shape[:2]
            xf = self._flat_padded("xt", x, self.inner).reshape(c_in, -1)
        f, m = self.hparams["filters"], xf.shape[1]
        ck = len(self.shifts) * c_in
        w2b = self.ws.get("w2b", (f, ck + 1), self.dtype)
        w2b[:, :ck] = self._w2()
        w2b[:, ck] = self.params["b"] if "b" in self.params else 0
        zt = self.ws.get("zt_s", (f, m), self.dtype)
        if training or n <= self.block:     # one block: the backward reads this batch's cols
            self._cols = self._shifted_cols(xf, "cols_s", 0, m)
            np.matmul(w2b, self._cols, out=zt)
        else:
            # evaluation: blocks through one block-sized cols that stays in cache; a backward
            # after it (gradient checks) rebuilds the batch's cols from xf
            self._cols, self._xf = None, xf
            step = self.block * (m // n)
            for a in range(0, m, step):
                b = min(m, a + step)
                np.matmul(w2b, self._shifted_cols(xf, "cols_e", a, b), out=zt[:, a:b])
        return zt.reshape((f, n) + self.padded_sizes)

    def _shifted_cols(self, xf, key: str, a: int, b: int) -> np.ndarray:
        """Columns a:b of the im2col matrix of xf (C, M): rows (j, c) xf[c, a + s_j:b + s_j],
        zero past the end of xf, then a row of ones."""
        c_in, m = xf.shape
        ck = len(self.shifts) * c_in
        cols = self.ws.get(key, (ck + 1, b - a), self.dtype)
        for j, s in enumerate(self.shifts):
            e = min(b, m - s)
            block = cols[j * c_in:(j + 1) * c_in]
            np.copyto(block[:, :e - a], xf[:, a + s:e + s])
            block[:, e - a:] = 0
        cols[ck] = 1
        return cols

    def _forward_shifted(self, x, training):
        zt = self._zt_shifted(x, training)
        z = self.ws.get("z", zt.shape[1::-1] + self.out_sizes, self.dtype)
        np.copyto(z, zt[self.outer].swapaxes(0, 1))
        return z

    def _forward_into_next(self, x, training):
        """act(Z) as the next convolution's padded input (F, N, *padded_sizes), which it reads
        with its own left padding `shifted_next`: with equal padded sizes, Z's column i is that
        input's column i + lo, so the activation runs over whole contiguous rows (several times
        faster than over strided (F, N, O) views); the columns that land in the padding are
        Z's dropped ones, set back to zero."""
        zt = self._zt_shifted(x, training)
        lo, o = self.shifted_next, self.out_sizes[0]
        y = self.ws.get("y_next", zt.shape, self.dtype)
        yf, m = y.reshape(zt.shape[0], -1), y[0].size
        self._z = self._slope = None
        self._y = self.act.forward(zt.reshape(yf.shape)[:, :m - lo], out=yf[:, lo:])
        y[:, :, :lo] = 0
        y[:, :, lo + o:] = 0
        return y

    def _backward_from_next(self, dy):
        """dy (F, N, *padded_sizes) as the next convolution's backward leaves it (see
        _forward_into_next); dZ is zero in the columns the forward drops."""
        lo = self.shifted_next
        dzf = self.ws.get("dzt_s", dy.shape, self.dtype)
        d, m = dzf.reshape(dy.shape[0], -1), dy[0].size
        self.act.backward(None, self._y, dy.reshape(d.shape)[:, lo:], out=d[:, :m - lo])
        dzf[:, :, self.out_sizes[0]:] = 0
        return self._backward_shifted(dzf)

    def _backward_shifted(self, dzf):
        """dzf: dZ as (F, N, *padded), zero outside self.outer (see _flat_padded)."""
        nd, cols = self.ND, self._cols
        if cols is None:
            cols = self._shifted_cols(self._xf, "cols_s", 0, self._xf.shape[1])
        W = self.params["W"]
        f, c_in = W.shape[:2]
        n = dzf.shape[1]
        dzf = dzf.reshape(f, -1)
        m = dzf.shape[1]
        ck = len(self.shifts) * c_in
        # (K*C + 1, F): this orientation runs ~20% faster than dZ @ cols^T (long inner axis)
        dw2t = self.ws.get("dw2t", (ck + 1, f), self.dtype)
        np.matmul(cols, dzf.T, out=dw2t)
        self.grads["W"][...] = dw2t[:ck].reshape(self.kernel + (c_in, f)).transpose(nd + 1, nd, *range(nd))
        if "b" in self.params:
            self.grads["b"][...] = dw2t[ck]
        if not self.input_grad:
            return None
        dcols = self.ws.get("dcols_s", (ck, m), self.dtype)
        np.matmul(self._w2().T, dzf, out=dcols)
        # col2im: one contiguous shifted add per kernel offset; offset 0 has shift 0 and starts it.
        dxt = self.ws.get("dxt", (c_in, m), self.dtype)
        np.copyto(dxt, dcols[:c_in])
        for j, s in enumerate(self.shifts[1:], 1):
            dxt[:, s:] += dcols[j * c_in:(j + 1) * c_in, :m - s]
        dxt = dxt.reshape((c_in, n) + self.padded_sizes)
        if self.shifted_in:     # the previous convolution reads it where its input was
            return dxt
        dx = self.ws.get("dx", (n, c_in) + tuple(self.input_shape[1:]), self.dtype)
        np.copyto(dx, dxt[self.inner].swapaxes(0, 1))
        return dx

    def _flat_padded(self, key: str, a, where) -> np.ndarray:
        """a (N, C, *S) channels-major into the padded buffer `key` (C, N, *padded_sizes) at
        `where`: the input of the forward, the output gradient of the backward. Each key is
        always written at the same `where`, so its padding stays as zeroed when allocated."""
        buf = self.ws.zeros(key, (a.shape[1], a.shape[0]) + self.padded_sizes, self.dtype)
        np.copyto(buf[where], a.swapaxes(0, 1))
        return buf

    # -- rows are output positions (many input channels) ---------------------------------
    # (F, C, *K) <-> (F, prod(K)*C): channels innermost, matching the cols layout.
    def _w2(self) -> np.ndarray:
        W = self.params["W"]
        return W.transpose(0, *range(2, 2 + self.ND), 1).reshape(W.shape[0], -1)

    def _forward_rows(self, x, training):
        n, f = x.shape[0], self.hparams["filters"]
        xp = self._start_rows(x)
        if self.channels_last_out:
            z = self.ws.get("z", (n,) + self.out_sizes + (f,), self.dtype)
        else:
            z = self.ws.get("z", (n, f) + self.out_sizes, self.dtype)
        if training or n <= self.block:
            # one block: the backward pass reads this batch's cols
            self._cols = self.ws.get("cols", (n,) + self.out_sizes + self.kernel + (xp.shape[1],), self.dtype)
            self._rows_block(self._cols, 0, n, z)
            return z
        # evaluation: blocks through one block-sized cols that stays in cache; a backward
        # pass after it (gradient checks) rebuilds the batch's cols from the padded input
        self._cols, self._xp = None, xp
        cols = self.ws.get("cols_block", (self.block,) + self.out_sizes + self.kernel + (xp.shape[1],), self.dtype)
        for s in range(0, n, self.block):
            e = min(n, s + self.block)
            self._rows_block(cols[:e - s], s, e, z[s:e])
        return z

    def _start_rows(self, x):
        """Pad x and lay out W2; _rows_block then computes z a block of samples at a time."""
        nd, f, c_in = self.ND, self.hparams["filters"], self.input_shape[0]
        if self.channels_last_in:
            # seen as (N, C, *S) with channels innermost in memory: the im2col copies below then
            # gather runs of C_in contiguous values instead of single strided ones
            xp, self._xp_buf = shapes.padded(x, self.pads, self._xp_buf, channels_last=True)
            xp = xp.transpose(0, nd + 1, *range(1, nd + 1))
        else:
            xp, self._xp_buf = shapes.padded(x, self.pads, self._xp_buf)
        self._win = shapes.windows(xp, self.kernel, self.stride, self.dilation, self.out_sizes)
        # W2^T as the transpose of a contiguous W2: OpenBLAS runs cols @ W2^T ~5% faster with
        # its second operand flagged transposed than stored (K*C, F) (12544x288 @ 288x64: 4.66 vs 4.92 ms)
        w2 = self.ws.get("w2", (f, len(self.offsets), c_in), self.dtype)
        np.copyto(w2.reshape((f,) + self.kernel + (c_in,)), self.params["W"].transpose(0, *range(2, 2 + nd), 1))
        self._w2t = w2.reshape(f, -1).T
        return xp

    def _rows_block(self, cols, s, e, z):
        """z (e-s, F, *O) or channels-last (e-s, *O, F) of samples s:e, their im2col into `cols`."""
        nd, f, p = self.ND, self.hparams["filters"], math.prod(self.out_sizes)
        np.copyto(cols, self._win[s:e].transpose(0, *range(2, 2 + 2 * nd), 1))
        rows = cols.reshape((e - s) * p, -1)
        # The GEMM as cols @ W2^T, (N*P, F): with the long axis as the rows of the output it
        # runs ~20% faster than W2 @ cols^T, more than the per-sample transpose it then needs
        # (measured at 288 rows, 64 filters: 3.3 + 0.4 vs 4.2 + 0.3 ms).
        if self.channels_last_out:
            zb = np.matmul(rows, self._w2t, out=z.reshape(-1, f))
            if "b" in self.params:
                zb += self.params["b"]
            return
        zb = np.matmul(rows, self._w2t, out=self.ws.get("zr", ((e - s) * p, f), self.dtype))
        zb = zb.reshape(e - s, p, f).transpose(0, 2, 1)
        if "b" in self.params:
            np.add(zb, self.params["b"][:, None], out=z.reshape(e - s, f, p))   # the bias rides on the transpose
        else:
            np.copyto(z.reshape(e - s, f, p), zb)

    def _im2col_rows(self, xp, n):
        """The batch's cols (N, *O, *K, C) in one strided copy from padded input xp; kept as _cols."""
        win = shapes.windows(xp, self.kernel, self.stride, self.dilation, self.out_sizes)
        cols = self.ws.get("cols", (n,) + self.out_sizes + self.kernel + (xp.shape[1],), self.dtype)
        np.copyto(cols, win.transpose(0, *range(2, 2 + 2 * self.ND), 1))
        self._cols = cols
        return cols

    def _backward_rows(self, dz):
        cols = self._im2col_rows(self._xp, dz.shape[0]) if self._cols is None else self._cols
        n, nd = cols.shape[0], self.ND
        W = self.params["W"]
        f, c_in = W.shape[:2]
        p = math.prod(self.out_sizes)
        # (N, F, *O) -> (N*P, F): rows are output positions, like the rows of cols.
        if self.channels_last_out:
            dzt = dz.reshape(n * p, f)
        else:
            dzt = self.ws.get("dzt", (n * p, f), self.dtype)
            np.copyto(dzt.reshape(n, p, f), dz.reshape(n, f, p).transpose(0, 2, 1))
        dw2 = dzt.T @ cols.reshape(n * p, -1)                                           # (F, K*C)
        self.grads["W"][...] = dw2.reshape((f,) + self.kernel + (c_in,)).transpose(0, nd + 1, *range(1, nd + 1))
        if "b" in self.params:
            # db as a product with ones: ~3x faster than a sum down the long axis of dzt
            np.matmul(self.ws.ones(n * p, self.dtype), dzt, out=self.grads["b"])
        if not self.input_grad:
            return None
        # dcols (block*P, K*C) = dZ @ W2 in one GEMM per block, W2 passed as the transpose of a
        # contiguous W2^T (the faster operand, as in the forward). Offset k's part is the view
        # (block, *O, C) of column block k: runs of C contiguous values for the col2im adds.
        # For 32->64 3x3 on 14x14, batch 64: 6.2-6.5 ms with this and blocks of 8 samples,
        # against 6.7-7.0 as K products of C columns each (kernel-offset-major, contiguous adds).
        sizes = tuple(self.input_shape[1:])
        k = len(self.offsets)
        if self.fold:
            # Folded: with stride and dilation 1 along the last axis, last-axis offset j of output
            # (.., o) lands on input column X = o + j - pad, so dzs[.., X, j, :] = dz[.., X - j + pad, :]
            # (0 off the output) and one GEMM dzs (block*P', kw*F) @ W3 (kw*F, K'*C), W3[(j, f), (i, c)]
            # = W[f, c, i, j], sums over j too: its (block, *O', X, K', C) result leaves the col2im
            # the K' = K/kw offsets i of the other axes (O': their outputs). For 32->64 3x3 on 14x14,
            # blocks of 9 samples: 0.59 ms against 0.75 for the dx GEMM + col2im of all 9 offsets.
            kw = self.kernel[-1]
            k //= kw
            w3 = self.ws.get("w3", (kw, f, k, c_in), self.dtype)
            np.copyto(w3.reshape((kw, f) + self.kernel[:-1] + (c_in,)), W.transpose(nd + 1, 0, *range(2, nd + 1), 1))
            w2 = w3.reshape(kw * f, k * c_in)
            outs = self.out_sizes[:-1] + sizes[-1:]
            dzs = self.ws.get("dzs", (min(n, self.block),) + outs + (kw, f), self.dtype)
        else:
            w2t = self.ws.get("w2t", (k, c_in, f), self.dtype)
            np.copyto(w2t.reshape(self.kernel + (c_in, f)), W.transpose(*range(2, 2 + nd), 1, 0))
            w2 = w2t.reshape(k * c_in, f).T
            outs = self.out_sizes
        q = math.prod(outs)
        dcols = self.ws.get("dcols", (min(n, self.block) * q, k * c_in), self.dtype)
        if self.channels_last_in:
            dx = dxq = self.ws.get("dx", (n,) + sizes + (c_in,), self.dtype)
        else:
            dx = self.ws.get("dx", (n, c_in) + sizes, self.dtype)
            dxq = self.ws.get("dxq", (n,) + sizes + (c_in,), self.dtype)
        lead = (slice(None),)
        for s in range(0, n, self.block):
            e = min(n, s + self.block)
            if self.fold:
                dzb, ds = dzt[s * p:e * p].reshape((e - s,) + self.out_sizes + (f,)), dzs[:e - s]
                for j, cut in enumerate(self.fold_cuts):
                    if cut is None:
                        ds[..., j, :] = 0
                        continue
                    (into,), (frm,) = cut
                    ds[..., :into.start, j, :] = 0
                    ds[..., into, j, :] = dzb[..., frm, :]
                    ds[..., into.stop:, j, :] = 0
                db = np.matmul(ds.reshape((e - s) * q, -1), w2, out=dcols[:(e - s) * q])
            else:
                db = np.matmul(dzt[s * p:e * p], w2, out=dcols[:(e - s) * q])
            db = db.reshape((e - s,) + outs + (k, c_in))
            # col2im, channels-last, one slice-add per kernel offset (never per output position).
            dq = dxq[s:e]
            if self.covering is None:
                dq.fill(0)
            for j, into, frm in self.interior:
                if j == self.covering:
                    np.copyto(dq[lead + into], db[lead + frm + (j,)])
                else:
                    dq[lead + into] += db[lead + frm + (j,)]
            if not self.channels_last_in:
                np.copyto(dx[s:e], dq.transpose(0, nd + 1, *range(1, nd + 1)))
        return dx

    # -- columns are output positions (few input channels) --------------------------------
    def _forward_channels(self, x):
        n = x.shape[0]
        z = self.ws.get("z", (n, self.hparams["filters"]) + self.out_sizes, self.dtype)
        self._start_channels(x)
        self._channels_block(0, n, z)
        return z

    def _start_channels(self, x):
        """Pad x and size the batch's cols (kept as _cols) and [W2 b]; _channels_block then
        fills cols and computes z a block of samples at a time."""
        n, f, c_in = x.shape[0], self.hparams["filters"], x.shape[1]
        xp, self._xp_buf = shapes.padded(x, self.pads, self._xp_buf)
        self._win = shapes.windows(xp, self.kernel, self.stride, self.dilation, self.out_sizes)
        # With a bias, cols[n] ends with a row of ones and W2 with the column b, so the GEMMs
        # also add b and give db: no separate passes over the (N, F, *O) output and gradient.
        ck, bias = c_in * len(self.offsets), "b" in self.params
        self._cols = self.ws.get("cols", (n, ck + bias, math.prod(self.out_sizes)), self.dtype)
        self._w2b = self.params["W"].reshape(f, ck)
        if bias:
            self._w2b = self.ws.get("w2c", (f, ck + 1), self.dtype)
            self._w2b[:, :ck] = self.params["W"].reshape(f, ck)
            self._w2b[:, ck] = self.params["b"]

    def _channels_block(self, s, e, z):
        """z (e-s, F, *O) of samples s:e, their im2col into _cols[s:e]."""
        nd, c_in = self.ND, self.input_shape[0]
        ck = c_in * len(self.offsets)
        cols = self._cols[s:e]
        # im2col in one strided copy: (N, C, *O, *K) -> (N, C, *K, *O), output positions innermost.
        np.copyto(cols[:, :ck].reshape((e - s, c_in) + self.kernel + self.out_sizes),
                  self._win[s:e].transpose(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd)))
        if cols.shape[1] > ck:
            cols[:, ck] = 1
        # one GEMM per sample, straight into the (N, F, *O) output: no transpose pass after it
        np.matmul(self._w2b, cols, out=z.reshape(e - s, z.shape[1], -1))

    def _backward_channels(self, dz):
        n = dz.shape[0]
        dx = self._channels_grads(0, n, dz, n)
        self._channels_grads_sum(n)
        return dx

    def _channels_grads(self, s, e, dz, total):
        """For samples s:e of a batch of `total`, from their dz (e-s, F, *O): their terms of
        [dW2 db] (summed by _channels_grads_sum) and, with input_grad, their rows of dx."""
        cols, nd = self._cols[s:e], self.ND
        W = self.params["W"]
        f, c_in = W.shape[:2]
        p = math.prod(self.out_sizes)
        ck = c_in * len(self.offsets)
        dz3 = np.ascontiguousarray(dz).reshape(e - s, f, p)
        # [dW2 db] = sum over samples of dz[n] @ cols[n]^T: one GEMM per sample, then one sum
        per_sample = self.ws.get("dw_n", (total, f, cols.shape[1]), self.dtype)[s:e]
        np.matmul(dz3, cols.transpose(0, 2, 1), out=per_sample)
        if not self.input_grad:
            return None
        dcols = self.ws.get("dcols", (e - s, ck, p), self.dtype)
        np.matmul(W.reshape(f, ck).T, dz3, out=dcols)
        dcols = dcols.reshape((e - s, c_in) + self.kernel + self.out_sizes)
        # col2im, channels-first like dx: one strided slice-add per kernel offset (never per
        # output position); offset k's block dcols[:, :, *k] is already (N, C, *O).
        sp = tuple(L + lo + hi for L, (lo, hi) in zip(self.input_shape[1:], self.pads))
        dxp = self.ws.get("dxp", (e - s, c_in) + sp, self.dtype)
        dxp.fill(0)
        lead = (slice(None), slice(None))
        for off in self.offsets:
            dxp[lead + shapes.offset_slices(off, self.stride, self.dilation, self.out_sizes)] += dcols[lead + off]
        padded = any(lo or hi for lo, hi in self.pads)
        if not padded and e - s == total:
            return dxp
        dx = self.ws.get("dx", (total, c_in) + tuple(self.input_shape[1:]), self.dtype)
        np.copyto(dx[s:e], shapes.strip_padding(dxp, self.pads) if padded else dxp)
        return dx

    def _channels_grads_sum(self, total):
        """grads W and b: the sum over the batch of the per-sample terms _channels_grads left."""
        f, ck = self.hparams["filters"], self.input_shape[0] * len(self.offsets)
        bias = "b" in self.params
        dw2 = self.ws.get("dw2c", (f, ck + bias), self.dtype)
        np.sum(self.ws.get("dw_n", (total, f, ck + bias), self.dtype), axis=0, out=dw2)
        self.grads["W"].reshape(f, ck)[...] = dw2[:, :ck]
        if bias:
            self.grads["b"][...] = dw2[:, ck]


@LAYERS.register("conv1d")
class Conv1D(_Conv):
    __doc__ = _Conv.__doc__.replace("N-d convolution", "1-D convolution").replace(
        "trailing `ND` axes", "last axis (N, C, L)")
    ND = 1
    LAYOUT = "(C, L)"


@LAYERS.register("conv2d")
class Conv2D(_Conv):
    __doc__ = _Conv.__doc__.replace("N-d convolution", "2-D convolution").replace(
        "trailing `ND` axes", "last two axes (N, C, H, W)")
    ND = 2
    LAYOUT = "(C, H, W)"


# -- pooling ------------------------------------------------------------------------------

# The integer as wide as each float dtype: max pooling routes gradients with bit masks (-1 is
# the all-ones word, and an int8 -1 widens to it, so a mask may be kept a byte per element).
_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


class _Pool(CheckedLayer):
    """Max or average pooling over the trailing `ND` axes of (N, C, *S) -> (N, C, *O).

    Notes
    -----
    O per axis = floor((S + padding - size) / stride) + 1. Max pooling routes each output's
    gradient to the one input that won its window (the first of tied maxima in C order over
    the window, as PyTorch does); "same" padding pads with -inf so a pad never wins. Average
    pooling divides by the number of real (non-pad) inputs in the window, as Keras does, so
    with "same" padding the border windows average fewer elements.

    A window is a box, so pooling is separable: it runs one spatial axis at a time, last
    axis first, each pass a few whole-array ufunc calls over strided views (one per window
    element along that axis) instead of a gather of every window. For max, each pass also
    records which element along its axis won (the first of ties); reducing the last axis
    first and taking the first winning row afterwards picks exactly the first maximum in C
    order. The backward pass replays the passes in reverse, routing (max) or spreading
    (avg) the gradient along one axis at a time.
    """

    ND = 2
    LAYOUT = "(C, H, W)"
    MODE = "max"
    PARAMS = {
        "size": Param("int_or_tuple", 2, ge=1, doc="window extent, one int or one per spatial axis"),
        "stride": Param("int_or_tuple", None, ge=1, nullable=True, doc="step between windows; default = size"),
        "padding": Param("str", "valid", choices=("valid", "same"),
                         doc="'valid' (no padding) or 'same' (Keras: output = ceil(input / stride))"),
    }

    def __init__(self, **hparams):
        super().__init__(**hparams)
        h = self.hparams
        self.size = shapes.as_tuple(h["size"], self.ND, "size", self.NAME)
        self.stride = self.size if h["stride"] is None else shapes.as_tuple(h["stride"], self.ND, "stride", self.NAME)
        for what, t in (("size", self.size), ("stride", self.stride)):
            if any(v < 1 for v in t):
                raise ConfigError(f"{self.NAME}: {what} must be >= 1, got {t!r}")
        if h["padding"] not in ("valid", "same"):
            raise ConfigError(f"{self.NAME}: padding must be 'valid' or 'same', got {h['padding']!r}")
        self._xp_buf = None
        self._xp = None
        self._routed = False
        # Set by link_convs_and_pools: the relu of the convolution before, applied to the output;
        # that convolution, when this pool runs both of them in training (_forward_with_conv).
        self.post_act = None
        self.conv_before = None
        self._with_conv = False

    def _build(self, input_shape, rng):
        shapes.expect_rank(self.NAME, input_shape, self.ND + 1, self.LAYOUT)
        sizes = input_shape[1:]
        ones = (1,) * self.ND
        self.pads = shapes.resolve_padding(self.NAME, self.hparams["padding"], sizes, self.size, self.stride, ones)
        self.out_sizes = shapes.conv_output_sizes(self.NAME, sizes, self.size, self.stride, ones, self.pads)
        self.padded_sizes = tuple(L + lo + hi for L, (lo, hi) in zip(sizes, self.pads))
        self.set_layout(False, False)
        if self.MODE == "avg":
            # Real elements per window: pool a padded mask of ones once.
            mask, _ = shapes.padded(np.ones((1, 1) + tuple(sizes), dtype=self.dtype), self.pads, None)
            win = shapes.windows(mask, self.size, self.stride, ones, self.out_sizes)
            count = win.sum(axis=tuple(range(-self.ND, 0)))[0, 0]
            self.inv_count = (1.0 / count).astype(self.dtype)
        return (input_shape[0],) + self.out_sizes

    def set_layout(self, last_in: bool, last_out: bool) -> None:
        """Take x and give dx channels-first (N, C, *S) or, `last_in`, channels-last (N, *S, C);
        give y and take dy (N, C, *O) or, `last_out`, (N, *O, C) (see link_convs_and_pools).
        `last_in` only without padding (shapes.padded pads channels-first here)."""
        self.channels_last_in, self.channels_last_out = last_in, last_out
        lead = (slice(None),) if last_in else (slice(None), slice(None))
        # Pass i (i = ND-1 first) reduces spatial axis i: its input has axes < i padded and axes > i
        # already pooled. `tiles`: the windows along that axis cover its input exactly once, so the
        # backward pass may assign slices instead of zero-filling and adding.
        self.passes = []
        for i in reversed(range(self.ND)):
            before = self.padded_sizes[:i] + (self.padded_sizes[i],) + self.out_sizes[i + 1:]
            after = self.padded_sizes[:i] + self.out_sizes[i:]
            k, s, o = self.size[i], self.stride[i], self.out_sizes[i]
            tiles = s == k and o * k == self.padded_sizes[i]
            slices = [lead + (slice(None),) * i + (slice(j, j + (o - 1) * s + 1, s),) for j in range(k)]
            self.passes.append((i, before, after, slices, tiles))

    def _full(self, n: int, c: int, spatial: tuple[int, ...], last: bool) -> tuple[int, ...]:
        """The shape of a batch of n samples, c channels, channels-last or not."""
        return (n,) + spatial + (c,) if last else (n, c) + spatial

    def _inv_count(self, last: bool) -> np.ndarray:
        """1 / (real elements per window), (*O), to broadcast over a batch channels-last or not."""
        return self.inv_count[..., None] if last else self.inv_count

    def _relaid(self, a: np.ndarray, last_in: bool, last_out: bool) -> np.ndarray:
        """A view of `a` moved from one layout to the other (itself if they agree)."""
        if last_in == last_out:
            return a
        if last_in:
            return a.transpose(0, self.ND + 1, *range(1, self.ND + 1))
        return a.transpose(0, *range(2, self.ND + 2), 1)

    def _reduce(self, xp, route: bool, start: int = 0, total: int | None = None):
        """Run the passes forward over padded input xp; with `route`, record each pass's winners.
        xp may be samples start:start+len(xp) of a batch of `total`: their winners go there."""
        n, c = xp.shape[0], xp.shape[-1 if self.channels_last_in else 1]
        rows = slice(start, start + n)
        total = n if total is None else total
        h = xp
        for p, (i, _, after, slices, _) in enumerate(self.passes):
            out = self.ws.get(f"pass{p}", self._full(n, c, after, self.channels_last_in), self.dtype)
            views = [h[sl] for sl in slices]
            if len(views) == 1:
                np.copyto(out, views[0])
            elif self.MODE == "avg":
                np.add(views[0], views[1], out=out)
                for v in views[2:]:
                    out += v
            elif not route:
                np.maximum(views[0], views[1], out=out)
                for v in views[2:]:
                    np.maximum(out, v, out=out)
            elif len(views) == 2:
                # Two elements (every pass of a 2x2 pool): record the mask the backward pass
                # ANDs with, -1 (all ones) where the first element won (v1 not strictly greater),
                # so routing there is one AND and one XOR instead of three calls per element.
                # Kept as int8 (the AND widens it): a fifth of the forward's time less than int32.
                gt = self.ws.get(f"gt{p}", out.shape, np.bool_)
                np.greater(views[1], views[0], out=gt)
                np.maximum(views[0], views[1], out=out)
                keep = self.ws.get(f"keep{p}", (total,) + out.shape[1:], np.int8)[rows]
                np.subtract(gt.view(np.int8), 1, out=keep)
            else:
                win = self.ws.get(f"win{p}", (total,) + out.shape[1:], np.uint8)[rows]
                gt = self.ws.get(f"gt{p}", out.shape, np.bool_)
                step = self.ws.get(f"step{p}", out.shape, np.uint8)
                np.copyto(out, views[0])
                for j, v in enumerate(views[1:], 1):
                    # Strictly greater, so an earlier element keeps a tie. j exceeds every index
                    # recorded so far, so max(win, j * gt) sets win = j exactly where v won
                    # (a masked copy would be branchy and ~10x slower on random masks).
                    np.greater(v, out, out=gt)
                    np.maximum(out, v, out=out)
                    if j == 1:
                        np.copyto(win, gt)
                    else:
                        np.multiply(gt.view(np.uint8), np.uint8(j), out=step)
                        np.maximum(win, step, out=win)
            h = out
        return h

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        if training and self.conv_before is not None:
            return self._forward_with_conv(x)
        self._with_conv = False
        fill = -np.inf if self.MODE == "max" else 0.0
        xp, self._xp_buf = shapes.padded(x, self.pads, self._xp_buf, fill=fill)
        self._xp = xp
        # Evaluation skips recording winners; a backward after it (gradient checks) replays them.
        self._routed = training and self.MODE == "max"
        y = self._reduce(xp, self._routed)
        if self.MODE == "avg":
            y *= self._inv_count(self.channels_last_in)
        # into the next layer's layout, the relu applied on the way
        y = self._relaid(y, self.channels_last_in, self.channels_last_out)
        if self.post_act is None and self.channels_last_in == self.channels_last_out:
            return y
        # into its own buffer: a backward after evaluation replays _reduce over the last pass's
        self._y = self.ws.get("y", y.shape, self.dtype)
        if self.post_act is None:
            np.copyto(self._y, y)
        else:
            self.post_act.forward(y, out=self._y)
        return self._y

    def _forward_with_conv(self, x):
        """Training forward of the convolution before (given its input x) and this pool, a block
        of samples at a time: each block's z is pooled while still in cache (see link_convs_and_pools)."""
        conv, last_in = self.conv_before, self.channels_last_in
        n, f = x.shape[0], conv.hparams["filters"]
        if conv.channels_layout:
            conv._start_channels(x)
        else:
            conv._start_rows(x)
            conv._cols = conv.ws.get("cols", (n,) + conv.out_sizes + conv.kernel + (conv.input_shape[0],), self.dtype)
        self._xp, self._routed, self._with_conv = None, True, True
        self._y = self.ws.get("y", self._full(n, f, self.out_sizes, self.channels_last_out), self.dtype)
        for s in range(0, n, conv.pool_block):
            e = min(n, s + conv.pool_block)
            z = conv.ws.get("z", self._full(e - s, f, conv.out_sizes, last_in), self.dtype)
            if conv.channels_layout:
                conv._channels_block(s, e, z)
            else:
                conv._rows_block(conv._cols[s:e], s, e, z)
            y = self._relaid(self._reduce(z, True, s, n), last_in, self.channels_last_out)
            if self.post_act is None:
                np.copyto(self._y[s:e], y)
            else:
                self.post_act.forward(y, out=self._y[s:e])
        return self._y

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        conv = self.conv_before
        if self._with_conv and conv.channels_layout:
            # after _forward_with_conv: both backward passes too, a block of samples at a time,
            # so the convolution reads each block's dz while it is in cache
            n, dx = dy.shape[0], None
            for s in range(0, n, conv.pool_block):
                e = min(n, s + conv.pool_block)
                dx = conv._channels_grads(s, e, self._backward_block(dy[s:e], s, n), n)
            conv._channels_grads_sum(n)
            conv.dx_from_pool = True
            return dx
        if self.MODE == "max" and not self._routed:
            self._reduce(self._xp, True)
            self._routed = True
        g = self._backward_block(dy, 0, dy.shape[0])
        if not any(lo or hi for lo, hi in self.pads):
            return g
        dx = self.ws.get("dx", (dy.shape[0],) + self.input_shape, self.dtype)
        np.copyto(dx, shapes.strip_padding(g, self.pads))
        return dx

    def _backward_block(self, dy, start: int, total: int):
        """The gradient of the pool's (padded) input for samples start:start+len(dy) of a batch
        of `total`, from theirs of its output (in a buffer of the block's size)."""
        last_in = self.channels_last_in
        n, c = dy.shape[0], self.input_shape[0]
        rows = slice(start, start + n)
        if self.MODE == "max" and self.post_act is None and last_in == self.channels_last_out:
            g = dy
        else:
            g = self.ws.get("g", self._full(n, c, self.out_sizes, last_in), self.dtype)
            gv = self._relaid(g, last_in, self.channels_last_out)   # written in dy's layout
            if self.MODE == "avg":
                np.multiply(dy, self._inv_count(self.channels_last_out), out=gv)
            elif self.post_act is not None:
                self.post_act.backward(None, self._y[rows], dy, out=gv)
            else:
                np.copyto(gv, dy)
        for p in reversed(range(len(self.passes))):
            i, before, _, slices, tiles = self.passes[p]
            dst = self.ws.get(f"back{p}", self._full(n, c, before, last_in), self.dtype)
            if self.MODE == "avg" or len(slices) == 1:   # a one-element window passes g through
                if not tiles:
                    dst.fill(0)
                for sl in slices:
                    if tiles:
                        np.copyto(dst[sl], g)
                    else:
                        dst[sl] += g
            elif len(slices) == 2:
                # g AND keep goes to the first element, g XOR that (= g AND NOT keep) to the second.
                word = _INT[self.dtype]
                keep = self.ws.get(f"keep{p}", (total,) + g.shape[1:], np.int8)[rows]
                gbits = g.view(word)
                if tiles:
                    first = dst.view(word)[slices[0]]
                    np.bitwise_and(gbits, keep, out=first)
                    np.bitwise_xor(gbits, first, out=dst.view(word)[slices[1]])
                else:
                    part = self.ws.get(f"mask{p}", g.shape, word)
                    dst.fill(0)
                    np.bitwise_and(gbits, keep, out=part)
                    dst[slices[0]] += part.view(self.dtype)
                    np.bitwise_xor(gbits, part, out=part)
                    dst[slices[1]] += part.view(self.dtype)
            else:
                # g where window element j won, else +0, as a bitwise AND with an all-ones or
                # all-zeros word: exact, branch-free, and 0 (not NaN) beside an infinite g.
                word = _INT[self.dtype]
                win = self.ws.get(f"win{p}", (total,) + g.shape[1:], np.uint8)[rows]
                sel = self.ws.get(f"gt{p}", g.shape, np.bool_)
                mask = self.ws.get(f"mask{p}", g.shape, word)
                gbits = g.view(word)
                if not tiles:
                    dst.fill(0)
                for j, sl in enumerate(slices):
                    np.equal(win, j, out=sel)
                    np.subtract(0, sel.view(np.uint8), out=mask, dtype=word)
                    if tiles:
                        np.bitwise_and(gbits, mask, out=dst.view(word)[sl])
                    else:
                        np.bitwise_and(gbits, mask, out=mask)
                        dst[sl] += mask.view(self.dtype)
            g = dst
        return g


def link_convs_and_pools(layers) -> None:
    """Let neighbouring convolutions and pools share work; `layers` run in this order.

    A max pool right after a relu convolution applies the relu itself: relu(max(z)) ==
    max(relu(z)) exactly, so the pool may take the convolution's z and apply the relu to its
    output, 4x smaller with 2x2 windows, saving the relu's forward and backward passes over
    the convolution's output. The gradients are the same too: where a window's max is > 0 the
    relu is strictly increasing there, so both ways route dy to the same (first) maximum,
    times 1; where it is <= 0 every element gets 0 either way (relu' = 0 at the winner,
    whichever element that is). Only the winner's signed zero may move within such a window,
    and a zero's sign changes no sum the gradients are made of unless every term is 0.

    A rows-layout convolution (see _Conv) exchanges arrays with a pool beside it channels-last:
    its GEMMs write z and read dz as (N*P, F), and its im2col and col2im run channels innermost,
    so after it an (unpadded) pool takes z and gives dz as (N, *O, F), and before it a pool
    gives x and takes dx as (N, *S, C). That saves a transpose of each array, and the pool's
    passes run over contiguous runs of channels instead of rows of a few positions; a pool
    transposes only its own (smaller) output and dy when its neighbours differ.

    In training, such a relu convolution (not the shifted layout) and its unpadded max pool
    run as one: the pool's forward computes z a block of samples at a time (_Conv.pool_block)
    and pools each block while it is still in the L2 cache, instead of the pool reading back
    the batch's z after the convolution has written all of it (in a CNN step the pool runs at
    half the speed it has alone, reading z from memory). The pool keeps the routing masks of
    the whole batch; the convolution keeps its cols. For a channels-layout convolution the
    pool runs both backward passes the same way (each block's dz feeds the convolution's
    per-sample GEMMs while in cache) and the convolution's backward passes on the dx it got.
    For the rows layout blocking its backward gained nothing measurable (dW is one GEMM over
    the batch either way), so that backward stays as it is.

    A shifted-layout convolution (see _Conv) followed by another of the same padded size (as
    "same" convolutions of one kernel size are) writes act(z) from its GEMM's output straight
    into the next one's padded channels-major input, and takes dx back as the next one's
    col2im leaves it, both (C, N, *padded): that saves, each way, the copy to or from
    (N, C, *S), the activation's own pass, and the refill of the padded buffer. Only for a
    relu or no activation: elementwise, so it may run over the padded rows, and its backward
    needs only y.
    Called on a container's layers whenever it is built; resets stale links.
    """
    for layer in layers:
        if isinstance(layer, _Conv):
            layer.act_deferred = layer.pooled = layer.channels_last_in = layer.channels_last_out = False
            layer.shifted_next, layer.shifted_in = None, False
        elif isinstance(layer, _Pool):
            layer.post_act = layer.conv_before = None
    for conv, pool in zip(layers, layers[1:]):
        if isinstance(conv, _Conv) and isinstance(pool, _Pool):
            if type(conv.act) is ReLU and pool.MODE == "max":
                conv.act_deferred = True
                pool.post_act = conv.act
            conv.channels_last_out = conv.rows_layout and not any(lo or hi for lo, hi in pool.pads)
            if conv.act_deferred and not conv.shifted_layout and not any(lo or hi for lo, hi in pool.pads):
                conv.pooled, pool.conv_before = True, conv
    for conv, nxt in zip(layers, layers[1:]):
        if (isinstance(conv, _Conv) and isinstance(nxt, _Conv) and conv.shifted_layout and nxt.shifted_layout
                and type(conv.act) in (ReLU, Identity) and nxt.padded_sizes == conv.padded_sizes):
            conv.shifted_next = nxt.pads[0][0]
            nxt.shifted_in = True
    for i, pool in enumerate(layers):
        if isinstance(pool, _Pool):
            before, after = layers[i - 1] if i else None, layers[i + 1] if i + 1 < len(layers) else None
            pool.set_layout(isinstance(before, _Conv) and before.channels_last_out,
                            isinstance(after, _Conv) and after.rows_layout)
            if pool.channels_last_out:
                after.channels_last_in = True


@LAYERS.register("maxpool1d")
class MaxPool1D(_Pool):
    __doc__ = "1-D max pooling of (N, C, L)." + _Pool.__doc__.split("\n", 1)[1]
    ND, LAYOUT, MODE = 1, "(C, L)", "max"


@LAYERS.register("maxpool2d")
class MaxPool2D(_Pool):
    __doc__ = "2-D max pooling of (N, C, H, W)." + _Pool.__doc__.split("\n", 1)[1]
    ND, LAYOUT, MODE = 2, "(C, H, W)", "max"


@LAYERS.register("avgpool1d")
class AvgPool1D(_Pool):
    __doc__ = "1-D average pooling of (N, C, L)." + _Pool.__doc__.split("\n", 1)[1]
    ND, LAYOUT, MODE = 1, "(C, L)", "avg"


@LAYERS.register("avgpool2d")
class AvgPool2D(_Pool):
    __doc__ = "2-D average pooling of (N, C, H, W)." + _Pool.__doc__.split("\n", 1)[1]
    ND, LAYOUT, MODE = 2, "(C, H, W)", "avg"


@LAYERS.register("global_avg_pool")
class GlobalAvgPool(CheckedLayer):
    """Mean over every spatial (or time) axis: (N, C, *S) -> (N, C), or (N, *S, C) -> (N, C).

    data_format "channels_first" suits conv stacks (N, C, H, W); "channels_last" suits
    sequence models (N, T, D), where it averages over time.
    """

    PARAMS = {
        "data_format": Param("str", "channels_first", choices=("channels_first", "channels_last"),
                             doc="which axis holds the channels: the first after the batch, or the last"),
    }

    def _build(self, input_shape, rng):
        if len(input_shape) < 2:
            raise ConfigError(f"{self.NAME}: needs a channel axis and at least one spatial axis, "
                              f"got input (N, {', '.join(map(str, input_shape))})")
        first = self.hparams["data_format"] == "channels_first"
        self.axes = tuple(range(2, len(input_shape) + 1)) if first else tuple(range(1, len(input_shape)))
        self.count = math.prod(input_shape[1:] if first else input_shape[:-1])
        return (input_shape[0] if first else input_shape[-1],)

    def _rows(self, a: np.ndarray) -> np.ndarray:
        """(N, C, *S) -> (N, C, S) or (N, *S, C) -> (N, S, C), S the product of the spatial sizes."""
        n, c = a.shape[0], self.output_shape[0]
        first = self.hparams["data_format"] == "channels_first"
        return a.reshape((n, c, self.count) if first else (n, self.count, c))

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        self._shape = x.shape
        # The mean as a batched product with a vector of 1/S (as LayerNorm's means): x.mean
        # took 146 us at (32, 64, 64) float32 (a reduction over a middle axis, into a fresh array)
        w = self._buf("w", (self.count,))
        w.fill(1.0 / self.count)
        y = self._buf("y", (x.shape[0], self.output_shape[0]))
        if self.hparams["data_format"] == "channels_first":
            return np.matmul(self._rows(x), w, out=y)
        return np.matmul(w, self._rows(x), out=y)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        dx = self._buf("dx", self._shape)
        # every position gets dy / S: one broadcast write into the workspace, where the
        # broadcast_to(...).copy() allocated the input's size every step
        spread = dy[:, :, None] if self.hparams["data_format"] == "channels_first" else dy[:, None, :]
        np.multiply(spread, self.dtype.type(1.0 / self.count), out=self._rows(dx))
        return dx


@LAYERS.register("flatten")
class Flatten(CheckedLayer):
    """(N, *S) -> (N, prod(S))."""

    PARAMS: dict[str, Param] = {}

    def _build(self, input_shape, rng):
        return (math.prod(input_shape),)

    def forward(self, x, training):
        self._shape = x.shape
        return np.asarray(x, dtype=self.dtype).reshape(x.shape[0], -1)

    def backward(self, dy):
        return np.asarray(dy, dtype=self.dtype).reshape(self._shape)


@LAYERS.register("reshape")
class Reshape(CheckedLayer):
    """(N, *S) -> (N, *shape), with at most one -1 in `shape` inferred from the rest."""

    PARAMS = {
        "shape": Param("int_list", REQUIRED, ge=-1, doc="target shape without the batch axis; one entry may be -1"),
    }

    def _build(self, input_shape, rng):
        target = [int(v) for v in self.hparams["shape"]]
        total = math.prod(input_shape)
        shown = f"{list(input_shape)} ({total} values)"
        if not target or target.count(-1) > 1 or any(v == 0 or v < -1 for v in target):
            raise ConfigError(f"{self.NAME}: shape must be positive ints with at most one -1, got {target}")
        known = math.prod(v for v in target if v != -1)
        if -1 in target:
            if total % known:
                raise ConfigError(f"{self.NAME}: cannot reshape input {shown} to {target}: "
                                  f"{total} is not divisible by {known}")
            target[target.index(-1)] = total // known
        elif known != total:
            raise ConfigError(f"{self.NAME}: cannot reshape input {shown} to {target} ({known} values)")
        return tuple(target)

    def forward(self, x, training):
        self._shape = x.shape
        return np.asarray(x, dtype=self.dtype).reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy):
        return np.asarray(dy, dtype=self.dtype).reshape(self._shape)
