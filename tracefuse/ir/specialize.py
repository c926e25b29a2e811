"""A symbolic graph (`compile(dynamic=True)`) made concrete for one call's sizes, and checked.

Every symbolic size in node inputs, attributes and output metadata is replaced by its value for
the call's symbols. Then each node's output shapes are derived again by the op table's shape
rules from its (already concrete) inputs and compared with what the graph says: a size the trace
took as a plain number where it depended on a symbol (a constant built from a traced size) shows
up as a disagreement, and the graph is not used for those sizes (`SizeMismatch`; the caller
traces again) rather than run into a wrong answer or a kernel's error. Nodes whose shapes the
trace could only take as they were (`shape_traced`: a boolean mask's result) are not derived: the
sizes they read were pinned by guards.
"""
from __future__ import annotations

from . import ops
from .graph import PLACEHOLDER, Graph, Ref
from .symbolic import substitute


class SizeMismatch(RuntimeError):
    """The graph's sizes do not follow the call's: it cannot serve these sizes."""


def specialize(graph: Graph, values: dict) -> Graph:
    """A copy of `graph` for symbol values `values` (name -> int), checked node by node."""
    out = graph.copy()
    shapes = {}  # node name -> its output shapes, as checked
    for node in out.nodes:  # in place on the copy: only scalars change, so its edges stay right
        try:
            node.meta["outputs"] = [(substitute(tuple(s), values), d) for s, d in node.meta["outputs"]]
            node.inputs, node.attrs = substitute(tuple(node.inputs), values), substitute(node.attrs, values)
        except ArithmeticError as exc:  # a size expression that divides by one that is now 0
            raise SizeMismatch(f"%{node.name} ({node.op}): {exc}") from None
        stated = [s for s, _ in node.meta["outputs"]]
        if node.op != PLACEHOLDER and not node.meta.get("shape_traced"):
            given = [tuple(shapes[x.node][x.index]) if isinstance(x, Ref) else None for x in node.inputs]
            try:
                derived = [tuple(s) for s in ops.get(node.op).shape(given, node.attrs)]
            except Exception as exc:  # the shape rule's own error: these sizes do not fit together
                raise SizeMismatch(f"%{node.name} ({node.op}): {exc}") from None
            if derived != stated:
                raise SizeMismatch(f"%{node.name} ({node.op}) gives shapes {derived}, the graph says {stated}")
        shapes[node.name] = stated
    return out
