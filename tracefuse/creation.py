"""Tensor factories: tensor(), from_numpy() and the filled, ranged and random constructors."""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import dtypes
from .device import as_device
from .dispatch import dispatch
from .tensor import Tensor, _shape_arg


def _finish(t, requires_grad):
    if requires_grad:
        t.requires_grad_(True)
    return t


def _python_dtype(data, depth=0):
    """The dtype PyTorch infers for nested Python data; validates element types and raggedness."""
    if isinstance(data, Tensor):
        if data.numel() != 1 and depth:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return data.dtype
    if isinstance(data, np.ndarray):
        return dtypes.from_numpy_dtype(data.dtype)
    if isinstance(data, (bool, np.bool_)):
        return dtypes.bool_
    if isinstance(data, (numbers.Integral,)):
        return dtypes.int64
    if isinstance(data, numbers.Real):
        return dtypes.get_default_dtype()
    if isinstance(data, (list, tuple)):
        found = None
        for item in data:
            d = _python_dtype(item, depth + 1)
            found = d if found is None else _promote_python(found, d)
        return found
    raise TypeError(f"new(): invalid data type '{type(data).__name__}'")


def _promote_python(a, b):
    if a.is_floating_point or b.is_floating_point:
        return a if a.is_floating_point and (not b.is_floating_point or a._rank >= b._rank) else b
    return dtypes.promote_types(a, b)


def _check_ragged(data, dim=0):
    if isinstance(data, (list, tuple)) and data:
        lengths = {len(x) if isinstance(x, (list, tuple)) else None for x in data}
        if len(lengths) > 1:
            first = len(data[0]) if isinstance(data[0], (list, tuple)) else None
            for x in data:
                n = len(x) if isinstance(x, (list, tuple)) else None
                if n != first:
                    if first is None or n is None:
                        raise ValueError(f"expected sequence of length {first} at dim {dim + 1} (got {n})"
                                         if first is not None else "setting an array element with a sequence.")
                    raise ValueError(f"expected sequence of length {first} at dim {dim + 1} (got {n})")
        for x in data:
            _check_ragged(x, dim + 1)


def _to_array(data):
    if isinstance(data, Tensor):
        return data._data
    if isinstance(data, (list, tuple)):
        return [_to_array(x) if isinstance(x, (list, tuple, Tensor)) else x for x in data]
    return data


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    """A new tensor copying `data` (nested lists, scalars, NumPy arrays or tensors)."""
    if isinstance(data, Tensor):
        warnings.warn(
            "To copy construct from a tensor, it is recommended to use sourceTensor.clone().detach() or "
            "sourceTensor.clone().detach().requires_grad_(True), rather than tracefuse.tensor(sourceTensor).",
            UserWarning, stacklevel=2)
    inferred = _python_dtype(data)
    _check_ragged(data)
    target = dtypes.as_dtype(dtype) if dtype is not None else (inferred or dtypes.get_default_dtype())
    array = np.array(_to_array(data), dtype=target.np_type if not isinstance(data, (list, tuple)) or data else None)
    if array.dtype != target.np_type:
        array = array.astype(target.np_type)
    device = as_device(device)
    if device.type != "cpu":
        from .runtime import devices
        devices.backend(device)
    return _finish(Tensor._wrap(np.array(array, copy=True), target, device), requires_grad)


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor) and (dtype is None or data.dtype is dtype):
        return data
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(array):
    """A tensor sharing memory with `array` (writes to either show in both)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    return Tensor._wrap(array, dtypes.from_numpy_dtype(array.dtype))


def _factory(op, dtype, device, requires_grad, **attrs):
    out = dispatch(op, dtype=dtypes.as_dtype(dtype), device=as_device(device), **attrs)
    return _finish(out, requires_grad)


def _fill_dtype(value):
    if isinstance(value, (bool, np.bool_)):
        return dtypes.bool_
    if isinstance(value, numbers.Integral):
        return dtypes.int64
    return dtypes.get_default_dtype()


def full(size, fill_value, *, dtype=None, device=None, requires_grad=False):
    return _factory("full", dtype or _fill_dtype(fill_value), device, requires_grad,
                    shape=_shape_arg((size,)), value=fill_value)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return full(_shape_arg(size), 0, dtype=dtype or dtypes.get_default_dtype(), device=device,
                requires_grad=requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return full(_shape_arg(size), 1, dtype=dtype or dtypes.get_default_dtype(), device=device,
                requires_grad=requires_grad)


empty = zeros


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError("upper bound and larger bound inconsistent with step sign")
    if dtype is None:
        integral = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = dtypes.int64 if integral else dtypes.get_default_dtype()
    return _factory("arange", dtype, device, requires_grad, start=start, end=end, step=step)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad=False):
    if steps < 0:
        raise RuntimeError("number of steps must be non-negative")
    return _factory("linspace", dtype or dtypes.get_default_dtype(), device, requires_grad,
                    start=start, end=end, steps=steps)


def eye(n, m=None, *, dtype=None, device=None, requires_grad=False):
    if n < 0 or (m is not None and m < 0):
        raise RuntimeError(f"n must be greater or equal to 0, got {n}")
    return _factory("eye", dtype or dtypes.get_default_dtype(), device, requires_grad, n=n, m=n if m is None else m)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _factory("rand", dtype or dtypes.get_default_dtype(), device, requires_grad, shape=_shape_arg(size))


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _factory("randn", dtype or dtypes.get_default_dtype(), device, requires_grad, shape=_shape_arg(size))


def randint(low, high=None, size=None, *, dtype=None, device=None, requires_grad=False):
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing required argument 'size'")
    if low >= high:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    return _factory("randint", dtype or dtypes.int64, device, requires_grad, low=low, high=high,
                    shape=_shape_arg((size,)))


def randperm(n, *, dtype=None, device=None, requires_grad=False):
    if n < 0:
        raise RuntimeError(f"n must be non-negative, got{n}")
    return _factory("randperm", dtype or dtypes.int64, device, requires_grad, n=n)


def _like(fn, t, dtype, device, requires_grad, *args):
    return fn(*args, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def zeros_like(input, *, dtype=None, device=None, requires_grad=False):
    return _like(full, input, dtype, device, requires_grad, input.shape, 0)


def ones_like(input, *, dtype=None, device=None, requires_grad=False):
    return _like(full, input, dtype, device, requires_grad, input.shape, 1)


empty_like = zeros_like


def full_like(input, fill_value, *, dtype=None, device=None, requires_grad=False):
    return _like(full, input, dtype, device, requires_grad, input.shape, fill_value)


def rand_like(input, *, dtype=None, device=None, requires_grad=False):
    return _like(rand, input, dtype, device, requires_grad, input.shape)


def randn_like(input, *, dtype=None, device=None, requires_grad=False):
    return _like(randn, input, dtype, device, requires_grad, input.shape)
