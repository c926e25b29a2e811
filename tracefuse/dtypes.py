"""dtypes: tracefuse's scalar types, their NumPy storage types and PyTorch's promotion rules."""
from __future__ import annotations

import numbers

import numpy as np
import ml_dtypes


class dtype:
    """A tensor element type. Instances are singletons compared by identity, as in PyTorch."""

    __slots__ = ("name", "np_type", "is_floating_point", "is_signed", "category", "itemsize", "_rank")

    def __init__(self, name, np_type, category, rank):
        self.name = name
        self.np_type = np.dtype(np_type)
        self.category = category  # 0 bool, 1 integer, 2 floating
        self.is_floating_point = category == 2
        self.is_signed = name not in ("bool", "uint8")
        self.itemsize = self.np_type.itemsize
        self._rank = rank

    def __repr__(self):
        return f"tracefuse.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


bool_ = dtype("bool", np.bool_, 0, 0)
uint8 = dtype("uint8", np.uint8, 1, 1)
int8 = dtype("int8", np.int8, 1, 2)
int16 = dtype("int16", np.int16, 1, 3)
int32 = dtype("int32", np.int32, 1, 4)
int64 = dtype("int64", np.int64, 1, 5)
float16 = dtype("float16", np.float16, 2, 6)
bfloat16 = dtype("bfloat16", ml_dtypes.bfloat16, 2, 6)
float32 = dtype("float32", np.float32, 2, 7)
float64 = dtype("float64", np.float64, 2, 8)

ALL = (bool_, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64)
_NAMES = {d.name: d for d in ALL}
_NAMES.update(half=float16, float=float32, double=float64, long=int64, int=int32, short=int16)
_FROM_NP = {d.np_type: d for d in ALL}

_default_float = float32


def _by_name(name):
    return _NAMES[name]


def get_default_dtype():
    return _default_float


def set_default_dtype(d):
    global _default_float
    if d not in (float16, bfloat16, float32, float64):
        raise TypeError("only floating-point types are supported as the default type")
    _default_float = d


def from_numpy_dtype(np_dtype) -> dtype:
    """The tracefuse dtype stored as `np_dtype` (TypeError for types PyTorch cannot hold)."""
    found = _FROM_NP.get(np.dtype(np_dtype))
    if found is None:
        raise TypeError(
            f"can't convert np.ndarray of type numpy.{np.dtype(np_dtype).type.__name__}. The only supported types are: "
            "float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, and bool."
        )
    return found


def as_dtype(d) -> dtype:
    """Accept a tracefuse dtype, a NumPy dtype or a Python type and return the tracefuse dtype."""
    if isinstance(d, dtype):
        return d
    if d is float:
        return float64
    if d is int:
        return int64
    if d is bool:
        return bool_
    if isinstance(d, str) and d in _NAMES:
        return _NAMES[d]
    try:
        return from_numpy_dtype(d)
    except TypeError:
        raise TypeError(f"Expected a tracefuse dtype, got {d!r}") from None


def promote_types(a: dtype, b: dtype) -> dtype:
    """PyTorch's promote_types for two tensor dtypes."""
    if a is b:
        return a
    if {a, b} == {float16, bfloat16}:
        return float32
    if a.category != b.category:
        return a if a.category > b.category else b
    if {a, b} == {uint8, int8}:
        return int16
    return a if a._rank >= b._rank else b


def scalar_dtype(value) -> dtype:
    """The dtype PyTorch gives a Python scalar taking part in an operation."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer, numbers.Integral)):  # Integral: a symbolic size (dynamic=True)
        return int64
    if isinstance(value, (float, np.floating)):
        return _default_float
    raise TypeError(f"unsupported scalar type {type(value).__name__}")


def _combine_categories(higher, lower):
    """PyTorch's combine_categories: a lower-priority operand only matters when it is floating
    and the higher one is not (int tensor * 2.5 -> float), or the higher one is bool."""
    if higher is None:
        return lower
    if lower is None or higher.is_floating_point:
        return higher
    if higher is bool_ or lower.is_floating_point:
        return promote_types(higher, lower)
    return higher


def result_type(operands) -> dtype:
    """PyTorch's result_type. `operands` holds (dtype, ndim) pairs for tensors and Python scalars;
    dimensioned tensors outrank 0-dim tensors, which outrank scalars, within a category."""
    tiers = [None, None, None]
    for op in operands:
        if isinstance(op, tuple):
            d, ndim = op
            tier = 0 if ndim else 1
        else:
            d, tier = scalar_dtype(op), 2
        tiers[tier] = d if tiers[tier] is None else promote_types(tiers[tier], d)
    result = _combine_categories(tiers[0], _combine_categories(tiers[1], tiers[2]))
    return result if result is not None else _default_float


def compute_type(d: dtype):
    """The NumPy type arithmetic runs in: half precisions compute in float32 and round once, like PyTorch CPU."""
    if d is float16 or d is bfloat16:
        return np.dtype(np.float32)
    return d.np_type
