"""Capture one call as IR: trace the forward, derive the backward, optimize both.

The forward is traced by running the user's Python once on stand-ins of the call's tensors, and
optimized. When an output needs gradients, autodiff works on the *optimized* forward, so fused
nodes (scans, cells) are differentiated by their own gradient rules: the optimized forward is run
once more under autograd while a second trace records it, then the backward graph is traced by
running the op table's gradient rules through the autograd engine. Every forward value the
backward reads becomes an extra forward output: the saved activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import autograd
from ..creation import ones_like
from ..codegen.numpy import interpreter
from ..ir import pipeline, symbolic
from ..ir.graph import Graph
from . import pytree
from .context import TraceContext, TracingError


@dataclass
class Captured:
    forward: Graph
    output_spec: object
    n_user_outputs: int
    mutated: list  # placeholder names written back after each call, in forward-output order
    live_inputs: dict  # placeholder name -> live tensor for params, buffers and lifted tensors
    arg_names: list  # placeholder names of the call's tensor leaves, in flatten order
    value_guards: dict
    grad_assignments: list = field(default_factory=list)  # (input name, set to a value? else None)
    grad_inputs: list = field(default_factory=list)  # (placeholder name, input whose .grad it is)
    returned_inputs: dict = field(default_factory=dict)  # user output index -> input it is (object identity)
    guards: list = field(default_factory=list)  # (label, read, value) on Python state the trace read
    backward: Graph | None = None
    diff_inputs: list = field(default_factory=list)  # placeholder names the backward differentiates
    diff_outputs: list = field(default_factory=list)  # indices of user outputs that carry gradients
    saved: list = field(default_factory=list)  # backward placeholder names fed by extra forward outputs
    traced: Graph | None = None  # the forward as traced, before the passes
    log: object = None
    backend: str = "numpy"  # runs on the NumPy interpreter, or as Triton kernels on a CUDA device
    launches: list = field(default_factory=list)  # the forward's kernel launches in the latest call
    cuda_graphs: bool = False  # replay the forward as a CUDA graph (compile option "cuda_graphs")
    replay: object = None  # that graph (codegen/triton/graphs.py GraphReplay), once made
    env: object = None  # dynamic=True: the symbols and guards of the sizes (ir/symbolic.py ShapeEnv)
    symbol_dims: list = field(default_factory=list)  # (symbol, argument leaf index, dim) it reads


def _stand_in(t):
    """A leaf on the same storage: tracing must not run into the argument's earlier history. It
    holds the argument's .grad, so code that reads or updates gradients of its arguments (clipping
    a list of parameters) traces them; each call then takes the argument's .grad as it is then."""
    s = t.detach()
    if t.requires_grad:
        s.requires_grad_(True)
        s._grad = t._grad
    return s


class _ReplicaTraceContext(TraceContext):
    """The trace of a DataParallel replica's call, guarding the modules the replica copies rather
    than the replica's own: `replicate` makes new replicas from the originals' attributes on every
    call, so the originals' are what the next call's replicas will hold."""

    def __init__(self, scopes, originals):
        super().__init__(scopes)
        self._original_of = originals  # id(replica module) -> the module it copies

    def _guard_module(self, module):
        super()._guard_module(self._original_of.get(id(module), module))


def capture(invoke, arguments, named_state, scopes, originals=None, dynamic=False) -> Captured:
    """Trace `invoke(arguments)` (the call's arguments by parameter name); `named_state` are the
    (name, tensor, kind) of module state: parameters and buffers. `originals` (id(replica module)
    -> original module) makes the trace of a replica's call guard the originals. With `dynamic`,
    the arguments' sizes of 2 and more are symbols (ir/symbolic.py): 0 and 1 stay numbers, as
    they mean something else to broadcasting and emptiness."""
    if not dynamic:
        return _capture(invoke, arguments, named_state, scopes, originals)
    env = symbolic.ShapeEnv()
    leaves, _, paths = pytree.flatten(arguments)
    shapes, symbol_dims = [], []
    for i, (path, t) in enumerate(zip(paths, leaves)):
        shape = []
        for d, n in enumerate(t.shape):
            if n >= 2:
                shape.append(env.symbol(f"{path}.shape[{d}]", n))
                symbol_dims.append((shape[-1].expr, i, d))
            else:
                shape.append(n)
        shapes.append(tuple(shape))
    try:
        with env.tracing():
            captured = _capture(invoke, arguments, named_state, scopes, originals, shapes)
    finally:
        env.close()
    captured.env, captured.symbol_dims = env, symbol_dims
    return captured


def _capture(invoke, arguments, named_state, scopes, originals=None, arg_shapes=None) -> Captured:
    leaves, spec, paths = pytree.flatten(arguments)
    stand_ins = [_stand_in(t) for t in leaves]
    ctx = TraceContext(scopes) if originals is None else _ReplicaTraceContext(scopes, originals)
    try:
        with ctx:
            for (name, tensor, kind) in named_state:
                ctx.add_input(name, tensor, kind)
            arg_names = [ctx.add_input(_placeholder_name(p), s, "arg", shape=shape).node
                         for p, s, shape in zip(paths, stand_ins, arg_shapes or [None] * len(paths))]
            result = symbolic.pinned(invoke(pytree.unflatten(spec, stand_ins)))  # a returned size is a number
            out_leaves, out_spec, _ = pytree.flatten(result)
            if _has_opaque(out_spec):
                raise TracingError("tracefuse.compile: the function returns a Python object that is not a tensor, "
                                   "a number, a string or a tuple/list/dict of them; a graph cannot return it")
            graph = ctx.graph
            mutated = list(ctx.mutations)
            _check_no_views_of_updated_inputs(out_leaves, [ctx.inputs[n] for n in mutated])
            grads = ctx.grad_assignments()
            graph.outputs = [ctx.ref(t) for t in out_leaves] + [ctx.mutations[n] for n in mutated] + \
                [ctx.ref(g) for g in grads.values() if g is not None]
    finally:
        ctx.restore_inputs()
    live = {n: t for n, t in ctx.inputs.items() if n not in arg_names}
    captured = Captured(graph, out_spec, len(out_leaves), mutated, live, arg_names, dict(ctx.value_guards),
                        grad_assignments=[(n, g is not None) for n, g in grads.items()], guards=ctx.guards,
                        grad_inputs=[(n.name, n.meta["of"]) for n in graph.inputs() if n.attrs["kind"] == "grad_of"],
                        returned_inputs={i: name for i, t in enumerate(out_leaves)
                                         for name, live_tensor in ctx.inputs.items() if live_tensor is t})
    diff = [i for i, t in enumerate(out_leaves) if t.requires_grad]
    captured.diff_outputs = diff
    captured.traced = graph  # optimize() works on a copy
    captured.log = pipeline.PassLog()
    forward = graph
    # A function that ran backward() itself (a training step) returns plain values.
    # (Outputs can need gradients under an outer no_grad too, from an enable_grad() block.)
    if diff and not ctx.ran_backward:
        if ctx.eager_autodiff:
            # Differentiate the eager trace itself: its autograd record knows the barriers,
            # custom Functions and hooks that the optimized graph of values does not.
            _capture_backward(captured, ctx, out_leaves, diff)
        else:
            with autograd.enable_grad():
                replay, outputs = _replay_under_autograd(pipeline.optimize(graph, log=captured.log), ctx)
            _capture_backward(captured, replay, outputs[:len(out_leaves)], diff)
            forward = replay.graph
        captured.backward = pipeline.optimize(captured.backward, log=captured.log)
    captured.forward = pipeline.optimize(forward, log=captured.log)
    return captured


def _replay_under_autograd(graph, ctx):
    """Run the optimized forward `graph` on the trace's inputs with autograd recording, while a
    new trace records it: the backward is then derived from the ops the graph really runs."""
    replay = TraceContext()
    inputs = {}
    with replay:
        for node in graph.inputs():
            kind = node.attrs["kind"]
            if kind == "const":
                replay.add_input(node.name, node.meta["value"], kind, value=node.meta["value"])
            else:
                inputs[node.name] = ctx.inputs[node.name]
                replay.add_input(node.name, inputs[node.name], kind, shape=node.meta["outputs"][0][0],
                                 **_input_meta(node))
        outputs = interpreter.run(graph, inputs, record_autograd=True)
        replay.graph.outputs = [replay.ref(o) for o in outputs]
    # One recorded node per op the graph ran, in order: keep their scopes, sources and groups.
    ran = [n for n in graph.nodes if n.op != "input"]
    recorded = [n for n in replay.graph.nodes if n.op != "input"]
    for old, new in zip(ran, recorded):
        new.meta.update({k: v for k, v in old.meta.items() if k not in ("outputs", "free_after")})
    return replay, outputs


def _input_meta(node):
    return {k: v for k, v in node.meta.items() if k not in ("outputs", "device", "scope")}


def _check_no_views_of_updated_inputs(outputs, updated):
    """A returned view of an input the call updated in place would come back as a copy."""
    for out in outputs:
        for t in updated:
            if out is not t and np.may_share_memory(out._data, t._data):
                raise TracingError(
                    "tracefuse.compile: the call returns a view of a tensor it updated in place; a compiled "
                    "graph would return a copy. Return the tensor itself, or a clone() of the view")


def _placeholder_name(path):
    """"L['x']" -> 'x', "L['hx'][1]" -> 'hx_1': readable names for the call's tensors."""
    return "_".join("".join(c if c.isalnum() or c == "_" else " " for c in path[1:]).split())


def _has_opaque(spec):
    if spec == pytree.TENSOR:
        return False
    kind, body = spec
    if kind == "object":
        return True
    if kind == "const":
        return False
    items = body if kind != dict else [v for _, v in body]
    return any(_has_opaque(s) for s in items)


def _capture_backward(captured, fwd_ctx, out_leaves, diff):
    """Trace the gradient rules into a backward graph (see module docstring)."""
    diff_inputs = [name for name, t in fwd_ctx.inputs.items() if t.requires_grad]
    inputs = [fwd_ctx.inputs[n] for n in diff_inputs]
    bwd = TraceContext()
    with bwd:
        grads_in = [ones_like(out_leaves[i]) for i in diff]
        for k, g in zip(diff, grads_in):
            bwd.add_input(f"grad_out_{k}", g, "grad", shape=out_leaves[k].shape)
        # Hooks on the differentiated leaves run when the compiled backward hands them their
        # gradients, as in eager code: they must not also be baked into the graph.
        accumulators = [t._accumulator() for t in inputs if t.is_leaf]
        hooks = [dict(node._pre_hooks) for node in accumulators]
        for node in accumulators:
            node._pre_hooks.clear()
        try:
            grads = autograd.grad([out_leaves[i] for i in diff], inputs, grad_outputs=grads_in,
                                  retain_graph=True, allow_unused=True)
        finally:
            for node, saved in zip(accumulators, hooks):
                node._pre_hooks.update(saved)
        graph = bwd.graph
        graph.outputs = [bwd.ref(g) if g is not None else None for g in grads]
    # Backward placeholders lifted from the forward: forward values (saved activations) or
    # forward inputs (parameters, arguments) the call will provide.
    saved = []
    for node in graph.inputs():
        if node.attrs["kind"] != "lifted":
            continue
        tensor = bwd.inputs[node.name]
        bound = fwd_ctx.binding(tensor)
        if bound is None:
            node.attrs["kind"], node.meta["value"] = "const", tensor  # made by the rules from constants
            continue
        fwd_ref = bound[0]
        if fwd_ref.index == 0 and fwd_ctx.graph.node(fwd_ref.node).attrs.get("kind") == "const":
            node.attrs["kind"], node.meta["value"] = "const", tensor
        elif fwd_ref.index == 0 and fwd_ref.node in fwd_ctx.inputs:
            node.attrs["kind"], node.meta["forward_input"] = "forward_input", fwd_ref.node
        else:
            node.attrs["kind"] = "saved"
            fwd_ctx.graph.outputs.append(fwd_ref)
            saved.append(node.name)
    captured.backward, captured.diff_inputs, captured.diff_outputs, captured.saved = graph, diff_inputs, diff, saved
