"""Running a compiled graph on a CUDA device: the NumPy interpreter's loop (same values, same
errors), with each elementwise fusion group as one generated kernel and every other node through
its op's emitter. Each kernel's header names the IR nodes, module scopes and source lines it runs.
"""
from __future__ import annotations

from ...codegen.numpy import interpreter
from ...tensor import Tensor
from .fused import group_outputs, run_group
from .launch import OpCall, provenance


def run(graph, inputs: dict):
    """Evaluate `graph` on device tensors `inputs`; returns its outputs as a list."""
    return interpreter.run(graph, inputs, run_group=_group, node_context=_node_provenance)


def _node_provenance(graph, node):
    return provenance(_fragment(graph, [node.name]))


def _fragment(graph, names):
    return "IR:\n" + "\n".join("    " + graph.format_node(graph.node(n)) for n in names)


def _group(graph, members, value):
    tensors = [value(ref) for m in members for ref in graph.node(m).refs if ref.node not in members]
    device = next(t.device for t in tensors if isinstance(t, Tensor) and t.device.type != "cpu")

    def outside(ref):
        t = value(ref)
        return t.item() if t.device.type == "cpu" else t._data

    call = OpCall(None, [], {}, None, device, _fragment(graph, members))
    label = graph.node(members[0]).meta["group"]
    arrays = run_group(call, graph, label, members, outside, group_outputs(graph, members, graph.outputs))
    return {name: Tensor._wrap(a, graph.node(name).meta["outputs"][0][1], device) for name, a in arrays.items()}
