"""The NumPy interpreter: runs an IR graph node by node through the dispatcher.

Each node runs exactly as the same op runs eagerly (same dtype rules, same NumPy
implementation), so a compiled graph and eager code agree to the last bit. Values are freed after
their last use (the memory plan's `free_after`), and an error names the IR node
and the user's source line, as torch.fx's Interpreter does.

A fusing backend passes `run_group`: the graph then runs in `pipeline.schedule` order and each
elementwise fusion group runs at once through that callback (the Triton backend, one kernel).
"""
from __future__ import annotations

import contextlib
import weakref

from ...autograd import no_grad
from ...dispatch import dispatch
from ...ir.graph import PLACEHOLDER, Ref


class GraphExecutionError(RuntimeError):
    """An op failed while a compiled graph ran; the message names the node and source line."""


def run(graph, inputs: dict, record_autograd=False, run_group=None, run_node=None):
    """Evaluate `graph` on `inputs` (placeholder name -> Tensor); returns its outputs as a list.

    Placeholders missing from `inputs` take their `meta["value"]` (constants). Values are dropped
    after the node the memory plan (`meta["free_after"]`) names as their last reader. With
    `record_autograd` the ops are recorded for autograd like eager ones (the tracer uses this to
    differentiate an optimized graph). `run_group(graph, members, value)` runs a fusion group and
    returns {member: Tensor}; `run_node(graph, node, args, value)` replaces the dispatch of each
    node (`value(ref)` reads any value computed so far)."""
    env = {}

    def value(x):
        if isinstance(x, Ref):
            v = env[x.node]
            return v[x.index] if isinstance(v, tuple) else v
        return x

    steps, frees = _plan(graph, run_group)
    with contextlib.nullcontext() if record_autograd else no_grad():
        for step in steps:
            node = graph.node(step[0] if isinstance(step, list) else step)
            try:
                if isinstance(step, list):
                    env.update(run_group(graph, step, value))
                elif node.op == PLACEHOLDER:
                    env[node.name] = inputs[node.name] if node.name in inputs else node.meta["value"]
                else:
                    args = [value(x) for x in node.inputs]
                    env[node.name] = (run_node(graph, node, args, value) if run_node
                                      else dispatch(node.op, *args, **node.attrs))
            except Exception as exc:
                where = " ".join(s for s in (node.meta.get("scope"), node.meta.get("source")) if s)
                raise GraphExecutionError(
                    f"While executing {graph.format_node(node)}\n  at {where or '<unknown source>'}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for name in frees.get(step[-1] if isinstance(step, list) else step, ()):
                env.pop(name, None)
        return [value(r) for r in graph.outputs]


_fused_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # compiled graph -> (steps, frees)


def _plan(graph, run_group):
    """(steps, frees): node names in graph order and the memory plan's frees; or, for a fusing
    backend (which runs compiled graphs, never rewritten again: the plan is kept per graph), the
    schedule with groups as lists and frees after each value's last scheduled reader."""
    if run_group is None:
        return [n.name for n in graph.nodes], {n.name: n.meta.get("free_after", ()) for n in graph.nodes}
    if graph not in _fused_plans:
        _fused_plans[graph] = _fused_plan(graph)
    return _fused_plans[graph]


def _fused_plan(graph):
    from ...ir.pipeline import schedule

    steps = schedule(graph)
    keep = {r.node for r in graph.outputs if isinstance(r, Ref)}
    last = {}
    for step in steps:
        for name in step if isinstance(step, list) else [step]:
            for ref in graph.node(name).refs:
                last[ref.node] = step[-1] if isinstance(step, list) else step
    frees: dict = {}
    for name, at in last.items():
        if name not in keep:
            frees.setdefault(at, []).append(name)
    return steps, frees
