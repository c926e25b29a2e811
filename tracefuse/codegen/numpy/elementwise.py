"""Elementwise ops. Inputs arrive already promoted to the compute type (see dispatch)."""
from __future__ import annotations

import math

import numpy as np

from ...ir.ops import register_impl
from .random import generator

_SIMPLE = {
    "neg": np.negative, "abs": np.abs, "floor": np.floor, "ceil": np.ceil,
    "round": np.round, "trunc": np.trunc, "exp": np.exp, "expm1": np.expm1, "log": np.log,
    "log1p": np.log1p, "log2": np.log2, "sqrt": np.sqrt, "sin": np.sin, "cos": np.cos,
    "tanh": np.tanh, "reciprocal": np.reciprocal, "add": np.add, "sub": np.subtract,
    "mul": np.multiply, "div": np.divide, "maximum": np.maximum, "minimum": np.minimum,
    "atan2": np.arctan2, "eq": np.equal, "ne": np.not_equal, "lt": np.less,
    "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
    "logical_not": np.logical_not, "isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite,
}


for _name, _fn in _SIMPLE.items():
    register_impl(_name)(_fn)


@register_impl("sign")
def sign(x):
    if x.dtype == np.bool_:
        return x.copy()
    out = np.sign(x)
    return np.where(np.isnan(out), 0, out).astype(x.dtype, copy=False) if x.dtype.kind == "f" else out  # sign(nan) = 0


def _check_integer_divisor(x, y):
    if x.dtype.kind in "iub" and np.any(np.asarray(y) == 0):
        raise RuntimeError("ZeroDivisionError")


@register_impl("remainder")
def remainder(x, y):
    _check_integer_divisor(x, y)
    return np.mod(x, y)


@register_impl("relu")
def relu(x):
    return np.where(x < 0, 0, x).astype(x.dtype, copy=False)  # keeps -0.0 and nan, as PyTorch


@register_impl("rsqrt")
def rsqrt(x):
    return 1.0 / np.sqrt(x)


@register_impl("sigmoid")
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_erf = np.frompyfunc(math.erf, 1, 1)


@register_impl("erf")
def erf(x):
    return np.asarray(_erf(x)).astype(x.dtype)  # a 0-dim input gives a Python float


@register_impl("gelu")
def gelu(x, *, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@register_impl("leaky_relu")
def leaky_relu(x, *, negative_slope):
    return np.where(x > 0, x, x * negative_slope).astype(x.dtype, copy=False)


@register_impl("elu")
def elu(x, *, alpha):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False)


@register_impl("softplus")
def softplus(x, *, beta, threshold):
    bx = beta * x
    return np.where(bx > threshold, x, np.log1p(np.exp(np.minimum(bx, threshold))) / beta).astype(x.dtype, copy=False)


@register_impl("pow")
def pow_(x, y):
    if x.dtype.kind in "iu" and np.any(y < 0):
        raise RuntimeError("Integers to negative integer powers are not allowed.")
    return np.power(x, y)


@register_impl("div_mode")
def div_mode(x, y, *, rounding_mode):
    _check_integer_divisor(x, y)
    if x.dtype.kind in "iu":
        q = np.floor_divide(x, y)
        if rounding_mode == "trunc":
            q = q + ((np.mod(x, y) != 0) & ((x < 0) != (y < 0)))
        return q.astype(x.dtype, copy=False)
    return np.floor_divide(x, y) if rounding_mode == "floor" else np.trunc(np.divide(x, y))  # Python's // for floor


@register_impl("cast")
def cast(x, *, dtype):
    return x.astype(dtype.np_type)


@register_impl("where")
def where(cond, x, y):
    return np.where(cond, x, y)


@register_impl("clamp")
def clamp(x, *, min, max):
    out = x
    if min is not None:
        out = np.maximum(out, np.asarray(min, dtype=x.dtype))
    if max is not None:
        out = np.minimum(out, np.asarray(max, dtype=x.dtype))
    return out


@register_impl("masked_fill")
def masked_fill(x, mask, *, value):
    return np.where(mask, np.asarray(value).astype(x.dtype), x)


@register_impl("dropout")
def dropout(x, *, p):
    keep = generator().random(x.shape) >= p
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    return x * keep * np.asarray(scale, dtype=x.dtype), keep


@register_impl("matmul")
def matmul(x, y):
    return np.matmul(x, y)
