"""NumPy implementations of the recurrent ops: LSTM/GRU/RNN layers (forward and backward) and cells.

A layer runs one direction of a whole sequence. Its speed comes from keeping NumPy calls out of
the time loop and fresh memory to a minimum: the input projection of all steps is one GEMM
written straight into the workspace (or, for the RNN, into y); each step is one GEMM plus a few
in-place ufunc calls on [B, n] slices and buffers that stay in cache; the backward stores each
step's gate gradients so that the input and weight gradients are single large GEMMs at the end.
Sigmoid gates use sigmoid(z) = 0.5 * tanh(z / 2) + 0.5 with the 1/2 folded into their weight
rows (an exact power-of-two scaling), so one tanh call covers all gates of a step; the LSTM keeps
its gates in the order (i, f, o, g) internally so that the three sigmoid gates are one slice.

Workspace: one flat array (the compute dtype) cut into contiguous [T, B, width] blocks:
  lstm: gates (i, f, o, g activations, 4H), c (the cell state after each step, carried unchanged
        through masked steps, H);   gru: gates (r, z, n activations, 3H), hn (W_hn h + b_hn, H);
  rnn:  empty.
Blocks are indexed by time whatever the direction. The hidden states after each step are y
itself (the backward op reads it), except on masked steps, where y holds zeros.
"""
from __future__ import annotations

import numpy as np

from ...ir.ops import register_impl
from ...ir.shapes import WORKSPACE_LAYOUT, WORKSPACE_WIDTH

def _workspace(kind, T, B, H, dtype, buffer=None):
    """The workspace buffer (new if not given) and a dict of its [T, B, width] blocks."""
    if buffer is None:
        buffer = np.empty(T * B * WORKSPACE_WIDTH[kind] * H, dtype)
    blocks, start = {}, 0
    for name, k in WORKSPACE_LAYOUT[kind]:
        blocks[name] = buffer[start:start + T * B * k * H].reshape(T, B, k * H)
        start += T * B * k * H
    return buffer, blocks


def _compute(x, *arrays):
    """The inputs in x's dtype (the dispatcher has already upcast float16/bfloat16 to float32)."""
    return [None if a is None else np.asarray(a, x.dtype) for a in arrays]


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _prev_index(t, reverse):
    """The step before t in the direction of travel (-1 or T: none, the initial state)."""
    return t + 1 if reverse else t - 1


def _lstm_rows(H):
    """Row permutation PyTorch's (i, f, g, o) -> our (i, f, o, g); it is its own inverse."""
    return np.concatenate([np.arange(H), H + np.arange(H), 3 * H + np.arange(H), 2 * H + np.arange(H)])


def _half_rows(n_sigmoid, n_gates, H, dtype):
    """Per-row scale of a [n_gates*H, ...] weight whose first n_sigmoid gates are sigmoids: 1/2 on them."""
    scale = np.ones(n_gates * H, dtype)
    scale[:n_sigmoid * H] = 0.5
    return scale


def _transposed(a, rows=64):
    """a.T as a C-contiguous copy, made `rows` rows of `a` at a time: each block's transpose stays
    in cache, where NumPy's whole-matrix copy strides through memory (5-7x slower for a 2048 x 512
    float32 weight, which every layer call transposes once for its per-step GEMMs)."""
    out = np.empty(a.shape[::-1], a.dtype)
    for start in range(0, a.shape[0], rows):
        np.copyto(out[:, start:start + rows], a[start:start + rows].T)
    return out


def _sigmoid_from_tanh(a):
    """In place: a holds tanh(z / 2), becomes sigmoid(z)."""
    a *= 0.5
    a += 0.5


class _Mask:
    """Which (step, sequence) pairs are active: t < lengths[b]; `None` lengths: all of them.
    Only the steps where some sequence is inactive (`partial`) pay for masking."""

    def __init__(self, lengths, T, state_shape, dtype):
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is None:
            return
        active = np.arange(T)[:, None] < self.lengths[None, :]
        self.partial = ~active.all(axis=1)
        self.inactive = (~active)[:, :, None]  # [T, B, 1], for np.copyto(where=)
        self._spares = (np.empty(state_shape, dtype), np.empty(state_shape, dtype))

    def is_partial(self, t):
        return self.lengths is not None and 0 <= t < len(self.partial) and self.partial[t]

    def keep(self, t, new_states, old_states):
        """Inactive sequences keep their previous state (value or gradient) through step t."""
        if self.is_partial(t):
            for new, old in zip(new_states, old_states):
                np.copyto(new, old, where=self.inactive[t])

    def zero_inactive(self, t, a):
        if self.is_partial(t):
            np.copyto(a, 0, where=self.inactive[t])

    def carry(self, t, y_t, h_prev):
        """The state after step t, whose new hidden state was computed into y_t: y_t itself, except
        where t is partial: then inactive sequences keep h_prev (in a spare buffer; not y_t, which
        gets zeros there)."""
        if not self.is_partial(t):
            return y_t
        spare = self._spares[0] if h_prev is not self._spares[0] else self._spares[1]
        np.copyto(spare, y_t)
        np.copyto(spare, h_prev, where=self.inactive[t])
        np.copyto(y_t, 0, where=self.inactive[t])
        return spare

    def previous_state(self, y, h0, t, reverse, buf):
        """The hidden state step t started from, exact wherever t is active: y at the previous step,
        or h0 where that step was masked (a reverse pass starts at each sequence's last valid step
        from h0; a forward pass never has an active step after a masked one)."""
        p = _prev_index(t, reverse)
        if not 0 <= p < len(y):
            return h0
        if not self.is_partial(p):
            return y[p]
        np.copyto(buf, y[p])
        np.copyto(buf, h0, where=self.inactive[p])
        return buf

    def incoming(self, dh, dy, t, out):
        """out = dh + dy[t], with dy ignored on inactive steps (y is constant zero there)."""
        np.add(dh, dy[t], out=out)
        if self.is_partial(t):
            np.copyto(out, dh, where=self.inactive[t])
        return out


def _project_inputs(x, w_ih, out):
    """out[T, B, G] = x @ w_ih.T for all steps: one GEMM (biases are added per step, in cache)."""
    T, B, I = x.shape
    np.matmul(x.reshape(T * B, I), w_ih.T, out=out.reshape(T * B, out.shape[2]))


def _input_grads(dg_in, dg_hid, x, w_ih, y, h0, mask, reverse, has_bias):
    """(dx, dw_ih, dw_hh[, db_ih, db_hh]) from the per-step pre-activation gradients [T, B, G] of
    the input side (dg_in) and hidden side (dg_hid; the same array except in the GRU), zero on
    masked steps: one GEMM each, two (three with lengths in reverse) for dw_hh."""
    (T, B, I), G, P = x.shape, dg_in.shape[2], y.shape[2]
    flat_in = dg_in.reshape(T * B, G)
    dx = (flat_in @ w_ih).reshape(T, B, I)
    dw_ih = flat_in.T @ x.reshape(T * B, I)
    first, rest, prev = (T - 1, slice(0, T - 1), slice(1, T)) if reverse else (0, slice(1, T), slice(0, T - 1))
    dw_hh = dg_hid[first].T @ h0 + dg_hid[rest].reshape((T - 1) * B, G).T @ y[prev].reshape((T - 1) * B, P)
    if reverse and mask.lengths is not None:
        # Each sequence's last valid step started from h0, where y[t + 1] holds zeros.
        b = np.flatnonzero((mask.lengths > 0) & (mask.lengths < T))
        dw_hh += dg_hid[mask.lengths[b] - 1, b].T @ h0[b]
    if not has_bias:
        return dx, dw_ih, dw_hh
    db_ih = flat_in.sum(axis=0)
    db_hh = db_ih.copy() if dg_hid is dg_in else dg_hid.reshape(T * B, G).sum(axis=0)
    return dx, dw_ih, dw_hh, db_ih, db_hh


# --- LSTM ----------------------------------------------------------------------------------------

@register_impl("lstm_layer")
def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, *, reverse, has_bias, has_proj, has_lengths):
    h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _compute(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    T, B, _ = x.shape
    (_, H), (_, P) = c0.shape, h0.shape
    buffer, ws = _workspace("lstm", T, B, H, x.dtype)
    rows, scale = _lstm_rows(H), _half_rows(3, 4, H, x.dtype)
    gates = ws["gates"]
    _project_inputs(x, w_ih[rows] * scale[:, None], gates)
    bias = (b_ih + b_hh)[rows] * scale if has_bias else None
    w_hh_t = _transposed(w_hh[rows] * scale[:, None])
    w_hr_t = _transposed(w_hr) if has_proj else None
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    y = np.empty((T, B, P), x.dtype)
    hidden = np.empty((B, 4 * H), x.dtype)
    tmp, tc = np.empty((B, H), x.dtype), np.empty((B, H), x.dtype)
    h, c = h0, c0
    for t in _steps(T, reverse):
        g = gates[t]
        np.matmul(h, w_hh_t, out=hidden)
        g += hidden
        if has_bias:
            g += bias
        np.tanh(g, out=g)
        _sigmoid_from_tanh(g[:, :3 * H])
        i, f, o, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
        ct = ws["c"][t]
        np.multiply(f, c, out=ct)
        np.multiply(i, gg, out=tmp)
        ct += tmp
        np.tanh(ct, out=tc)
        if has_proj:
            np.multiply(o, tc, out=tmp)
            np.matmul(tmp, w_hr_t, out=y[t])
        else:
            np.multiply(o, tc, out=y[t])
        mask.keep(t, (ct,), (c,))
        h, c = mask.carry(t, y[t], h), ct
    return y, h.copy(), c.copy(), buffer


@register_impl("lstm_layer_backward")
def lstm_layer_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, workspace, *,
                        reverse, has_bias, has_proj, has_lengths):
    dy, dh_n, dc_n, h0, c0, w_ih, w_hh, w_hr, y, workspace = _compute(
        x, dy, dh_n, dc_n, h0, c0, w_ih, w_hh, w_hr, y, workspace)
    T, B, _ = x.shape
    (_, H), (_, P) = c0.shape, h0.shape
    _, ws = _workspace("lstm", T, B, H, x.dtype, workspace)
    rows = _lstm_rows(H)
    w_hh = w_hh[rows]
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    dgates = np.empty((T, B, 4 * H), x.dtype)
    dht_all, r_all = (np.empty((T, B, P), x.dtype), np.empty((T, B, H), x.dtype)) if has_proj else (None, None)
    dh, dc = dh_n.copy(), dc_n.copy()
    dht, dr = np.empty((B, P), x.dtype), np.empty((B, H), x.dtype)
    tc, tmp, dc_in = (np.empty((B, H), x.dtype) for _ in range(3))
    slope = np.empty((B, 4 * H), x.dtype)
    for t in reversed(_steps(T, reverse)):
        g, dg = ws["gates"][t], dgates[t]
        i, f, o, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
        p = _prev_index(t, reverse)
        c_prev = ws["c"][p] if 0 <= p < T else c0
        np.tanh(ws["c"][t], out=tc)
        mask.incoming(dh, dy, t, dht)
        if has_proj:
            dht_all[t] = dht
            np.multiply(o, tc, out=r_all[t])
            np.matmul(dht, w_hr, out=dr)
        else:
            dr = dht
        if mask.is_partial(t):
            dc_in[...] = dc
        # dc += dr * o * (1 - tanh(c)^2): the cell state's gradient through h = o * tanh(c)
        np.multiply(tc, tc, out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dr
        dc += tmp
        # Gradients of the gate activations, then of their pre-activations (times the slopes).
        np.multiply(dc, gg, out=dg[:, :H])
        np.multiply(dc, c_prev, out=dg[:, H:2 * H])
        np.multiply(dr, tc, out=dg[:, 2 * H:3 * H])
        np.multiply(dc, i, out=dg[:, 3 * H:])
        np.multiply(g, g, out=slope)
        np.subtract(g[:, :3 * H], slope[:, :3 * H], out=slope[:, :3 * H])  # s (1 - s)
        np.subtract(1, slope[:, 3 * H:], out=slope[:, 3 * H:])  # 1 - g^2
        dg *= slope
        dc *= f
        np.matmul(dg, w_hh, out=dh)
        if mask.is_partial(t):
            mask.zero_inactive(t, dg)
            mask.keep(t, (dh, dc), (dht, dc_in))
            if has_proj:
                mask.zero_inactive(t, dht_all[t])
    dx, dw_ih, dw_hh, *db = _input_grads(dgates, dgates, x, w_ih[rows], y, h0, mask, reverse, has_bias)
    grads = [dx, dh, dc, dw_ih[rows], dw_hh[rows]] + [b[rows] for b in db]
    if has_proj:
        grads.append(dht_all.reshape(T * B, P).T @ r_all.reshape(T * B, H))
    return tuple(grads)


# --- GRU -----------------------------------------------------------------------------------------

@register_impl("gru_layer")
def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, *, reverse, has_bias, has_proj, has_lengths):
    h0, w_ih, w_hh, b_ih, b_hh = _compute(x, h0, w_ih, w_hh, b_ih, b_hh)
    T, B, _ = x.shape
    H = h0.shape[1]
    buffer, ws = _workspace("gru", T, B, H, x.dtype)
    scale = _half_rows(2, 3, H, x.dtype)
    gates = ws["gates"]
    _project_inputs(x, w_ih * scale[:, None], gates)
    if has_bias:  # b_hr and b_hz join the input side; b_hn stays inside r * (W_hn h + b_hn)
        bias = b_ih.copy()
        bias[:2 * H] += b_hh[:2 * H]
        bias *= scale
    w_hh_t = _transposed(w_hh * scale[:, None])
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    y = np.empty((T, B, H), x.dtype)
    hidden = np.empty((B, 3 * H), x.dtype)
    tmp = np.empty((B, H), x.dtype)
    h = h0
    for t in _steps(T, reverse):
        g = gates[t]
        np.matmul(h, w_hh_t, out=hidden)
        if has_bias:
            g += bias
        rz = g[:, :2 * H]
        rz += hidden[:, :2 * H]
        np.tanh(rz, out=rz)
        _sigmoid_from_tanh(rz)
        r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
        hn, ht = ws["hn"][t], y[t]
        if has_bias:
            np.add(hidden[:, 2 * H:], b_hh[2 * H:], out=hn)
        else:
            hn[...] = hidden[:, 2 * H:]
        np.multiply(r, hn, out=tmp)
        n += tmp
        np.tanh(n, out=n)
        np.subtract(h, n, out=ht)  # h' = n + z * (h - n)
        ht *= z
        ht += n
        h = mask.carry(t, ht, h)
    return y, h.copy(), buffer


@register_impl("gru_layer_backward")
def gru_layer_backward(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace, *,
                       reverse, has_bias, has_proj, has_lengths):
    dy, dh_n, h0, w_ih, w_hh, y, workspace = _compute(x, dy, dh_n, h0, w_ih, w_hh, y, workspace)
    T, B, _ = x.shape
    H = h0.shape[1]
    _, ws = _workspace("gru", T, B, H, x.dtype, workspace)
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    dg_in = np.empty((T, B, 3 * H), x.dtype)
    dg_hid = np.empty((T, B, 3 * H), x.dtype)
    dh = dh_n.copy()
    dht, tmp, h_prev = (np.empty((B, H), x.dtype) for _ in range(3))
    slope = np.empty((B, 2 * H), x.dtype)
    for t in reversed(_steps(T, reverse)):
        g, dgi, dgh = ws["gates"][t], dg_in[t], dg_hid[t]
        r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
        mask.incoming(dh, dy, t, dht)
        np.multiply(g[:, :2 * H], g[:, :2 * H], out=slope)
        np.subtract(g[:, :2 * H], slope, out=slope)  # r(1-r), z(1-z)
        # n's pre-activation: dn = dh * (1 - z) * (1 - n^2)
        dn = dgi[:, 2 * H:]
        np.multiply(n, n, out=tmp)
        np.subtract(1, tmp, out=tmp)
        np.multiply(dht, tmp, out=dn)
        np.subtract(1, z, out=tmp)
        dn *= tmp
        # r: dn * hn * r(1-r);  z: dh * (h_prev - n) * z(1-z);  the hidden side of n sees r * dn
        np.multiply(dn, ws["hn"][t], out=dgh[:, :H])
        np.subtract(mask.previous_state(y, h0, t, reverse, h_prev), n, out=dgh[:, H:2 * H])
        dgh[:, H:2 * H] *= dht
        dgh[:, :2 * H] *= slope
        np.multiply(dn, r, out=dgh[:, 2 * H:])
        mask.zero_inactive(t, dgh)
        mask.zero_inactive(t, dn)
        np.matmul(dgh, w_hh, out=dh)
        np.multiply(dht, z, out=tmp)
        dh += tmp
        mask.keep(t, (dh,), (dht,))
    dg_in[..., :2 * H] = dg_hid[..., :2 * H]
    dx, dw_ih, dw_hh, *db = _input_grads(dg_in, dg_hid, x, w_ih, y, h0, mask, reverse, has_bias)
    return (dx, dh, dw_ih, dw_hh, *db)


# --- Elman RNN -----------------------------------------------------------------------------------

@register_impl("rnn_layer")
def rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, *, reverse, has_bias, has_proj, has_lengths, nonlinearity):
    h0, w_ih, w_hh, b_ih, b_hh = _compute(x, h0, w_ih, w_hh, b_ih, b_hh)
    T, B, _ = x.shape
    H = h0.shape[1]
    buffer, _ = _workspace("rnn", T, B, H, x.dtype)
    y = np.empty((T, B, H), x.dtype)
    _project_inputs(x, w_ih, y)
    bias = b_ih + b_hh if has_bias else None
    w_hh_t = _transposed(w_hh)
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    hidden = np.empty((B, H), x.dtype)
    h = h0
    for t in _steps(T, reverse):
        ht = y[t]
        np.matmul(h, w_hh_t, out=hidden)
        ht += hidden
        if has_bias:
            ht += bias
        if nonlinearity == "tanh":
            np.tanh(ht, out=ht)
        else:
            np.maximum(ht, 0, out=ht)
        h = mask.carry(t, ht, h)
    return y, h.copy(), buffer


@register_impl("rnn_layer_backward")
def rnn_layer_backward(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace, *,
                       reverse, has_bias, has_proj, has_lengths, nonlinearity):
    dy, dh_n, h0, w_ih, w_hh, y = _compute(x, dy, dh_n, h0, w_ih, w_hh, y)
    T, B, _ = x.shape
    mask = _Mask(lengths, T, h0.shape, x.dtype)
    dz = np.empty(y.shape, x.dtype)
    dh = dh_n.copy()
    dht, slope = np.empty_like(dh), np.empty_like(dh)
    for t in reversed(_steps(T, reverse)):
        mask.incoming(dh, dy, t, dht)
        if nonlinearity == "tanh":
            np.multiply(y[t], y[t], out=slope)
            np.subtract(1, slope, out=slope)
        else:
            np.greater(y[t], 0, out=slope)
        np.multiply(dht, slope, out=dz[t])
        mask.zero_inactive(t, dz[t])
        np.matmul(dz[t], w_hh, out=dh)
        mask.keep(t, (dh,), (dht,))
    dx, dw_ih, dw_hh, *db = _input_grads(dz, dz, x, w_ih, y, h0, mask, reverse, has_bias)
    return (dx, dh, dw_ih, dw_hh, *db)


# --- cells: one step of the layer ----------------------------------------------------------------

_CELL_ATTRS = dict(reverse=False, has_proj=False, has_lengths=False)


@register_impl("lstm_cell")
def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, *, has_bias):
    _, h1, c1, _ = lstm_layer(x[None], h, c, w_ih, w_hh, b_ih, b_hh, None, None, has_bias=has_bias, **_CELL_ATTRS)
    return h1, c1


@register_impl("gru_cell")
def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, *, has_bias):
    return gru_layer(x[None], h, w_ih, w_hh, b_ih, b_hh, None, has_bias=has_bias, **_CELL_ATTRS)[1]


@register_impl("rnn_cell")
def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, *, has_bias, nonlinearity):
    return rnn_layer(x[None], h, w_ih, w_hh, b_ih, b_hh, None, has_bias=has_bias, nonlinearity=nonlinearity,
                     **_CELL_ATTRS)[1]
