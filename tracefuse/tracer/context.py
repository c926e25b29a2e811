"""The trace context: while a compiled call is traced, every dispatched op is recorded as an IR node.

Tracing runs the Python code once on real tensors (so shapes, dtypes and Python control flow on
them are known) and records what the dispatcher runs. Each traced tensor is bound to the `Ref`
of the node that produced it. Reading a traced tensor's *values* from Python (bool(), item(),
tolist(), numpy()) would bake one call's data into the graph, so it is an error — except for
integer tensors computed only from integer call arguments (sequence lengths, batch sizes),
whose values become guards instead.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings

import numpy as np

from ..autograd import is_grad_enabled
from ..ir import symbolic
from ..ir.graph import Graph, Ref

_state = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TracingError(RuntimeError):
    """The traced code did something a graph cannot express."""


class WarmupRequired(TracingError):
    """The traced code would create state that outlives the call (an optimizer's first step):
    this call runs eagerly and the next one is traced, with that state as graph inputs."""


def current():
    """The active TraceContext, or None."""
    return getattr(_state, "trace", None)


def user_source(skip_package=True) -> str | None:
    """'file.py:LINE' of the innermost frame outside tracefuse (the user's line)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (skip_package and os.path.abspath(filename).startswith(_PACKAGE_DIR)):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _same_layout(a, b):
    """Two tensors that view the same elements the same way."""
    ia, ib = a._data.__array_interface__, b._data.__array_interface__
    return ia["data"][0] == ib["data"][0] and a._data.shape == b._data.shape and a._data.strides == b._data.strides


class TraceContext:
    """Records dispatched ops into `graph`; entered with `with TraceContext(...):`."""

    def __init__(self, scopes: dict | None = None):
        self.graph = Graph()
        self._bound: dict[int, tuple] = {}  # id(tensor) -> (Ref, tensor, int-arg sources or None)
        self._scopes = scopes or {}  # id(module) -> qualified name
        self._scope_stack: list[str] = []
        self._module_labels = {i: name or "self" for i, name in self._scopes.items()}  # guard labels
        self._guarded_modules: set[int] = set()
        self.inputs: dict[str, object] = {}  # placeholder name -> live tensor (args, params, buffers)
        self._input_names: dict[int, str] = {}
        self._originals: dict[str, object] = {}
        self._grads_before: dict[str, object] = {}  # input name -> its .grad when the trace met it
        self.guards: list = []  # (label, read current value, value while tracing)
        self.ran_backward = False
        # Why autodiff must differentiate this eager trace's own autograd record rather than the
        # optimized graph (capture.py): something a graph of values cannot express took part.
        self.eager_autodiff: str | None = None
        self._stale: set[int] = set()  # ids of traced views whose storage was since written in place
        self._grad_touched: set[int] = set()  # ids of tensors whose .grad the trace has set or decided on
        self.mutations: dict[str, Ref] = {}  # placeholder name -> Ref of its value after the call
        self.value_guards: dict[str, list] = {}  # int argument name -> its values, read while tracing
        self.env = symbolic.active()  # the symbolic sizes of a dynamic=True trace, else None

    # --- entering and leaving ------------------------------------------------------------------
    def __enter__(self):
        if current() is not None:
            raise TracingError("tracefuse.compile: a compiled call cannot be traced inside another trace")
        _state.trace = self
        return self

    def __exit__(self, *exc):
        _state.trace = None

    # --- binding tensors to graph values --------------------------------------------------------
    def add_input(self, name, tensor, kind, shape=None, **meta):
        """A graph input bound to `tensor`; `shape`: its symbolic shape (default: tensor.shape)."""
        shape = tensor.shape if shape is None else shape
        if self.env is not None:
            self.env.bind(tensor, shape)
        ref = self.graph.add_input(name, shape, tensor.dtype, kind=kind, device=str(tensor.device),
                                   scope=self.scope(), **meta)
        # Integer arguments and captured integer tensors may steer Python (lengths, indices): their
        # values become guards. Parameters, buffers and float data may not.
        static = kind in ("arg", "lifted") and not tensor.dtype.is_floating_point
        sources = frozenset([name]) if static else None
        self._bound[id(tensor)] = (ref, tensor, sources)
        self.inputs[name] = tensor
        self._input_names[id(tensor)] = name
        if tensor.requires_grad:
            self._grads_before[name] = tensor._grad
        return ref

    def binding(self, tensor):
        """(Ref, tensor, int-arg sources) of a tensor the trace knows, else None. Keyed by id(), so
        the stored tensor is compared too: a dead tensor's id may have been reused."""
        bound = self._bound.get(id(tensor))
        return bound if bound is not None and bound[1] is tensor else None

    def ref(self, tensor) -> Ref:
        """The graph value of `tensor`; a tensor from outside the trace is lifted as a live input."""
        bound = self.binding(tensor)
        if bound is not None:
            if id(tensor) in self._stale:
                raise TracingError(
                    f"tracefuse.compile: a tensor used at {user_source()} shares memory with one that was updated "
                    "in place after it was made (a view or an alias taken before the update); a graph cannot "
                    "follow that. Take the view after the update, or clone() before updating.")
            return bound[0]
        name = f"lifted_{len(self.inputs)}"
        return self.add_input(name, tensor, "lifted")

    def alias(self, alias, tensor):
        """`alias` (detach(), .data, ...) carries `tensor`'s value."""
        bound = self.binding(tensor)
        if bound is not None:
            self._bound[id(alias)] = (bound[0], alias, bound[2])
            if self.env is not None:
                self.env.bind(alias, tensor.shape)
            if tensor.requires_grad and not alias.requires_grad:
                self.needs_eager_autodiff("detach() or .data of a tensor that requires grad")

    def input_changed(self, tensor, what, outside_too=False):
        """Assigning `.data` or `requires_grad` of a graph input (or, with `outside_too`, of any
        tensor from outside the trace) changes state the graph cannot replay."""
        if id(tensor) in self._input_names or (outside_too and self.binding(tensor) is None):
            raise TracingError(
                f"tracefuse.compile: setting {what} of a traced tensor at {user_source()} cannot be replayed by a "
                "graph; update values in place (e.g. `p.copy_(new)` under no_grad) or set it outside the "
                "compiled call")

    def needs_eager_autodiff(self, reason):
        """A gradient barrier, a custom Function or a gradient hook took part in the call."""
        self.eager_autodiff = self.eager_autodiff or reason

    def _sources(self, tensor):
        bound = self.binding(tensor)
        return bound[2] if bound is not None else None

    # --- hooks called by dispatch and Tensor -------------------------------------------------------
    def record(self, op, inputs, attrs, outputs):
        from ..tensor import Tensor

        if not is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs):
            self.needs_eager_autodiff(f"{op.name} under no_grad on a tensor that requires grad")

        args, sources = [], None if op.random else frozenset()  # random values may not steer Python
        for x in inputs:
            if isinstance(x, Tensor):
                args.append(self.ref(x))
                s = self._sources(x)
                sources = None if s is None or sources is None else sources | s
            else:
                args.append(x)
        shapes, followed = [tuple(o.shape) for o in outputs], True
        if self.env is not None:
            shapes, followed = self.env.output_shapes(
                op, [x.shape if isinstance(x, Tensor) else None for x in inputs], attrs, shapes)
            for o, shape in zip(outputs, shapes):
                self.env.bind(o, shape)
        meta = {"outputs": [(s, o.dtype) for s, o in zip(shapes, outputs)], "device": str(outputs[0].device),
                "scope": self.scope(), "source": user_source()}
        if not followed:
            meta["shape_traced"] = True
        node = self.graph.add_node(op.name, args, attrs, meta)
        for j, out in enumerate(outputs):
            static = sources if sources is not None and not out.dtype.is_floating_point else None
            self._bound[id(out)] = (Ref(node.name, j), out, static)

    def assigned(self, tensor, result):
        """`tensor` was overwritten in place by `result` (Tensor._assign)."""
        base = tensor._base
        if base is not None and id(base) in self._bound:
            raise TracingError(
                f"tracefuse.compile: in-place update of a view (at {user_source()}) cannot be expressed in a "
                "graph; write `x = x.clone()` first or update the whole tensor"
            )
        if self.binding(tensor) is None:
            self.ref(tensor)  # from outside the trace (an existing .grad that zero_() or accumulation
            # updates in place): lifted, so that the graph writes the update back
        ref = self.ref(result)
        self._bound[id(tensor)] = (ref, tensor, self._sources(result))
        for other in self._sharing_memory_with(tensor):
            if _same_layout(other, tensor):  # an alias (detach(), .data, the same argument twice)
                self._bound[id(other)] = (ref, other, self._sources(result))
                self.assigned_alias(other, ref)
            else:
                self._stale.add(id(other))
        name = self._input_names.get(id(tensor))
        if name is not None:
            self.mutations[name] = ref
            self._originals.setdefault(name, tensor._memory_copy())
            if tensor.requires_grad and not is_grad_enabled():
                # A leaf rewritten without autograd (Embedding's max_norm) keeps its identity.
                self.needs_eager_autodiff("a leaf updated in place under no_grad")

    def _sharing_memory_with(self, tensor):
        return [t for _, t, _ in list(self._bound.values())
                if t is not tensor and np.may_share_memory(t._data, tensor._data)]

    def assigned_alias(self, alias, ref):
        """An input written through an alias of it is an input mutation like any other."""
        name = self._input_names.get(id(alias))
        if name is not None:
            self.mutations[name] = ref
            self._originals.setdefault(name, alias._memory_copy())

    def grad_written(self, tensor):
        """`tensor.grad` is assigned (zero_grad, the engine): later code no longer depends on the
        .grad the call started with."""
        self.ref(tensor)  # an input from here on, so its .grad before this write is remembered
        self._grad_touched.add(id(tensor))

    def grad_accumulated(self, tensor):
        """backward() is about to assign or accumulate into `tensor.grad`, as it is None or not.
        Unless the traced code set that .grad itself first, this depends on the state before the
        call: guard it."""
        if id(tensor) in self._grad_touched:
            return
        self._grad_touched.add(id(tensor))
        label = f"{self._input_names.get(id(tensor)) or self.ref(tensor).node}.grad is None"
        self.guards.append((label, lambda: tensor._grad is None, tensor._grad is None))

    def grad_read(self, owner):
        """The traced code reads `owner.grad`, a gradient from before the call: a graph input
        that each call takes from `owner.grad` as it is then (kind 'grad_of'), so a new .grad
        object between calls is simply the next input; that there is one at all is guarded."""
        grad = owner._grad
        if self.binding(grad) is not None:
            return
        of = self.ref(owner).node
        self.add_input(f"{of}.grad", grad, "grad_of", of=of)
        if self.graph.node(of).attrs["kind"] != "arg":  # arguments' .grad is guarded per call (api)
            self.guards.append((f"{of}.grad is None", lambda: owner._grad is None, False))

    def grad_assignments(self) -> dict:
        """Inputs whose `.grad` the traced code replaced (backward, zero_grad): name -> new value."""
        return {name: self.inputs[name]._grad for name, before in self._grads_before.items()
                if self.inputs[name]._grad is not before}

    def restore_inputs(self):
        """Undo the trace run's effects on parameters, buffers and captured tensors (values and
        `.grad`), so the compiled graph's own run makes the call's one update."""
        for name, data in self._originals.items():
            self.inputs[name]._write_memory(data)
        for name, before in self._grads_before.items():
            self.inputs[name]._grad = before

    def guard(self, label, read):
        """Guard on a Python value the traced code depends on (an optimizer's hyperparameters)."""
        self.guards.append((label, read, read()))

    def read_values(self, tensor, what):
        """Python is about to read `tensor`'s values (bool(), item(), tolist(), numpy())."""
        self.ref(tensor)  # a tensor from outside the trace is lifted (and guarded if integer)
        sources = self._sources(tensor)
        if sources is None:
            raise TracingError(
                f"tracefuse.compile: {what} reads the values of a traced tensor at {user_source()}: data-dependent "
                "Python control flow cannot be captured in a graph. Use tensor ops instead (e.g. "
                "tracefuse.where(cond, a, b) for an if/else), or compile with fallback='eager'."
            )
        from ..tensor import Tensor

        for name in sources:
            # The value the call started with (the traced code may have updated it since).
            start = self.inputs[name]
            if name in self._originals:
                start = Tensor._wrap(self._originals[name], start.dtype, start.device)
            self.value_guards[name] = start._host_data().tolist()

    # --- module scopes -----------------------------------------------------------------------------
    def scope(self) -> str | None:
        return self._scope_stack[-1] if self._scope_stack else None

    def enter_module(self, module):
        name = self._scopes.get(id(module))
        self._scope_stack.append(name if name is not None else (self.scope() or type(module).__name__))
        self._guard_module(module)

    def _guard_module(self, module):
        """Guard what steers a module's forward besides its arguments: its training flag and its
        other attributes (p, momentum, lists of scales, a callable activation, ...), which
        Parameter, buffer and tensor objects it holds, and its hooks. Then eval(), a changed
        hyperparameter or a replaced Parameter retraces, also when the compiled object is a
        function that calls the module."""
        from ..nn.modules.module import Module

        if id(module) not in self._module_labels:  # a module a compiled function calls: label by path
            root = type(module).__name__
            for path, m in module.named_modules(remove_duplicate=False):
                self._module_labels.setdefault(id(m), f"{root}.{path}" if path else root)
        if id(module) in self._guarded_modules:
            return
        self._guarded_modules.add(id(module))
        label, state = self._module_labels[id(module)], vars(module)
        internals = _module_internals(Module)
        for key in state:
            if key not in internals:
                self.guard(f"{label}.{key}", lambda key=key: _guard_value(state.get(key)))
        for kind in ("_parameters", "_buffers"):
            for key in state[kind]:
                self.guard(f"{label}.{key}", lambda kind=kind, key=key: _guard_value(state[kind].get(key)))
        hooks = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
        self.guard(f"{label}.hooks", lambda: tuple(tuple(state[h]) for h in hooks))
        for child in state["_modules"].values():  # the forward may read a submodule's attributes
            if child is not None:                 # without calling it
                self._guard_module(child)
        if state["_forward_pre_hooks"] or state["_forward_hooks"]:
            warnings.warn(f"tracefuse.compile: the forward hooks of {label} run while tracing only; what they compute "
                          "with tensors is replayed, their other Python side effects (storing activations, "
                          "printing) are not", stacklevel=4)

    def exit_module(self):
        self._scope_stack.pop()


def _guard_value(value):
    """A module attribute as a guard value: plain values by typed equality (1, 1.0 and True
    differ, as in argument specs), containers by structure, tensors and other objects (a
    callable activation) by identity."""
    from ..nn.modules.module import Module
    from ..tensor import Tensor
    from .pytree import PLAIN, Const, flatten

    if isinstance(value, Tensor):
        return f"<tensor at {id(value):#x}>"
    if isinstance(value, symbolic.SymInt):  # a size a trace stored: the number it stands for
        return Const(value.value)
    if isinstance(value, PLAIN):
        return Const(value)
    leaves, spec, _ = flatten(value)
    if hasattr(value, "__dict__") and not callable(value) and not isinstance(value, Module):
        # A plain object (a config namespace): its own attributes, one level deep, count too.
        inner, inner_spec, _ = flatten(dict(vars(value)))
        return spec, inner_spec, tuple(id(t) for t in leaves + inner)
    return spec, tuple(id(t) for t in leaves)


_INTERNALS: set = set()


def _module_internals(module_class):
    """The attributes every Module has (registries, hook dicts): guarded separately."""
    if not _INTERNALS:
        _INTERNALS.update(vars(module_class()))
        _INTERNALS.discard("training")
    return _INTERNALS
