"""Gate fusion on traced, hand-written recurrent cells: each step becomes one cell node and a Python
loop of steps one layer scan; compiled results and gradients equal eager ones (float64); steps
that cannot be fused exactly are left alone and stay correct."""
import numpy as np
import pytest

import tracefuse
from tracefuse import nn
from tracefuse.ir.passes import gate_fusion
from tracefuse.ir.rewrite import PassLog
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable

from ir_testing import assert_same_results, op_counts

F64 = tracefuse.float64
I, H, T = 4, 5, 5


# --- cells as users write them: f(x, state, w_ih, w_hh, b_ih, b_hh) -> state --------------------------

def lstm_matmul_chunk(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    if b_ih is None:
        gates = x @ w_ih.t() + h @ w_hh.t()
    else:
        gates = x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g
    return o * c.tanh(), c


def lstm_linear_split(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).split(H, dim=1)
    i, f, g, o = tracefuse.sigmoid(i), tracefuse.sigmoid(f), tracefuse.tanh(g), tracefuse.sigmoid(o)
    c = i * g + c * f
    return tracefuse.tanh(c) * o, c


def lstm_transposed_slices(x, state, w_ih, w_hh, b, _):
    """Weights laid out [K, 4H] and one bias."""
    h, c = state
    gates = x @ w_ih + h @ w_hh if b is None else x @ w_ih + h @ w_hh + b
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def gru_linear_chunk(x, h, w_ih, w_hh, b_ih, b_hh):
    i_r, i_z, i_n = F.linear(x, w_ih, b_ih).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
    r, z = tracefuse.sigmoid(i_r + h_r), tracefuse.sigmoid(i_z + h_z)
    n = tracefuse.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def gru_matmul_split(x, h, w_ih, w_hh, b_ih, b_hh):
    gi, gh = x @ w_ih.t(), h @ w_hh.t()
    if b_ih is not None:
        gi, gh = gi + b_ih, gh + b_hh
    i_r, i_z, i_n = gi.split(H, dim=1)
    h_r, h_z, h_n = gh.split(H, dim=1)
    r, z = (h_r + i_r).sigmoid(), (h_z + i_z).sigmoid()
    n = (r * h_n + i_n).tanh()
    return n + z * (h - n)


def gru_transposed_slices(x, h, w_ih, w_hh, b_ih, _):
    """Weights laid out [K, 3H] and only the input bias."""
    gi = x @ w_ih if b_ih is None else b_ih + x @ w_ih
    gh = h @ w_hh
    r = (gi[:, :H] + gh[:, :H]).sigmoid()
    z = (gi[:, H:2 * H] + gh[:, H:2 * H]).sigmoid()
    n = (gi[:, 2 * H:] + gh[:, 2 * H:] * r).tanh()
    return z * h + (1.0 - z) * n


def rnn_matmul(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    pre = x @ w_ih.t() + h @ w_hh.t() if b_ih is None else x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
    return pre.tanh() if nonlinearity == "tanh" else pre.relu()


def rnn_linear_hidden_first(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    pre = F.linear(h, w_hh, b_hh) + F.linear(x, w_ih, b_ih)
    return tracefuse.tanh(pre) if nonlinearity == "tanh" else F.relu(pre)


def rnn_transposed(x, h, w_ih, w_hh, b, _, nonlinearity):
    """Weights laid out [K, H] and one bias."""
    pre = x @ w_ih + h @ w_hh if b is None else x @ w_ih + h @ w_hh + b
    return pre.tanh() if nonlinearity == "tanh" else pre.relu()


def _rnn(cell, nonlinearity):
    def step(x, h, w_ih, w_hh, b_ih, b_hh):
        return cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    step.__name__ = f"{cell.__name__}_{nonlinearity}"
    return step


# (cell, kind, weights laid out [K, G], number of biases when biased)
CELLS = [(lstm_matmul_chunk, "lstm", False, 2), (lstm_linear_split, "lstm", False, 2),
         (lstm_transposed_slices, "lstm", True, 1), (gru_linear_chunk, "gru", False, 2),
         (gru_matmul_split, "gru", False, 2), (gru_transposed_slices, "gru", True, 1)]
CELLS += [(_rnn(cell, nl), "rnn", transposed, n_bias) for nl in ("tanh", "relu")
          for cell, transposed, n_bias in ((rnn_matmul, False, 2), (rnn_linear_hidden_first, False, 2),
                                           (rnn_transposed, True, 1))]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _weights(rng, kind, transposed, n_bias, bias, in_size=I):
    """[w_ih, w_hh, b_ih, b_hh] (None where absent) as float64 tensors."""
    G = GATES[kind] * H
    shapes = [(G, in_size), (G, H)]
    ws = [rng.standard_normal(s[::-1] if transposed else s) * 0.5 for s in shapes]
    bs = [rng.standard_normal(G) * 0.5 if bias and k < n_bias else None for k in range(2)]
    return [None if a is None else tracefuse.tensor(a, dtype=F64) for a in ws + bs]


def _state(rng, kind, B):
    h = tracefuse.tensor(rng.standard_normal((B, H)), dtype=F64)
    return (h, tracefuse.tensor(rng.standard_normal((B, H)), dtype=F64)) if kind == "lstm" else h


def _hidden(state):
    return state[0] if isinstance(state, tuple) else state


def unroll(cell, x, state, *weights):
    """The Python loop over time; returns every step's h stacked and the last state."""
    outs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state, *weights)
        outs.append(_hidden(state))
    return tracefuse.stack(outs), state


class HandWritten(nn.Module):
    """A hand-written recurrent layer whose weights are Parameters."""

    def __init__(self, cell, weights, loop):
        super().__init__()
        self.cell, self.loop = cell, loop
        for name, w in zip(("w_ih", "w_hh", "b_ih", "b_hh"), weights):
            setattr(self, name, None if w is None else nn.Parameter(w.clone()))

    def forward(self, x, state):
        weights = (self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        return unroll(self.cell, x, state, *weights) if self.loop else self.cell(x, state, *weights)


def _program(cell, weights, as_params, loop):
    """(eager call(x, state), compiled call(x, state), the compiled object)."""
    if as_params:
        model = HandWritten(cell, weights, loop)
        compiled = tracefuse.compile(model)
        return model, compiled, compiled

    def run(x, state, w_ih, w_hh, b_ih, b_hh):
        return unroll(cell, x, state, w_ih, w_hh, b_ih, b_hh) if loop else cell(x, state, w_ih, w_hh, b_ih, b_hh)

    compiled = tracefuse.compile(run)
    return (lambda x, state: run(x, state, *weights)), (lambda x, state: compiled(x, state, *weights)), compiled


def _captured(compiled):
    return compiled_callable(compiled).entries[-1].captured


def _inputs(rng, kind, B, loop, in_size=I, requires_grad=False):
    x = tracefuse.tensor(rng.standard_normal((T, B, in_size) if loop else (B, in_size)), dtype=F64,
                         requires_grad=requires_grad)
    return x, _state(rng, kind, B)


def _leaves(out):
    return [t for o in (out if isinstance(out, tuple) else (out,)) for t in (o if isinstance(o, tuple) else (o,))]


def _assert_close(got, expected, atol=1e-12):
    got, expected = _leaves(got), _leaves(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype is e.dtype
        np.testing.assert_allclose(g.detach().numpy(), e.detach().numpy(), rtol=0, atol=atol)


# --- every cell, fused and equal to eager ---------------------------------------------------------------

@pytest.mark.parametrize("loop", [True, False], ids=["loop", "step"])
@pytest.mark.parametrize("as_params, B", [(False, 1), (True, 3)], ids=["args-B1", "params-B3"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell, kind, transposed, n_bias", CELLS, ids=[c[0].__name__ for c in CELLS])
def test_hand_written_cells_become_one_node_and_match_eager(cell, kind, transposed, n_bias, bias, as_params, B, loop):
    rng = np.random.default_rng(0)
    eager, call, compiled = _program(cell, _weights(rng, kind, transposed, n_bias, bias), as_params, loop)
    with tracefuse.no_grad():
        call(*_inputs(rng, kind, B, loop))  # traced on one batch ...
        x, state = _inputs(rng, kind, B, loop)
        _assert_close(call(x, state), eager(x, state))  # ... and replayed on another
    graph = _captured(compiled).forward
    fused = f"{kind}_layer" if loop else f"{kind}_cell"
    ops = op_counts(graph)
    assert ops[fused] == 1 and set(ops) <= {"input", "permute", fused}, ops
    assert ops["permute"] == (2 if transposed else 0)  # one transpose per [K, G] weight, shared by all steps
    node = next(n for n in graph.nodes if n.op == fused)
    assert node.attrs["has_bias"] is bias
    if kind == "rnn":
        assert node.attrs["nonlinearity"] == cell.__name__.rsplit("_", 1)[1]


@pytest.mark.parametrize("cell, kind, transposed, n_bias", CELLS, ids=[c[0].__name__ for c in CELLS])
def test_gradients_through_compiled_hand_written_loops_match_eager(cell, kind, transposed, n_bias):
    """(Today the backward graph is traced from the unfused forward, whose gate activations it saves,
    so these forwards stay unfused: see the last test.)"""
    rng = np.random.default_rng(1)
    model = HandWritten(cell, _weights(rng, kind, transposed, n_bias, True), loop=True)
    compiled = tracefuse.compile(model)

    def grads(run, x, state):
        model.zero_grad()
        x.grad = None
        y, last = run(x, state)
        ((y * y).sum() + sum(s.sum() for s in _leaves(last))).backward()
        return [x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in model.parameters()]

    grads(compiled, *_inputs(rng, kind, 3, True, requires_grad=True))  # traced on one batch
    x, state = _inputs(rng, kind, 3, True, requires_grad=True)
    for got, expected in zip(grads(compiled, x, state), grads(model, x, state)):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert len(compiled_callable(compiled).entries) == 1


def test_the_log_names_each_fused_step_before_the_loop_rolls():
    rng = np.random.default_rng(2)
    _, call, compiled = _program(gru_linear_chunk, _weights(rng, "gru", False, 2, True), False, True)
    with tracefuse.no_grad():
        call(*_inputs(rng, "gru", 2, True))
    captured = _captured(compiled)
    rules = captured.log.rules()
    assert rules.count("gate_fusion/gru_gates_to_cell") == T
    assert rules.index("rnn_loop_rolling/cell_loop_to_layer") > max(
        i for i, r in enumerate(rules) if r == "gate_fusion/gru_gates_to_cell")
    layer = next(n for n in captured.forward.nodes if n.op == "gru_layer")
    assert layer.meta["source"].startswith("test_gate_fusion.py:")
    assert [str(x) for x in layer.inputs[:2]] == ["%x", "%state"]


def test_a_loop_whose_input_and_hidden_sizes_are_equal_still_reads_x_as_the_input():
    """With I == H the sum x W_ih^T + h W_hh^T does not say which term is the state; the rule takes the
    row x[t] as the input and the previous step's cell output as h, so the loop rolls."""
    for cell, kind in ((_rnn(rnn_linear_hidden_first, "tanh"), "rnn"), (lstm_matmul_chunk, "lstm")):
        rng = np.random.default_rng(3)
        eager, call, compiled = _program(cell, _weights(rng, kind, False, 2, True, in_size=H), False, True)
        with tracefuse.no_grad():
            x, state = _inputs(rng, kind, 2, True, in_size=H)
            _assert_close(call(x, state), eager(x, state))
        layer = next(n for n in _captured(compiled).forward.nodes if n.op == f"{kind}_layer")
        assert [str(r) for r in layer.inputs[:4 if kind == "lstm" else 3]] == \
            ["%x"] + (["%state_0", "%state_1", "%w_ih"] if kind == "lstm" else ["%state", "%w_ih"])


# --- steps that are not fused stay exact ---------------------------------------------------------------

def _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh, order="ifgo"):
    blocks = dict(zip(order, (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, 1)))
    return [blocks[k] for k in "ifgo"]


def lstm_returning_a_gate(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    i, f, g, o = _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g
    return (o * c.tanh(), c), o


def lstm_relu_candidate(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    i, f, g, o = _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh)
    c = f.sigmoid() * c + i.sigmoid() * g.relu()
    return o.sigmoid() * c.tanh(), c


def lstm_gates_in_order_ifog(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    i, f, g, o = _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh, order="ifog")
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def gru_relu_candidate(x, h, w_ih, w_hh, b_ih, b_hh):
    i_r, i_z, i_n = F.linear(x, w_ih, b_ih).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
    r, z = (i_r + h_r).sigmoid(), (i_z + h_z).sigmoid()
    n = (i_n + r * h_n).relu()
    return (1 - z) * n + z * h


def gru_update_the_other_way_round(x, h, w_ih, w_hh, b_ih, b_hh):
    i_r, i_z, i_n = F.linear(x, w_ih, b_ih).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
    r, z = (i_r + h_r).sigmoid(), (i_z + h_z).sigmoid()
    n = (i_n + r * h_n).tanh()
    return z * n + (1 - z) * h


def gru_reset_after_the_bias_is_left_out(x, h, w_ih, w_hh, b_ih, b_hh):
    """r multiplies h W_hn^T only, with b_hn added outside: not PyTorch's GRU."""
    i_r, i_z, i_n = F.linear(x, w_ih, b_ih).chunk(3, 1)
    h_r, h_z, h_n = (h @ w_hh.t()).chunk(3, 1)
    b_r, b_z, b_n = b_hh.chunk(3, 0)
    r, z = (i_r + h_r + b_r).sigmoid(), (i_z + h_z + b_z).sigmoid()
    n = (i_n + b_n + r * h_n).tanh()
    return (1 - z) * n + z * h


def rnn_sigmoid(x, h, w_ih, w_hh, b_ih, b_hh):
    return (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).sigmoid()


def rnn_with_three_biases(x, h, w_ih, w_hh, b_ih, b_hh):
    return (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh) + b_hh).tanh()


def _unfused_run(cell, kind, x, state, dtype=F64):
    rng = np.random.default_rng(4)
    weights = [w.to(dtype) for w in _weights(rng, kind, False, 2, True)]
    compiled = tracefuse.compile(cell)
    with tracefuse.no_grad():
        expected, got = cell(x, state, *weights), compiled(x, state, *weights)
    _assert_close(got, expected, atol=1e-12 if dtype is F64 else 0)
    captured = _captured(compiled)
    assert not any(r.startswith("gate_fusion/") for r in captured.log.rules()), captured.log
    assert not {f"{kind}_cell", f"{kind}_layer"} & set(op_counts(captured.forward))


@pytest.mark.parametrize("cell, kind", [
    (lstm_returning_a_gate, "lstm"), (lstm_relu_candidate, "lstm"), (lstm_gates_in_order_ifog, "lstm"),
    (gru_relu_candidate, "gru"), (gru_update_the_other_way_round, "gru"), (gru_reset_after_the_bias_is_left_out, "gru"),
    (rnn_sigmoid, "rnn"), (rnn_with_three_biases, "rnn")], ids=lambda c: getattr(c, "__name__", c))
def test_other_cells_are_left_alone(cell, kind):
    rng = np.random.default_rng(5)
    _unfused_run(cell, kind, *_inputs(rng, kind, 3, False))


def test_states_that_broadcast_against_the_batch_are_left_alone():
    rng = np.random.default_rng(6)
    x = tracefuse.tensor(rng.standard_normal((3, I)), dtype=F64)
    h1 = tracefuse.tensor(rng.standard_normal((1, H)), dtype=F64)
    _unfused_run(_rnn(rnn_matmul, "tanh"), "rnn", x, h1)  # h [1, H] against x [3, I]
    _unfused_run(lstm_matmul_chunk, "lstm", x, (tracefuse.zeros(3, H, dtype=F64), h1[0]))  # c [H]


def test_float16_steps_are_left_alone_and_float32_steps_fuse():
    rng = np.random.default_rng(7)
    x, (h, c) = _inputs(rng, "lstm", 3, False)
    _unfused_run(lstm_matmul_chunk, "lstm", x.half(), (h.half(), c.half()), dtype=tracefuse.float16)
    weights = [w.float() for w in _weights(rng, "lstm", False, 2, True)]
    compiled = tracefuse.compile(lstm_matmul_chunk)
    with tracefuse.no_grad():
        got = compiled(x.float(), (h.float(), c.float()), *weights)
        _assert_close(got, lstm_matmul_chunk(x.float(), (h.float(), c.float()), *weights), atol=1e-6)
    assert op_counts(_captured(compiled).forward)["lstm_cell"] == 1


def test_steps_mixing_dtypes_are_left_alone():
    rng = np.random.default_rng(8)
    x, h = _inputs(rng, "rnn", 3, False)
    w_ih, w_hh, b_ih, b_hh = _weights(rng, "rnn", False, 2, True)
    weights = (w_ih, w_hh, b_ih.float(), b_hh)  # a float32 bias promotes into float64 math
    compiled = tracefuse.compile(_rnn(rnn_matmul, "tanh"))
    with tracefuse.no_grad():
        got = compiled(x, h, *weights)
    _assert_close(got, _rnn(rnn_matmul, "tanh")(x, h, *weights))
    assert "rnn_cell" not in op_counts(_captured(compiled).forward)


def test_a_gate_read_outside_its_step_keeps_only_that_step_unfused():
    def run(x, state, w_ih, w_hh, b_ih, b_hh):
        outs, seen = [], None
        for t in range(x.shape[0]):
            if t == 2:
                state, seen = lstm_returning_a_gate(x[t], state, w_ih, w_hh, b_ih, b_hh)
            else:
                state = lstm_matmul_chunk(x[t], state, w_ih, w_hh, b_ih, b_hh)
            outs.append(state[0])
        return tracefuse.stack(outs), state, seen

    rng = np.random.default_rng(9)
    weights = _weights(rng, "lstm", False, 2, True)
    compiled = tracefuse.compile(run)
    with tracefuse.no_grad():
        x, state = _inputs(rng, "lstm", 3, True)
        _assert_close(compiled(x, state, *weights), run(x, state, *weights))
    ops = op_counts(_captured(compiled).forward)
    assert ops["lstm_layer"] == 2 and ops["sigmoid"] == 3  # steps 0-1 and 3-4 roll; step 2 stays as written
    assert _captured(compiled).log.rules().count("gate_fusion/lstm_gates_to_cell") == T - 1


def test_steps_fuse_when_gradients_are_needed_too():
    """Autodiff runs on the optimized forward, so a step that needs gradients is still one cell
    (the backward applies the lstm_cell rule, which recomputes the gates from the saved inputs)."""
    rng = np.random.default_rng(10)
    x, (h, c) = _inputs(rng, "lstm", 3, False)
    weights = [w.requires_grad_(True) for w in _weights(rng, "lstm", False, 2, True)]
    report = tracefuse.explain(lstm_matmul_chunk, x, (h, c), *weights)
    assert len(report.graph.outputs) == 2  # the traced graph: h', c' only
    forward = op_counts(report.optimized)
    assert forward["lstm_cell"] == 1 and "sigmoid" not in forward and "tanh" not in forward
    assert "gate_fusion/lstm_gates_to_cell" in report.passes.rules()
