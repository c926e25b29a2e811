"""Clip-norm fusion: gradient clipping as two multi-tensor nodes, whatever the parameter count.

`clip_grad_norm_` already dispatches `multi_tensor_norm(*grads)` and
`multi_tensor_scale(total, *grads, max_norm=m)`; that form passes through unchanged.
Hand-written clipping traces as one `norm` per tensor, a stack (reshape to [1] + cat) and a norm
of the stack, then the coefficient min(m / (total + 1e-6), 1) as 0-dim ops and one `mul` per
tensor; three rules turn the norms into one `multi_tensor_norm`, the muls into one
`multi_tensor_scale`, and fold the coefficient ops into that scale (two nodes, two kernels).
"""
from __future__ import annotations

import networkx as nx

from ..graph import Graph, Ref
from ..rewrite import PassLog, Rule, apply_rules, inherited_meta, replace_node


def _producer(graph, x, op):
    """The node producing `x` if it is an `op` node, else None."""
    if isinstance(x, Ref):
        node = graph.node(x.node)
        if node.op == op:
            return node
    return None


def _full_norm(graph, node):
    """Is `node` a norm over all elements of its input (dim None or every dim, no keepdim)?"""
    if node is None or node.op != "norm" or node.attrs["keepdim"] or not isinstance(node.inputs[0], Ref):
        return False
    dim = node.attrs["dim"]
    ndim = len(graph.node(node.inputs[0].node).meta["outputs"][node.inputs[0].index][0])
    return dim is None or sorted(d % ndim for d in dim) == list(range(ndim))


def _match_stacked_norms(graph, total):
    """total = norm(cat([reshape(norm(g_i), [1]) ...], 0)) with one p throughout -> (cat, norms)."""
    if not _full_norm(graph, total):
        return None
    cat = _producer(graph, total.inputs[0], "cat")
    if cat is None or cat.attrs["dim"] not in (0, -1):
        return None
    norms = []
    for x in cat.inputs:
        unsqueeze = _producer(graph, x, "reshape")
        if unsqueeze is None or unsqueeze.attrs["shape"] != (1,):
            return None
        norm = _producer(graph, unsqueeze.inputs[0], "norm")
        if not _full_norm(graph, norm) or norm.attrs["p"] != total.attrs["p"]:
            return None
        norms.append(norm)
    return total, cat, norms


def _fuse_norms(graph, found):
    total, cat, norms = found
    fused = graph.add_node("multi_tensor_norm", [n.inputs[0] for n in norms], {"p": total.attrs["p"]},
                           {"outputs": list(total.meta["outputs"]), **inherited_meta(total)}, before=total.name)
    replace_node(graph, total.name, [Ref(fused.name)])
    return [total.name, cat.name] + [n.name for n in norms], f"-> %{fused.name} over {len(norms)} tensors"


def _match_scaling_muls(graph, norm):
    """Per-tensor `mul(g_i, coef)` of the tensors `norm` reduced, by one 0-dim coef computed from
    `norm` -> (coef, [(g_i, mul_i)]) for the first such coef."""
    if norm.op != "multi_tensor_norm":
        return None
    by_coef: dict = {}
    for g in dict.fromkeys(norm.inputs):
        for user in graph.users(g.node):
            if user.op != "mul" or len(user.refs) != 2 or g not in user.inputs:
                continue
            coef = user.inputs[1] if user.inputs[0] == g else user.inputs[0]
            if coef == g or graph.node(coef.node).meta["outputs"][coef.index][0] != ():
                continue
            if user.meta["outputs"][0] != graph.node(g.node).meta["outputs"][g.index]:
                continue  # the product changed shape or dtype: not a pure per-tensor scaling
            by_coef.setdefault(coef, []).append((g, user))
    for coef, pairs in by_coef.items():
        if nx.has_path(graph.nx, norm.name, coef.node):
            return coef, pairs
    return None


def _fuse_muls(graph, found):
    coef, pairs = found
    first = min((mul for _, mul in pairs), key=lambda m: graph.position(m.name))
    fused = graph.add_node("multi_tensor_scale", [coef] + [g for g, _ in pairs], {"max_norm": None},
                           {"outputs": [mul.meta["outputs"][0] for _, mul in pairs], **inherited_meta(first)},
                           before=first.name)
    for i, (_, mul) in enumerate(pairs):
        replace_node(graph, mul.name, [Ref(fused.name, i)])
    return [mul.name for _, mul in pairs], f"-> %{fused.name} scaling {len(pairs)} tensors by {coef}"


def _match_clip_coefficient(graph, scale):
    """multi_tensor_scale(clamp(m / (total + 1e-6), max=1), *grads) -> (scale, total, m)."""
    if scale.op != "multi_tensor_scale" or scale.attrs.get("max_norm") is not None:
        return None
    clamp = _producer(graph, scale.inputs[0], "clamp")
    if clamp is None or clamp.attrs["min"] is not None or clamp.attrs["max"] != 1.0:
        return None
    div = _producer(graph, clamp.inputs[0], "div")
    if div is None or isinstance(div.inputs[0], Ref) or isinstance(div.inputs[0], bool):
        return None
    add = _producer(graph, div.inputs[1], "add")
    if add is None or add.inputs[1] != 1e-6 or not isinstance(add.inputs[0], Ref):
        return None
    total = add.inputs[0]
    if graph.node(total.node).meta["outputs"][total.index] != clamp.meta["outputs"][0]:
        return None  # the coefficient must be computed in the total's own 0-dim type
    return scale, total, float(div.inputs[0])


def _fold_coefficient(graph, found):
    scale, total, max_norm = found
    fused = graph.add_node("multi_tensor_scale", (total,) + scale.inputs[1:], {"max_norm": max_norm},
                           dict(scale.meta), before=scale.name)
    replace_node(graph, scale.name, [Ref(fused.name, i) for i in range(len(scale.meta["outputs"]))])
    return [scale.name], f"-> %{fused.name} computing min({max_norm} / (%{total.node} + 1e-6), 1) itself"


RULES = [
    Rule("stacked_norms_to_multi_tensor_norm", _match_stacked_norms, _fuse_norms),
    Rule("scaling_muls_to_multi_tensor_scale", _match_scaling_muls, _fuse_muls),
    Rule("fold_clip_coefficient", _match_clip_coefficient, _fold_coefficient),
]


def clip_norm_fusion(graph: Graph, log: PassLog | None = None) -> Graph:
    """Rewrite in place; returns `graph`."""
    return apply_rules(graph, RULES, "clip_norm_fusion", log)
