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
    # Compute in float64 like PyTorch and cast, so fractional steps count the same elements.
    n = int(np.ceil((end - start) / step))
    return (start + step * np.arange(max(n, 0), dtype=np.float64)).astype(dtype.np_type) \
        if dtype.is_floating_point else np.arange(start, end, step).astype(dtype.np_type)


@register_impl("linspace")
def linspace(*, start, end, steps, dtype, device):
    return np.linspace(start, end, steps).astype(dtype.np_type)


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
