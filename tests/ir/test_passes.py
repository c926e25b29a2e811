"""The graph passes, one at a time, on hand-built float64 graphs: each keeps the graph's results
(checked by evaluating before and after) and changes its structure as its docstring says."""
import json
import logging
import math

import numpy as np
import pytest

import tracefuse
from tracefuse.ir.graph import Graph, Ref
from tracefuse.ir.ops import TensorSlot
from tracefuse.ir.passes import (clip_norm_fusion, constant_fold, copy_elision, cse, dead_code, elementwise_fusion, groups,
                                 kernel_count, memory_plan, rnn_loop_rolling)
from tracefuse.ir.passes.constant_fold import FOLD_LIMIT
from tracefuse.ir.passes.memory_plan import free_after
from tracefuse.ir.rewrite import PassLog

from ir_testing import add, assert_same_results, evaluate, op_counts, random_inputs

F64 = tracefuse.float64


def _run(pass_fn, graph):
    """Run one pass on a copy, verify it, check results are kept; returns (new graph, log)."""
    log = PassLog()
    after = pass_fn(graph.copy(), log)
    after.verify()
    assert_same_results(graph, after)
    return after, log


# --- graph helpers the passes rely on -------------------------------------------------------------

def test_add_constant_is_a_const_placeholder_that_verifies_and_exports():
    g = Graph()
    x = g.add_input("x", (3,), F64)
    c = g.add_constant(tracefuse.tensor([1.0, 2.0, 3.0], dtype=F64))
    g.outputs = [add(g, "mul", x, c)]
    g.verify()
    assert c == Ref("const_1") and str(g).splitlines()[1] == "%const_1 : f64[3] = input() {kind='const'}"
    exported = next(n for n in json.loads(g.to_json())["nodes"] if n["name"] == "const_1")
    assert exported["value"] == [1.0, 2.0, 3.0]
    assert evaluate(g, {"x": tracefuse.tensor([2.0, 2.0, 2.0], dtype=F64)})[0].tolist() == [2.0, 4.0, 6.0]


@pytest.mark.parametrize("corrupt, message", [
    (lambda n: n.meta.pop("value"), "const input has no meta"),
    (lambda n: n.meta.update(outputs=[((4,), F64)]), "does not match its output metadata"),
    (lambda n: n.attrs.pop("kind"), "input has no kind"),
])
def test_verify_checks_constants(corrupt, message):
    g = Graph()
    c = g.add_constant(tracefuse.zeros(3, dtype=F64))
    g.outputs = [c]
    corrupt(g.node(c.node))
    with pytest.raises(ValueError, match=message):
        g.verify()


def test_copy_is_independent_and_insertion_before_a_node():
    g = Graph()
    x = g.add_input("x", (2,), F64)
    e = add(g, "exp", x)
    g.outputs = [e]
    h = g.copy()
    h.add_node("neg", (x,), {}, {"outputs": [((2,), F64)]}, before=e.node)
    h.node(e.node).meta["scope"] = "changed"
    assert [n.name for n in h.nodes] == ["x", "neg_1", "exp_1"] and [n.name for n in g.nodes] == ["x", "exp_1"]
    assert "scope" not in g.node(e.node).meta and h.position("exp_1") == 2
    h.add_node("exp", (x,), {}, {"outputs": [((2,), F64)]}, name="exp_2")
    assert add(h, "exp", x) == Ref("exp_3")  # fresh names skip names given explicitly
    h.verify()


# --- dead code --------------------------------------------------------------------------------------

def test_dead_code_removes_dead_chains_and_unused_random_ops_but_keeps_placeholders():
    g = Graph()
    x = g.add_input("x", (3, 4), F64)
    g.add_input("unused", (3,), F64)
    g.add_constant(tracefuse.ones(2, dtype=F64))
    a = add(g, "exp", x)
    add(g, "neg", add(g, "sin", a))  # a dead chain hanging off a live node
    add(g, "dropout", x, p=0.5)  # random and unused
    add(g, "rand", shape=(2,), dtype=F64, device=None)
    g.outputs = [add(g, "mul", a, x)]
    after, log = _run(dead_code, g)
    assert [n.op for n in after.nodes] == ["input", "input", "exp", "mul"]
    assert log.rules() == ["dead_code/remove_unused"] * 5
    assert {e.nodes[0] for e in log} == {"sin_1", "neg_1", "dropout_1", "rand_1", "const_1"}


# --- CSE ----------------------------------------------------------------------------------------------

def test_cse_merges_duplicate_chains_and_structural_attrs():
    g = Graph()
    x = g.add_input("x", (4, 5), F64)
    s1, s2 = add(g, "sigmoid", x), add(g, "sigmoid", x)
    a1, a2 = add(g, "add", s1, 1.0), add(g, "add", s2, 1.0)
    r1 = add(g, "getitem", a1, index=(slice(1, None), Ellipsis))
    r2 = add(g, "getitem", a2, index=(slice(1, None), Ellipsis))
    other = add(g, "getitem", a2, index=(slice(2, None), Ellipsis))  # a different slice: kept
    n1, n2 = add(g, "norm", x, p=2.0, dim=(1,), keepdim=False), add(g, "norm", x, p=2.0, dim=(1,), keepdim=False)
    g.outputs = [add(g, "mul", r1, r2), other, add(g, "sub", n1, n2)]
    after, log = _run(cse, g)
    assert op_counts(after) == {"input": 1, "sigmoid": 1, "add": 1, "getitem": 2, "norm": 1, "mul": 1, "sub": 1}
    assert log.rules() == ["cse/merge_duplicate"] * 4
    assert [list(e.nodes) for e in log][:2] == [["sigmoid_1", "sigmoid_2"], ["add_1", "add_2"]]


def test_cse_keeps_random_ops_returned_copies_and_scalars_that_promote_differently():
    g = Graph()
    x = g.add_input("x", (3,), tracefuse.int64)
    i, f = add(g, "add", x, 1), add(g, "add", x, 1.0)  # int64 vs float32 results
    z, nz = add(g, "mul", i, 0.0), add(g, "mul", i, -0.0)
    d1, d2 = add(g, "dropout", f, p=0.5), add(g, "dropout", f, p=0.5)
    r1, r2 = (add(g, "rand", shape=(3,), dtype=F64, device=None) for _ in range(2))
    c1, c2 = add(g, "clone", x), add(g, "clone", x)  # both returned: two tensors
    g.outputs = [i, f, z, nz, d1[0], d2[0], r1, r2, c1, c2]
    log = PassLog()
    after = cse(g.copy(), log)
    assert len(log) == 0 and str(after) == str(g)


def test_cse_compares_tensor_slots_in_index_attrs():
    g = Graph()
    x, idx = g.add_input("x", (5, 3), F64), g.add_input("idx", (2,), tracefuse.int64)
    a = add(g, "getitem", x, idx, index=(TensorSlot(0),))
    b = add(g, "getitem", x, idx, index=(TensorSlot(0),))
    g.outputs = [add(g, "add", a, b)]
    inputs = {"x": tracefuse.randn(5, 3, dtype=F64), "idx": tracefuse.tensor([4, 0])}
    after = cse(g.copy())
    assert op_counts(after)["getitem"] == 1
    np.testing.assert_array_equal(evaluate(after, inputs)[0].numpy(), evaluate(g, inputs)[0].numpy())


# --- constant folding --------------------------------------------------------------------------------

def test_constant_fold_evaluates_a_chain_of_small_creation_ops():
    g = Graph()
    x = g.add_input("x", (6,), F64)
    r = add(g, "arange", start=0, end=6, step=1, dtype=F64, device=None)
    two = add(g, "full", shape=(6,), value=2.0, dtype=F64, device=None)
    scaled = add(g, "exp", add(g, "mul", r, two))
    g.outputs = [add(g, "add", x, scaled)]
    after, log = _run(lambda graph, log: dead_code(constant_fold(graph, log), log), g)
    assert [(n.op, n.attrs.get("kind")) for n in after.nodes] == [("input", "arg"), ("input", "const"), ("add", None)]
    assert log.rules() == ["constant_fold/fold"] * 4 + ["dead_code/remove_unused"] * 3
    np.testing.assert_allclose(after.nodes[1].meta["value"].numpy(), np.exp(2.0 * np.arange(6)), rtol=1e-15)


def test_constant_fold_keeps_large_creations_and_random_ops():
    g = Graph()
    x = g.add_input("x", (), F64)
    big = add(g, "full", shape=(64, 128), value=0.5, dtype=F64, device=None)
    assert 64 * 128 > FOLD_LIMIT
    noise = add(g, "rand", shape=(3,), dtype=F64, device=None)
    total = add(g, "sum", big, dim=None, keepdim=False)  # small result of a large constant: folds
    small = add(g, "full", shape=(2,), value=1.0, dtype=F64, device=None)  # returned: stays a node
    g.outputs = [add(g, "mul", x, total), add(g, "add", big, x), add(g, "mul", noise, 0.0), small]
    log = PassLog()
    after = constant_fold(g.copy(), log)
    after.verify()
    assert [e.nodes for e in log] == [("sum_1",)]
    assert op_counts(after) == {"input": 2, "full": 2, "rand": 1, "mul": 2, "add": 1}
    const = [n for n in after.inputs() if n.attrs["kind"] == "const"][0]
    assert const.meta["value"].item() == 64 * 128 * 0.5
    inputs = random_inputs(g)
    assert [t.tolist() for t in evaluate(after, inputs)[:2]] == [t.tolist() for t in evaluate(g, inputs)[:2]]


# --- clip-norm fusion --------------------------------------------------------------------------------

_SHAPES = [(3, 4), (5,), (2, 3, 2), (), (7, 1)]


def _unfused_clip_graph(n, max_norm=0.25, p=2.0):
    """Hand-written clipping: per-tensor norms, stacked, normed, a clamped coefficient, per-tensor muls."""
    g = Graph()
    grads = [g.add_input(f"g{i}", _SHAPES[i % len(_SHAPES)], F64) for i in range(n)]
    norms = [add(g, "norm", gi, p=p, dim=None, keepdim=False) for gi in grads]
    stacked = add(g, "cat", *[add(g, "reshape", ni, shape=(1,)) for ni in norms], dim=0)
    total = add(g, "norm", stacked, p=p, dim=None, keepdim=False)
    coef = add(g, "clamp", add(g, "div", max_norm, add(g, "add", total, 1e-6)), min=None, max=1.0)
    g.outputs = [total] + [add(g, "mul", gi, coef) for gi in grads]
    return g


def graph_op(graph, ref):
    return graph.node(ref.node).op


@pytest.mark.parametrize("n", [3, 200])
def test_clip_norm_fusion_makes_two_multi_tensor_nodes(n):
    g = _unfused_clip_graph(n)
    log = PassLog()
    after = dead_code(clip_norm_fusion(g.copy(), log))
    after.verify()
    assert_same_results(g, after)
    counts = op_counts(after)
    assert counts["multi_tensor_norm"] == 1 and counts["multi_tensor_scale"] == 1
    assert counts == {"input": n, "multi_tensor_norm": 1, "multi_tensor_scale": 1}
    assert log.rules() == ["clip_norm_fusion/stacked_norms_to_multi_tensor_norm",
                           "clip_norm_fusion/scaling_muls_to_multi_tensor_scale",
                           "clip_norm_fusion/fold_clip_coefficient"]
    assert len(log.entries[1].nodes) == n
    scale = [x for x in after.nodes if x.op == "multi_tensor_scale"][0]
    assert scale.inputs[1:] == tuple(Ref(f"g{i}") for i in range(n)) and len(scale.meta["outputs"]) == n
    assert scale.attrs == {"max_norm": 0.25} and graph_op(after, scale.inputs[0]) == "multi_tensor_norm"


def test_clip_norm_fusion_scales_by_norm_derived_coefficient_only():
    g = Graph()
    a, b = g.add_input("a", (3,), F64), g.add_input("b", (2, 2), F64)
    s = g.add_input("s", (), F64)
    total = add(g, "multi_tensor_norm", a, b, p=2.0)
    coef = add(g, "clamp", add(g, "div", 1.0, add(g, "add", total, 1e-6)), min=None, max=1.0)
    scaled = add(g, "multi_tensor_scale", coef, a, b, max_norm=None)
    g.outputs = [total, add(g, "mul", a, s), add(g, "mul", b, s), *scaled]  # s is not from the norm
    log = PassLog()
    after = dead_code(clip_norm_fusion(g.copy(), log))
    assert log.rules() == ["clip_norm_fusion/fold_clip_coefficient"]  # the muls by s stay
    assert_same_results(g, after)
    assert op_counts(after) == {"input": 3, "multi_tensor_norm": 1, "multi_tensor_scale": 1, "mul": 2}


def test_clip_norm_fusion_keeps_other_coefficients():
    g = Graph()
    a = g.add_input("a", (3,), F64)
    total = add(g, "multi_tensor_norm", a, p=2.0)
    coef = add(g, "clamp", add(g, "div", 1.0, add(g, "add", total, 1e-5)), min=None, max=1.0)  # not 1e-6
    g.outputs = list(add(g, "multi_tensor_scale", coef, a, max_norm=None))
    log = PassLog()
    after = clip_norm_fusion(g.copy(), log)
    assert len(log) == 0 and str(after) == str(g)


def test_clip_norm_fusion_needs_one_p_throughout():
    g = _unfused_clip_graph(3)
    first = next(n for n in g.nodes if n.op == "norm")
    first.attrs["p"] = 1.0
    log = PassLog()
    clip_norm_fusion(g, log)
    assert log.rules() == []


# --- elementwise fusion ------------------------------------------------------------------------------

def test_elementwise_fusion_groups_x_times_sigmoid_y_plus_z():
    g = Graph()
    x, y, z = (g.add_input(name, (4, 8), F64) for name in "xyz")
    g.outputs = [add(g, "add", add(g, "mul", x, add(g, "sigmoid", y)), z)]
    after, log = _run(elementwise_fusion, g)
    assert groups(after) == {"fused_1": ["sigmoid_1", "mul_1", "add_1"]}
    assert kernel_count(after) == 1 and kernel_count(g) == 3
    assert log.rules() == ["elementwise_fusion/fuse_elementwise"]
    assert "subgraph cluster_0" in after.to_dot(groups=groups(after))


def test_elementwise_fusion_takes_broadcast_producers_read_only_inside_the_group():
    g = Graph()
    x, b = g.add_input("x", (4, 8), F64), g.add_input("b", (8,), F64)
    shared = add(g, "exp", b)  # also a graph output: must be written, so it stays out
    bias = add(g, "neg", b)  # read only by the group: recomputed per element
    g.outputs = [add(g, "tanh", add(g, "add", add(g, "mul", x, shared), bias)), shared]
    after, _ = _run(elementwise_fusion, g)
    assert groups(after) == {"fused_1": ["neg_1", "mul_1", "add_1", "tanh_1"]}
    assert kernel_count(after) == 2


def test_elementwise_fusion_refuses_a_group_around_a_reduction():
    g = Graph()
    x = g.add_input("x", (4, 8), F64)
    e = add(g, "exp", x)
    s = add(g, "sum", e, dim=(1,), keepdim=True)
    out = add(g, "div", e, s)  # softmax by hand: exp and div cannot be one kernel
    g.outputs = [add(g, "mul", out, 2.0)]
    after, _ = _run(elementwise_fusion, g)
    assert groups(after) == {"fused_1": ["div_1", "mul_1"]}
    assert kernel_count(after) == 3


def test_kernel_count_views_and_multi_tensor_clip():
    g = Graph()
    x = g.add_input("x", (4, 6), F64)
    t = add(g, "permute", x, dims=(1, 0))
    flat = add(g, "reshape", x, shape=(24,))  # contiguous: a view
    copy = add(g, "reshape", t, shape=(24,))  # of a transpose: a copy kernel
    g.outputs = [add(g, "add", flat, copy), add(g, "getitem", x, index=(1,))]
    assert kernel_count(elementwise_fusion(g)) == 2
    clip = elementwise_fusion(dead_code(clip_norm_fusion(_unfused_clip_graph(10))))
    assert kernel_count(clip) == 2  # the norm; the scale computes its coefficient itself


# --- memory plan -------------------------------------------------------------------------------------

def test_memory_plan_frees_values_after_their_last_reader():
    g = Graph()
    x = g.add_input("x", (3,), F64)
    a = add(g, "exp", x)
    b = add(g, "sin", a)
    m = add(g, "max_dim", b, dim=0, keepdim=False)  # two outputs, one value
    c = add(g, "mul", a, m[0])
    add(g, "neg", c)  # unused: freed right after it is made
    d = add(g, "cos", c)
    g.outputs = [d, b]
    after, log = _run(memory_plan, g)
    assert free_after(after) == {"mul_1": ["exp_1", "max_dim_1"], "neg_1": ["neg_1"], "cos_1": ["mul_1"]}
    assert all(n.meta["free_after"] == [] for n in after.nodes if n.name in ("x", "exp_1", "sin_1", "max_dim_1"))
    assert len(log) == 0


# --- RNN loop rolling ---------------------------------------------------------------------------------

T, B, I, H = 5, 3, 4, 6


def _cell_loop(cell, steps=T, times=None, stack=True, c_out=None, has_bias=True, nonlinearity="tanh",
               key=lambda t: (t,), dtype=F64):
    """`for t in times: h(, c) = cell(x[key(t)], h(, c))`, with each h stacked into an output sequence."""
    g = Graph()
    gates = {"lstm_cell": 4, "gru_cell": 3, "rnn_cell": 1}[cell]
    x = g.add_input("x", (T, B, I), dtype)
    states = [g.add_input("h0", (B, H), dtype)] + ([g.add_input("c0", (B, H), dtype)] if cell == "lstm_cell" else [])
    weights = [g.add_input("w_ih", (gates * H, I), dtype, kind="param"),
               g.add_input("w_hh", (gates * H, H), dtype, kind="param")]
    weights += [g.add_input(f"b_{k}", (gates * H,), dtype, kind="param") for k in ("ih", "hh")] if has_bias else [None] * 2
    attrs = {"has_bias": has_bias, **({"nonlinearity": nonlinearity} if cell == "rnn_cell" else {})}
    hs, extra = [], []
    for k, t in enumerate(times if times is not None else range(steps)):
        out = add(g, cell, add(g, "getitem", x, index=key(t)), *states, *weights, **attrs)
        states = list(out) if isinstance(out, tuple) else [out]
        hs.append(add(g, "reshape", states[0], shape=(1, B, H)))
        if k == c_out:
            extra.append(states[1])
    seq = add(g, "cat", *hs, dim=0) if stack else hs[1]
    g.outputs = [seq, *states, *extra]
    return g


def _roll(graph):
    log = PassLog()
    after = dead_code(rnn_loop_rolling(graph.copy(), log))
    after.verify()
    assert_same_results(graph, after)
    return after, log


@pytest.mark.parametrize("cell, layer, key", [
    ("lstm_cell", "lstm_layer", lambda t: (t,)),  # x[t], x.select(0, t), x.unbind(0)[t]
    ("gru_cell", "gru_layer", lambda t: (t - T, Ellipsis, slice(None))),  # x[t - T, ..., :]
])
def test_rnn_loop_rolling_turns_a_cell_loop_and_its_stack_into_one_layer(cell, layer, key):
    g = _cell_loop(cell, key=key)
    after, log = _roll(g)
    layer_node = [n for n in after.nodes if n.op == layer]
    assert op_counts(after) == {"input": 7 if cell == "lstm_cell" else 6, layer: 1}
    assert layer_node[0].attrs == {"reverse": False, "has_bias": True, "has_proj": False, "has_lengths": False}
    name = layer_node[0].name
    assert after.outputs[:2] == [Ref(name, 0), Ref(name, 1)]
    assert log.rules() == ["rnn_loop_rolling/cell_loop_to_layer", "rnn_loop_rolling/stacked_steps_to_sequence"]
    assert log.entries[0].nodes == tuple(f"{cell}_{k}" for k in range(1, T + 1))


def test_rnn_loop_rolling_selects_the_steps_read_outside_the_loop():
    g = _cell_loop("lstm_cell", stack=False)  # returns step 1's h, the final h and c
    after, _ = _roll(g)
    selects = [n for n in after.nodes if n.op == "getitem"]
    assert [(s.inputs[0], s.attrs["index"]) for s in selects] == [(Ref("lstm_layer_1"), (1,))]


def test_rnn_loop_rolling_reverse_partial_and_bias_free_rnn_cells():
    g = _cell_loop("rnn_cell", times=[3, 2, 1], has_bias=False, nonlinearity="relu")
    after, log = _roll(g)
    layer = [n for n in after.nodes if n.op == "rnn_layer"][0]
    assert layer.attrs == {"reverse": True, "has_bias": False, "has_proj": False, "has_lengths": False,
                           "nonlinearity": "relu"}
    window = after.node(layer.inputs[0].node)
    assert window.op == "getitem" and window.attrs["index"] == (slice(1, 4),)
    assert log.rules() == ["rnn_loop_rolling/cell_loop_to_layer"]  # a stack of 3 of 5 steps is not y


def test_rnn_loop_rolling_ends_a_chain_where_a_cell_state_is_read():
    g = _cell_loop("lstm_cell", c_out=2)
    after, log = _roll(g)
    layers = [n for n in after.nodes if n.op == "lstm_layer"]
    assert [after.node(n.inputs[0].node).attrs["index"] for n in layers] == [(slice(0, 3),), (slice(3, 5),)]
    assert layers[1].inputs[1:3] == (Ref(layers[0].name, 1), Ref(layers[0].name, 2))
    assert log.rules() == ["rnn_loop_rolling/cell_loop_to_layer"] * 2


@pytest.mark.parametrize("loop", [
    lambda: _cell_loop("gru_cell", times=[0, 2, 4]),  # strided steps
    lambda: _cell_loop("lstm_cell", steps=1),  # a single step
    lambda: _cell_loop("lstm_cell", dtype=tracefuse.float16),  # rounds its state every step
])
def test_rnn_loop_rolling_leaves_other_loops_alone(loop):
    g = loop()
    log = PassLog()
    assert str(rnn_loop_rolling(g.copy(), log)) == str(g) and len(log) == 0


def test_pass_log_is_readable_and_goes_to_the_logger(caplog):
    g = _unfused_clip_graph(2)
    log = PassLog()
    with caplog.at_level(logging.DEBUG, logger="tracefuse.passes"):
        clip_norm_fusion(g, log)
    text = str(log)
    assert text.splitlines()[0] == ("clip_norm_fusion/stacked_norms_to_multi_tensor_norm: %norm_3, %cat_1, %norm_1, "
                                    "%norm_2  -- -> %multi_tensor_norm_1 over 2 tensors")
    assert [r.getMessage() for r in caplog.records] == text.splitlines()
    assert str(PassLog()) == "(no rewrites)"
    assert math.isfinite(evaluate(g, random_inputs(g))[0].item())


# --- copy elision --------------------------------------------------------------------------------------


def test_copy_elision_drops_clones_of_fresh_unshared_values_only():
    g = Graph()
    x, w = g.add_input("x", (3, 4), F64), g.add_input("w", (4, 2), F64)
    product = add(g, "matmul", x, w)
    fresh = add(g, "clone", product)  # nothing else reads the product: dropped
    of_input = add(g, "clone", x)  # a graph input: kept
    view = add(g, "clone", add(g, "permute", x, dims=(1, 0)))  # a view of an input: kept
    total = add(g, "sum", x, dim=None, keepdim=False)
    shared = add(g, "clone", total)  # the sum is returned as well: kept
    g.outputs = [fresh, of_input, view, shared, total]
    log = PassLog()
    after = dead_code(copy_elision(g.copy(), log))
    after.verify()
    assert_same_results(g, after)
    assert log.rules() == ["copy_elision/clone_of_fresh_value"] and list(log.entries[0].nodes) == [fresh.node]
    assert op_counts(after)["clone"] == 3 and after.outputs[0] == product
