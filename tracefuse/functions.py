"""Module-level tensor functions: `tracefuse.cat`, `tracefuse.where`, and `tracefuse.exp(x)`-style
aliases of the Tensor methods (PyTorch offers most ops both ways)."""
from __future__ import annotations

from .dispatch import dispatch
from .tensor import Tensor, _named, _normalize_dim, broadcast_shapes


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("tracefuse.cat(): expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 0, but got {type(t).__name__}")
    # PyTorch skips legacy empty 1-D tensors of shape [0].
    shaped = [(i, t) for i, t in enumerate(tensors) if not (t.ndim == 1 and t.shape[0] == 0)] or [(0, tensors[0])]
    ref = shaped[0][1]
    for i, t in shaped:
        if t.ndim == 0:
            raise RuntimeError(f"zero-dimensional tensor (at position {i}) cannot be concatenated")
    d = _normalize_dim(dim, ref.ndim)
    for i, t in shaped:
        if t.ndim != ref.ndim:
            raise RuntimeError(f"Tensors must have same number of dimensions: got {ref.ndim} and {t.ndim}")
        for k in range(ref.ndim):
            if k != d and t.shape[k] != ref.shape[k]:
                raise RuntimeError(
                    f"Sizes of tensors must match except in dimension {d}. Expected size {ref.shape[k]} but got "
                    f"size {t.shape[k]} for tensor number {i} in the list."
                )
    # Skipped empties still take part (reshaped to an empty slab) so that they get a gradient.
    slab = ref.shape[:d] + (0,) + ref.shape[d + 1:]
    return dispatch("cat", *(t if t.shape == ref.shape or t.ndim == ref.ndim else t.reshape(slab) for t in tensors),
                    dim=d)


concat = concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != tensors[0].shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got {list(tensors[0].shape)} at entry 0 and "
                f"{list(t.shape)} at entry {i}"
            )
    d = _normalize_dim(dim, tensors[0].ndim + 1)
    return _named(cat([t.unsqueeze(d) for t in tensors], d), "StackBackward0")


def where(condition, input=None, other=None):
    if input is None and other is None:
        return condition.nonzero(as_tuple=True)
    from . import dtypes
    from .tensor import _TYPE_NAMES
    if not isinstance(condition, Tensor):
        raise TypeError(f"where(): argument 'condition' (position 1) must be Tensor, not {type(condition).__name__}")
    if condition.dtype is not dtypes.bool_:
        raise RuntimeError("where expected condition to be a boolean tensor, but got a tensor with dtype "
                           f"{_TYPE_NAMES[condition.dtype.name]}")
    shapes = [t.shape for t in (condition, input, other) if isinstance(t, Tensor)]
    broadcast_shapes(*shapes)
    return dispatch("where", condition, input, other)


def _method(name):
    def fn(input, *args, **kwargs):
        return getattr(input, name)(*args, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"tracefuse.{name}(input, ...) is input.{name}(...)."
    return fn


METHOD_ALIASES = (
    "add", "sub", "mul", "div", "true_divide", "pow", "remainder", "maximum", "minimum", "atan2",
    "eq", "ne", "lt", "le", "gt", "ge", "equal", "allclose", "isclose", "logical_and", "logical_or",
    "logical_xor", "logical_not", "clamp", "clip", "masked_fill", "lerp",
    "exp", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "abs", "neg", "negative", "sign", "sin", "cos",
    "sigmoid", "tanh", "relu", "erf", "reciprocal", "floor", "ceil", "round", "trunc", "square",
    "isnan", "isinf", "isfinite",
    "sum", "prod", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std", "norm",
    "logsumexp", "cumsum", "all", "any",
    "matmul", "mm", "bmm", "mv", "dot",
    "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "swapaxes", "t",
    "flip", "narrow", "select", "split", "chunk", "unbind", "tril", "triu", "broadcast_to",
    "gather", "scatter", "scatter_add", "index_select", "masked_select", "nonzero", "clone", "numel",
    "detach", "is_floating_point", "softmax", "log_softmax", "ravel", "movedim", "moveaxis",
)
