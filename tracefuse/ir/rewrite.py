"""Named rewrite rules, the log of the rules that fired, and the helpers rules share.

A rule is a named pattern -> replacement pair (DESIGN.md principle 4): `match(graph, node)` looks
at one node (the pattern's root) and returns what the replacement needs, or None;
`replace(graph, match)` edits the graph and returns the names of the nodes it touched and a note.
Every firing is recorded in a `PassLog` and sent to the `tracefuse.passes` logger at DEBUG, so a
debug dump says which rule fired on which nodes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from .graph import PLACEHOLDER, Graph, Ref
from .infer import infer

logger = logging.getLogger("tracefuse.passes")


@dataclass(frozen=True)
class Fired:
    """One rewrite: which pass, which rule, the nodes it read or replaced, and what it did."""

    pass_name: str
    rule: str
    nodes: tuple
    note: str = ""

    def __str__(self):
        names = ", ".join(f"%{n}" for n in self.nodes)
        return f"{self.pass_name}/{self.rule}: {names}" + (f"  -- {self.note}" if self.note else "")


class PassLog:
    """The rewrites of one pipeline run, in the order they fired."""

    def __init__(self):
        self.entries: list[Fired] = []

    def record(self, pass_name, rule, nodes, note=""):
        entry = Fired(pass_name, rule, tuple(nodes), note)
        self.entries.append(entry)
        logger.debug("%s", entry)

    def rules(self) -> list[str]:
        """The 'pass/rule' names that fired, in order (repeats included)."""
        return [f"{e.pass_name}/{e.rule}" for e in self.entries]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __str__(self):
        return "\n".join(str(e) for e in self.entries) if self.entries else "(no rewrites)"


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable  # (graph, node) -> match | None
    replace: Callable  # (graph, match) -> (touched node names, note)


def apply_rules(graph: Graph, rules, pass_name: str, log: PassLog | None) -> Graph:
    """Try every rule on every node, in graph order, until none matches (a fixed point)."""
    log = log if log is not None else PassLog()
    changed = True
    while changed:
        changed = False
        for name in [n.name for n in graph.nodes]:
            for rule in rules:
                if name not in graph:
                    break
                found = rule.match(graph, graph.node(name))
                if found is not None:
                    touched, note = rule.replace(graph, found)
                    log.record(pass_name, rule.name, touched, note)
                    changed = True
    return graph


def run_op(op, args, attrs) -> tuple:
    """Run one op eagerly through the dispatcher (no autograd); always a tuple of outputs."""
    from ..autograd import no_grad  # imported here: the dispatcher imports the IR stage
    from ..dispatch import dispatch

    with no_grad():
        out = dispatch(op, *args, **attrs)
    return out if isinstance(out, tuple) else (out,)


def infer_outputs(graph: Graph, op, inputs, attrs) -> list:
    """`meta["outputs"]` of a new node: [(shape, dtype), ...] by the op table's rules."""
    def meta(x):
        return graph.node(x.node).meta["outputs"][x.index] if isinstance(x, Ref) else x

    return infer(op, [meta(x) for x in inputs], attrs)


def replace_node(graph: Graph, old: str, new_refs) -> None:
    """Point the uses of each output of `old` at the matching entry of `new_refs`, then remove it."""
    for index, new in enumerate(new_refs):
        graph.replace_uses(Ref(old, index), new)
    graph.remove_node(old)


def inherited_meta(node) -> dict:
    """The device, module scope and source line of `node`, for the nodes that replace it."""
    return {k: node.meta[k] for k in ("device", "scope", "source") if k in node.meta}


def is_const(graph: Graph, x) -> bool:
    """Is `x` a reference to a const input (a value known when compiling)?"""
    if not isinstance(x, Ref):
        return False
    node = graph.node(x.node)
    return node.op == PLACEHOLDER and node.attrs["kind"] == "const"
