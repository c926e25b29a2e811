"""The IR graph: building, printing, rewriting, exports and verification."""
import json

import networkx as nx
import pytest

import tracefuse
from tracefuse.ir.graph import Graph, Ref


def _small_graph():
    g = Graph()
    x = g.add_input("x", (4, 3), tracefuse.float32)
    w = g.add_input("weight", (2, 3), tracefuse.float32, kind="param", scope="head")
    wt = g.add_node("permute", (w,), {"dims": (1, 0)}, {"outputs": [((3, 2), tracefuse.float32)], "scope": "head"})
    mm = g.add_node("matmul", (x, Ref(wt.name)), {}, {"outputs": [((4, 2), tracefuse.float32)], "scope": "head",
                                                        "source": "model.py:12"})
    mx = g.add_node("max_dim", (Ref(mm.name),), {"dim": 1, "keepdim": False},
                    {"outputs": [((4,), tracefuse.float32), ((4,), tracefuse.int64)]})
    g.outputs = [Ref(mm.name), Ref(mx.name, 1)]
    return g


def test_str_prints_one_deterministic_line_per_node():
    g = _small_graph()
    assert str(g) == "\n".join([
        "%x : f32[4,3] = input() {kind='arg'}",
        "%weight : f32[2,3] = input() {kind='param'}  # head",
        "%permute_1 : f32[3,2] = permute(%weight) {dims=(1, 0)}  # head",
        "%matmul_1 : f32[4,2] = matmul(%x, %permute_1)  # head model.py:12",
        "%max_dim_1 : f32[4], i64[4] = max_dim(%matmul_1) {dim=1, keepdim=False}",
        "return (%matmul_1, %max_dim_1.1)",
    ])
    assert str(g) == str(_small_graph())


def test_networkx_edges_follow_inputs_and_rewrites():
    g = _small_graph()
    g.verify()
    assert list(nx.topological_sort(g.nx))[:2] == ["x", "weight"]
    assert [n.name for n in g.users("permute_1")] == ["matmul_1"]
    # Rewire matmul to read the weight directly, then drop the dead permute.
    g.replace_uses(Ref("permute_1"), Ref("weight"))
    g.remove_node("permute_1")
    g.verify()
    assert g.node("matmul_1").inputs == (Ref("x"), Ref("weight"))
    assert sorted(g.nx.predecessors("matmul_1")) == ["weight", "x"]


def test_remove_node_with_users_is_refused():
    g = _small_graph()
    with pytest.raises(ValueError, match="still has users"):
        g.remove_node("matmul_1")


def test_exports(tmp_path):
    g = _small_graph()
    data = json.loads(g.to_json())
    assert [n["op"] for n in data["nodes"]] == ["input", "input", "permute", "matmul", "max_dim"]
    assert data["outputs"] == [{"ref": "matmul_1", "index": 0}, {"ref": "max_dim_1", "index": 1}]
    dot = g.to_dot(groups={"fused: head": ["permute_1", "matmul_1"]})
    assert dot.startswith("digraph tracefuse {") and "subgraph cluster_0" in dot and '"weight" -> "permute_1"' in dot
    g.to_graphml(tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert set(back.nodes) == {"x", "weight", "permute_1", "matmul_1", "max_dim_1"}


@pytest.mark.parametrize("corrupt, message", [
    (lambda g: g.add_node("no_such_op", (), {}, {"outputs": []}), "unknown op"),
    (lambda g: g.add_node("permute", (Ref("x"),), {}, {"outputs": []}), "attrs"),
    (lambda g: g.add_node("neg", (Ref("x"),), {}), "no output metadata"),
    (lambda g: g.add_node("neg", (Ref("matmul_1", 3),), {}, {"outputs": []}), "names output 3"),
    (lambda g: setattr(g, "outputs", [Ref("ghost")]), "not defined"),
])
def test_verify_rejects_malformed_graphs(corrupt, message):
    g = _small_graph()
    corrupt(g)
    with pytest.raises(ValueError, match=message):
        g.verify()


def test_forward_reference_is_rejected():
    g = _small_graph()
    node = g.node("permute_1")
    node.inputs = (Ref("matmul_1"),)
    g._reconnect(node)
    with pytest.raises(ValueError, match="not defined before it"):
        g.verify()
