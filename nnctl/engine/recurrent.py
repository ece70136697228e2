"""Recurrent layers over (N, T, F) sequences: simple_rnn, gru and lstm, with full BPTT.

Every layer projects all time steps' inputs in one matrix product up front, then runs a
Python loop over time in which each step is one recurrent product on the whole batch plus
elementwise gate arithmetic into preallocated (T, N, ...) buffers. The backward pass walks
time in reverse with the same buffers, and the weight gradients are again one product over
all time steps at the end. The initial state is zero; there is no masking.
"""
from __future__ import annotations

import numpy as np

from nnctl.engine import shapes
from nnctl.engine.activations import get_activation
from nnctl.engine.base import LAYERS, Layer, Workspace, check_hparams
from nnctl.engine.hparams import REQUIRED, Param
from nnctl.engine.initializers import get_initializer

_COMMON = {
    "units": Param("int", REQUIRED, ge=1, doc="size of the hidden state"),
    "return_sequences": Param("bool", False, doc="output every step (N, T, units) instead of the last (N, units)"),
    "activation": Param("activation", "tanh", doc="activation of the candidate state (and of the LSTM cell output)"),
    "kernel_initializer": Param("initializer", "xavier_uniform", doc="initializer of the input weights W"),
    "recurrent_initializer": Param("initializer", "orthogonal",
                                   doc="initializer of the recurrent weights U (each gate's block separately)"),
    "bias_initializer": Param("initializer", "zeros", doc="initializer of the biases b"),
}
_GATED = {
    **_COMMON,
    "recurrent_activation": Param("activation", "sigmoid", doc="activation of the gates"),
}


class _Recurrent(Layer):
    """Shared build/bookkeeping; subclasses define GATES and the step arithmetic.

    Params: W (F, G*units) input weights, U (units, G*units) recurrent weights, b the
    biases, G = the number of gate blocks (1 simple_rnn, 3 gru, 4 lstm), laid out
    gate-major along the last axis.
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

    def _project_inputs(self, x: np.ndarray) -> np.ndarray:
        """x (N, T, F) -> A (T, N, G*units) = x_t @ W (+ input bias), all steps in one GEMM."""
        n, t, feat = x.shape
        xs = self._buf("xs", (t, n, feat))
        np.copyto(xs, x.transpose(1, 0, 2))
        self._xs = xs
        a = self._buf("A", (t, n, self.params["W"].shape[1]))
        np.matmul(xs.reshape(t * n, feat), self.params["W"], out=a.reshape(t * n, -1))
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

    def _input_grads(self, da: np.ndarray):
        """Given dA (T, N, G*units), set dW and return dx (N, T, F) (or None)."""
        t, n, gu = da.shape
        xs = self._xs
        feat = xs.shape[2]
        da2 = da.reshape(t * n, gu)
        np.matmul(xs.reshape(t * n, feat).T, da2, out=self.grads["W"])
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
        z = self._project_inputs(x)
        z += self.params["b"]
        hs = self._buf("H", (t + 1, n, u))
        hs[0] = 0
        U = self.params["U"]
        hu = self._buf("hu", (n, u))
        for s in range(t):
            np.matmul(hs[s], U, out=hu)
            z[s] += hu                     # z keeps the pre-activations for backward
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
        carry = np.zeros((n, u), dtype=self.dtype)
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = carry if g is None else carry + g
            self.act.backward(self._z[s], hs[s + 1], dh, out=dz[s])
            np.matmul(dz[s], UT, out=carry)
        dz2 = dz.reshape(t * n, u)
        np.matmul(hs[:-1].reshape(t * n, u).T, dz2, out=self.grads["U"])
        np.sum(dz2, axis=0, out=self.grads["b"])
        return self._input_grads(dz)


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
        a = self._project_inputs(x)
        b, U = self.params["b"], self.params["U"]
        a += b[0]
        hs = self._buf("H", (t + 1, n, u))
        hs[0] = 0
        pre = self._buf("P", (t, n, 3 * u))      # pre-activations (for activations that need x)
        gates = self._buf("G", (t, n, 3 * u))    # z, r, n after their activations
        rn = self._buf("Rn", (t, n, u))          # h_{t-1} U_n + b1_n
        hu = self._buf("hu", (n, 3 * u))
        for s in range(t):
            np.matmul(hs[s], U, out=hu)
            hu += b[1]
            p, g = pre[s], gates[s]
            np.add(a[s, :, :2 * u], hu[:, :2 * u], out=p[:, :2 * u])
            self.ract.forward(p[:, :2 * u], out=g[:, :2 * u])
            rn[s] = hu[:, 2 * u:]
            np.multiply(g[:, u:2 * u], rn[s], out=p[:, 2 * u:])
            p[:, 2 * u:] += a[s, :, 2 * u:]
            self.act.forward(p[:, 2 * u:], out=g[:, 2 * u:])
            z, cand, h1 = g[:, :u], g[:, 2 * u:], hs[s + 1]
            np.subtract(hs[s], cand, out=h1)     # h_t = n + z (h_{t-1} - n)
            h1 *= z
            h1 += cand
        self._hs, self._pre, self._gates, self._rn = hs, pre, gates, rn
        return self._output(hs)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        hs, pre, gates, rn, t = self._hs, self._pre, self._gates, self._rn, self._t
        n, u = hs.shape[1], hs.shape[2]
        da = self._buf("dA", (t, n, 3 * u))
        dr_all = self._buf("dR", (t, n, 3 * u))
        UT = self.params["U"].T
        carry = np.zeros((n, u), dtype=self.dtype)
        tmp = np.empty((n, u), dtype=self.dtype)
        dy_at = self._dy_at(dy)
        px = self.act.USES_X
        rx = self.ract.USES_X
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = carry if g is None else carry + g
            z, r, cand = gates[s, :, :u], gates[s, :, u:2 * u], gates[s, :, 2 * u:]
            das, drs = da[s], dr_all[s]
            dn = das[:, 2 * u:]
            np.subtract(1.0, z, out=dn)
            dn *= dh
            self.act.backward(pre[s, :, 2 * u:] if px else None, cand, dn, out=dn)
            np.multiply(dn, r, out=drs[:, 2 * u:])
            dr = das[:, u:2 * u]
            np.multiply(dn, rn[s], out=dr)
            dz = das[:, :u]
            np.subtract(hs[s], cand, out=dz)
            dz *= dh
            self.ract.backward(pre[s, :, :2 * u] if rx else None, gates[s, :, :2 * u], das[:, :2 * u],
                               out=das[:, :2 * u])
            drs[:, :2 * u] = das[:, :2 * u]
            np.multiply(dh, z, out=tmp)
            np.matmul(drs, UT, out=carry)
            carry += tmp
        dr2 = dr_all.reshape(t * n, 3 * u)
        np.matmul(hs[:-1].reshape(t * n, u).T, dr2, out=self.grads["U"])
        np.sum(da.reshape(t * n, 3 * u), axis=0, out=self.grads["b"][0])
        np.sum(dr2, axis=0, out=self.grads["b"][1])
        return self._input_grads(da)


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

    def forward(self, x, training):
        x = np.asarray(x, dtype=self.dtype)
        n, t, _ = x.shape
        self._t = t
        u = self.hparams["units"]
        pre = self._project_inputs(x)            # becomes the pre-activations in place
        pre += self.params["b"]
        U = self.params["U"]
        hs = self._buf("H", (t + 1, n, u))
        cs = self._buf("C", (t + 1, n, u))
        tc = self._buf("TC", (t, n, u))          # act(c_t)
        gates = self._buf("G", (t, n, 4 * u))
        hs[0] = 0
        cs[0] = 0
        hu = self._buf("hu", (n, 4 * u))
        for s in range(t):
            np.matmul(hs[s], U, out=hu)
            p, g = pre[s], gates[s]
            p += hu
            self.ract.forward(p[:, :2 * u], out=g[:, :2 * u])
            self.act.forward(p[:, 2 * u:3 * u], out=g[:, 2 * u:3 * u])
            self.ract.forward(p[:, 3 * u:], out=g[:, 3 * u:])
            i, f, cand, o = g[:, :u], g[:, u:2 * u], g[:, 2 * u:3 * u], g[:, 3 * u:]
            c1 = cs[s + 1]
            np.multiply(f, cs[s], out=c1)
            np.multiply(i, cand, out=hu[:, :u])
            c1 += hu[:, :u]
            self.act.forward(c1, out=tc[s])
            np.multiply(o, tc[s], out=hs[s + 1])
        self._hs, self._cs, self._tc, self._pre, self._gates = hs, cs, tc, pre, gates
        return self._output(hs)

    def backward(self, dy):
        dy = np.asarray(dy, dtype=self.dtype)
        hs, cs, tc, pre, gates, t = self._hs, self._cs, self._tc, self._pre, self._gates, self._t
        n, u = hs.shape[1], hs.shape[2]
        dg_all = self._buf("dG", (t, n, 4 * u))
        UT = self.params["U"].T
        dh_carry = np.zeros((n, u), dtype=self.dtype)
        dc = np.zeros((n, u), dtype=self.dtype)
        tmp = np.empty((n, u), dtype=self.dtype)
        dy_at = self._dy_at(dy)
        px, rx = self.act.USES_X, self.ract.USES_X
        for s in range(t - 1, -1, -1):
            g = dy_at(s)
            dh = dh_carry if g is None else dh_carry + g
            gs, ps, dgs = gates[s], pre[s], dg_all[s]
            i, f, cand, o = gs[:, :u], gs[:, u:2 * u], gs[:, 2 * u:3 * u], gs[:, 3 * u:]
            np.multiply(dh, tc[s], out=dgs[:, 3 * u:])                     # do
            np.multiply(dh, o, out=tmp)                                    # d act(c_t)
            self.act.backward(cs[s + 1] if px else None, tc[s], tmp, out=tmp)
            dc += tmp
            np.multiply(dc, cand, out=dgs[:, :u])                          # di
            np.multiply(dc, cs[s], out=dgs[:, u:2 * u])                    # df
            np.multiply(dc, i, out=dgs[:, 2 * u:3 * u])                    # dg
            dc *= f
            self.ract.backward(ps[:, :2 * u] if rx else None, gs[:, :2 * u], dgs[:, :2 * u], out=dgs[:, :2 * u])
            self.act.backward(ps[:, 2 * u:3 * u] if px else None, cand, dgs[:, 2 * u:3 * u],
                              out=dgs[:, 2 * u:3 * u])
            self.ract.backward(ps[:, 3 * u:] if rx else None, o, dgs[:, 3 * u:], out=dgs[:, 3 * u:])
            np.matmul(dgs, UT, out=dh_carry)
        dg2 = dg_all.reshape(t * n, 4 * u)
        np.matmul(hs[:-1].reshape(t * n, u).T, dg2, out=self.grads["U"])
        np.sum(dg2, axis=0, out=self.grads["b"])
        return self._input_grads(dg_all)
