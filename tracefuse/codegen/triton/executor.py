"""Running a compiled graph on a CUDA device: the NumPy interpreter's loop (same values, same
errors), with each elementwise fusion group as one generated kernel and every other node through
its op's emitter. Each kernel's header names the IR nodes, module scopes and source lines it runs.

A matmul whose only reader adds a bias runs as one kernel with the add as its epilogue (a
Linear layer: one launch). Results are written where the graph wants them when that is safe, so
no copy kernel runs for them: the new value of an input updated in place goes straight into the input's memory (a clipped
gradient, an optimizer's parameter), and the pieces of a concatenation along its leading
dimension into their slices of the result (an LSTM's stacked h_n and c_n), so the `cat` itself
launches nothing.
"""
from __future__ import annotations

import math
import weakref

from ...codegen.numpy import interpreter
from ...dispatch import dispatch
from ...ir import ops
from ...ir.graph import PLACEHOLDER, Ref
from ...ir.pipeline import schedule
from ...runtime import devices
from ...tensor import Tensor
from .fused import group_outputs, run_group
from .launch import OpCall, placement, provenance
from .matmul import matmul_epilogue

_VIEW_OPS = ("permute", "expand", "reshape", "getitem")
# Multi-tensor ops that read each tensor's element i before writing output element i of it.
_POINTWISE_MULTI_TENSOR = ("multi_tensor_scale", "multi_tensor_sgd", "multi_tensor_adam")
_EPILOGUE_ACTIVATIONS = ("relu", "tanh", "sigmoid")


def run(graph, inputs: dict, updates: dict | None = None):
    """Evaluate `graph` on device tensors `inputs`; returns its outputs as a list. `updates` maps
    an input's placeholder name to the graph output (Ref) holding its new value: such values are
    written into the input's memory where that is safe (the caller then has nothing to copy)."""
    execution = _Run(graph, _plan_for(graph, updates or {}), inputs)
    return interpreter.run(graph, inputs, run_group=execution.group, run_node=execution.node)


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {updates: _Plan}


def _plan_for(graph, updates):
    key = tuple(sorted((k, (r.node, r.index)) for k, r in updates.items()))
    cached = _plans.setdefault(graph, {})
    if key not in cached:
        cached[key] = _Plan(graph, updates)
    return cached[key]


class _Plan:
    """Where each kernel output goes, worked out once per graph: `destination[(node, index)]` is
    ("input", placeholder) or ("cat", cat node, offset along its dim). Holds no reference to the
    graph (plans are cached per graph, weakly)."""

    def __init__(self, graph, updates):
        self.destination: dict = {}
        self.pieces: dict = {}  # cat node -> number of pieces written in place
        self.epilogues: dict = {}  # matmul -> (nodes it absorbs: reshapes, add[, activation]; bias Ref; activation)
        self.graph = graph  # only while planning
        self._plan(updates)
        del self.graph

    def _plan(self, updates):
        g = self.graph
        steps = schedule(g)
        self.members = {}
        for node in g.nodes:
            self.members.setdefault(node.meta.get("group", node.name), []).append(node)
        self.step_of = {}
        for i, step in enumerate(steps):
            for name in step if isinstance(step, list) else [step]:
                self.step_of[name] = i
        self.output_uses = {}
        for r in g.outputs:
            if isinstance(r, Ref):
                self.output_uses[(r.node, r.index)] = self.output_uses.get((r.node, r.index), 0) + 1
        for name, ref in updates.items():
            if self._can_update_in_place(name, ref):
                self.destination[(ref.node, ref.index)] = ("input", name)
        for node in g.nodes:
            if node.op == "cat":
                self._plan_cat(node)
            elif node.op == "matmul":
                self._plan_epilogue(node)

    def _readers(self, name, index):
        return [u for u in self.graph.users(name) if any(r == Ref(name, index) for r in u.refs)]

    def _writes_pointwise(self, node, ref_shape) -> bool:
        """Does `node` write each output element after reading its inputs at that same element?"""
        if node.op in _POINTWISE_MULTI_TENSOR:
            return True
        if "group" in node.meta or ops.get(node.op).kind == "elementwise":
            members = self.members[node.meta.get("group", node.name)]
            return all(tuple(m.meta["outputs"][0][0]) == tuple(ref_shape) for m in members)
        return False

    def _can_update_in_place(self, name, ref) -> bool:
        g = self.graph
        producer = g.node(ref.node)
        if producer.op == PLACEHOLDER or producer.op in _VIEW_OPS or self.output_uses.get((ref.node, ref.index)) != 1:
            return False
        if (ref.node, ref.index) in self.destination:
            return False
        at = self.step_of[ref.node]
        shape = producer.meta["outputs"][ref.index][0]
        for reader in g.users(name):
            if reader.op in _VIEW_OPS:  # shares the input's memory: all its readers must be done
                if not self._view_read_before(reader.name, at):
                    return False
            elif self.step_of[reader.name] > at or (
                    self.step_of[reader.name] == at and not self._writes_pointwise(reader, shape)):
                return False
        return True

    def _view_read_before(self, view, at) -> bool:
        """Is every use of `view` (and of views of it) over before step `at`, and none returned?"""
        if any(r.node == view for r in self.graph.outputs if isinstance(r, Ref)):
            return False
        for reader in self.graph.users(view):
            if reader.op in _VIEW_OPS:
                if not self._view_read_before(reader.name, at):
                    return False
            elif self.step_of[reader.name] >= at:
                return False
        return True

    def _plan_cat(self, cat):
        g = self.graph
        shape = cat.meta["outputs"][0][0]
        dim = cat.attrs["dim"] % len(shape) if shape else 0
        if not shape or math.prod(shape[:dim]) != 1 or "group" in cat.meta:
            return
        sources, offset = [], 0
        for x in cat.inputs:
            source = self._view_source(x)
            if source is None:
                return
            sources.append((source, offset))
            offset += g.node(x.node).meta["outputs"][x.index][0][dim]
        if len({source for source, _ in sources}) != len(sources):
            return  # one value twice (cat([y, y])): it can land in one slice only
        for (source, start) in sources:
            self.destination[source] = ("cat", cat.name, start)
        self.pieces[cat.name] = len(sources)

    def _plan_epilogue(self, matmul):
        """matmul [-> reshapes keeping the last dim] -> add(product, bias) [-> relu/tanh/sigmoid,
        the add's only reader, the two alone in a fusion group], with nothing else reading the
        product, a bias of the product's dtype that broadcasts to it (only along the last dim
        after a reshape) and is ready before the matmul runs."""
        g = self.graph
        product, reshapes = Ref(matmul.name), []
        while True:
            readers = self._readers(product.node, product.index)
            if len(readers) != 1 or self.output_uses.get((product.node, product.index)):
                return
            (add,) = readers
            if add.op != "reshape":
                break
            reshapes.append(add.name)
            product = Ref(add.name)
        if add.op != "add" or add.refs.count(product) != 1 or len(add.refs) != 2:
            return
        activation, absorbed = None, reshapes + [add.name]
        if "group" in add.meta:
            members = self.members[add.meta["group"]]
            act = members[-1]
            if len(members) != 2 or members[0] is not add or act.op not in _EPILOGUE_ACTIVATIONS or \
                    self._readers(add.name, 0) != [act] or self.output_uses.get((add.name, 0)):
                return
            activation, absorbed = act.op, absorbed + [act.name]
        bias = next(r for r in add.refs if r != product)
        shape, dtype = matmul.meta["outputs"][0]
        out_shape = add.meta["outputs"][0][0]
        bias_shape, bias_dtype = g.node(bias.node).meta["outputs"][bias.index]
        if bias_dtype != dtype or add.meta["outputs"][0][1] != dtype or not bias_shape or not shape:
            return
        if self.step_of[bias.node] >= self.step_of[matmul.name] or len(bias_shape) > len(out_shape):
            return
        if any(b not in (1, n) for b, n in zip(reversed(bias_shape), reversed(out_shape))):
            return
        if reshapes and (out_shape[-1] != shape[-1] or any(b != 1 for b in bias_shape[:-1])):
            return  # the bias must still line up with the product's columns
        self.epilogues[matmul.name] = (absorbed, bias, activation)

    def _view_source(self, x):
        """The kernel output (node, index) that `x` views through reshapes only, if nothing else
        reads it or the reshapes; else None."""
        g = self.graph
        while isinstance(x, Ref):
            node = g.node(x.node)
            if len(self._readers(x.node, x.index)) != 1 or self.output_uses.get((x.node, x.index)):
                return None
            if node.op != "reshape":
                if node.op == PLACEHOLDER or node.op in _VIEW_OPS or (x.node, x.index) in self.destination:
                    return None
                return (x.node, x.index)
            x = node.inputs[0]
        return None


class _Run:
    """One execution of a plan: the concatenation buffers and how many pieces landed in each."""

    def __init__(self, graph, plan, inputs):
        self.graph, self.plan, self.inputs = graph, plan, inputs
        self.buffers, self.landed = {}, {}
        self.absorbed = {}  # add (or add + activation group) -> its value, computed with the matmul

    def _target(self, key, shape, device):
        kind, where, *rest = self.plan.destination[key]
        if kind == "input":
            return self.inputs[where]._data
        cat = self.graph.node(where)
        cat_shape, dtype = cat.meta["outputs"][0]
        if where not in self.buffers:
            self.buffers[where] = devices.backend(device).empty(cat_shape, dtype.np_type, device)
        dim = cat.attrs["dim"] % len(cat_shape)
        piece = self.buffers[where][(slice(None),) * dim + (slice(rest[0], rest[0] + _size(shape, dim, cat_shape)),)]
        return piece.reshape(shape)

    def _destinations(self, names_and_indices, device):
        out = {}
        for slot, (name, j) in names_and_indices.items():
            if (name, j) in self.plan.destination:
                shape = self.graph.node(name).meta["outputs"][j][0]
                out[slot] = self._target((name, j), shape, device)
        return out

    def _landed(self, placed_keys):
        for key in placed_keys:
            kind, where, *_ = self.plan.destination[key]
            if kind == "cat":
                self.landed[where] = self.landed.get(where, 0) + 1

    def node(self, graph, node, args, value):
        device = _device(args)
        if node.name in self.absorbed:
            return self.absorbed.pop(node.name)
        if node.name in self.plan.pieces and self.landed.get(node.name) == self.plan.pieces[node.name]:
            return Tensor._wrap(self.buffers[node.name], node.meta["outputs"][0][1], device)
        if node.name in self.plan.epilogues and device is not None:
            return self._matmul_with_bias(graph, node, args, value, device)
        slots = {j: (node.name, j) for j in range(len(node.meta["outputs"]))}
        wanted = self._destinations(slots, device) if device is not None else {}
        with provenance(_fragment(graph, [node.name])), placement(wanted) as placed:
            result = dispatch(node.op, *args, **node.attrs)
        self._landed([slots[j] for j in placed])
        return result

    def _matmul_with_bias(self, graph, node, args, value, device):
        absorbed, bias, activation = self.plan.epilogues[node.name]
        bias = value(bias)
        if bias.device != device:
            return dispatch(node.op, *args, **node.attrs)  # a CPU scalar bias: no epilogue
        last = absorbed[-1]
        out_shape, dtype = graph.node(last).meta["outputs"][0]
        reshapes = [n for n in absorbed if graph.node(n).op == "reshape"]
        call = OpCall(ops.get("matmul"), [], {}, dtype, device, _fragment(graph, [node.name] + absorbed),
                      self._destinations({0: (last, 0)}, device))
        columns = bias._data.reshape(bias.shape[-1]) if reshapes else bias._data  # (the plan checked it is 1 x N)
        product = matmul_epilogue(call, args[0]._data, args[1]._data, bias=columns, activation=activation)
        result = Tensor._wrap(product.reshape(out_shape), dtype, device)
        self._landed([(last, 0)] if 0 in call.placed else [])
        for name in reshapes:
            self.absorbed[name] = None  # nothing reads them but the add
        add = absorbed[len(reshapes)]  # runs as a node, or with its activation as a group keyed by it
        self.absorbed[add] = {last: result} if activation else result
        return None  # nothing reads the product itself

    def group(self, graph, members, value):
        if members[0] in self.absorbed:
            return self.absorbed.pop(members[0])
        tensors = [value(ref) for m in members for ref in graph.node(m).refs if ref.node not in members]
        device = _device(tensors)

        def outside(ref):
            t = value(ref)
            return t.item() if t.device.type == "cpu" else t._data

        stored = group_outputs(graph, members, graph.outputs)
        slots = {i: (name, 0) for i, name in enumerate(stored)}
        call = OpCall(None, [], {}, None, device, _fragment(graph, members), self._destinations(slots, device))
        arrays = run_group(call, graph, graph.node(members[0]).meta["group"], members, outside, stored)
        self._landed([slots[i] for i in call.placed])
        return {name: Tensor._wrap(a, graph.node(name).meta["outputs"][0][1], device) for name, a in arrays.items()}


def _size(shape, dim, cat_shape):
    """The extent along the cat's `dim` of a piece of `shape` (same element count per slice)."""
    return math.prod(shape) // math.prod(cat_shape[:dim] + cat_shape[dim + 1:]) if math.prod(shape) else 0


def _device(values):
    return next((t.device for t in values if isinstance(t, Tensor) and t.device.type != "cpu"), None)


_fragments: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {names: text}


def _fragment(graph, names):
    """The provenance text of the nodes `names` (made once per graph: every call launches them)."""
    texts = _fragments.setdefault(graph, {})
    key = tuple(names)
    if key not in texts:
        texts[key] = "IR:\n" + "\n".join("    " + graph.format_node(graph.node(n)) for n in names)
    return texts[key]
