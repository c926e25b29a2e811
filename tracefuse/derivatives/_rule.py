"""The `rule` decorator and small helpers shared by the gradient rule modules."""
from __future__ import annotations

from ..ir.ops import register_grad


def rule(op_name, inputs=(), outputs=(), node_name=None):
    """Register a gradient rule; `inputs`/`outputs` name the positions saved for backward
    (`inputs` may be a slice, for ops with a variable number of index tensors)."""
    def deco(fn):
        fn.saved_inputs = inputs if isinstance(inputs, slice) else tuple(inputs)
        fn.saved_outputs = tuple(outputs)
        fn.node_name = node_name
        return register_grad(op_name)(fn)
    return deco


def sum_to(g, shape):
    """Reduce a broadcast gradient back to `shape`."""
    shape = tuple(shape)
    if g.ndim == len(shape) and tuple(g.shape) == shape:  # ranks first: sizes are compared only when they line up
        return g
    lead = g.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(shape)


def unsqueeze_dims(g, dims, keepdim, ndim):
    """Re-insert reduced dims (as size 1) so that `g` broadcasts against the reduction's input."""
    if keepdim or ndim == 0:
        return g
    axes = range(ndim) if dims is None else dims
    shape = list(g.shape)
    for d in sorted(axes):
        shape.insert(d, 1)
    return g.reshape(shape)
