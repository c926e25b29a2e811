"""Multi-tensor ops (gradient clipping, optimizers): one node for any number of tensors.

The dtype rule is `custom`, so these implementations see the stored arrays (float16/bfloat16
included) and choose result dtypes themselves, the way PyTorch's `_foreach_*` kernels do:
arithmetic runs in float32 for half precisions and in the tensor's own type otherwise.
Each tensor is reduced or scaled on its own; nothing is concatenated.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from ...ir.ops import register_impl

_HALF = (dtypes.float16.np_type, dtypes.bfloat16.np_type)


def _compute_type(np_dtype):
    return np.dtype(np.float32) if np_dtype in _HALF else np_dtype


def _vector_norm(a, p):
    """The p-norm of the flattened array `a` (already in its compute type), as a NumPy scalar."""
    if a.size == 0:
        if p == math.inf:  # PyTorch's messages for these two differ; both are kept
            raise RuntimeError("_foreach_norm cannot compute the infinity norm on an empty tensor because the "
                               "operation does not have an identity")
        if p == -math.inf:
            raise RuntimeError("linalg.vector_norm cannot compute the -inf norm on an empty tensor because the "
                               "operation does not have an identity")
        return a.dtype.type(0)
    if p == 2:
        flat = a.reshape(-1)
        return np.sqrt(np.dot(flat, flat))
    if p == 1:
        return np.sum(np.abs(a))
    if p == math.inf:
        return np.max(np.abs(a))
    if p == -math.inf:
        return np.min(np.abs(a))
    if p == 0:
        return a.dtype.type(np.count_nonzero(a))
    return np.sum(np.abs(a) ** p) ** (1.0 / p)


@register_impl("multi_tensor_norm")
def multi_tensor_norm(*tensors, p):
    """PyTorch's total norm: the p-norm of the vector of per-tensor p-norms (for p > 0 and
    p = +-inf, the norm of all tensors as if concatenated). Each per-tensor norm is rounded to
    its tensor's dtype; the total has the dtypes' promoted type."""
    result = dtypes.from_numpy_dtype(tensors[0].dtype)
    for t in tensors[1:]:
        result = dtypes.promote_types(result, dtypes.from_numpy_dtype(t.dtype))
    ct = _compute_type(result.np_type)
    norms = np.empty(len(tensors), dtype=ct)
    with np.errstate(all="ignore"):
        for i, t in enumerate(tensors):
            norms[i] = _vector_norm(t.astype(_compute_type(t.dtype), copy=False), p).astype(t.dtype)
        return np.asarray(_vector_norm(norms, p), dtype=ct).astype(result.np_type)


def clip_coefficient(total_norm, max_norm):
    """clip_grad_norm_'s min(max_norm / (total_norm + 1e-6), 1), in the norm's type."""
    t = total_norm.dtype.type
    return np.minimum(t(max_norm) / (total_norm + t(1e-6)), t(1.0))


@register_impl("multi_tensor_scale")
def multi_tensor_scale(coef, *tensors, max_norm=None):
    """Every tensor times the 0-dim `coef` (or, with `max_norm`, the clip coefficient of the total
    norm `coef`), cast to each tensor's compute type first."""
    out = []
    with np.errstate(all="ignore"):
        if max_norm is not None:
            coef = clip_coefficient(coef, max_norm)
        for t in tensors:
            ct = _compute_type(t.dtype)
            out.append((t.astype(ct, copy=False) * coef.astype(ct)).astype(t.dtype, copy=False))
    return tuple(out)
