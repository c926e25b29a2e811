"""Dead-code elimination: drop nodes whose values never reach a graph output.

Argument, parameter and buffer inputs stay (they are the graph's calling convention); unused
const inputs go (constant folding leaves the intermediate ones of a chain). Random ops with no users go too:
the compiled graph then draws fewer random numbers than eager code would, as in other compilers.
"""
from __future__ import annotations

from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog


def dead_code(graph: Graph, log: PassLog | None = None) -> Graph:
    """Remove dead nodes in place (one backward sweep: a node whose users were all removed is dead
    when the sweep reaches it); returns `graph`."""
    log = log if log is not None else PassLog()
    live = {r.node for r in graph.outputs if isinstance(r, Ref)}
    for node in reversed(graph.nodes):
        if (node.op == PLACEHOLDER and node.attrs["kind"] != "const") or node.name in live or graph.users(node.name):
            continue
        graph.remove_node(node.name)
        log.record("dead_code", "remove_unused", [node.name], node.op)
    return graph
