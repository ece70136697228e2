"""Recurrent layers over (N, T, F) sequences: simple_rnn, gru and lstm, with full BPTT.

simple_rnn and gru project all time steps' inputs in one matrix product up front; lstm
folds that projection and its bias into each step's product ([x_t | 1 | h_{t-1}] against
stacked [W; b; U]). Each then runs a Python loop over time in which each step is one
recurrent (batched, per-gate) product on the whole batch plus elementwise gate arithmetic
into preallocated gate-major (T, G, N, units) buffers. The backward pass walks time in reverse over the same buffers,
and dW, dU and dx are again one product each over all time steps at the end (lstm: one small
product per step, see LSTM.backward). The initial state is zero; there is no masking.
"""
from __future__ import annotations

import numpy as np

from nnctl.engine import shapes
from nnctl.engine.activations import Activation, Sigmoid, Tanh, get_activation
from nnctl.engine.base import LAYERS, Layer, Workspace, check_hparams
from nnctl.hparams import REQUIRED, Param
from nnctl.engine.initializers import DEFAULT_BIAS_INITIALIZER, get_initializer

_COMMON = {
    "units": Param("int", REQUIRED, ge=1, doc="size of the hidden state"),
    "return_sequences": Param("bool", False, doc="output every step (N, T, units) instead of the last (N, units)"),
    "activation": Param("activation", "tanh", doc="activation of the candidate state (and of the LSTM cell output)"),
    "kernel_initializer": Param("initializer", "xavier_uniform", doc="initializer of the input weights W"),
    "recurrent_initializer": Param("initializer", "orthogonal",
                                   doc="initializer of the recurrent weights U (each gate's block separately)"),
    "bias_initializer": Param("initializer", DEFAULT_BIAS_INITIALIZER, doc="initializer of the biases b"),
}
_GATED = {
    **_COMMON,
    "recurrent_activation": Param("activation", "sigmoid", doc="activation of the gates"),
}


def _steps(a: np.ndarray, t: int) -> np.ndarray:
    """(t,) + a.shape view of `a` with time stride 0: every step reads and writes `a` itself."""
    return np.lib.stride_tricks.as_strided(a, (t,) + a.shape, (0,) + a.strides)


def _act_forward(act: Activation, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """act(x) into `out`, with a fast path for the default gate activation.

    sigmoid(x) = (1 + tanh(x / 2)) / 2 is four cheap ufunc calls instead of the general
    sigmoid's eight; it runs on every gate of every time step, and a gate does not need
    the relative precision of tiny outputs that the general one keeps.
    """
    if type(act) is Sigmoid:
        np.multiply(x, 0.5, out=out)
        np.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out
    return act.forward(x, out=out)


class _Recurrent(Layer):
    """Shared build/bookkeeping; subclasses define GATES and the step arithmetic.

    Params: W (F, G*units) input weights, U (units, G*units) recurrent weights, b the
    biases, G = the number of gate blocks (1 simple_rnn, 3 gru, 4 lstm), one block of
    `units` columns per gate (Keras' layout).
    """

    GATES = 1
    PARAMS = _COMMON

    def __init__(self, **hparams):
        check_hparams(type(self).NAME, self.PARAMS, hparams)
        super().__init__(**hparams)
        h = self.hparams
        self.act = get_activation(h["activation"])
        self.ract = get_activation(h.get("recurrent_activation", "sigmoid"))
        self.ws = Workspace()

    def _build(self, input_shape, rng):
        shapes.expect_rank(self.NAME, input_shape, 2, "(T, F)")
        t, feat = input_shape
        u, g = self.hparams["units"], self.GATES
        kinit = get_initializer(self.hparams["kernel_initializer"])
        rinit = get_initializer(self.hparams["recurrent_initializer"])
        binit = get_initializer(self.hparams["bias_initializer"])
        self.params["W"] = kinit((feat, g * u), feat, g * u, rng, self.dtype)
        # One orthogonal (u, u) block per gate, as each gate's recurrence is its own map.
        self.params["U"] = np.concatenate([rinit((u, u), u, u, rng, self.dtype) for _ in range(g)], axis=1)
        self.params["b"] = self._init_bias(binit, rng)
        return (t, u) if self.hparams["return_sequences"] else (u,)

    def _init_bias(self, binit, rng) -> np.ndarray:
        u = self.hparams["units"] * self.GATES
        return binit((u,), u, u, rng, self.dtype)

    def _buf(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        # Time-major buffers are keyed on the batch axis (axis 1), so the Workspace's
        # "first rows" reuse does not apply; allocate on any shape change instead.
        a = self.ws.arrays.get(name)
        if a is None or a.shape != shape:
            a = self.ws.arrays[name] = np.empty(shape, dtype=self.dtype)
        return a

    # Internal order of the gate blocks when it differs from the parameters' (None: same).
    ORDER: tuple[int, ...] | None = None

    def _gate_view(self, m: np.ndarray) -> np.ndarray:
        """(rows, G*units) weight -> (G, rows, units), one matrix per gate block, in ORDER
        (a view when ORDER is None, else a copy: weights are small next to activations)."""
        g = self.GATES
        v = m.reshape(m.shape[0], g, -1).transpose(1, 0, 2)
        return v if self.ORDER is None else v[list(self.ORDER)]

    def _project_inputs(self, x: np.ndarray, w4: np.ndarray | None = None) -> np.ndarray:
        """x (N, T, F) -> A (G, T, N, units): each gate's x_t @ W_gate for all steps at once.

        Buffers are gate-major so that every per-step, per-gate slice is one contiguous
        (N, units) block: elementwise gate arithmetic on column slices of an (N, G*units)
        array runs several times slower.
        """
        n, t, feat = x.shape
        xs = self._buf("xs", (t, n, feat))
        np.copyto(xs, x.transpose(1, 0, 2))
        self._xs = xs
        u = self.hparams["units"]
        a = self._buf("A", (self.GATES, t, n, u))
        w4 = self._gate_view(self.params["W"]) if w4 is None else w4
        np.matmul(xs.reshape(t * n, feat), w4, out=a.reshape(self.GATES, t * n, u))
        return a

    def _output(self, hs: np.ndarray) -> np.ndarray:
        """hs (T+1, N, units) -> (N, T, units) or (N, units)."""
        if self.hparams["return_sequences"]:
            return np.ascontiguousarray(hs[1:].transpose(1, 0, 2))
        return hs[-1].copy()

    def _dy_at(self, dy: np.ndarray):
        """Per-step output gradient getter: dy (N, T, units) or (N, units) (last step only)."""
        if self.hparams["return_sequences"]:
            return lambda t: dy[:, t]
        last = self._t - 1
        return lambda t: dy if t == last else None

    def _gate_minor(self, name: str, d: np.ndarray) -> np.ndarray:
        """(T, G, N, units) -> (T*N, G*units), the layout of W's and U's columns (into a buffer)."""
        t, g, n, u = d.shape
        out = self._buf(name, (t, n, g, u))
        if self.ORDER is None:
            np.copyto(out, d.transpose(0, 2, 1, 3))
        else:                                    # back to the parameters' gate order
            for j, k in enumerate(self.ORDER):
                np.copyto(out[:, :, k], d[:, j])
        return out.reshape(t * n, g * u)

    def _weight_grads(self, da2: np.ndarray, dr2: np.ndarray):
        """Given the input and recurrent pre-activation gradients, both (T*N, G*units),
        set dW and dU (one GEMM each over all steps) and return dx (N, T, F) (or None)."""
        xs, hs = self._xs, self._hs
        t, n, feat = xs.shape
        np.matmul(xs.reshape(t * n, feat).T, da2, out=self.grads["W"])
        np.matmul(hs[:-1].reshape(t * n, -1).T, dr2, out=self.grads["U"])
        if not self.input_grad:
            return None
        dxs = da2 @ self.params["W"].T
        return np.ascontiguousarray(dxs.reshape(t, n, feat).transpose(1, 0, 2))


@LAYERS.register("simple_rnn", "rnn")
class SimpleRNN(_Recurrent):
    """Elman RNN: (N, T, F) -> (N, T, units) with return_sequences, else (N, units).

    Params: W (F, units), U (units, units), b (units,).

    Notes
    -----
    z_t = x_t W + h_{t-1} U + b,  h_t = act(z_t)  (act = tanh by default), h_0 = 0.
    Backward: dz_t = act'(z_t) * (dy_t + dz_{t+1} U^T); dW = sum_t x_t^T dz_t,
    dU = sum_t h_{t-1}^T dz_t, db = sum_t dz_t, dx_t = dz_t W^T.
    """

    GATES = 1
    PARAMS = _COMMON

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        n, t, _ = x.shape
        self._t = t
        u = self.hparams["units"]
        z = self._project_inputs(x)[0]        # (T, N, u); keeps the pre-activations for backward
        z += self.params["b"]
        hs = self._buf("H", (t + 1, n, u))
        hs[0] = 0
        U = self.params["U"]
        hu = self._buf("hu", (n, u))
        for s in range(t):
            np.matmul(hs[s], U, out=hu)
            z[s] += hu
            self.act.forward(z[s], out=hs[s + 1])
        self._z = z
        self._hs = hs
        return self._output(hs)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        hs, t = self._hs, self._t
        n, u = hs.shape[1], hs.shape[2]
        dz = self._buf("dZ", (t, n, u))
        UT = self.params["U"].T
        dy_at = self._dy_at(dy)
        carry = self._buf("carry", (n, u))
        carry.fill(0)
        dh_buf = self._buf("dh", (n, u))
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = carry if g is None else np.add(carry, g, out=dh_buf)
            self.act.backward(self._z[s], hs[s + 1], dh, out=dz[s])
            np.matmul(dz[s], UT, out=carry)
        dz2 = dz.reshape(t * n, u)
        np.sum(dz2, axis=0, out=self.grads["b"])
        return self._weight_grads(dz2, dz2)


@LAYERS.register("gru")
class GRU(_Recurrent):
    """Gated recurrent unit, "reset after" form (Keras reset_after=True, cuDNN and PyTorch).

    (N, T, F) -> (N, T, units) with return_sequences, else (N, units).
    Params: W (F, 3u), U (u, 3u), b (2, 3u): b[0] the input bias, b[1] the recurrent bias.
    Gate blocks along the last axis in Keras order: update z, reset r, candidate n.

    Notes
    -----
    With s = recurrent_activation (sigmoid), g = activation (tanh), h_0 = 0:
        z_t = s(x_t W_z + b0_z + h_{t-1} U_z + b1_z)
        r_t = s(x_t W_r + b0_r + h_{t-1} U_r + b1_r)
        n_t = g(x_t W_n + b0_n + r_t * (h_{t-1} U_n + b1_n))
        h_t = z_t * h_{t-1} + (1 - z_t) * n_t
    The reset gate multiplies the recurrent *product* (reset after the matmul), which is
    what lets h_{t-1} U for all three gates be one product per step. Backward, with
    dh_t = dy_t + (carry from t+1) and R_n = h_{t-1} U_n + b1_n:
        dn~ = g'(.) * dh_t (1 - z_t),  dr~ = s'(.) * dn~ R_n,  dz~ = s'(.) * dh_t (h_{t-1} - n_t)
        d(input pre-acts) = [dz~, dr~, dn~],  d(recurrent pre-acts) = [dz~, dr~, dn~ * r_t]
        carry = dh_t * z_t + d(recurrent pre-acts) U^T
    """

    GATES = 3
    PARAMS = _GATED

    def _init_bias(self, binit, rng):
        u3 = 3 * self.hparams["units"]
        return binit((2, u3), u3, u3, rng, self.dtype)

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        n, t, _ = x.shape
        self._t = t
        u = self.hparams["units"]
        a = self._project_inputs(x)                  # (3, T, N, u)
        b = self.params["b"].reshape(2, 3, 1, u)
        a += b[0][:, None]
        U3 = self._gate_view(self.params["U"])       # (3, u, u)
        hs = self._buf("H", (t + 1, n, u))
        hs[0] = 0
        pre = self._buf("P", (t, 3, n, u))           # pre-activations (for activations that need x)
        gates = self._buf("G", (t, 3, n, u))         # z, r, n after their activations
        rn = self._buf("Rn", (t, n, u))              # h_{t-1} U_n + b1_n
        hu = self._buf("hu", (3, n, u))
        for s in range(t):
            np.matmul(hs[s], U3, out=hu)
            hu += b[1]
            p, g = pre[s], gates[s]
            np.add(a[:2, s], hu[:2], out=p[:2])
            _act_forward(self.ract, p[:2], g[:2])
            rn[s] = hu[2]
            np.multiply(g[1], hu[2], out=p[2])
            p[2] += a[2, s]
            self.act.forward(p[2], out=g[2])
            z, cand, h1 = g[0], g[2], hs[s + 1]
            np.subtract(hs[s], cand, out=h1)         # h_t = n + z (h_{t-1} - n)
            h1 *= z
            h1 += cand
        self._hs, self._pre, self._gates, self._rn = hs, pre, gates, rn
        return self._output(hs)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        hs, pre, gates, rn, t = self._hs, self._pre, self._gates, self._rn, self._t
        n, u = hs.shape[1], hs.shape[2]
        da = self._buf("dA", (t, 3, n, u))
        dr_all = self._buf("dR", (t, 3, n, u))
        U3T = self._gate_view(self.params["U"]).transpose(0, 2, 1)
        carry = self._buf("carry", (n, u))
        carry.fill(0)
        tmp = self._buf("tmp", (n, u))
        dh_buf = self._buf("dh", (n, u))
        back = self._buf("back", (3, n, u))
        dy_at = self._dy_at(dy)
        px, rx = self.act.USES_X, self.ract.USES_X
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = carry if g is None else np.add(carry, g, out=dh_buf)
            gs, das, drs = gates[s], da[s], dr_all[s]
            z, r, cand = gs[0], gs[1], gs[2]
            dn = das[2]
            np.subtract(1.0, z, out=dn)
            dn *= dh
            self.act.backward(pre[s, 2] if px else None, cand, dn, out=dn)
            np.multiply(dn, r, out=drs[2])
            np.multiply(dn, rn[s], out=das[1])
            np.subtract(hs[s], cand, out=das[0])
            das[0] *= dh
            self.ract.backward(pre[s, :2] if rx else None, gs[:2], das[:2], out=das[:2])
            drs[:2] = das[:2]
            np.multiply(dh, z, out=tmp)
            np.matmul(drs, U3T, out=back)            # each gate's dR U_gate^T
            np.add(back[0], back[1], out=carry)
            carry += back[2]
            carry += tmp
        da2, dr2 = self._gate_minor("dA2", da), self._gate_minor("dR2", dr_all)
        np.sum(da2, axis=0, out=self.grads["b"][0])
        np.sum(dr2, axis=0, out=self.grads["b"][1])
        return self._weight_grads(da2, dr2)


@LAYERS.register("lstm")
class LSTM(_Recurrent):
    """Long short-term memory: (N, T, F) -> (N, T, units) with return_sequences, else (N, units).

    Params: W (F, 4u), U (u, 4u), b (4u,), gate blocks in Keras order: input i, forget f,
    candidate g, output o. unit_forget_bias=True starts b_f at 1 (Jozefowicz et al. 2015),
    so the cell remembers by default early in training.

    Notes
    -----
    With s = recurrent_activation (sigmoid), act = activation (tanh), h_0 = c_0 = 0:
        [i, f, g, o] = [s, s, act, s](x_t W + h_{t-1} U + b)
        c_t = f * c_{t-1} + i * g,   h_t = o * act(c_t)
    Backward, with dh_t = dy_t + dh carry and dc_t = dc carry + dh_t * o * act'(c_t):
        do = dh_t act(c_t), di = dc_t g, dg = dc_t i, df = dc_t c_{t-1}   (times their act')
        dc carry = dc_t * f,  dh carry = d[i, f, g, o] U^T
    """

    GATES = 4
    PARAMS = {**_GATED, "unit_forget_bias": Param("bool", True, doc="initialize the forget gate's bias to 1")}

    def _init_bias(self, binit, rng):
        b = super()._init_bias(binit, rng)
        if self.hparams["unit_forget_bias"]:
            u = self.hparams["units"]
            b[u:2 * u] = 1.0
        return b

    # Internal gate order [o, i, f, g] (Keras' is [i, f, g, o]): the three sigmoid gates
    # are one contiguous block (one per-step sigmoid call over three gates), and so are
    # the three gates whose gradients scale dc (one backward call for di, df, dg).
    ORDER = (3, 0, 1, 2)

    def _stacked_weights(self) -> np.ndarray:
        """[W; b; U] as (4, F + 1 + u, u), one matrix per gate in internal order.

        Each step's pre-activations are then one product [x_t | 1 | h_{t-1}] @ M: the
        input projection and bias add ride along in the recurrent GEMM (K grows from u to
        F + u + 1), which saves a separate (T*N, F) projection with a tiny inner
        dimension, a pass over all steps to add b, and a per-step add of the projected
        inputs. With the default activations the sigmoid blocks are halved so that
        sigmoid(p) = (1 + tanh(p / 2)) / 2 is one tanh call over all four gates; halving
        is exact in binary floating point. b sits next to W so that the first step, whose
        h_0 is zero, is the product of the leading F + 1 columns and rows alone.
        """
        w, u = self.params["W"], self.hparams["units"]
        b = self.params["b"].reshape(1, -1)
        m = np.concatenate([self._gate_view(w), self._gate_view(b), self._gate_view(self.params["U"])], axis=1,
                           out=self._buf("M", (4, w.shape[0] + 1 + u, u)))
        if self._fast:
            m[:3] *= 0.5
        return m

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        n, t, feat = x.shape
        self._t = t
        u = self.hparams["units"]
        self._fast = type(self.ract) is Sigmoid and type(self.act) is Tanh
        # 0.5 as a 0-d array of the layer's dtype, made once per forward (np.full costs 4 us;
        # the training forward runs a block of steps at a time): a Python float costs each
        # call a scalar conversion (about 0.2 us)
        self._half = np.full((), 0.5, dtype=self.dtype)
        m4 = self._stacked_weights()                 # (4, F + 1 + u, u)
        # Z[s] = [x_s | 1 | h_{s-1}] (T+1, N, F + 1 + u); the h columns of all T+1 rows are
        # the hidden states h_0..h_T, and Z[s] is the left operand of step s's dW, dU, db.
        key = "" if training else "eval "
        before = self.ws.arrays.get(key + "Z")
        z = self._buf(key + "Z", (t + 1, n, feat + 1 + u))
        hs = z[:, :, feat + 1:]
        if z is not before:          # what no step writes, set once per buffer (about 40 us a batch)
            z[t, :, :feat] = 0
            z[:, :, feat] = 1
            hs[0] = 0
        np.copyto(z[:t, :, :feat], x.transpose(1, 0, 2))
        if training:
            # The steps run in blocks of FACTOR_BLOCK; after each block, while its gates are
            # in cache, they are overwritten by the factors the backward needs (see _factors):
            # computed from the history later, the same passes found it evicted from L2.
            block = self.FACTOR_BLOCK
            gates, parts = self._buf("G", (t, 6, n, u)), self._buf("F", (block, 3, n, u))
            if self._fast:   # nothing reads c_t after its step: one buffer seen with time stride 0
                cs, pre = _steps(self._buf("C", (n, u)), t + 1), None
            else:            # the general activations' derivatives may read c_t and the pre-activations
                cs, pre = self._buf("C", (t + 1, n, u)), self._buf("P", (block, 4, n, u))
            cs[0] = 0
            for lo in range(0, t, block):
                hi = min(lo + block, t)
                g, p, pb = gates[lo:hi], parts[:hi - lo], None if pre is None else pre[:hi - lo]
                self._recur(z[lo:hi + 1], m4, cs[lo:hi + 1], g, p, pb, lo == 0)
                self._factors(g, p, pb, cs[lo:hi + 1], hs[lo + 1:hi + 1])
            self._q = gates
        else:
            # Evaluation keeps no history: each per-step state is one step-sized buffer seen
            # with time stride 0, which stays in cache where the history (about 5 MB per 100
            # rows) would not. Its buffers are not training's, so alternating training and
            # validation batches of different sizes reallocates nothing. Large batches run
            # in chunks of rows whose per-gate step products stay within EVAL_CHUNK_MACS.
            k = feat + u + 1
            per = self.EVAL_CHUNK_MACS // (k * u)
            chunks = 1 if per < self.EVAL_CHUNK_MIN_ROWS else -(-n // per)
            size = -(-n // chunks)
            planes = {"eval C": (), "eval G": (5,), "eval F": (3,), **({} if self._fast else {"eval P": (4,)})}
            bufs = [self._buf(name, lead + (size, u)) for name, lead in planes.items()]
            for lo in range(0, n, size):
                m = min(size, n - lo)
                c1, g1, f1, *p1 = (b[..., :m, :] for b in bufs)
                c1[...] = 0
                self._recur(z[:, lo:lo + m], m4, _steps(c1, t + 1), _steps(g1, t), _steps(f1, t),
                            _steps(p1[0], t) if p1 else None, True)
            self._q = None                           # a backward replays the forward recorded
        self._z = z
        self._recorded = training
        return self._output(hs)

    # Evaluation splits a batch into chunks of rows so that each gate's step product (rows x
    # (F+u+1) x u multiply-adds) stays within OpenBLAS's small-matrix sgemm kernel, which
    # skips packing: at F=8, u=64 one gate's product takes 0.23 us a row up to 214 rows
    # (999,808 multiply-adds) and 0.30 from 215, and 300 rows as two chunks of 150 take
    # 6.0 ms instead of 6.5. Never into chunks of fewer than EVAL_CHUNK_MIN_ROWS rows, where
    # the per-step calls would dominate.
    EVAL_CHUNK_MACS = 1_000_000
    EVAL_CHUNK_MIN_ROWS = 64

    def _recur(self, z, m4, cs, gates, parts, pre, first):
        """Run T steps of the recurrence for the rows of z (T+1, n, F+u+1) (from cs[0], the
        cell state before the first), filling the h columns of z[1:].

        gates (T, 5 or 6, n, u) receive [o, i, f, g, act(c_t)] in their first five planes,
        parts (T, 3, n, u) the products [-, i g, f c_{t-1}] (plane 0 is _factors', for h_t),
        cs (T+1, n, u) the cell states, pre (T, 4, n, u) the pre-activations (None on the
        fast path, whose gates come from one tanh). first: z[0] is the sequence's first step,
        whose h_0 and c_0 are zero.
        """
        t, feat = gates.shape[0], z.shape[2] - gates.shape[3] - 1
        hs = z[:, :, feat + 1:]
        # Local names, positional outputs, one view per array per step and the activation
        # test out of the loop: the loops make about ten NumPy calls per step on (N, u)
        # blocks, where lookups and keyword parsing were a measurable share (2.5% of fw+bw).
        matmul, mul, add, tanh = np.matmul, np.multiply, np.add, np.tanh
        half = self._half
        # f c_{t-1} and i g go to planes of their own (not straight into c_t) because the
        # backward's factors are cheaper from them; f c_{t-1} comes first, as cs may hold
        # one step only (c_t overwrites c_{t-1}).
        if pre is None:
            for s in range(t):
                g, p = gates[s], parts[s]
                g4 = g[:4]
                if s == 0 and first:
                    self._first_product(z[0], m4, g4)
                else:
                    matmul(z[s], m4, g4)
                tanh(g4, g4)
                g3 = g[:3]
                mul(g3, half, g3)
                add(g3, half, g3)
                mul(g[2], cs[s], p[2])
                mul(g[1], g[3], p[1])
                c1 = cs[s + 1]
                add(p[2], p[1], c1)
                tanh(c1, g[4])
                mul(g[0], g[4], hs[s + 1])
        else:
            for s in range(t):
                g, p, ps = gates[s], parts[s], pre[s]
                if s == 0 and first:
                    self._first_product(z[0], m4, ps)
                else:
                    matmul(z[s], m4, ps)
                self.ract.forward(ps[:3], out=g[:3])
                self.act.forward(ps[3], out=g[3])
                mul(g[2], cs[s], p[2])
                mul(g[1], g[3], p[1])
                c1 = cs[s + 1]
                add(p[2], p[1], c1)
                self.act.forward(c1, out=g[4])
                mul(g[0], g[4], hs[s + 1])

    @staticmethod
    def _first_product(z0, m4, out):
        """The first step's pre-activations [x_0 | 1] [W; b] into out (4, n, u): h_0 is zero,
        so the product skips U's u rows (K = F + 1 instead of F + 1 + u, a fifth of the time)."""
        k1 = z0.shape[1] - m4.shape[2]
        np.matmul(z0[:, :k1], m4[:, :k1], out)

    # Steps per block of the training forward: a block's gates and products (about 200 KB
    # per step at N=100, u=64, float32) stay in L2 until its factors are computed.
    FACTOR_BLOCK = 4

    def _factors(self, gates, parts, pre, cs, h):
        """Overwrite a block of m steps' gates with everything the backward multiplies the
        carried gradients by.

        From the block's gates (m, 6, N, u) ([o, i, f, g, act(c_t), -]), parts (m, 3, N, u),
        pre (m, 4, N, u) or None, cs (m+1, N, u) and h (m, N, u) (see _recur), leaves in
        gates the factors q such that, per step, [d o, dh's share of dc] = dh * q[::4]; with
        dc the cell gradient after adding dh's share, d[i, f, g] pre-activations = dc * q[1:4]
        and dc's carry = dc * q[5] (f). None of it depends on the carried gradients, so a few
        passes over a block of steps replace about eight small calls per step.
        """
        q = gates                    # the same array: each factor is written once its inputs are read
        np.copyto(q[:, 5], gates[:, 2])
        if pre is None:
            # sigmoid' = s (1 - s) and tanh' = 1 - y^2 from the outputs, each factor in two
            # passes from the products the forward kept (h_t = o act(c_t) is copied beside
            # them): [i, o] - [i g, h] [g, act(c)] = [i act'(g), o act'(c)] over g and act(c),
            # the reversed views pairing i g with g and h with act(c), then
            # [h, i g, f c_{t-1}] (1 - [o, i, f]) = [act(c) o', g i', c_{t-1} f'] over o, i, f
            np.copyto(parts[:, 0], h)
            np.multiply(parts[:, 1::-1], gates[:, 3:5], out=q[:, 3:5])
            np.subtract(gates[:, 1::-1], q[:, 3:5], out=q[:, 3:5])
            np.subtract(1.0, gates[:, :3], out=q[:, :3])
            q[:, :3] *= parts
            return
        # the general activations write a block-sized scratch (their derivatives may not be
        # computed in place over their outputs), copied over the gates once all are read
        d = self._buf("Q", (self.FACTOR_BLOCK, 5) + gates.shape[2:])[:len(gates)]
        px, rx = self.act.USES_X, self.ract.USES_X
        # a broadcast view of one 1: the activations only read dy, so no block-sized array
        ones = np.broadcast_to(np.ones((), dtype=self.dtype), d[:, :3].shape)
        self.ract.backward(pre[:, :3] if rx else None, gates[:, :3], ones, out=d[:, :3])
        self.act.backward(pre[:, 3] if px else None, gates[:, 3], ones[:, 0], out=d[:, 3])
        self.act.backward(cs[1:] if px else None, gates[:, 4], ones[:, 0], out=d[:, 4])
        d[:, 0] *= gates[:, 4]       # do = dh act(c_t) s'(o)
        d[:, 1] *= gates[:, 3]       # di = dc g s'(i)
        d[:, 2] *= cs[:-1]           # df = dc c_{t-1} s'(f)
        d[:, 3] *= gates[:, 1]       # dg = dc i act'(g)
        d[:, 4] *= gates[:, 0]       # dc += dh o act'(c_t)
        np.copyto(q[:, :5], d)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        if not self._recorded:       # after an evaluation forward (gradient checks): replay it recorded
            feat = self._z.shape[2] - self.hparams["units"] - 1
            self.forward(self._z[:self._t, :, :feat].transpose(1, 0, 2), True)
        qh, z, t = self._q, self._z, self._t
        n, u, k = qh.shape[2], qh.shape[3], z.shape[2]
        feat = k - u - 1
        # Each step's gate gradients go gate-major into dgs (4, N, u): every gate's block is
        # one contiguous (N, u) array (elementwise math on column slices is several times
        # slower), and every product takes that layout as it is, one batched product per
        # gate: the dh carry (then summed over the gates), and this step's share of dW, dU, db
        # (and dx), added up over the steps. Per step and gate these products are small
        # enough (N x u by u x u, and (F+u+1) x N by N x u) for OpenBLAS's small-matrix
        # kernel, which skips packing the operands: one (F+u+1, T*N) @ (T*N, 4u) product over
        # all steps (or over blocks of steps) goes through the general kernel, whose packing
        # copies took about a third of its time, and needs the (T, N, 4u) gradients of all
        # steps in memory (4 MB at N=100) instead of one step's in cache.
        # [d o, d i, d f, d g, dh's share of dc]: the first four are the gates' gradients
        dq = self._buf("dq", (5, n, u))
        dgs = dq[:4]
        gm, part = self._buf("dM", (4, k, u)), self._buf("dM part", (4, k, u))
        dxs, wt = None, None
        if self.input_grad:
            dxs = self._buf("dxs", (t, n, feat))
            wt = self._gate_view(self.params["W"]).transpose(0, 2, 1)      # (4, u, F) internal order
            dx4 = self._buf("dx4", (4, n, feat))
        ut = self._buf("UT", (4, u, u))                                     # U_k^T, internal order
        np.copyto(ut, self._gate_view(self.params["U"]).transpose(0, 2, 1))
        back = self._buf("back", (4, n, u))
        dh_carry = self._buf("carry", (n, u))
        dh_carry.fill(0)
        dc = self._buf("dc", (n, u))
        dc.fill(0)
        dh_buf = self._buf("dh", (n, u))
        dy_at = self._dy_at(dy)
        matmul, mul, reduce = np.matmul, np.multiply, np.add.reduce     # local names: see forward
        dq_h, dq_c, dc_h = dq[::4], dq[1:4], dq[4]
        gm.fill(0)
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = dh_carry if g is None else np.add(dh_carry, g, out=dh_buf)
            qs = qh[s]
            mul(dh, qs[::4], dq_h)
            dc += dc_h
            mul(dc, qs[1:4], dq_c)
            # [x_s | 1 | h_{s-1}]^T d_k gives W's, b's and U's rows of gate k together
            if s:
                matmul(z[s].T, dgs, part)
                gm += part
            else:                                     # h_0 = 0 adds nothing to dU: W's and b's rows only
                part_xb = part[:, :feat + 1]
                matmul(z[0, :, :feat + 1].T, dgs, part_xb)
                gm[:, :feat + 1] += part_xb
            if dxs is not None:
                matmul(dgs, wt, dx4)
                reduce(dx4, 0, out=dxs[s])
            if s == 0:                                # no carry into the zero initial state
                break
            dc *= qs[5]                              # f
            matmul(dgs, ut, back)                     # each gate's share of the dh carry
            reduce(back, 0, out=dh_carry)
        gW, gU, gb = self.grads["W"], self.grads["U"], self.grads["b"]
        for j, kk in enumerate(self.ORDER):          # internal gate j -> parameter block kk
            cols = slice(kk * u, (kk + 1) * u)
            gW[:, cols] = gm[j, :feat]
            gb[cols] = gm[j, feat]
            gU[:, cols] = gm[j, feat + 1:]
        return None if dxs is None else np.ascontiguousarray(dxs.transpose(1, 0, 2))
