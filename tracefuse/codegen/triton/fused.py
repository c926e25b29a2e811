"""Fused elementwise groups: the members of one `meta["group"]` (ir/passes/elementwise_fusion.py)
become one pointwise kernel. Values from outside the group are loaded (broadcast to the group's
iteration shape); each member is one line named after its IR node, rounded to its own result
type as the node-by-node path rounds it; members read outside the group are stored.
"""
from __future__ import annotations

import keyword
import re

import numpy as np

from ...ir import ops
from ...ir.graph import Ref
from .elementwise import EXPRESSIONS, compute_types
from .pointwise import Pointwise, store_cast
from .launch import tl_type


def group_outputs(graph, members, graph_outputs) -> list[str]:
    """Members whose value is needed after the group: read by a non-member or returned."""
    inside = set(members)
    returned = {r.node for r in graph_outputs if isinstance(r, Ref)}
    return [m for m in members if m in returned or any(u.name not in inside for u in graph.users(m))]


def run_group(call, graph, label, members, value, stored) -> dict:
    """Run group `label` as one kernel; `value(ref)` gives an outside value (device array or
    Python scalar); returns {member name: device array} for the members in `stored` (the i-th
    written into `call.destinations[i]` when the executor planned one)."""
    nodes = [graph.node(m) for m in members]
    shape = np.broadcast_shapes(*[tuple(n.meta["outputs"][0][0]) for n in nodes])
    kernel = Pointwise(f"{label}_kernel", shape)
    loaded, inside = {}, set(members)
    taken = set(members)  # kernel variable names in use
    scalar_count = iter(range(10**6))

    def scalar(v):
        return kernel.scalar(f"s{next(scalar_count)}", v)

    types = {}  # temporary -> the NumPy type it holds
    for node in nodes:
        op = ops.get(node.op)
        out_dtype = node.meta["outputs"][0][1]
        in_metas = [_Meta(_dtype_of(graph, x)) if isinstance(x, Ref) else x for x in node.inputs]
        compute = compute_types(op, in_metas, _rule_dtype(op, node, graph))
        operands = []
        for x, ct in zip(node.inputs, compute):
            if not isinstance(x, Ref):
                operands.append(scalar(x))
                continue
            if x.node in inside:
                name = x.node
            else:
                key = (x.node, x.index)
                if key not in loaded:
                    given = value(x)  # a device array, or a Python scalar (a 0-dim CPU tensor's value)
                    param = _identifier(f"{x.node}_{x.index}" if x.index else x.node, taken)
                    loaded[key] = kernel.load(param, given) if hasattr(given, "shape") else scalar(given)
                    types[loaded[key]] = _dtype_of(graph, x).np_type
                name = loaded[key]
            converts = ct is not None and types.get(name) != np.dtype(ct)
            operands.append(f"{name}.to({tl_type(ct)})" if converts else name)
        expression = EXPRESSIONS[node.op](operands, scalar, node.attrs)
        computes_in = compute[0] if compute and compute[0] is not None and op.dtype_rule not in ("bool", "custom") else None
        exact = computes_in is not None and np.dtype(computes_in) == out_dtype.np_type
        kernel.compute(node.name, expression if exact else store_cast(f"({expression})", out_dtype.np_type))
        types[node.name] = out_dtype.np_type
    results = {}
    for i, name in enumerate(stored):
        out_shape, out_dtype = graph.node(name).meta["outputs"][0]
        results[name] = call.output(i, out_shape, out_dtype)
        kernel.store(f"{name}_out", name, results[name])
    kernel.launch(call)
    return results


def _identifier(name, taken):
    """`name` as a fresh Python identifier (graph inputs are named after module paths: 'lstm.weight')."""
    base = re.sub(r"\W", "_", name)
    if not base.isidentifier() or keyword.iskeyword(base):
        base = f"v_{base}"
    ident, n = base, 1
    while ident in taken:
        n += 1
        ident = f"{base}_{n}"
    taken.add(ident)
    return ident


class _Meta:
    """Stands in for an input array where only its dtype matters (compute types)."""

    def __init__(self, dtype):
        self.dtype = dtype.np_type
        self.shape = ()


def _dtype_of(graph, ref):
    return graph.node(ref.node).meta["outputs"][ref.index][1]


def _rule_dtype(op, node, graph):
    """The dtype rule's result for `node`, as the dispatcher computes it."""
    from ...ir.infer import result_dtype

    operands = [(_dtype_of(graph, x), len(graph.node(x.node).meta["outputs"][x.index][0])) if isinstance(x, Ref) else x
                for x in node.inputs]
    return result_dtype(op, operands, node.attrs)
