"""Run a captured call: the forward graph on the call's tensors and the module's live state,
write back in-place updates, and hook the backward graph into autograd."""
from __future__ import annotations

import numpy as np

from .. import autograd
from ..codegen.numpy import interpreter
from ..creation import zeros
from . import pytree


def execute(captured, graph, inputs, updates=None):
    """Run one of `captured`'s graphs on its backend (`updates`: see codegen/triton/executor.run)."""
    if captured.backend == "triton":
        from ..codegen.triton import executor

        if captured.cuda_graphs and graph is captured.forward:
            return _graph_replay(captured).run(inputs, updates or {})
        return executor.run(graph, inputs, updates)
    return interpreter.run(graph, inputs)


def _graph_replay(captured):
    """The CUDA graph that replays `captured`'s forward (codegen/triton/graphs.py)."""
    if captured.replay is None:
        from ..codegen.triton.graphs import GraphReplay

        captured.replay = GraphReplay(captured.forward, stable=set(captured.live_inputs))
    return captured.replay


class CompiledBackward(autograd.Node):
    """The autograd node of one compiled call: its apply runs the captured backward graph."""

    def __init__(self, captured, live, saved_values, outputs):
        inputs = [live[name] for name in captured.diff_inputs]
        super().__init__([autograd.gradient_edge(t) for t in inputs], n_outputs=len(outputs))
        self.captured, self.saved_values, self.live = captured, saved_values, live
        # The backward reads these forward inputs live: as saved tensors, they must be unchanged.
        self.saved_inputs = [autograd.SavedTensor(live[node.meta["forward_input"]], self)
                             for node in captured.backward.inputs() if "forward_input" in node.meta]
        self.input_meta = [(t.shape, t.dtype) for t in inputs]
        self.needs_input_grad = (True,) * len(inputs)
        self.output_meta = [(o.shape, o.dtype) for o in outputs]
        self.device = outputs[0].device if outputs else None

    def name(self):
        return "CompiledFunctionBackward"

    def release(self):
        self.saved_values = None

    def apply(self, grads):
        if self.saved_values is None:
            raise RuntimeError(autograd._FREED)
        if autograd.is_grad_enabled():
            raise RuntimeError("tracefuse.compile: double backward (create_graph=True) through a compiled call is "
                               "not supported yet; call the model uncompiled for higher-order gradients")
        for saved in self.saved_inputs:
            saved.unpack()  # raises PyTorch's error if the input was modified in place since
        c = self.captured
        inputs = dict(zip(c.saved, self.saved_values))
        for k, g, (shape, dtype) in zip(c.diff_outputs, grads, self.output_meta):
            inputs[f"grad_out_{k}"] = g if g is not None else zeros(shape, dtype=dtype, device=self.device)
        for node in c.backward.inputs():
            source = node.meta.get("forward_input")
            if source is not None:
                inputs[node.name] = self.live[source]
        grads = execute(c, c.backward, inputs)
        return [autograd._validated(self, i, g) for i, g in enumerate(grads)]


def run(captured, arg_leaves):
    """Execute `captured` for a call whose tensor leaves are `arg_leaves`; returns its result."""
    live = dict(captured.live_inputs)
    live.update(zip(captured.arg_names, arg_leaves))
    for name, of in captured.grad_inputs:
        live[name] = live[of]._grad  # gradients are read as they are at this call
    if captured.backend != "triton":
        return _finish(captured, live, execute(captured, captured.forward, live))
    from ..codegen.triton import recording

    n = captured.n_user_outputs
    updates = {name: captured.forward.outputs[n + i] for i, name in enumerate(captured.mutated)}
    with recording() as launches:  # the forward's kernels and any write-back copies: explain() shows them
        result = _finish(captured, live, execute(captured, captured.forward, live, updates))
    captured.launches = launches
    return result


def _finish(captured, live, outputs):
    """Write back in-place updates and gradients, hook up the backward; the call's result."""
    n = captured.n_user_outputs
    constants = [node.meta["value"]._data for node in captured.forward.inputs() if node.attrs["kind"] == "const"]

    def fresh(o):
        """A result (or new .grad) that views a constant of the graph is copied: it may be written to."""
        return o.clone() if any(np.may_share_memory(o._data, c) for c in constants) else o

    user = [fresh(o) for o in outputs[:n]]
    rest = iter(outputs[n:])
    for name in captured.mutated:
        target, value = live[name], next(rest)
        if value._data is not target._data:  # else the graph wrote the new value in place
            target._write_memory(value._data)
        target._version.bump()
    for name, has_value in captured.grad_assignments:
        live[name]._grad = fresh(next(rest)) if has_value else None
    for i, name in captured.returned_inputs.items():
        user[i] = live[name]  # `x.mul_(2); return x` returns the caller's x, as eager code does
    if captured.backward is not None:  # the grad-mode guard makes this the traced mode
        saved = list(rest)
        differentiable = [user[i] for i in captured.diff_outputs]
        node = CompiledBackward(captured, live, saved, differentiable)
        given = {id(t) for t in live.values()}
        for j, out in enumerate(differentiable):
            if id(out) in given:
                continue  # an argument or parameter returned as is stays the caller's tensor (a leaf),
            given.add(id(out))  # and `return y, y` is one tensor with one grad_fn
            out.requires_grad = True
            out.grad_fn, out._output_nr = node, j
    # An output the trace saw without grad but that is an input object (`return x.detach()` is
    # x's value) is returned detached, as eager code returns it.
    diff = set(captured.diff_outputs)
    user = [t.detach() if i not in diff and t.requires_grad else t for i, t in enumerate(user)]
    return pytree.unflatten(captured.output_spec, user)
