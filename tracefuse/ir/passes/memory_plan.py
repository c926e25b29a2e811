"""Memory plan: where each intermediate value can be freed.

Each node gets `meta["free_after"]`: the values (node names; a multi-output node is one value)
whose last reader it is, so an interpreter drops them right after running it and peak memory
follows the live set rather than the whole graph. Graph outputs and placeholders are never
freed (the caller owns them). A value nobody reads is freed right after the node that made it.
"""
from __future__ import annotations

from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog


def memory_plan(graph: Graph, log: PassLog | None = None) -> Graph:
    """Annotate in place; returns `graph`. Rewrites nothing, so it logs nothing."""
    last_reader = {}
    for node in graph.nodes:
        if node.op != PLACEHOLDER:
            last_reader[node.name] = node.name
        for ref in node.refs:
            last_reader[ref.node] = node.name
    kept = {r.node for r in graph.outputs if isinstance(r, Ref)}
    plan: dict = {n.name: [] for n in graph.nodes}
    for value, reader in last_reader.items():
        if value not in kept and graph.node(value).op != PLACEHOLDER:
            plan[reader].append(value)
    for node in graph.nodes:
        node.meta["free_after"] = plan[node.name]
    return graph


def free_after(graph: Graph) -> dict:
    """The plan as {node name: [values]}, for interpreters that take it as an argument."""
    return {n.name: n.meta["free_after"] for n in graph.nodes if n.meta.get("free_after")}
