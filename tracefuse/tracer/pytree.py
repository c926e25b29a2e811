"""Flatten nested call arguments and results (tuples, lists, dicts, named tuples such as
PackedSequence) into tensor leaves and a hashable structure spec holding everything else.

Two calls with equal specs differ only in tensor values, so the spec is also the guard on every
non-tensor argument.
"""
from __future__ import annotations

import numpy as np

from ..device import device
from ..dtypes import dtype
from ..tensor import Tensor

TENSOR = "<tensor>"
PLAIN = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis), slice, dtype, device, np.generic)


class Const:
    """A plain Python value in a spec. Specs guard calls, so 1, 1.0 and True differ, and so do
    0.0 and -0.0 (`==` would call them equal and replay a graph traced for the other)."""

    __slots__ = ("value", "key")

    def __init__(self, value):
        self.value, self.key = value, (type(value), repr(value))

    def __eq__(self, other):
        return isinstance(other, Const) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return repr(self.value)


class Opaque:
    """Any other Python object in a spec (a module, a config, a NumPy array): the same object
    replays the graph, another one retraces. What the trace read from it is baked in."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Opaque) and self.value is other.value

    def __hash__(self):
        return id(self.value)

    def __repr__(self):
        return f"<{type(self.value).__name__} at {id(self.value):#x}>"


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def flatten(obj, leaves=None, path="L"):
    """Return (tensor leaves, spec, leaf paths)."""
    leaves = [] if leaves is None else leaves
    paths = []

    def walk(x, where):
        if isinstance(x, Tensor):
            leaves.append(x)
            paths.append(where)
            return TENSOR
        if _is_namedtuple(x):
            return (type(x), tuple(walk(v, f"{where}.{f}") for f, v in zip(x._fields, x)))
        if isinstance(x, (tuple, list)):
            return (type(x), tuple(walk(v, f"{where}[{i}]") for i, v in enumerate(x)))
        if isinstance(x, dict):
            return (dict, tuple((k, walk(v, f"{where}[{k!r}]")) for k, v in x.items()))
        if isinstance(x, PLAIN):
            return ("const", Const(x))
        return ("object", Opaque(x))  # guarded by identity; a graph cannot return it

    spec = walk(obj, path)
    return leaves, spec, paths


def unflatten(spec, leaves):
    """Rebuild the structure of `spec` with `leaves` (an iterator of tensors) in place of tensors."""
    it = iter(leaves)

    def build(s):
        if s == TENSOR:
            return next(it)
        kind, body = s
        if kind in ("const", "object"):
            return body.value
        if kind == dict:
            return {k: build(v) for k, v in body}
        if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
            return kind(*[build(v) for v in body])
        return kind(build(v) for v in body)

    return build(spec)
