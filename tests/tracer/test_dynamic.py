"""compile(dynamic=True): one symbolic trace serves every batch size and sequence length.

Every module of the nn conformance list, RNN/LSTM/GRU configurations and a whole training step
run on several sizes from one graph and match their eager twins (values, gradients, state) to
float64 precision. Python that decides on a size (a branch, a loop, size 1) is guarded: crossing
the decision traces again and the recompile names the size, in the call's terms.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracefuse as tf
from tracefuse import nn
from tracefuse.tracer.api import compiled_callable
from tests.tracer.test_compiled_modules import MODULES, TIGHT, check_compiled, leaves
from tests.tracer.test_compiled_training import LanguageModel, make_step, sequence_ce


def grown(arrays, extra, rng):
    """`arrays` with `extra` more entries along dim 0 wherever dim 0 is a batch (2 or more)."""
    out = []
    for a in arrays:
        if a is None or a.ndim == 0 or a.shape[0] < 2 or extra == 0:
            out.append(a)
        elif a.dtype.kind == "f":
            out.append(np.concatenate([a, rng.standard_normal((extra,) + a.shape[1:])]))
        else:  # indices, labels: repeat real ones, so they stay in range
            out.append(np.concatenate([a, a[:1].repeat(extra, axis=0)]))
    return out


def check_dynamic(model, calls, call=None, tol=TIGHT):
    """Compile `model` with dynamic=True and compare it with an eager twin on each NumPy argument
    list in `calls` (sizes differ from call to call): one graph serves them all."""
    return check_compiled(model, calls, call, tol=tol, dynamic=True)


@pytest.mark.parametrize("name, make, make_arrays", MODULES, ids=[m[0] for m in MODULES])
def test_every_module_serves_new_batch_sizes_from_one_graph(name, make, make_arrays):
    tf.manual_seed(0)
    rng = np.random.default_rng(0)
    base = make_arrays(rng)
    calls = [grown(base, extra, rng) for extra in (0, 2, 5)]
    if any(a is not None and a.ndim and a.shape[0] >= 2 for a in base):
        try:  # a size that only looked like a batch (a 1-d input's features): eager refuses it too
            make().double()(*leaves(calls[1]))
        except (RuntimeError, ValueError):
            calls = calls[:1]
    check_dynamic(make().double(), calls)


RNNS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


@pytest.mark.parametrize("kind", sorted(RNNS))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional, num_layers, with_state", [(False, 2, False), (True, 1, True)])
def test_recurrent_layers_serve_every_batch_and_length(kind, batch_first, bidirectional, num_layers, with_state):
    tf.manual_seed(0)
    model = RNNS[kind](3, 4, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional).double()
    directions = 2 if bidirectional else 1
    rng = np.random.default_rng(1)
    calls = []
    for T, B in [(5, 3), (2, 4), (7, 2), (3, 6)]:
        x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
        states = [rng.standard_normal((num_layers * directions, B, 4))] * (2 if kind == "LSTM" else 1)
        calls.append([x] + (states if with_state else []))

    def call(m, x, *state):
        return m(x, (tuple(state) if kind == "LSTM" else state[0]) if state else None)

    compiled = check_dynamic(model, calls, call)
    layer = {"LSTM": "lstm_layer", "GRU": "gru_layer", "RNN": "rnn_layer"}[kind]
    graph = compiled_callable(compiled).entries[0].captured.forward
    assert sum(n.op == layer for n in graph.nodes) == num_layers * directions
    assert "s0" in str(graph) and "s1" in str(graph)  # the scans are over symbolic lengths and batches


class HandWrittenCell(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.ih, self.hh = nn.Linear(input_size, 4 * hidden_size), nn.Linear(hidden_size, 4 * hidden_size)

    def forward(self, x, h, c):
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c.tanh(), c


def test_a_hand_written_cell_fuses_once_for_every_batch_even_one_as_wide_as_the_state():
    rng = np.random.default_rng(3)
    compiled = check_dynamic(HandWrittenCell(3, 6).double(),
                             [[rng.standard_normal((B, 3)), rng.standard_normal((B, 6)), rng.standard_normal((B, 6))]
                              for B in (4, 6, 5, 6)])
    ops = [n.op for n in compiled_callable(compiled).entries[0].captured.forward.nodes if n.op != "input"]
    assert ops[0] == "lstm_cell" and "sigmoid" not in ops


@given(st.lists(st.tuples(st.integers(2, 6), st.integers(2, 6)), min_size=2, max_size=4))
@settings(max_examples=10, deadline=None)
def test_hypothesis_lstm_over_random_sizes_is_one_graph(sizes):
    tf.manual_seed(0)
    rng = np.random.default_rng(len(sizes))
    check_dynamic(nn.LSTM(2, 3, num_layers=2).double(), [[rng.standard_normal((T, B, 2))] for T, B in sizes])


def test_training_step_with_clipping_and_adam_is_one_graph_for_all_sizes():
    tf.manual_seed(2)
    model = LanguageModel().double()
    twin = copy.deepcopy(model)
    opt, twin_opt = tf.optim.Adam(model.parameters(), lr=0.01), tf.optim.Adam(twin.parameters(), lr=0.01)
    compiled = tf.compile(make_step(model, opt, sequence_ce, 2.0), dynamic=True)
    eager = make_step(twin, twin_opt, sequence_ce, 2.0)
    rng = np.random.default_rng(0)
    for step, (T, B) in enumerate([(6, 3), (6, 3), (4, 5), (9, 2), (5, 4), (3, 3)]):  # 5, 4: the LSTM and embedding widths
        batch = [tf.tensor(rng.integers(0, 12, (T, B))) for _ in range(2)]
        (loss, total), (e_loss, e_total) = compiled(*batch), eager(*batch)
        np.testing.assert_allclose(loss.item(), e_loss.item(), err_msg=f"step {step}", **TIGHT)
        np.testing.assert_allclose(total.item(), e_total.item(), err_msg=f"step {step}", **TIGHT)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=f"{step} {name}", **TIGHT)
    cache = compiled._tracefuse_compiled
    assert len(cache.entries) == 1, [str(r) for r in cache.recompiles]
    assert cache.warmups == 1  # Adam's first step made its state; the second call traced


PATTERNS = {  # size arithmetic users write, each kept symbolic
    "view": lambda x: x.view(x.size(0), -1) * 2,
    "new_zeros": lambda x: x.new_zeros(x.size(0), 5) + x.sum(),
    "slice": lambda x: x[:, : x.size(1) - 1],
    "index": lambda x: x[x.size(0) - 1],
    "split": lambda x: x.split(x.size(1) // 2, dim=1)[0],
    "chunk": lambda x: x.chunk(2, dim=1)[1],
    "narrow": lambda x: x.narrow(1, 0, x.size(1) - 1),
    "expand": lambda x: x[:, :1].expand(x.size(0), x.size(1)),
    "repeat": lambda x: x.unsqueeze(1).repeat(1, x.size(1), 1),
    "arange": lambda x: tf.arange(x.size(0), dtype=x.dtype) + x[:, 0] * (tf.arange(x.size(0)) < 3),
    "zeros": lambda x: tf.zeros(x.shape, dtype=x.dtype) + tf.full((x.size(0), 1), 3.0, dtype=x.dtype),
    "reshape": lambda x: x.reshape(*x.shape[:-1], 2, -1).transpose(0, 1).reshape(2, -1),
    "flatten": lambda x: x.unsqueeze(0).flatten(1),
    "mean": lambda x: x.sum(0) / x.size(0),
    "cat_stack": lambda x: tf.stack([tf.cat([x, x[:, :2]], dim=1)] * 2).sum(0),
    "gather": lambda x: x.gather(1, tf.zeros(x.size(0), 1, dtype=tf.int64)),
}


# Ways a size reaches values rather than shapes: each must follow the call's sizes (one graph where
# the size stays symbolic, a retrace where Python needed its number), never the traced one.
VALUES = {
    "mask_from_a_fixed_arange": (lambda x: (tf.arange(8) < x.shape[0]).double() * x.sum(), 1),
    "scalar_times_constant": (lambda x: tf.ones(2, dtype=x.dtype) * x.shape[0] + x.sum(), 1),
    "full_of_a_size": (lambda x: tf.full((2,), x.shape[0], dtype=x.dtype) + x.sum(), 1),
    "size_times_tensor": (lambda x: x.shape[0] * x + x.shape[1] - x + x.shape[0] / (x.abs() + 1), 1),
    "size_as_a_tensor": (lambda x: tf.tensor(x.shape[0]) * x, 1),
    "integer_division_by_a_size": (lambda x: (tf.arange(24) // x.shape[1]).double() + x.sum(), 1),
    "setitem_a_size": (lambda x: _set_first(x.sum(0), x.shape[0]), 1),
    "contiguous_strides": (lambda x: x * x.stride(0), 1),
    "size_in_a_set": (lambda x: x * (2.0 if x.shape[0] in {3, 4} else 1.0), 3),
    "size_as_a_dict_key": (lambda x: x * {3: 1.0, 5: 2.0}.get(x.shape[0], -1.0), 3),
    "size_in_a_string": (lambda x: x * {"3": 1.0, "5": 2.0, "6": 3.0}[f"{x.shape[0]}"], 3),
    "size_as_a_float": (lambda x: x / math.sqrt(x.shape[1]), 2),
    "transposed_strides": (lambda x: x * x.t().stride(1), 3),
}


def _set_first(row, value):
    row = row.clone()
    row[0] = value
    return row


@pytest.mark.parametrize("name", sorted(VALUES))
def test_sizes_used_as_values_follow_each_call(name):
    fn, traces = VALUES[name]
    compiled = tf.compile(fn, dynamic=True)
    for shape in [(3, 4), (5, 4), (6, 7), (3, 4)]:
        x = tf.randn(*shape, dtype=tf.float64)
        np.testing.assert_allclose(compiled(x).numpy(), fn(x).numpy(), err_msg=str(shape), **TIGHT)
    assert len(compiled_callable(compiled).entries) == traces, compiled_callable(compiled).recompiles


def test_a_returned_size_is_the_call_number():
    f = tf.compile(lambda x: (x.sum(), x.shape[0], x.shape), dynamic=True)
    for n in (3, 5):
        total, rows, shape = f(tf.ones(n, 2))
        assert (total.item(), rows, shape) == (2.0 * n, n, (n, 2)) and type(rows) is int


def test_a_size_kept_on_a_module_is_a_number_after_its_trace():
    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.last = None

        def forward(self, x):
            y = x * 1.0
            if self.last is not None and self.last == x.shape[0]:
                y = y * 2
            self.last = x.shape[0]  # a side effect: only the traces run it
            return y

    model, twin = Last(), Last()
    compiled = tf.compile(model, dynamic=True)
    sizes = (3, 3, 5, 5, 3)
    outputs = [compiled(tf.ones(n, 2))[0, 0].item() for n in sizes]
    assert outputs == [twin(tf.ones(n, 2))[0, 0].item() for n in sizes] == [1.0, 2.0, 1.0, 2.0, 1.0]
    # The kept size compared with the next trace's size as the number it was, and that comparison
    # was guarded: every size change retraced.
    assert model.last == 3 and str(model.last) == "3" and hash(model.last) == hash(3)
    assert "guard failed: L['x'].shape[0] == 3: True -> False" in map(str, compiled_callable(compiled).recompiles)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_size_arithmetic_stays_symbolic(name):
    fn = PATTERNS[name]
    compiled = tf.compile(fn, dynamic=True)
    for shape in [(4, 6), (5, 8), (7, 6), (3, 10)]:
        x = tf.randn(*shape, dtype=tf.float64)
        ours, theirs = compiled(x), fn(x)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), **TIGHT)
    assert len(compiled_callable(compiled).entries) == 1, compiled_callable(compiled).recompiles


# --- guards ----------------------------------------------------------------------------------------

def test_a_branch_on_a_size_retraces_when_it_flips_and_says_why():
    @tf.compile(dynamic=True)
    def f(x):
        return x * 2 if x.shape[0] > 4 else x - 1

    for n in (5, 8, 3, 2, 9):
        x = tf.randn(n, 3, dtype=tf.float64)
        np.testing.assert_array_equal(f(x).numpy(), (x * 2 if n > 4 else x - 1).numpy())
    cache = f._tracefuse_compiled
    assert len(cache.entries) == 2
    assert [str(r) for r in cache.recompiles] == ["guard failed: L['x'].shape[0] > 4: True -> False"]


def test_sizes_0_and_1_are_not_symbols():
    f = tf.compile(lambda x: x.sum(0), dynamic=True)
    for n in (3, 7, 1, 5):
        np.testing.assert_allclose(f(tf.ones(n, 2)).numpy(), [n, n])
    cache = compiled_callable(f)
    assert len(cache.entries) == 2
    assert [str(r) for r in cache.recompiles] == ["guard failed: L['x'].shape: (n>=2, n>=2) -> (1, n>=2)"]


def test_a_python_loop_over_a_length_pins_it_and_names_the_line():
    @tf.compile(dynamic=True)
    def running_sum(x):
        total = x[0]
        for t in range(1, x.shape[0]):  # unrolled: one graph per length
            total = total + x[t]
        return total

    for T in (4, 4, 6):
        x = tf.randn(T, 3, dtype=tf.float64)
        np.testing.assert_allclose(running_sum(x).numpy(), x.numpy().sum(0), rtol=1e-12)
    cache = running_sum._tracefuse_compiled
    assert len(cache.entries) == 2
    (recompile,) = cache.recompiles
    assert recompile.guard.startswith("L['x'].shape[0] (used as a number at test_dynamic.py:")
    assert (recompile.old, recompile.new) == (4, 6)


def test_explain_shows_the_symbolic_graph_its_symbols_and_size_guards():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU()).double()
    compiled = tf.compile(model, dynamic=True)
    compiled(tf.randn(4, 3, dtype=tf.float64))
    report = tf.explain(compiled, tf.randn(9, 3, dtype=tf.float64))
    assert "f64[s0,5]" in str(report.optimized)
    assert report.symbols == {"s0": "L['input'].shape[0] (traced at 4)", "s1": "L['input'].shape[1] (traced at 3)"}
    assert report.guards["L['input'].shape[1] != 3"] is False  # the Linear's input size check
    assert report.guards["L['input'].shape"] == (tf.tracer.api.SYMBOLIC, tf.tracer.api.SYMBOLIC)
    text = str(report)
    assert "== symbols ==\ns0 = L['input'].shape[0] (traced at 4)" in text
    assert len(compiled_callable(compiled).entries) == 1


def test_dump_writes_the_symbolic_graphs_and_size_guards(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEFUSE_DUMP", "graph,optimized,guards")
    monkeypatch.setenv("TRACEFUSE_DUMP_DIR", str(tmp_path))
    compiled = tf.compile(nn.Linear(3, 2).double(), dynamic=True)
    compiled(tf.randn(5, 3, dtype=tf.float64))
    (folder,) = tmp_path.iterdir()
    assert "f64[s0,2]" in (folder / "optimized.txt").read_text()
    shapes = [o["shape"] for n in json.loads((folder / "optimized.json").read_text())["nodes"] for o in n["outputs"]]
    assert ["s0", "s1"] in shapes and ["s0", 2] in shapes
    assert "L['input'].shape[1] != 3 == False" in (folder / "guards.txt").read_text()


def test_a_feature_size_the_module_checks_retraces_and_then_errors_like_eager():
    compiled = tf.compile(nn.Linear(3, 2).double(), dynamic=True)
    compiled(tf.randn(4, 3, dtype=tf.float64))
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(4x5 and 3x2\)"):
        compiled(tf.randn(4, 5, dtype=tf.float64))


def test_dynamic_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="dynamic must be True, False or None, got 'yes'"):
        tf.compile(lambda x: x, dynamic="yes")


def test_dynamic_none_traces_symbolically_once_a_shape_changes():
    """PyTorch's "automatic" dynamic shapes: the first trace is static, the retrace a new shape
    causes is symbolic, and later sizes reuse it."""
    f = tf.compile(lambda x: x.sum(0) * 2, dynamic=None)
    for n in (3, 3, 5, 7, 3, 9):
        np.testing.assert_allclose(f(tf.ones(n, 4)).numpy(), [2.0 * n] * 4)
    cache = compiled_callable(f)
    assert [e.captured.env is not None for e in cache.entries] == [False, True]
    assert [str(r) for r in cache.recompiles] == ["guard failed: L['x'].shape: (3, 4) -> (5, 4)"]
    static = tf.compile(lambda x: x.sum(0) * 2)
    for n in (3, 5, 7):
        static(tf.ones(n, 4))
    assert len(compiled_callable(static).entries) == 3  # dynamic=False (the default): one graph per shape


@pytest.mark.usefixtures("interpret")
@pytest.mark.gpu
def test_on_a_device_one_symbolic_graph_runs_each_size_as_kernels():
    tf.manual_seed(0)
    model = nn.LSTM(3, 4).double()
    twin = copy.deepcopy(model)
    model.cuda()
    compiled = tf.compile(model, dynamic=True)
    rng = np.random.default_rng(0)
    for T, B in [(4, 2), (6, 3), (2, 5)]:
        x = rng.standard_normal((T, B, 3))
        (out, (h, c)), (e_out, (e_h, e_c)) = compiled(tf.tensor(x).cuda()), twin(tf.tensor(x))
        for ours, theirs in [(out, e_out), (h, e_h), (c, e_c)]:
            np.testing.assert_allclose(ours.cpu().detach().numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-10)
    assert len(compiled_callable(compiled).entries) == 1
    report = tf.explain(compiled, tf.tensor(rng.standard_normal((5, 2, 3))).cuda())
    assert report.backend == "triton" and report.kernel_count > 0 and "s0" in str(report.optimized)


def test_graphs_print_symbolic_scalars_and_slices():
    compiled = tf.compile(lambda x: x[:, : x.shape[1] - 1] * x.shape[0], dynamic=True)
    compiled(tf.randn(3, 4, dtype=tf.float64))
    text = str(compiled_callable(compiled).entries[0].captured.forward)
    assert "%getitem_1 : f64[s0,s1 - 1] = getitem(%x) {index=(:, :s1 - 1)}" in text, text
    assert "mul(%getitem_1, s0)" in text, text


def test_packed_lengths_are_values_each_new_one_a_graph_and_the_limit_says_what_to_do():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True).double()

        def forward(self, x, lengths):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=7)[0]

    model = Tagger()
    compiled = tf.compile(model, dynamic=True, options={"recompile_limit": 2})
    for lengths in ([7, 3, 5], [7, 3, 5], [7, 7, 1, 2]):
        x = tf.randn(len(lengths), 7, 3, dtype=tf.float64)
        np.testing.assert_allclose(compiled(x, tf.tensor(lengths)).detach().numpy(),
                                   model(x, tf.tensor(lengths)).detach().numpy(), **TIGHT)
    with pytest.raises(tf.tracer.context.TracingError, match=r"for Tagger; last guard failed: values of lengths: \[7, 3, 5\] -> \[6, 2, 7\] "
                       r"\(each new value of an integer tensor .* group batches by length"):
        compiled(tf.randn(3, 7, 3, dtype=tf.float64), tf.tensor([6, 2, 7]))
