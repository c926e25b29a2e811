"""Reductions. `dim` is a tuple of non-negative axes, or None for all of them."""
from __future__ import annotations

import numpy as np

from ...ir.ops import register_impl


@register_impl("sum")
def sum_(x, *, dim, keepdim):
    return np.sum(x, axis=dim, keepdims=keepdim)


@register_impl("prod")
def prod(x, *, dim, keepdim):
    return np.prod(x, axis=dim, keepdims=keepdim)


@register_impl("mean")
def mean(x, *, dim, keepdim):
    return np.mean(x, axis=dim, keepdims=keepdim)


@register_impl("amax")
def amax(x, *, dim, keepdim):
    return np.max(x, axis=dim, keepdims=keepdim)


@register_impl("amin")
def amin(x, *, dim, keepdim):
    return np.min(x, axis=dim, keepdims=keepdim)


def _extreme_with_index(x, dim, keepdim, arg):
    if x.ndim == 0:
        return x.copy(), np.zeros((), dtype=np.int64)
    idx = arg(x, axis=dim, keepdims=True)
    values = np.take_along_axis(x, idx, axis=dim)
    if not keepdim:
        values, idx = values.squeeze(dim), idx.squeeze(dim)
    return values, idx.astype(np.int64)


@register_impl("max_dim")
def max_dim(x, *, dim, keepdim):
    return _extreme_with_index(x, dim, keepdim, np.argmax)


@register_impl("min_dim")
def min_dim(x, *, dim, keepdim):
    return _extreme_with_index(x, dim, keepdim, np.argmin)


@register_impl("argmax")
def argmax(x, *, dim, keepdim):
    return np.argmax(x, axis=dim, keepdims=keepdim) if dim is not None else np.argmax(x)


@register_impl("argmin")
def argmin(x, *, dim, keepdim):
    return np.argmin(x, axis=dim, keepdims=keepdim) if dim is not None else np.argmin(x)


@register_impl("var")
def var(x, *, dim, correction, keepdim):
    return np.var(x, axis=dim, ddof=correction, keepdims=keepdim)


@register_impl("norm")
def norm(x, *, p, dim, keepdim):
    a = np.abs(x)
    if p == 2:
        return np.sqrt(np.sum(a * a, axis=dim, keepdims=keepdim))
    if p == float("inf"):
        return np.max(a, axis=dim, keepdims=keepdim)
    if p == float("-inf"):
        return np.min(a, axis=dim, keepdims=keepdim)
    if p == 0:
        return np.sum(a != 0, axis=dim, keepdims=keepdim).astype(x.dtype)
    if p == 1:
        return np.sum(a, axis=dim, keepdims=keepdim)
    return np.sum(a ** p, axis=dim, keepdims=keepdim) ** (1.0 / p)


@register_impl("logsumexp")
def logsumexp(x, *, dim, keepdim):
    m = np.max(x, axis=dim, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=dim, keepdims=True)) + m
    return out if keepdim else np.squeeze(out, axis=dim)


@register_impl("cumsum")
def cumsum(x, *, dim):
    return np.cumsum(x, axis=dim) if x.ndim else x.copy()  # NumPy would make a 0-dim input 1-dim


def _logical_reduction(fn, x, dim, keepdim):
    out = fn(x, axis=dim, keepdims=keepdim)
    return out.astype(np.uint8) if x.dtype == np.uint8 else out  # PyTorch keeps uint8 here


@register_impl("all")
def all_(x, *, dim, keepdim):
    return _logical_reduction(np.all, x, dim, keepdim)


@register_impl("any")
def any_(x, *, dim, keepdim):
    return _logical_reduction(np.any, x, dim, keepdim)
