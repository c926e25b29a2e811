"""Constant folding: evaluate at compile time what depends only on constants.

A node folds when it is not random and its tensor inputs are all const inputs or deterministic
creation nodes (full, arange, linspace, eye); it is run once through the dispatcher and replaced
by const inputs holding its results. Folding repeats down chains, since a folded node becomes a
const for its users. Results larger than FOLD_LIMIT elements are not folded: a `zeros(T, B, H)`
is cheaper to create at run time than to keep in the compiled graph, so such creation nodes stay
nodes (their small derived values, such as a sum over them, still fold). Nor are graph outputs:
a call must return fresh tensors, not the same const object every time (the caller may write
into them).
"""
from __future__ import annotations

import math

from .. import ops, symbolic
from ...device import as_device
from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog, is_const, inherited_meta, replace_node, run_op

FOLD_LIMIT = 4096  # elements, over all outputs of a node


def _is_source(graph, ref) -> bool:
    """A value computable without any run-time input: a const or a deterministic creation node."""
    node = graph.node(ref.node)
    op = ops.OPS.get(node.op)
    return is_const(graph, ref) or (op is not None and op.kind == "creation" and not op.random
                                    and not symbolic.is_symbolic(node.attrs))


def _foldable(graph, node, returned) -> bool:
    if node.op == PLACEHOLDER or ops.get(node.op).random or node.name in returned:
        return False
    if not node.refs and ops.get(node.op).kind != "creation":
        return False
    device = node.attrs.get("device")
    if device is not None and as_device(device).type != "cpu":
        return False  # only the CPU can run ops at compile time
    shapes = [shape for shape, _ in node.meta.get("outputs", [])]
    if symbolic.is_symbolic((shapes, node.inputs, node.attrs)):
        return False  # a constant has one value; one made from a symbolic size (dynamic=True) has one per call
    return sum(math.prod(shape) for shape in shapes) <= FOLD_LIMIT and all(_is_source(graph, r) for r in node.refs)


def _value(graph, ref):
    node = graph.node(ref.node)
    if node.op == PLACEHOLDER:
        return node.meta["value"]
    return run_op(node.op, node.inputs, node.attrs)[ref.index]  # a large creation node: no inputs


def constant_fold(graph: Graph, log: PassLog | None = None) -> Graph:
    """Fold in place (one forward sweep reaches whole chains); returns `graph`."""
    log = log if log is not None else PassLog()
    returned = {r.node for r in graph.outputs if isinstance(r, Ref)}
    for node in graph.nodes:
        if not _foldable(graph, node, returned):
            continue
        args = [_value(graph, x) if isinstance(x, Ref) else x for x in node.inputs]
        results = run_op(node.op, args, node.attrs)
        consts = [graph.add_constant(v, before=node.name, **inherited_meta(node)) for v in results]
        replace_node(graph, node.name, consts)
        log.record("constant_fold", "fold", [node.name], f"{node.op} -> " + ", ".join(str(c) for c in consts))
    return graph
