"""The pass pipeline end to end: order, results kept, the structure the issue asks for, verify mode."""
import pytest

import tracefuse
from tracefuse.ir import pipeline
from tracefuse.ir.graph import Graph, Ref
from tracefuse.ir.passes import groups, kernel_count
from tracefuse.ir.rewrite import PassLog

from ir_testing import add, assert_same_results, op_counts

F64 = tracefuse.float64
T, B, I, H, O = 4, 2, 3, 5, 2


def _lstm_loop_model():
    """A traced-looking step: an LSTM cell loop over x (with per-step weight transposes duplicated and
    a zero initial state made by `full`), the stacked outputs through a linear head and a gated skip."""
    g = Graph()
    x = g.add_input("x", (T, B, I), F64)
    w_ih, w_hh = g.add_input("w_ih", (4 * H, I), F64, kind="param"), g.add_input("w_hh", (4 * H, H), F64, kind="param")
    b_ih, b_hh = g.add_input("b_ih", (4 * H,), F64, kind="param"), g.add_input("b_hh", (4 * H,), F64, kind="param")
    w, gate = g.add_input("w_out", (O, H), F64, kind="param"), g.add_input("gate", (T, B, O), F64)
    h = c = add(g, "full", shape=(B, H), value=0.0, dtype=F64, device=None)
    hs = []
    for t in range(T):
        h, c = add(g, "lstm_cell", add(g, "getitem", x, index=(t,)), h, c, w_ih, w_hh, b_ih, b_hh, has_bias=True)
        hs.append(add(g, "reshape", h, shape=(1, B, H)))
        add(g, "tanh", c)  # computed and never used
    y = add(g, "cat", *hs, dim=0)
    logits = add(g, "matmul", y, add(g, "permute", w, dims=(1, 0)))
    again = add(g, "matmul", y, add(g, "permute", w, dims=(1, 0)))  # the same projection twice
    mixed = add(g, "add", add(g, "mul", logits, add(g, "sigmoid", gate)), add(g, "mul", again, 0.5))
    g.outputs = [mixed, h, c]
    return g


def test_pipeline_lists_the_passes_in_order():
    assert [p.__name__ for p in pipeline.PASSES] == [
        "dead_code", "cse", "constant_fold", "gate_fusion", "rnn_loop_rolling", "clip_norm_fusion", "dead_code",
        "copy_elision", "elementwise_fusion", "memory_plan"]


def test_optimize_rolls_fuses_plans_and_keeps_results():
    g = _lstm_loop_model()
    traced = str(g)
    log = PassLog()
    out = pipeline.optimize(g, log, verify=True)
    assert str(g) == traced  # the traced graph is left as it was
    assert_same_results(g, out)
    assert op_counts(out) == {"input": 8, "lstm_layer": 1, "permute": 1, "matmul": 1, "sigmoid": 1, "mul": 2, "add": 1}
    assert groups(out) == {"fused_1": ["sigmoid_1", "mul_1", "mul_2", "add_1"]}
    assert kernel_count(out) == 3  # the scan, the matmul, the fused gate arithmetic
    rules = set(log.rules())
    assert {"dead_code/remove_unused", "cse/merge_duplicate", "constant_fold/fold", "rnn_loop_rolling/cell_loop_to_layer",
            "rnn_loop_rolling/stacked_steps_to_sequence", "elementwise_fusion/fuse_elementwise"} == rules
    layer = next(n for n in out.nodes if n.op == "lstm_layer")
    assert out.outputs[1:] == [Ref(layer.name, 1), Ref(layer.name, 2)]
    assert out.node(layer.name).meta["free_after"] == []
    assert out.node("matmul_1").meta["free_after"] == ["permute_1"]


@pytest.mark.parametrize("n", [3, 200])
def test_optimize_turns_any_hand_written_clipping_into_two_multi_tensor_nodes(n):
    g = Graph()
    grads = [g.add_input(f"g{i}", (i % 3 + 1, 2), F64) for i in range(n)]
    stacked = add(g, "cat", *[add(g, "reshape", add(g, "norm", gi, p=2.0, dim=None, keepdim=False), shape=(1,))
                              for gi in grads], dim=0)
    total = add(g, "norm", stacked, p=2.0, dim=None, keepdim=False)
    coef = add(g, "clamp", add(g, "div", 1.0, add(g, "add", total, 1e-6)), min=None, max=1.0)
    g.outputs = [add(g, "mul", gi, coef) for gi in grads]
    out = pipeline.optimize(g, verify=True)
    assert_same_results(g, out)
    assert op_counts(out) == {"input": n, "multi_tensor_norm": 1, "multi_tensor_scale": 1}
    assert kernel_count(out) == 2


def _broken(graph, log):
    graph.node("exp_1").inputs = (Ref("ghost"),)
    return graph


def _graph():
    g = Graph()
    g.outputs = [add(g, "exp", g.add_input("x", (2,), F64))]
    return g


def test_verify_mode_names_the_pass_that_broke_the_graph(monkeypatch):
    with pytest.raises(ValueError, match=r"after pass _broken: %exp_1 \(exp\): input %ghost is not defined before it"):
        pipeline.optimize(_graph(), verify=True, passes=[pipeline.PASSES[0], _broken])
    monkeypatch.setenv("TRACEFUSE_VERIFY", "1")
    with pytest.raises(ValueError, match="after pass _broken"):
        pipeline.optimize(_graph(), passes=[_broken])
    monkeypatch.setenv("TRACEFUSE_VERIFY", "0")
    assert pipeline.optimize(_graph(), passes=[_broken]).node("exp_1").inputs == (Ref("ghost"),)


def test_verify_mode_checks_the_input_graph():
    g = _graph()
    g.node("exp_1").meta.pop("outputs")
    with pytest.raises(ValueError, match="before optimization: %exp_1 \\(exp\\): no output metadata"):
        pipeline.optimize(g, verify=True)
