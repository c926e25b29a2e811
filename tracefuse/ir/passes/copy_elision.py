"""Copy elision: `clone(x)` where nothing else reads `x` and `x` is a fresh result of a computing
op (not a view, not a graph input, not returned) is `x` itself.

Autograd clones a gradient before it becomes a leaf's `.grad`, so that later accumulation cannot
write into a tensor someone else holds. In a compiled training step that gradient is usually
a fresh kernel output that nothing else reads, and each clone would be one more kernel launch
per parameter.
"""
from __future__ import annotations

from .. import ops
from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog, replace_node

# Ops whose outputs are always new memory on every backend (tests/ir/test_shapes.py checks it).
# (An elementwise clamp with no bounds, or a multi-tensor update, may hand an input back.)
FRESH_KINDS = ("matmul", "reduce", "composite")


def _fresh(graph, ref) -> bool:
    node = graph.node(ref.node)
    return node.op != PLACEHOLDER and ops.get(node.op).kind in FRESH_KINDS


def copy_elision(graph: Graph, log: PassLog | None = None) -> Graph:
    """Drop such clones in place; returns `graph`."""
    log = log if log is not None else PassLog()
    returned = {r for r in graph.outputs if isinstance(r, Ref)}
    for node in graph.nodes:
        if node.op != "clone" or not isinstance(node.inputs[0], Ref):
            continue
        source = node.inputs[0]
        readers = [u for u in graph.users(source.node) if source in u.refs]
        if readers == [node] and source not in returned and _fresh(graph, source):
            replace_node(graph, node.name, [source])
            log.record("copy_elision", "clone_of_fresh_value", [node.name], f"-> {source}")
    return graph
