"""Gradient rules of the recurrent ops.

A layer's gradient is backpropagation through time, a big kernel of its own: the rule hands the
saved inputs, y (the hidden states; modifying it in place before backward is an error, as for
any saved output) and the forward's workspace to the `*_layer_backward` op (not differentiable,
as with cuDNN). A cell is one step, so its rule is written with tensor ops (recomputing the gates
from the saved inputs), which makes double backward through cells work.
"""
from __future__ import annotations

from ..dispatch import dispatch
from ._rule import rule


# --- layers ----------------------------------------------------------------------------------------

def _layer_rule(kind, n_inputs, float_inputs, bias_inputs, proj_input=None):
    """Register the rule of `{kind}_layer`: its inputs 0..n_inputs-1 (the last one `lengths`) are
    saved with y (output 0) and the workspace (the last output); the backward op returns the
    gradients of `float_inputs`, then of `bias_inputs` if has_bias, then of `proj_input` if has_proj."""
    workspace = {"lstm": 3, "gru": 2, "rnn": 2}[kind]

    @rule(f"{kind}_layer", inputs=range(n_inputs), outputs=(0, workspace))
    def _layer(ctx, *grads):
        attrs = ctx.attrs
        saved = [ctx.saved_input(i) for i in range(n_inputs)]
        result = dispatch(f"{kind}_layer_backward", *grads[:workspace], *saved, ctx.saved_output(0),
                          ctx.saved_output(workspace), **attrs)
        positions = list(float_inputs) + (list(bias_inputs) if attrs["has_bias"] else [])
        positions += [proj_input] if attrs["has_proj"] and proj_input is not None else []
        out = [None] * n_inputs
        for i, g in zip(positions, result):
            out[i] = g
        return tuple(out)

    return _layer


# lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
_layer_rule("lstm", 9, float_inputs=(0, 1, 2, 3, 4), bias_inputs=(5, 6), proj_input=7)
# gru_layer / rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
_layer_rule("gru", 7, float_inputs=(0, 1, 2, 3), bias_inputs=(4, 5))
_layer_rule("rnn", 7, float_inputs=(0, 1, 2, 3), bias_inputs=(4, 5))


# --- cells -----------------------------------------------------------------------------------------

def _affine(x, w, b):
    y = x.matmul(w.t())
    return y if b is None else y + b


def _cell_input_grads(dg_in, dg_hid, x, h, w_ih, w_hh, has_bias):
    """(dx, dh, dw_ih, dw_hh, db_ih, db_hh) of the affine maps x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    given the gradients of their results."""
    db = (dg_in.sum(0), dg_hid.sum(0)) if has_bias else (None, None)
    return (dg_in.matmul(w_ih), dg_hid.matmul(w_hh), dg_in.t().matmul(x), dg_hid.t().matmul(h), *db)


@rule("lstm_cell", inputs=range(7))
def _lstm_cell(ctx, gh, gc):
    x, h, c, w_ih, w_hh, b_ih, b_hh = (ctx.saved_input(i) for i in range(7))
    i, f, g, o = (_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)).chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    tc = (f * c + i * g).tanh()
    dc = gc + gh * o * (1 - tc * tc)
    dgates = dispatch("cat", dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                      gh * tc * o * (1 - o), dim=1)
    dx, dh, dw_ih, dw_hh, db_ih, db_hh = _cell_input_grads(dgates, dgates, x, h, w_ih, w_hh, ctx.attrs["has_bias"])
    return dx, dh, dc * f, dw_ih, dw_hh, db_ih, db_hh


@rule("gru_cell", inputs=range(6))
def _gru_cell(ctx, g):
    x, h, w_ih, w_hh, b_ih, b_hh = (ctx.saved_input(i) for i in range(6))
    xr, xz, xn = _affine(x, w_ih, b_ih).chunk(3, 1)
    hr, hz, hn = _affine(h, w_hh, b_hh).chunk(3, 1)
    r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
    n = (xn + r * hn).tanh()
    dn = g * (1 - z) * (1 - n * n)
    dr = dn * hn * r * (1 - r)
    dz = g * (h - n) * z * (1 - z)
    dg_in = dispatch("cat", dr, dz, dn, dim=1)
    dg_hid = dispatch("cat", dr, dz, dn * r, dim=1)
    dx, dh, dw_ih, dw_hh, db_ih, db_hh = _cell_input_grads(dg_in, dg_hid, x, h, w_ih, w_hh, ctx.attrs["has_bias"])
    return dx, dh + g * z, dw_ih, dw_hh, db_ih, db_hh


@rule("rnn_cell", inputs=range(6))
def _rnn_cell(ctx, g):
    x, h, w_ih, w_hh, b_ih, b_hh = (ctx.saved_input(i) for i in range(6))
    pre = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if ctx.attrs["nonlinearity"] == "tanh":
        out = pre.tanh()
        dpre = g * (1 - out * out)
    else:
        dpre = g * (pre > 0)
    return _cell_input_grads(dpre, dpre, x, h, w_ih, w_hh, ctx.attrs["has_bias"])
