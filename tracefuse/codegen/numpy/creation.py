"""Factories: filled, ranged and random tensors."""
from __future__ import annotations

import numpy as np

from ...ir.ops import register_impl
from .random import generator


@register_impl("full")
def full(*, shape, value, dtype, device):
    return np.full(shape, value, dtype=dtype.np_type)


@register_impl("arange")
def arange(*, start, end, step, dtype, device):
    if all(isinstance(v, int) for v in (start, end, step)):
        return np.arange(start, end, step, dtype=np.int64).astype(dtype.np_type)
    # As PyTorch: the count is ceil((end - start) / step) in double, each value start + i * step in double.
    n = int(np.ceil((end - start) / step))
    return (start + step * np.arange(max(n, 0), dtype=np.float64)).astype(dtype.np_type)


@register_impl("linspace")
def linspace(*, start, end, steps, dtype, device):
    # PyTorch's formula, in its arithmetic (the float type itself; double for integers), so that
    # values agree to the bit: the first half counts up from start, the second half down from end.
    if not dtype.is_floating_point:
        start, end = int(start), int(end)  # the bounds are cast to the integer type first
    t = np.float64 if not dtype.is_floating_point or dtype.itemsize == 8 else np.float32
    idx = np.arange(steps, dtype=t)
    step = (t(end) - t(start)) / t(max(steps - 1, 1))
    values = np.where(idx < steps // 2, t(start) + step * idx, t(end) - step * (t(steps - 1) - idx))
    return values.astype(dtype.np_type) if steps != 1 else np.full(1, start, dtype=dtype.np_type)


@register_impl("eye")
def eye(*, n, m, dtype, device):
    return np.eye(n, m, dtype=dtype.np_type)


@register_impl("rand")
def rand(*, shape, dtype, device):
    return generator().random(shape, dtype=np.float64).astype(dtype.np_type)


@register_impl("randn")
def randn(*, shape, dtype, device):
    return generator().standard_normal(shape).astype(dtype.np_type)


@register_impl("randint")
def randint(*, low, high, shape, dtype, device):
    return generator().integers(low, high, size=shape).astype(dtype.np_type)


@register_impl("randperm")
def randperm(*, n, dtype, device):
    return generator().permutation(n).astype(dtype.np_type)
