"""The recurrent ops (lstm/gru/rnn layers, their backward ops, the cells) against torch.nn.

A layer op is one direction of one layer, so it is compared with a single-layer torch module:
the forward direction of a unidirectional one, or the reverse half of a bidirectional one.
Lengths are compared with torch's packed sequences (pack_padded_sequence, unsorted).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import tracefuse as tf
from tracefuse.dispatch import dispatch

from conftest import assert_same

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [3, 5, 1]  # unsorted, one full-length sequence
TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}
F64 = dict(rtol=1e-7, atol=1e-10)


class Case:
    """One layer configuration: the torch module, random inputs, and both sides' results."""

    def __init__(self, kind, bias=True, reverse=False, lengths=False, proj=False, seed=0, sizes=(T, B, I, H)):
        self.kind, self.bias, self.reverse, self.proj = kind, bias, reverse, proj
        self.T, self.B, self.I, self.H = sizes
        self.lengths = LENGTHS if lengths else None
        kw = dict(bias=bias, bidirectional=reverse)
        if kind.startswith("rnn"):
            kw["nonlinearity"] = kind[4:]
        if proj:
            kw["proj_size"] = P
        torch.manual_seed(seed)
        self.module = TORCH_MODULES[kind](self.I, self.H, **kw).double()
        rng = np.random.default_rng(seed)
        D, out = 1 + reverse, P if proj else self.H
        self.x = rng.standard_normal((self.T, self.B, self.I))
        self.h0 = rng.standard_normal((D, self.B, out))
        self.c0 = rng.standard_normal((D, self.B, self.H))
        self.gy = rng.standard_normal((self.T, self.B, out))
        self.gh = rng.standard_normal((self.B, out))
        self.gc = rng.standard_normal((self.B, self.H))
        self.suffix = "_l0_reverse" if reverse else "_l0"

    @property
    def is_lstm(self):
        return self.kind == "lstm"

    def param_names(self):
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return names + (["weight_hr"] if self.proj else [])

    def torch_run(self, dtype=torch.float64):
        """(y, h_n, c_n) of this direction and the grads of (x, h0, c0, *params) of the loss."""
        mod = self.module.to(dtype)
        x = torch.tensor(self.x, dtype=dtype, requires_grad=True)
        h0 = torch.tensor(self.h0, dtype=dtype, requires_grad=True)
        c0 = torch.tensor(self.c0, dtype=dtype, requires_grad=True)
        hx = (h0, c0) if self.is_lstm else h0
        inp = x if self.lengths is None else pack_padded_sequence(x, torch.tensor(self.lengths), enforce_sorted=False)
        y, hn = mod(inp, hx)
        if self.lengths is not None:
            y = pad_packed_sequence(y, total_length=self.T)[0]
        hn, cn = hn if self.is_lstm else (hn, None)
        d = int(self.reverse)
        width = y.shape[-1] // (1 + d)
        outs = (y[..., d * width:], hn[d]) + ((cn[d],) if self.is_lstm else ())
        self._loss(outs, lambda a: torch.tensor(a, dtype=dtype)).backward()
        params = dict(mod.named_parameters())
        grads = [x.grad, h0.grad[d]] + ([c0.grad[d]] if self.is_lstm else [])
        grads += [params[n + self.suffix].grad for n in self.param_names()]
        mod.zero_grad()
        return outs, grads

    def _loss(self, outs, wrap):
        loss = (outs[0] * wrap(self.gy)).sum() + (outs[1] * wrap(self.gh)).sum()
        return loss + (outs[2] * wrap(self.gc)).sum() if self.is_lstm else loss

    def inputs(self, dtype=tf.float64, requires_grad=True):
        """Our op's tensor inputs: (x, h0, c0?, *params), the order `grads` reports them in."""
        d = int(self.reverse)
        params = dict(self.module.named_parameters())

        def t(a):
            return tf.tensor(np.asarray(a, dtype=np.float64)).to(dtype).requires_grad_(requires_grad)

        tensors = [t(self.x), t(self.h0[d])] + ([t(self.c0[d])] if self.is_lstm else [])
        return tensors + [t(params[n + self.suffix].detach().double().numpy()) for n in self.param_names()]

    def run(self, tensors):
        """Our layer op on `tensors` (from `inputs`): (y, h_n, c_n?) without the workspace."""
        named = dict(zip(["x", "h0"] + (["c0"] if self.is_lstm else []) + self.param_names(), tensors))
        lengths = None if self.lengths is None else tf.tensor(self.lengths, dtype=tf.int64)
        flags = dict(reverse=self.reverse, has_bias=self.bias, has_lengths=lengths is not None)
        args = [named["x"], named["h0"]] + ([named["c0"]] if self.is_lstm else [])
        args += [named["weight_ih"], named["weight_hh"], named.get("bias_ih"), named.get("bias_hh")]
        if self.is_lstm:
            out = dispatch("lstm_layer", *args, named.get("weight_hr"), lengths, has_proj=self.proj, **flags)
        else:
            name, extra = ("gru_layer", {}) if self.kind == "gru" else ("rnn_layer", {"nonlinearity": self.kind[4:]})
            out = dispatch(name, *args, lengths, has_proj=False, **flags, **extra)
        assert not out[-1].requires_grad  # the workspace is an aux output
        return out[:-1]

    def ours(self, dtype=tf.float64):
        tensors = self.inputs(dtype)
        outs = self.run(tensors)
        self._loss(outs, lambda a: tf.tensor(a).to(dtype)).backward()
        return outs, [t.grad for t in tensors]


def _layer_cases():
    for kind in TORCH_MODULES:
        for proj in ([False, True] if kind == "lstm" else [False]):
            for bias in (True, False):
                for reverse in (False, True):
                    for lengths in (False, True):
                        yield pytest.param(kind, bias, reverse, lengths, proj,
                                           id=f"{kind}-bias{int(bias)}-rev{int(reverse)}-len{int(lengths)}-proj{int(proj)}")


@pytest.mark.parametrize("kind,bias,reverse,lengths,proj", list(_layer_cases()))
def test_layer_matches_torch_float64(kind, bias, reverse, lengths, proj):
    case = Case(kind, bias, reverse, lengths, proj)
    theirs, their_grads = case.torch_run()
    ours, our_grads = case.ours()
    assert_same(ours, theirs, **F64)
    assert_same(our_grads, their_grads, **F64)


@pytest.mark.parametrize("kind", list(TORCH_MODULES))
def test_layer_matches_torch_float32(kind):
    case = Case(kind, reverse=True, lengths=True, proj=kind == "lstm", seed=1)
    theirs, their_grads = case.torch_run(torch.float32)
    ours, our_grads = case.ours(tf.float32)
    assert_same(ours, theirs)
    assert_same(our_grads, their_grads)


@pytest.mark.parametrize("dtype,tol", [(tf.float16, 2e-3), (tf.bfloat16, 2e-2)], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", list(TORCH_MODULES))
def test_layer_half_precision(kind, dtype, tol):
    """float16/bfloat16 compute in float32 and round once: close to float64 on the rounded inputs."""
    case = Case(kind, lengths=True, proj=kind == "lstm", seed=2)
    # The float64 reference runs on the inputs and weights rounded to `dtype`.
    rounded = [t.detach().to(tf.float64).requires_grad_() for t in case.inputs(dtype, requires_grad=False)]
    reference = case.run(rounded)
    case._loss(reference, tf.tensor).backward()
    ours, our_grads = case.ours(dtype)
    for a, b in zip(ours, reference):
        assert a.dtype is dtype
        np.testing.assert_allclose(a.detach().to(tf.float64).numpy(), b.detach().numpy(), rtol=tol, atol=tol)
    for g, r in zip(our_grads, rounded):
        assert g.dtype is dtype
        expected = r.grad.numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(g.to(tf.float64).numpy(), expected, rtol=tol, atol=tol * scale)


def _numeric_grads(case, tensors, eps=1e-6):
    """Central differences of the test loss with respect to every element of every input."""
    def loss():
        with tf.no_grad():
            return case._loss(case.run(tensors), tf.tensor).item()

    grads = []
    for t in tensors:
        flat, g = t._data.reshape(-1), np.empty(t.numel())
        for k in range(t.numel()):
            orig = flat[k]
            flat[k] = orig + eps
            up = loss()
            flat[k] = orig - eps
            down = loss()
            flat[k] = orig
            g[k] = (up - down) / (2 * eps)
        grads.append(g.reshape(t.shape))
    return grads


@pytest.mark.parametrize("kind,proj", [("lstm", True), ("lstm", False), ("gru", False), ("rnn_tanh", False),
                                       ("rnn_relu", False)])
def test_layer_central_differences(kind, proj):
    case = Case(kind, reverse=True, lengths=True, proj=proj, seed=3, sizes=(4, 3, 2, 4))
    case.lengths = [2, 4, 3]
    _, our_grads = case.ours()
    numeric = _numeric_grads(case, case.inputs(requires_grad=False))
    for g, n in zip(our_grads, numeric):
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-6, atol=1e-7)


def test_masked_steps_write_zeros_and_keep_state():
    """A sequence of length 0 keeps its initial state and outputs only zeros (in both directions)."""
    for reverse in (False, True):
        case = Case("lstm", reverse=reverse, lengths=True)
        case.lengths = [0, 5, 2]
        y, hn, cn = case.run(case.inputs(requires_grad=False))
        assert np.all(y.numpy()[:, 0] == 0) and np.all(y.numpy()[2:, 2] == 0)
        np.testing.assert_array_equal(hn.numpy()[0], case.h0[int(reverse), 0])
        np.testing.assert_array_equal(cn.numpy()[0], case.c0[int(reverse), 0])


def test_half_precision_workspace_is_float32():
    case = Case("gru")
    *_, workspace = dispatch("gru_layer", *case.inputs(tf.float16, requires_grad=False), None,
                             reverse=False, has_bias=True, has_proj=False, has_lengths=False)
    assert workspace.dtype is tf.float32 and not workspace.requires_grad


# --- cells ---------------------------------------------------------------------------------------------

CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn_tanh": torch.nn.RNNCell, "rnn_relu": torch.nn.RNNCell}


def _cell_setup(kind, bias, dtype=torch.float64):
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    torch.manual_seed(4)
    cell = CELLS[kind](I, H, bias=bias, **kw).to(dtype)
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((B, I)), rng.standard_normal((B, H))]
    arrays += [rng.standard_normal((B, H))] if kind == "lstm" else []
    theirs = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays] + list(cell.parameters())
    ours = [tf.tensor(t.detach().double().numpy()).to(_TF[dtype]).requires_grad_() for t in theirs]
    state = (theirs[1], theirs[2]) if kind == "lstm" else theirs[1]
    their_out = cell(theirs[0], state)
    x, h, *rest = ours
    params = rest[1:] if kind == "lstm" else rest
    b = params[2:] if bias else [None, None]
    args = [x, h] + ([rest[0]] if kind == "lstm" else []) + params[:2] + b
    attrs = {"has_bias": bias} | kw
    our_out = dispatch(f"{kind[:3]}_cell" if kind != "lstm" else "lstm_cell", *args, **attrs)
    return theirs, ours, their_out, our_out


_TF = {torch.float64: tf.float64, torch.float32: tf.float32}


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_values_grads_and_double_backward(kind, bias):
    theirs, ours, their_out, our_out = _cell_setup(kind, bias)
    their_out, our_out = _as_tuple(their_out), _as_tuple(our_out)
    assert_same(our_out, their_out, **F64)
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal(tuple(o.shape)) for o in their_out]
    their_loss = sum((o * torch.tensor(w)).sum() for o, w in zip(their_out, weights))
    our_loss = sum(((o * tf.tensor(w)).sum() for o, w in zip(our_out, weights)), tf.tensor(0.0, dtype=tf.float64))
    their_g = torch.autograd.grad(their_loss, theirs, create_graph=True)
    our_g = tf.autograd.grad(our_loss, ours, create_graph=True)
    assert_same(list(our_g), list(their_g), **F64)
    # Double backward: the gradient of a function of the first gradients.
    their_gg = torch.autograd.grad(sum((g * g).sum() for g in their_g), theirs, allow_unused=True)
    our_gg = tf.autograd.grad(sum(((g * g).sum() for g in our_g), tf.tensor(0.0, dtype=tf.float64)), ours,
                              allow_unused=True)
    their_gg = [torch.zeros_like(t) if g is None else g for g, t in zip(their_gg, theirs)]
    our_gg = [tf.zeros_like(t) if g is None else g for g, t in zip(our_gg, ours)]
    assert_same(our_gg, their_gg, **F64)


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_float32(kind):
    theirs, ours, their_out, our_out = _cell_setup(kind, True, torch.float32)
    assert_same(list(_as_tuple(our_out)), list(_as_tuple(their_out)))


@pytest.mark.parametrize("kind", list(TORCH_MODULES))
def test_layer_empty_batch_and_single_step(kind):
    for sizes in ((T, 0, I, H), (1, B, I, H)):
        case = Case(kind, reverse=True, proj=kind == "lstm", sizes=sizes)
        theirs, their_grads = case.torch_run()
        ours, our_grads = case.ours()
        assert_same(ours, theirs, **F64)
        assert_same(our_grads, their_grads, **F64)
