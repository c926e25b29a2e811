"""The NumPy interpreter: runs an IR graph node by node through the dispatcher.

Each node runs exactly as the same op runs eagerly (same dtype rules, same NumPy
implementation), so a compiled graph and eager code agree to the last bit. Values are freed after
their last use (the memory plan's `free_after`), and an error names the IR node
and the user's source line, as torch.fx's Interpreter does.
"""
from __future__ import annotations

import contextlib

from ...autograd import no_grad
from ...dispatch import dispatch
from ...ir.graph import PLACEHOLDER, Ref


class GraphExecutionError(RuntimeError):
    """An op failed while a compiled graph ran; the message names the node and source line."""


def run(graph, inputs: dict, record_autograd=False):
    """Evaluate `graph` on `inputs` (placeholder name -> Tensor); returns its outputs as a list.

    Placeholders missing from `inputs` take their `meta["value"]` (constants). Values are dropped
    after the node the memory plan (`meta["free_after"]`) names as their last reader. With
    `record_autograd` the ops are recorded for autograd like eager ones (the tracer uses this to
    differentiate an optimized graph)."""
    env = {}

    def value(x):
        if isinstance(x, Ref):
            v = env[x.node]
            return v[x.index] if isinstance(v, tuple) else v
        return x

    with contextlib.nullcontext() if record_autograd else no_grad():
        for node in graph.nodes:
            if node.op == PLACEHOLDER:
                env[node.name] = inputs[node.name] if node.name in inputs else node.meta["value"]
                continue
            try:
                env[node.name] = dispatch(node.op, *[value(x) for x in node.inputs], **node.attrs)
            except Exception as exc:
                where = " ".join(s for s in (node.meta.get("scope"), node.meta.get("source")) if s)
                raise GraphExecutionError(
                    f"While executing {graph.format_node(node)}\n  at {where or '<unknown source>'}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for name in node.meta.get("free_after", ()):
                env.pop(name, None)
        return [value(r) for r in graph.outputs]
