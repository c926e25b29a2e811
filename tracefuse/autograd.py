"""Autograd: grad mode, the recorded graph's nodes, saved tensors, hooks, the backward engine
and custom `Function`s.

The recorded graph mirrors PyTorch's: every differentiable result points at the `Node` that made
it (`grad_fn`, `output_nr`), every node at the nodes of its inputs (`next_functions`), and
leaves requiring grad at an `AccumulateGrad` node. Gradient rules run as ordinary tensor ops, so
with `create_graph=True` the backward pass is itself recorded (double backward).
"""
from __future__ import annotations

import abc
import functools
import heapq
import itertools
import re
import threading
from collections import defaultdict

# --- grad mode -------------------------------------------------------------------------------

_mode = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_mode, "enabled", True)


def _set_enabled(mode: bool) -> None:
    _mode.enabled = bool(mode)


class _GradMode:
    """Context manager and decorator that sets grad mode and restores it on exit."""

    mode: bool

    def __enter__(self):
        self._prev = is_grad_enabled()
        _set_enabled(self.mode)

    def __exit__(self, *exc):
        _set_enabled(self._prev)

    def _scope(self):
        """A fresh context manager with this mode, entered on each call of a decorated function."""
        return _Scope(self.mode)

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self._scope():
                return fn(*args, **kwargs)
        return wrapper


class _Scope(_GradMode):
    def __init__(self, mode: bool):
        self.mode = mode


class _NoParamGradMode(_GradMode):
    """Usable as `with no_grad():`, `@no_grad()` and, like PyTorch, bare `@no_grad`."""

    def __new__(cls, orig_func=None):
        self = super().__new__(cls)
        return self if orig_func is None else self(orig_func)


class no_grad(_NoParamGradMode):
    mode = False


class enable_grad(_NoParamGradMode):
    mode = True


class set_grad_enabled(_GradMode):
    """Sets grad mode at once (as a call) and restores the previous mode when used with `with`;
    as a decorator it leaves the mode as it was and applies `mode` inside the function."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self._prev = is_grad_enabled()
        _set_enabled(self.mode)

    def __enter__(self):
        pass

    def __call__(self, fn):
        _set_enabled(self._prev)
        return super().__call__(fn)


# --- saved tensors -----------------------------------------------------------------------------

_FREED = (
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you call "
    ".backward() or autograd.grad(). Specify retain_graph=True if you need to backward through the "
    "graph a second time or if you need to access saved tensors after calling backward."
)


def _short_name(node_name):
    """PyTorch names a node without its `Backward<N>` suffix in saved-tensor errors ("output 0 of Mul")."""
    return re.sub(r"Backward\d*$", "", node_name)


class SavedTensor:
    """A tensor kept for backward by `node`, with the version it had when saved. A saved output
    names its maker from `node` (the tensor's own history may since have been replaced in place)."""

    __slots__ = ("tensor", "version", "node", "is_output")

    def __init__(self, tensor, node=None, is_output=False):
        self.tensor = tensor
        self.version = tensor._version.value
        self.node = node
        self.is_output = is_output

    def unpack(self):
        t = self.tensor
        if t._version.value != self.version:
            maker = self.node if self.is_output else t.grad_fn
            where = f", which is output {t._output_nr} of {_short_name(maker.name())}," if maker else ""
            hint = f" Hint: the operation that failed to compute its gradient is {self.node.name()}." \
                if self.node is not None else ""
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{t._type_string()} {list(t.shape)}]{where} is at version {t._version.value}; "
                f"expected version {self.version} instead.{hint}"
            )
        return t


class RemovableHandle:
    """Returned by every `register_*hook`; `remove()` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: dict):
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# --- graph nodes -----------------------------------------------------------------------------

_sequence = itertools.count()


class Node(abc.ABC):
    """A backward function: takes the gradients of its forward outputs, returns those of its inputs."""

    def __init__(self, next_functions, n_outputs=1):
        self.next_functions = tuple(next_functions)  # (Node | None, output_nr) per forward input
        self.n_outputs = n_outputs
        self._seq = next(_sequence)
        self._pre_hooks: dict[int, dict] = defaultdict(dict)  # output_nr -> tensor hooks
        self._retain_grad_hooks: dict = {}  # output_nr -> hook of retain_grad(); runs after the others
        self._post_hooks: dict = {}

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self):
        return f"<{self.name()} object at {id(self):#x}>"

    @abc.abstractmethod
    def apply(self, grads):
        """Gradients of the forward inputs (one per `next_functions` entry) from those of the outputs."""

    def release(self):
        """Free what was saved for backward (after a backward without retain_graph)."""

    def register_hook(self, fn):
        """`fn(grad_inputs, grad_outputs)` runs after this node; it may return new grad_inputs."""
        handle = RemovableHandle(self._post_hooks)
        self._post_hooks[handle.id] = fn
        return handle

    def _add_tensor_hook(self, output_nr, fn):
        hooks = self._pre_hooks[output_nr]
        handle = RemovableHandle(hooks)
        hooks[handle.id] = fn
        return handle


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class OpNode(Node):
    """The backward of one op from the op table; its rule is the table's `grad` entry."""

    def __init__(self, op, inputs, outputs, attrs):
        from .tensor import Tensor

        super().__init__([gradient_edge(x) if isinstance(x, Tensor) else (None, 0) for x in inputs],
                         n_outputs=len(outputs))
        self.op = op
        self.attrs = attrs
        rule = op.grad
        self._node_name = getattr(rule, "node_name", None) or f"{_camel(op.name)}Backward0"
        self.input_meta = [(x.shape, x.dtype) if isinstance(x, Tensor) else None for x in inputs]
        self.scalars = [None if isinstance(x, Tensor) else x for x in inputs]
        self.needs_input_grad = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        self.output_meta = [(o.shape, o.dtype) for o in outputs]
        self.device = outputs[0].device if outputs else None
        saved_in = getattr(rule, "saved_inputs", ())
        if isinstance(saved_in, slice):
            saved_in = range(len(inputs))[saved_in]
        saved_out = getattr(rule, "saved_outputs", ())
        # A saved Python scalar is kept in `scalars`; its entry (None) only marks it freed after backward,
        # as PyTorch frees the scalar tensor it saves.
        self._saved = {("in", i): SavedTensor(inputs[i], self) if isinstance(inputs[i], Tensor) else None
                       for i in saved_in if inputs[i] is not None}
        self._saved.update({("out", j): SavedTensor(outputs[j], self, is_output=True) for j in saved_out})
        self._saved_keys = frozenset(self._saved)

    def name(self):
        return self._node_name

    def saved_input(self, i):
        return self._unpack(("in", i))

    def saved_output(self, j):
        return self._unpack(("out", j))

    def _unpack(self, key):
        if key in self._saved_keys and key not in self._saved:
            raise RuntimeError(_FREED)
        saved = self._saved.get(key)
        return None if saved is None else saved.unpack()

    def release(self):
        self._saved = {}

    def apply(self, grads):
        # A freed node fails only when its rule reads a saved tensor (as PyTorch's), so ops that
        # saved nothing for the gradients asked of them can be backpropagated through twice.
        if self.n_outputs == 1:
            result = self.op.grad(self, grads[0])
        else:
            result = self.op.grad(self, *grads)
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return [_validated(self, i, g) for i, g in enumerate(result)]


def _validated(node, i, grad):
    """Cast a rule's gradient to its input's dtype and check its shape (PyTorch's validate_outputs)."""
    if grad is None or not node.needs_input_grad[i]:
        return None
    shape, dtype = node.input_meta[i]
    if tuple(grad.shape) != tuple(shape):
        raise RuntimeError(
            f"Function {node.name()} returned an invalid gradient at index {i} - got "
            f"{list(grad.shape)} but expected shape compatible with {list(shape)}"
        )
    return grad if grad.dtype is dtype else grad.to(dtype)


class AccumulateGrad(Node):
    """The node of a leaf that requires grad: accumulates into `.grad` after the tensor's hooks."""

    def __init__(self, variable):
        super().__init__(())
        self.variable = variable

    def apply(self, grads):
        # Hooks of a leaf run as pre-hooks of this node (in the engine); here we only accumulate.
        g = grads[0]
        var = self.variable
        if g is None:
            return []
        if not is_grad_enabled():
            g = g.detach()
        # Through tensor ops (not raw storage writes), so a compiled training step captures them.
        from .tracer import context

        trace = context.current()
        if trace is not None:
            trace.grad_accumulated(var)
        if var.grad is None:
            var.grad = g if is_grad_enabled() else g.clone()
        elif is_grad_enabled():
            var.grad = var.grad + g
        else:
            var.grad.add_(g)
        return []


def gradient_edge(t):
    """(node, output_nr) that receives `t`'s gradient: its grad_fn, or its leaf accumulator."""
    if t.grad_fn is not None:
        return (t.grad_fn, t._output_nr)
    if t.requires_grad:
        return (t._accumulator(), 0)
    return (None, 0)


def record(op, inputs, outputs, attrs):
    """Attach an `OpNode` to the differentiable outputs of an op dispatch just ran."""
    node = OpNode(op, inputs, outputs, attrs)
    for j, out in enumerate(outputs):
        if j not in op.aux_outputs and out.dtype.is_floating_point:
            out.requires_grad = True
            out.grad_fn = node
            out._output_nr = j
    return node


# --- the engine --------------------------------------------------------------------------------

def _run_backward(roots, root_grads, retain_graph, create_graph, capture=None, accumulate=True):
    """Propagate `root_grads` from `roots` through the recorded graph.

    `capture` maps edges (node, output_nr) to slots whose gradients autograd.grad returns; with
    `accumulate=False` leaves' `.grad` are left untouched.
    """
    edges = [gradient_edge(t) for t in roots]
    graph = _reachable([n for n, _ in edges if n is not None])
    if capture is not None:
        graph = _leading_to({n for n, _ in capture}, graph)
    deps: dict[Node, int] = defaultdict(int)
    for node in graph:
        for nxt, _ in node.next_functions:
            if nxt in graph:
                deps[nxt] += 1

    buffers: dict[Node, list] = {}

    def add_grad(node, nr, g):
        buf = buffers.setdefault(node, [None] * node.n_outputs)
        buf[nr] = g if buf[nr] is None else buf[nr] + g

    for (node, nr), g in zip(edges, root_grads):
        if node is not None:
            add_grad(node, nr, g)

    captured = {}
    ready = []
    for node in {n for n, _ in edges if n in graph}:
        if deps[node] == 0:
            heapq.heappush(ready, (-node._seq, id(node), node))
    with set_grad_enabled(create_graph):
        while ready:
            _, _, node = heapq.heappop(ready)
            grads = buffers.pop(node, [None] * node.n_outputs)
            for nr, hooks in list(node._pre_hooks.items()):
                for hook in list(hooks.values()):
                    if grads[nr] is not None:
                        new = hook(grads[nr])
                        if new is not None:
                            grads[nr] = new
            for nr, hook in list(node._retain_grad_hooks.items()):
                if grads[nr] is not None:
                    hook(grads[nr])
            if capture:
                for nr in range(node.n_outputs):
                    if (node, nr) in capture:
                        captured[(node, nr)] = grads[nr]
            if isinstance(node, AccumulateGrad) and not accumulate:
                continue
            if all(g is None for g in grads):
                out_grads = [None] * len(node.next_functions)
            else:
                grads = _materialize(node, grads)
                out_grads = node.apply(grads)
                for hook in list(node._post_hooks.values()):
                    new = hook(tuple(out_grads), tuple(grads))
                    if new is not None:
                        out_grads = list(new)
            if not retain_graph:
                node.release()
            for (nxt, nr), g in zip(node.next_functions, out_grads):
                if nxt not in graph:
                    continue
                if g is not None:
                    add_grad(nxt, nr, g)
                deps[nxt] -= 1
                if deps[nxt] == 0:
                    heapq.heappush(ready, (-nxt._seq, id(nxt), nxt))
    return captured


def _reachable(starts):
    seen = set(starts)
    stack = list(seen)
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _leading_to(targets, nodes):
    """The nodes with a path to one of `targets`: autograd.grad runs only those, as PyTorch does (the
    rest of the graph may even have been freed). A node is younger than the nodes it points to."""
    needed = set()
    for node in sorted(nodes, key=lambda n: n._seq):
        if node in targets or any(nxt in needed for nxt, _ in node.next_functions):
            needed.add(node)
    return needed


def _materialize(node, grads):
    """Multi-output nodes get zeros for outputs that received no gradient."""
    if node.n_outputs == 1 or not isinstance(node, OpNode):
        return grads
    from . import zeros

    return [g if g is not None else zeros(shape, dtype=dtype, device=node.device)
            for g, (shape, dtype) in zip(grads, node.output_meta)]


def _root_grads(outputs, grad_outputs, create_graph):
    from .tensor import Tensor
    from . import ones_like

    grads = []
    for i, (out, g) in enumerate(zip(outputs, grad_outputs)):
        if not out.requires_grad:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
        if g is None:
            if out.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            g = ones_like(out)
        elif not isinstance(g, Tensor):
            raise TypeError(f"gradients can be either Tensors or None, but got {type(g).__name__}")
        elif tuple(g.shape) != tuple(out.shape):
            raise RuntimeError(
                f"Mismatch in shape: grad_output[{i}] has a shape of {g.shape} and output[{i}] has a shape of {out.shape}."
            )
        grads.append(g)
    return grads


def _as_tuple(x):
    from .tensor import Tensor

    return (x,) if isinstance(x, Tensor) or x is None else tuple(x)


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulate into the leaves' `.grad` the gradients of `tensors` (PyTorch's autograd.backward)."""
    from .tracer import context

    trace = context.current()
    if trace is not None:
        trace.ran_backward = True
    tensors = _as_tuple(tensors)
    grad_tensors = _as_tuple(grad_tensors) if grad_tensors is not None else (None,) * len(tensors)
    if retain_graph is None:
        retain_graph = create_graph
    grads = _root_grads(tensors, grad_tensors, create_graph)
    _run_backward(tensors, grads, retain_graph, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """The gradients of `outputs` with respect to `inputs`, returned as a tuple; `.grad` is untouched."""
    outputs = _as_tuple(outputs)
    inputs = _as_tuple(inputs)
    grad_outputs = _as_tuple(grad_outputs) if grad_outputs is not None else (None,) * len(outputs)
    if retain_graph is None:
        retain_graph = create_graph
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
    grads = _root_grads(outputs, grad_outputs, create_graph)
    edges = [gradient_edge(t) for t in inputs]
    captured = _run_backward(outputs, grads, retain_graph, create_graph, capture=set(edges), accumulate=False)
    result = []
    for i, edge in enumerate(edges):
        g = captured.get(edge)
        if g is None and not allow_unused:
            raise RuntimeError(
                f"The differentiated Tensor at index {i} appears to not have been used in the graph. "
                "Set allow_unused=True if this is the desired behavior."
            )
        result.append(g if g is None or create_graph else g.detach())
    return tuple(result)


# --- custom functions --------------------------------------------------------------------------

class FunctionCtx:
    """The `ctx` of a custom Function: what forward saves for backward."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self._saved = ()
        self._freed = False
        self.materialize_grads = True
        self._non_differentiable = set()

    def save_for_backward(self, *tensors):
        self._saved = tuple(None if t is None else SavedTensor(t) for t in tensors)

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError(_FREED)
        return tuple(None if s is None else s.unpack() for s in self._saved)

    def mark_non_differentiable(self, *tensors):
        self._non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors):
        """Accepted for compatibility: in-place outputs are rebased onto this Function like any output."""

    def set_materialize_grads(self, value: bool):
        self.materialize_grads = value


class BackwardFunction(Node):
    """The node of one custom Function call; its `apply` calls the user's `backward`."""

    def __init__(self, fn_cls, ctx, inputs, outputs):
        from .tensor import Tensor

        super().__init__([gradient_edge(x) if isinstance(x, Tensor) else (None, 0) for x in inputs],
                         n_outputs=len(outputs))
        self.fn_cls, self.ctx = fn_cls, ctx
        self.input_meta = [(x.shape, x.dtype) if isinstance(x, Tensor) else None for x in inputs]
        self.needs_input_grad = ctx.needs_input_grad
        self.output_meta = [(o.shape, o.dtype) for o in outputs]
        self.device = outputs[0].device if outputs else None

    def name(self):
        return f"{self.fn_cls.__name__}Backward"

    def release(self):
        if self.ctx._saved:
            self.ctx._saved = ()
            self.ctx._freed = True

    def apply(self, grads):
        from . import zeros

        if self.ctx.materialize_grads:
            grads = [g if g is not None else zeros(s, dtype=d, device=self.device) for g, (s, d) in zip(grads, self.output_meta)]
        result = self.fn_cls.backward(self.ctx, *grads)
        if not isinstance(result, tuple):
            result = (result,)
        n_in = len(self.next_functions)
        if len(result) < n_in or any(g is not None for g in result[n_in:]):  # extra Nones are allowed
            raise RuntimeError(
                f"function {self.name()} returned an incorrect number of gradients (expected {n_in}, got {len(result)})"
            )
        return [_validated(self, i, g) for i, g in enumerate(result[:n_in])]


class Function:
    """Base class of custom differentiable operations:

        class Exp(Function):
            @staticmethod
            def forward(ctx, x): ...; ctx.save_for_backward(y); return y
            @staticmethod
            def backward(ctx, grad): (y,) = ctx.saved_tensors; return grad * y
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for your custom autograd.Function to use it with backward mode AD.")

    @classmethod
    def apply(cls, *args):
        from .tensor import Tensor

        from .tracer import context

        trace = context.current()
        if trace is not None:
            trace.needs_eager_autodiff(f"custom autograd.Function {cls.__name__}")
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = FunctionCtx(needs)
        with no_grad():
            result = cls.forward(ctx, *args)
        single = isinstance(result, Tensor)
        outputs = (result,) if single else tuple(result)
        if not (is_grad_enabled() and any(needs)):
            return result
        # Outputs become new tensors (detached aliases sharing storage) owned by this Function's node.
        aliased = tuple(o.detach() if isinstance(o, Tensor) else o for o in outputs)
        tensors = [o for o in aliased if isinstance(o, Tensor)]
        node = BackwardFunction(cls, ctx, args, tensors)
        for saved in ctx._saved:
            if saved is not None:
                saved.node = node
        for j, (orig, out) in enumerate(zip((o for o in outputs if isinstance(o, Tensor)), tensors)):
            if id(orig) not in ctx._non_differentiable and out.dtype.is_floating_point:
                out.requires_grad = True
                out.grad_fn = node
                out._output_nr = j
        return aliased[0] if single else aliased


def Variable(data, requires_grad=False, volatile=False):
    """Old PyTorch's Variable: today it simply returns the tensor (with requires_grad set)."""
    if requires_grad:
        data.requires_grad_(True)
    return data
