"""Tensor factories: tensor(), from_numpy() and the filled, ranged and random constructors."""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import dtypes
from .device import as_device
from .dispatch import dispatch
from .ir.symbolic import SymInt
from .tensor import Tensor, _int, _shape_arg


def _finish(t, requires_grad):
    if requires_grad:
        if not t.dtype.is_floating_point:
            raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")
        t.requires_grad_(True)
    return t


def _is_sequence(x):
    return isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim > 0)


def _leading_sizes(data):
    """The shape nested data claims, read along its first elements (as PyTorch's compute_sizes)."""
    sizes = []
    while _is_sequence(data):
        sizes.append(len(data))
        if not len(data):
            break
        data = data[0]
    return sizes


def _scalar_dtype(x):
    """The dtype PyTorch infers for one element: numpy scalars and tensors keep theirs."""
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return x.dtype
    if isinstance(x, np.generic):
        return dtypes.from_numpy_dtype(x.dtype)
    if isinstance(x, bool):
        return dtypes.bool_
    if isinstance(x, numbers.Integral):
        return dtypes.int64
    if isinstance(x, numbers.Real):
        return dtypes.get_default_dtype()
    if isinstance(x, str):
        raise TypeError(f"new(): invalid data type '{type(x).__name__}'")
    raise RuntimeError(f"Could not infer dtype of {type(x).__name__}")


def _walk(data, sizes, dim, odd):
    """Check nested data against `sizes` and return the promotion of its elements' dtypes (None when
    empty). `odd` collects the elements that only some target dtypes accept: sequences found where a
    number belongs, and numpy scalars that are neither integers nor float64."""
    if dim == len(sizes):
        if _is_sequence(data) or (isinstance(data, np.generic) and not isinstance(data, (np.integer, float))):
            odd.append(data)
        return None if _is_sequence(data) else _scalar_dtype(data)
    if not _is_sequence(data):
        raise TypeError("not a sequence")
    if len(data) != sizes[dim]:
        raise ValueError(f"expected sequence of length {sizes[dim]} at dim {dim} (got {len(data)})")
    if isinstance(data, np.ndarray):
        return dtypes.from_numpy_dtype(data.dtype)
    found = None
    for item in data:
        d = _walk(item, sizes, dim + 1, odd)
        found = d if found is None else found if d is None else dtypes.promote_types(found, d)
    return found


def _check_odd_elements(odd, target):
    """PyTorch reads each element as the target's Python number type: a sequence is no number, and
    numpy floats and bools have no integer value."""
    for x in odd:
        if _is_sequence(x) and target.is_floating_point:
            raise TypeError(f"must be real number, not {type(x).__name__}")
        if not target.is_floating_point and not (isinstance(x, np.bool_) and target is dtypes.bool_):
            name = type(x).__name__ if _is_sequence(x) else f"numpy.{type(x).__name__}"
            raise TypeError(f"'{name}' object cannot be interpreted as an integer")


def _infer_dtype(data, dtype):
    """tensor()'s dtype: `dtype` if given, else PyTorch's inference over the nested data."""
    if isinstance(data, (np.ndarray, Tensor)):
        own = data.dtype if isinstance(data, Tensor) else dtypes.from_numpy_dtype(data.dtype)
        return dtypes.as_dtype(dtype) if dtype is not None else own
    odd = []
    inferred = _walk(data, _leading_sizes(data), 0, odd)
    target = dtypes.as_dtype(dtype) if dtype is not None else inferred or dtypes.get_default_dtype()
    _check_odd_elements(odd, target)
    return target


def _check_range(values, target):
    """Python numbers must fit an integer target (uint8 also takes negatives down to -255, which
    wrap around), as PyTorch checks them."""
    if target.is_floating_point or target is dtypes.bool_ or values.dtype.kind not in "iuf":
        return
    info = np.iinfo(target.np_type)
    low = -info.max if info.min == 0 else info.min
    bad = (values < low) | (values > info.max)
    if values.dtype.kind == "f":
        bad |= np.isnan(values)
    if bad.any():
        raise RuntimeError(f"value cannot be converted to type {target.name} without overflow")


def _to_array(data):
    """Nested data as NumPy can read it (tensors inside lists are one-element scalars)."""
    if isinstance(data, Tensor):
        return data._host_data()
    if isinstance(data, (list, tuple)):
        return [x._host_data().reshape(()) if isinstance(x, Tensor) else _to_array(x) for x in data]
    return data


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False):
    """A new tensor copying `data` (nested lists, scalars, NumPy arrays or tensors)."""
    if isinstance(data, Tensor):
        warnings.warn(
            "To copy construct from a tensor, it is recommended to use sourceTensor.clone().detach() or "
            "sourceTensor.clone().detach().requires_grad_(True), rather than tracefuse.tensor(sourceTensor).",
            UserWarning, stacklevel=2)
    if isinstance(data, SymInt) and data.env.open:  # dynamic=True: a size as a value stays symbolic
        return full((), data, dtype=dtype or dtypes.int64, device=device, requires_grad=requires_grad)
    target = _infer_dtype(data, dtype)
    device = as_device(device)
    if device.type != "cpu":
        from .runtime import devices
        devices.backend(device)
    array = np.asarray(_to_array(data))
    if not isinstance(data, (np.ndarray, Tensor)):
        _check_range(array, target)
    with np.errstate(all="ignore"):
        array = array.astype(target.np_type)
    if device.type != "cpu":
        array = devices.backend(device).from_host(array, device)
    return _finish(Tensor._wrap(array, target, device), requires_grad)


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
    shape = attrs.get("shape", ())
    for n in shape:
        if n < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {n}: {list(shape)}")
    out = dispatch(op, dtype=dtypes.as_dtype(dtype), device=as_device(device), **attrs)
    return _finish(out, requires_grad)


def _fill_dtype(value):
    if isinstance(value, (bool, np.bool_)):
        return dtypes.bool_
    if isinstance(value, numbers.Integral):
        return dtypes.int64
    return dtypes.get_default_dtype()


def full(size, fill_value, *, dtype=None, device=None, requires_grad=False):
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    if not isinstance(fill_value, (numbers.Number, np.generic)):
        raise TypeError(f"full(): argument 'fill_value' (position 2) must be Number, not {type(fill_value).__name__}")
    return _factory("full", dtype or _fill_dtype(fill_value), device, requires_grad,
                    shape=_shape_arg((size,)), value=fill_value)


def _size_arg(name, size):
    if not size:
        raise TypeError(f'{name}() missing 1 required positional arguments: "size"')
    return _shape_arg(size)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    if any(n < 0 for n in _size_arg("zeros", size)):
        raise RuntimeError("zeros: Dimension size must be non-negative.")
    return full(_shape_arg(size), 0, dtype=dtype or dtypes.get_default_dtype(), device=device,
                requires_grad=requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return full(_size_arg("ones", size), 1, dtype=dtype or dtypes.get_default_dtype(), device=device,
                requires_grad=requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    """Zero-filled (NumPy gives no cheaper deterministic memory); PyTorch leaves it uninitialised."""
    return zeros(_size_arg("empty", size), dtype=dtype, device=device, requires_grad=requires_grad)


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError("upper bound and lower bound inconsistent with step sign")
    if dtype is None:
        integral = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = dtypes.int64 if integral else dtypes.get_default_dtype()
    dtype = dtypes.as_dtype(dtype)
    if not dtype.is_floating_point:  # PyTorch truncates the bounds and step to the integer type first
        start, end, step = _int(start), _int(end), _int(step)
        if step == 0:
            raise ValueError("step must be nonzero")
    return _factory("arange", dtype, device, requires_grad, start=start, end=end, step=step)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad=False):
    if steps < 0:
        raise RuntimeError("number of steps must be non-negative")
    return _factory("linspace", dtype or dtypes.get_default_dtype(), device, requires_grad,
                    start=start, end=end, steps=steps)


def eye(n, m=None, *, dtype=None, device=None, requires_grad=False):
    if n < 0:
        raise RuntimeError(f"n must be greater or equal to 0, got {n}")
    if m is not None and m < 0:
        raise RuntimeError(f"m must be greater or equal to 0, got {m}")
    return _factory("eye", dtype or dtypes.get_default_dtype(), device, requires_grad, n=n, m=n if m is None else m)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _factory("rand", dtype or dtypes.get_default_dtype(), device, requires_grad, shape=_size_arg("rand", size))


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    return _factory("randn", dtype or dtypes.get_default_dtype(), device, requires_grad, shape=_size_arg("randn", size))


def randint(low, high=None, size=None, *, dtype=None, device=None, requires_grad=False):
    if size is None and isinstance(high, (tuple, list)):  # randint(high, size)
        low, high, size = 0, low, high
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
        raise RuntimeError(f"Trying to create tensor with negative dimension {n}: [{n}]")
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
