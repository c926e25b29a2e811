"""Common-subexpression elimination: one node per distinct (op, inputs, attrs).

Traced code often recomputes the same value (a weight transpose per time step, the same mask
twice); merging the copies saves work and lets later passes see one value. Random ops are
never merged: two dropout calls must draw different numbers. Nor are two graph outputs: the
call must return distinct tensors (`return x.clone(), x.clone()`).
"""
from __future__ import annotations

from .. import ops
from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog, replace_node
from ..symbolic import SymInt


def structural_key(value):
    """A hashable key equal for values that mean the same to an op: 1, 1.0 and True differ (they
    promote differently), so do 0.0 and -0.0; slices (unhashable before Python 3.12) and tuples
    are compared element by element; dtypes, devices and TensorSlots by equality."""
    if isinstance(value, Ref) or value is None or value is Ellipsis:
        return value
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(structural_key(v) for v in value))
    if isinstance(value, slice):
        return ("slice", structural_key(value.start), structural_key(value.stop), structural_key(value.step))
    if isinstance(value, SymInt):  # by expression: hashing a size would pin it (ir/symbolic.py)
        return ("size", value.expr)
    return (type(value).__name__, value)


def node_key(node):
    return (node.op, structural_key(node.inputs),
            tuple(sorted((k, structural_key(v)) for k, v in node.attrs.items())))


def cse(graph: Graph, log: PassLog | None = None) -> Graph:
    """Merge duplicates in place, keeping the first of each (one forward sweep: inputs are merged
    before their users are keyed, so whole duplicate chains collapse); returns `graph`."""
    log = log if log is not None else PassLog()
    returned = {r.node for r in graph.outputs if isinstance(r, Ref)}
    first: dict = {}
    for node in graph.nodes:
        if node.op == PLACEHOLDER or ops.get(node.op).random:
            continue
        kept = first.setdefault(node_key(node), node.name)
        if kept != node.name and not (kept in returned and node.name in returned):
            n_out = len(node.meta.get("outputs", ())) or 1
            replace_node(graph, node.name, [Ref(kept, i) for i in range(n_out)])
            log.record("cse", "merge_duplicate", [kept, node.name], node.op)
    return graph
