"""Tensor: shape, dtype, device, storage (a NumPy array on the CPU) and autograd fields.

Every method that computes goes through `dispatch`; this module only normalises arguments the
way PyTorch does (dims, shapes, index keys, scalars), raises PyTorch's errors for bad ones and
implements in-place updates with version counters.
"""
from __future__ import annotations

import collections
import numbers
import warnings

import numpy as np

from . import autograd, dtypes
from ._tensor_str import tensor_repr
from .device import CPU, as_device
from .dispatch import dispatch
from .ir.ops import TensorSlot


class Size(tuple):
    """A tensor's shape: a tuple that prints as `tracefuse.Size([2, 3])`."""

    def __repr__(self):
        return f"tracefuse.Size({list(self)})"

    def numel(self):
        return int(np.prod(self, dtype=np.int64))


class VersionCounter:
    """Bumped by every in-place write; shared by a tensor and its views."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def bump(self):
        self.value += 1


_TYPE_NAMES = {"float32": "Float", "float64": "Double", "float16": "Half", "bfloat16": "BFloat16",
               "int64": "Long", "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte",
               "bool": "Bool"}

values_indices = collections.namedtuple("return_types", ["values", "indices"])


def _normalize_dim(dim, ndim):
    """A dim in [-ndim, ndim) as a non-negative axis (0-dim tensors accept -1 and 0)."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    lo, hi = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not lo <= dim <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], but got {dim})")
    return int(dim) % max(ndim, 1)


def _normalize_dims(dim, ndim):
    """A reduction's dim argument as a sorted tuple of axes, or None for all of them."""
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    if len(dims) == 0:
        return None
    axes = tuple(sorted(_normalize_dim(d, ndim) for d in dims)) if ndim else ()
    if len(set(axes)) != len(axes):
        raise RuntimeError(f"dim {dims[0]} appears multiple times in the list of dims")
    return axes


def _shape_arg(args):
    """Accept f(2, 3), f((2, 3)), f([2, 3]) and f(Size) alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return tuple(int(a) for a in args)


def broadcast_shapes(*shapes):
    """The broadcast of `shapes`, with PyTorch's error when they don't broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i, n in enumerate(shape, start=ndim - len(shape)):
            if n != 1:
                if out[i] != 1 and out[i] != n:
                    a, b = out[i], n
                    raise RuntimeError(
                        f"The size of tensor a ({a}) must match the size of tensor b ({b}) "
                        f"at non-singleton dimension {i}"
                    )
                out[i] = n
    return Size(out)


def _can_cast(src: dtypes.dtype, dst: dtypes.dtype) -> bool:
    """PyTorch's can_cast for in-place results: never float -> integral, never to bool."""
    return src.category <= dst.category


class Tensor:
    """An n-dimensional array with autograd, in the image of torch.Tensor."""

    __module__ = "tracefuse"
    __array_priority__ = 1000  # make `ndarray + tensor` defer to Tensor.__radd__

    def __init__(self, *args, **kwargs):
        raise TypeError("Use tracefuse.tensor(data), tracefuse.zeros(...) and friends to create tensors")

    @classmethod
    def _wrap(cls, array, dtype, device=CPU, requires_grad=False):
        t = object.__new__(cls)
        t._data = array
        t._dtype = dtype
        t._device = device
        t._requires_grad = requires_grad
        t._grad = None
        t.grad_fn = None
        t._output_nr = 0
        t._version = VersionCounter()
        t._base = None
        t._accumulator_node = None
        t._retains_grad = False
        return t

    # --- metadata ----------------------------------------------------------------------------
    @property
    def shape(self) -> Size:
        return Size(self._data.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self._data.shape[_normalize_dim(dim, self.ndim)]

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def is_cuda(self):
        return self._device.type == "cuda"

    @property
    def ndim(self):
        return self._data.ndim

    def dim(self):
        return self._data.ndim

    def numel(self):
        return int(self._data.size)

    nelement = numel

    def element_size(self):
        return self._dtype.itemsize

    def stride(self, dim=None):
        strides = tuple(s // self._dtype.itemsize for s in self._data.strides)
        return strides if dim is None else strides[_normalize_dim(dim, self.ndim)]

    def is_contiguous(self):
        return bool(self._data.flags.c_contiguous)

    def is_floating_point(self):
        return self._dtype.is_floating_point

    def type(self, dtype=None):
        if dtype is None:
            return self._type_string()
        return self.to(dtypes.as_dtype(dtype))

    def _type_string(self):
        return f"tracefuse.{_TYPE_NAMES[self._dtype.name]}Tensor"

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __hash__(self):
        return id(self)

    def __repr__(self):
        grad_fn = self.grad_fn.name() if self.grad_fn is not None else None
        return tensor_repr(self._data, self._dtype.name, default_float=dtypes.get_default_dtype().name,
                           device=str(self._device), requires_grad=self.requires_grad, grad_fn_name=grad_fn)

    # --- autograd fields ---------------------------------------------------------------------
    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = bool(value)
        if self.grad_fn is not None:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use a computed "
                "variable in a subgraph that doesn't require differentiation use var_no_grad = var.detach()."
            )
        if value and not self._dtype.is_floating_point:
            raise RuntimeError("only Tensors of floating point and complex dtype can require gradients")
        self._requires_grad = value

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def grad(self):
        if self.grad_fn is not None and not self._retains_grad:
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its .grad "
                "attribute won't be populated during autograd.backward(). If you indeed want the .grad "
                "field to be populated for a non-leaf Tensor, use .retain_grad() on the non-leaf Tensor.",
                UserWarning, stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type {type(value).__name__}")
            if value.shape != self.shape:
                raise RuntimeError("assigned grad has data of a different size")
            if value.dtype is not self.dtype:
                raise RuntimeError("assigned grad has data of a different type")
        self._grad = value

    def _accumulator(self):
        if self._accumulator_node is None:
            self._accumulator_node = autograd.AccumulateGrad(self)
        return self._accumulator_node

    def backward(self, gradient=None, retain_graph=None, create_graph=False):
        autograd.backward(self, gradient, retain_graph, create_graph)

    def register_hook(self, hook):
        """`hook(grad)` runs when this tensor's gradient is computed; it may return a replacement."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        node, nr = autograd.gradient_edge(self)
        return node._add_tensor_hook(nr, hook)

    def retain_grad(self):
        if self.grad_fn is None or self._retains_grad:
            return
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        self._retains_grad = True

        def keep(g):
            self._grad = g.detach() if self._grad is None else self._grad + g.detach()

        self.register_hook(keep)

    @property
    def retains_grad(self):
        return self._retains_grad

    def detach(self):
        t = Tensor._wrap(self._data, self._dtype, self._device)
        t._version = self._version
        t._base = self._base if self._base is not None else self
        return t

    def detach_(self):
        if self._base is not None and self._base.requires_grad:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        self.grad_fn = None
        self._requires_grad = False
        return self

    def _alias(self):
        """A new tensor object on the same storage and version counter (custom Function outputs)."""
        return self.detach()

    @property
    def data(self):
        return Tensor._wrap(self._data, self._dtype, self._device)

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be a Tensor, got {type(value).__name__}")
        self._data, self._dtype, self._device = value._data, value._dtype, value._device

    # --- conversion --------------------------------------------------------------------------
    def item(self):
        if self.numel() != 1:
            raise RuntimeError(f"a Tensor with {self.numel()} elements cannot be converted to Scalar")
        return self._data.reshape(()).astype(self._host_type()).item()

    def _host_type(self):
        """The NumPy type Python values are read through (bfloat16 via float32)."""
        return np.float32 if self._dtype is dtypes.bfloat16 else self._data.dtype

    def tolist(self):
        return self._data.astype(self._host_type()).tolist()

    def numpy(self, force=False):
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if self._device.type != "cpu" and not force:
            raise TypeError(
                f"can't convert {self._device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                "tensor to host memory first."
            )
        return self._data

    def __array__(self, dtype=None, copy=None):
        return self._data if dtype is None else self._data.astype(dtype)

    def __bool__(self):
        if self.numel() != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self._dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def to(self, *args, **kwargs):
        """to(dtype), to(device), to(device, dtype), to(other); returns self when nothing changes."""
        device, dtype = self._device, self._dtype
        copy = kwargs.pop("copy", False)
        kwargs.pop("non_blocking", None)
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, dtypes.dtype):
                dtype = a
            elif a is not None:
                device = as_device(a)
        out = self
        if dtype is not self._dtype:
            out = dispatch("cast", out, dtype=dtype)
        if device != self._device:
            from .runtime import devices

            devices.backend(device)  # raises while no GPU runtime is present
        if copy and out is self:
            out = self.clone()
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None, non_blocking=False):
        return self.to(as_device("cuda" if device is None else device if not isinstance(device, int) else f"cuda:{device}"))

    def float(self):
        return self.to(dtypes.float32)

    def double(self):
        return self.to(dtypes.float64)

    def half(self):
        return self.to(dtypes.float16)

    def bfloat16(self):
        return self.to(dtypes.bfloat16)

    def long(self):
        return self.to(dtypes.int64)

    def int(self):
        return self.to(dtypes.int32)

    def bool(self):
        return self.to(dtypes.bool_)

    def type_as(self, other):
        return self.to(other.dtype)

    def clone(self, memory_format=None):
        return dispatch("clone", self)

    def contiguous(self, memory_format=None):
        return self if self.is_contiguous() else dispatch("clone", self)

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
        from .creation import tensor
        return tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False):
        return self.new_full(_shape_arg(size), 0, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False):
        return self.new_full(_shape_arg(size), 1, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False):
        return self.new_full(_shape_arg(size), 0, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, device=None, requires_grad=False):
        from .creation import full
        return full(size, fill_value, dtype=dtype or self.dtype, device=device or self.device,
                    requires_grad=requires_grad)

    # --- in-place updates --------------------------------------------------------------------
    def _check_inplace(self):
        if autograd.is_grad_enabled():
            if self.is_leaf and self.requires_grad:
                raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
            base = self._base
            if base is not None and base.is_leaf and base.requires_grad:
                raise RuntimeError(
                    "a view of a leaf Variable that requires grad is being used in an in-place operation."
                )

    def _records(self, *others):
        return autograd.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                                  for t in (self,) + others)

    def _inplace(self, op, *args, **attrs):
        """Apply `op(self, *args)` and write the result into this tensor's storage."""
        self._check_inplace()
        # Ops that save `self` for backward must see its value before the write.
        src = self._snapshot() if self._records(*args) else self
        return self._assign(dispatch(op, src, *args, **attrs))

    def _snapshot(self):
        t = Tensor._wrap(self._data.copy(), self._dtype, self._device, self._requires_grad)
        t.grad_fn, t._output_nr = self.grad_fn, self._output_nr
        if self.grad_fn is None and self._requires_grad:
            t._accumulator_node = self._accumulator()
        return t

    def _assign(self, result):
        """Write `result` (broadcast, cast) into this tensor and take over its autograd history."""
        if not _can_cast(result.dtype, self._dtype):
            raise RuntimeError(
                f"result type {_TYPE_NAMES[result.dtype.name]} can't be cast to the desired output type "
                f"{_TYPE_NAMES[self._dtype.name]}"
            )
        if result.shape != self.shape:
            broadcast = broadcast_shapes(self.shape, result.shape)
            if broadcast != self.shape:
                raise RuntimeError(
                    f"output with shape {list(self.shape)} doesn't match the broadcast shape {list(broadcast)}"
                )
        np.copyto(self._data, result._data, casting="unsafe")
        self._version.bump()
        if result.requires_grad and autograd.is_grad_enabled():
            if result.dtype is not self._dtype or result.shape != self.shape:
                result = dispatch("expand", result.to(self._dtype), shape=tuple(self.shape))
            self.grad_fn, self._output_nr, self._requires_grad = result.grad_fn, result._output_nr, True
        return self

    def copy_(self, src, non_blocking=False):
        self._check_inplace()
        if not isinstance(src, Tensor):
            raise TypeError(f"copy_(): argument 'src' must be Tensor, not {type(src).__name__}")
        if src.device != self.device:
            from .runtime import devices
            devices.backend(src.device if src.device.type != "cpu" else self.device)
        value = src.to(self._dtype)
        return self._assign(value if value is not src else dispatch("clone", src))

    def fill_(self, value):
        self._check_inplace()
        if isinstance(value, Tensor):
            value = value.item()
        from .creation import full
        return self._assign(full(self.shape, value, dtype=self._dtype, device=self._device))

    def zero_(self):
        return self.fill_(0)

    def add_(self, other, *, alpha=1):
        return self._inplace("add", _scaled(other, alpha))

    def sub_(self, other, *, alpha=1):
        return self._inplace("sub", _scaled(other, alpha))

    def mul_(self, other):
        return self._inplace("mul", other)

    def div_(self, other, *, rounding_mode=None):
        if rounding_mode is not None:
            return self._inplace("div_mode", other, rounding_mode=rounding_mode)
        return self._inplace("div", other)

    def pow_(self, exponent):
        return self._inplace("pow", exponent)

    def clamp_(self, min=None, max=None):
        return self._inplace("clamp", min=min, max=max)

    clip_ = clamp_

    def masked_fill_(self, mask, value):
        self._check_inplace()
        src = self._snapshot() if self._records(value) else self
        return self._assign(src.masked_fill(mask, value))

    def uniform_(self, a=0.0, b=1.0):
        from .creation import rand
        with autograd.no_grad():
            return self._assign_noise(rand(self.shape, dtype=dtypes.float64) * (b - a) + a)

    def normal_(self, mean=0.0, std=1.0):
        from .creation import randn
        with autograd.no_grad():
            return self._assign_noise(randn(self.shape, dtype=dtypes.float64) * std + mean)

    def _assign_noise(self, values):
        self._check_inplace()
        np.copyto(self._data, values._data, casting="unsafe")
        self._version.bump()
        return self

    def __setitem__(self, key, value):
        self._check_inplace()
        index, tensors = _index_key(key, self)
        if not isinstance(value, Tensor):
            from .creation import tensor
            value = tensor(value, dtype=self._dtype, device=self._device)
        src = self._snapshot() if self._records(value) else self
        self._assign(dispatch("index_put", src, value.to(self._dtype), *tensors, index=index, accumulate=False))

    # --- arithmetic --------------------------------------------------------------------------
    def _binary(self, op, other, reverse=False):
        if not isinstance(other, (Tensor, numbers.Number, np.ndarray, np.generic)):
            return NotImplemented
        if isinstance(other, np.ndarray):
            from .creation import tensor
            other = tensor(other, device=self.device)
        elif isinstance(other, np.generic):
            other = other.item()
        a, b = (other, self) if reverse else (self, other)
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            broadcast_shapes(a.shape, b.shape)
        return dispatch(op, a, b)

    def __add__(self, other):
        return self._binary("add", other)

    def __radd__(self, other):
        return self._binary("add", other, reverse=True)

    def __sub__(self, other):
        return self._binary("sub", other)

    def __rsub__(self, other):
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other):
        return self._binary("mul", other)

    def __rmul__(self, other):
        return self._binary("mul", other, reverse=True)

    def __truediv__(self, other):
        return self._binary("div", other)

    def __rtruediv__(self, other):
        return self._binary("div", other, reverse=True)

    def __floordiv__(self, other):
        return self.div(other, rounding_mode="floor")

    def __mod__(self, other):
        return self._binary("remainder", other)

    def __pow__(self, other):
        return self._binary("pow", other)

    def __rpow__(self, other):
        return self._binary("pow", other, reverse=True)

    def __matmul__(self, other):
        return self.matmul(other)

    def __rmatmul__(self, other):
        from .creation import tensor
        return tensor(other).matmul(self)

    def __neg__(self):
        return dispatch("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return dispatch("abs", self)

    def __invert__(self):
        if self._dtype is not dtypes.bool_:
            raise RuntimeError("bitwise not is only supported for bool tensors in tracefuse")
        return dispatch("logical_not", self)

    def __and__(self, other):
        return self.logical_and(other)

    def __or__(self, other):
        return self.logical_or(other)

    def __xor__(self, other):
        return self.logical_xor(other)

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_

    def __eq__(self, other):
        return self._binary("eq", other)

    def __ne__(self, other):
        return self._binary("ne", other)

    def __lt__(self, other):
        return self._binary("lt", other)

    def __le__(self, other):
        return self._binary("le", other)

    def __gt__(self, other):
        return self._binary("gt", other)

    def __ge__(self, other):
        return self._binary("ge", other)

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__

    def add(self, other, *, alpha=1):
        return self._binary("add", _scaled(other, alpha))

    def sub(self, other, *, alpha=1):
        return self._binary("sub", _scaled(other, alpha))

    def mul(self, other):
        return self._binary("mul", other)

    def div(self, other, *, rounding_mode=None):
        if rounding_mode is None:
            return self._binary("div", other)
        if rounding_mode not in ("trunc", "floor"):
            raise ValueError(
                f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{rounding_mode}'"
            )
        return dispatch("div_mode", self, other, rounding_mode=rounding_mode)

    true_divide = divide = div
    multiply = mul
    subtract = sub

    def pow(self, exponent):
        return self._binary("pow", exponent)

    def remainder(self, other):
        return self._binary("remainder", other)

    def maximum(self, other):
        return self._binary("maximum", other)

    def minimum(self, other):
        return self._binary("minimum", other)

    def atan2(self, other):
        return self._binary("atan2", other)

    def logical_and(self, other):
        return self._binary("logical_and", other)

    def logical_or(self, other):
        return self._binary("logical_or", other)

    def logical_xor(self, other):
        return self._binary("logical_xor", other)

    def logical_not(self):
        return dispatch("logical_not", self)

    def equal(self, other):
        return self.shape == other.shape and bool(np.array_equal(self._data, other._data))

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        return bool(np.allclose(self._data, other._data, rtol=rtol, atol=atol, equal_nan=equal_nan))

    def isclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        from .creation import tensor
        return tensor(np.isclose(self._data, other._data, rtol=rtol, atol=atol, equal_nan=equal_nan))

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            out = self
            if min is not None:
                out = out.maximum(min)
            if max is not None:
                out = out.minimum(max)
            return out
        return dispatch("clamp", self, min=min, max=max)

    clip = clamp

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def where(self, condition, other):
        from .functions import where
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        if not isinstance(mask, Tensor) or mask.dtype is not dtypes.bool_:
            raise RuntimeError(
                f"masked_fill_ only supports boolean masks, but got mask with dtype "
                f"{mask.dtype.name if isinstance(mask, Tensor) else type(mask).__name__}"
            )
        broadcast_shapes(self.shape, mask.shape)
        if isinstance(value, Tensor):
            if value.ndim != 0:
                raise RuntimeError(
                    f"masked_fill_ only supports a 0-dimensional value tensor, but got tensor with "
                    f"{value.ndim} dimension(s)."
                )
            from .functions import where
            return where(mask, value.to(self.dtype), self)
        return dispatch("masked_fill", self, mask, value=value)

    def lerp(self, end, weight):
        return self + (end - self) * weight

    # --- unary math --------------------------------------------------------------------------
    def _unary(self, op, **attrs):
        return dispatch(op, self, **attrs)

    def exp(self): return self._unary("exp")
    def expm1(self): return self._unary("expm1")
    def log(self): return self._unary("log")
    def log1p(self): return self._unary("log1p")
    def log2(self): return self._unary("log2")
    def sqrt(self): return self._unary("sqrt")
    def rsqrt(self): return self._unary("rsqrt")
    def abs(self): return self._unary("abs")
    def neg(self): return self._unary("neg")
    negative = neg
    def sign(self): return self._unary("sign")
    def sin(self): return self._unary("sin")
    def cos(self): return self._unary("cos")
    def sigmoid(self): return self._unary("sigmoid")
    def tanh(self): return self._unary("tanh")
    def relu(self): return self._unary("relu")
    def erf(self): return self._unary("erf")
    def reciprocal(self): return self._unary("reciprocal")
    def floor(self): return self._unary("floor")
    def ceil(self): return self._unary("ceil")
    def round(self): return self._unary("round")
    def trunc(self): return self._unary("trunc")
    def square(self): return self * self
    def isnan(self): return self._unary("isnan")
    def isinf(self): return self._unary("isinf")
    def isfinite(self): return self._unary("isfinite")

    def exp_(self): return self._inplace("exp")
    def log_(self): return self._inplace("log")
    def sqrt_(self): return self._inplace("sqrt")
    def abs_(self): return self._inplace("abs")
    def neg_(self): return self._inplace("neg")
    def sigmoid_(self): return self._inplace("sigmoid")
    def tanh_(self): return self._inplace("tanh")
    def relu_(self): return self._inplace("relu")

    # --- reductions --------------------------------------------------------------------------
    def _reduce(self, op, dim, keepdim, **attrs):
        return dispatch(op, self, dim=_normalize_dims(dim, self.ndim), keepdim=keepdim, **attrs)

    def sum(self, dim=None, keepdim=False, dtype=None):
        src = self if dtype is None else self.to(dtype)
        return src._reduce("sum", dim, keepdim)

    def prod(self, dim=None, keepdim=False, dtype=None):
        src = self if dtype is None else self.to(dtype)
        return src._reduce("prod", dim, keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None):
        src = self if dtype is None else self.to(dtype)
        if not src.dtype.is_floating_point:
            raise RuntimeError(
                "mean(): could not infer output dtype. Input dtype must be either a floating point or "
                f"complex dtype. Got: {_TYPE_NAMES[src.dtype.name]}"
            )
        return src._reduce("mean", dim, keepdim)

    def amax(self, dim=(), keepdim=False):
        return self._reduce("amax", dim, keepdim)

    def amin(self, dim=(), keepdim=False):
        return self._reduce("amin", dim, keepdim)

    def _extreme(self, op_all, op_dim, op_binary, dim, keepdim):
        if isinstance(dim, Tensor):
            return self._binary(op_binary, dim)
        if dim is None:
            if self.numel() == 0:
                raise RuntimeError(
                    f"{op_all[1:]}(): Expected reduction dim to be specified for input.numel() == 0. "
                    "Specify the reduction dim with the 'dim' argument."
                )
            return self._reduce(op_all, None, False)
        values, indices = dispatch(op_dim, self, dim=_normalize_dim(dim, self.ndim), keepdim=keepdim)
        return values_indices(values, indices)

    def max(self, dim=None, keepdim=False):
        return self._extreme("amax", "max_dim", "maximum", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return self._extreme("amin", "min_dim", "minimum", dim, keepdim)

    def argmax(self, dim=None, keepdim=False):
        axis = None if dim is None else _normalize_dim(dim, self.ndim)
        return dispatch("argmax", self, dim=axis, keepdim=keepdim and axis is not None)

    def argmin(self, dim=None, keepdim=False):
        axis = None if dim is None else _normalize_dim(dim, self.ndim)
        return dispatch("argmin", self, dim=axis, keepdim=keepdim and axis is not None)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        correction = _correction(unbiased, correction)
        return self._reduce("var", dim, keepdim, correction=correction)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def norm(self, p="fro", dim=None, keepdim=False, dtype=None):
        if p == "fro":
            p = 2
        if isinstance(p, str):
            raise RuntimeError(f"norm(): unsupported norm type '{p}'")
        src = self if dtype is None else self.to(dtype)
        if not src.dtype.is_floating_point:
            raise RuntimeError(
                f"linalg.vector_norm: Expected a floating point or complex tensor as input. Got {_TYPE_NAMES[src.dtype.name]}"
            )
        return src._reduce("norm", dim, keepdim, p=float(p))

    def logsumexp(self, dim, keepdim=False):
        src = self if self.dtype.is_floating_point else self.to(dtypes.get_default_dtype())
        return src._reduce("logsumexp", dim, keepdim)

    def cumsum(self, dim, dtype=None):
        src = self if dtype is None else self.to(dtype)
        return dispatch("cumsum", src, dim=_normalize_dim(dim, self.ndim))

    def all(self, dim=None, keepdim=False):
        return self._reduce("all", dim, keepdim)

    def any(self, dim=None, keepdim=False):
        return self._reduce("any", dim, keepdim)

    # --- matmul ------------------------------------------------------------------------------
    def matmul(self, other):
        _check_matmul(self, other)
        return dispatch("matmul", self, other)

    def mm(self, other):
        if self.ndim != 2:
            raise RuntimeError("self must be a matrix")
        if other.ndim != 2:
            raise RuntimeError("mat2 must be a matrix")
        return self.matmul(other)

    def bmm(self, other):
        if self.ndim != 3:
            raise RuntimeError("batch1 must be a 3D tensor")
        if other.ndim != 3:
            raise RuntimeError("batch2 must be a 3D tensor")
        if self.shape[0] != other.shape[0]:
            raise RuntimeError("batch1 and batch2 must have same number of batches, got "
                               f"{self.shape[0]} and {other.shape[0]}")
        return self.matmul(other)

    def mv(self, vec):
        return self.matmul(vec)

    def dot(self, other):
        return self.matmul(other)

    # --- shape and movement ------------------------------------------------------------------
    def _infer_shape(self, shape):
        shape = list(shape)
        n = self.numel()
        if shape.count(-1) > 1:
            raise RuntimeError("only one dimension can be inferred")
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if -1 in shape:
            if known == 0 or n % known:
                raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
            shape[shape.index(-1)] = n // known
        elif known != n:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        for s in shape:
            if s < 0:
                raise RuntimeError(f"invalid shape dimension {s}")
        return tuple(shape)

    def reshape(self, *shape):
        return dispatch("reshape", self, shape=self._infer_shape(_shape_arg(shape)))

    def view(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], dtypes.dtype):
            raise RuntimeError("view(dtype) is not supported by tracefuse")
        target = self._infer_shape(_shape_arg(shape))
        try:
            np.reshape(self._data, target, copy=False)
        except ValueError:
            raise RuntimeError(
                "view size is not compatible with input tensor's size and stride (at least one dimension "
                "spans across two contiguous subspaces). Use .reshape(...) instead."
            ) from None
        return dispatch("reshape", self, shape=target)

    def view_as(self, other):
        return self.view(other.shape)

    def reshape_as(self, other):
        return self.reshape(other.shape)

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _normalize_dim(start_dim, self.ndim), _normalize_dim(end_dim, self.ndim)
        if s > e:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        shape = self.shape
        return self.reshape(shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:])

    def unflatten(self, dim, sizes):
        d = _normalize_dim(dim, self.ndim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1:])

    def squeeze(self, dim=None):
        if dim is None:
            shape = tuple(s for s in self.shape if s != 1)
        else:
            dims = _normalize_dims(dim, self.ndim) or ()
            shape = tuple(s for i, s in enumerate(self.shape) if not (i in dims and s == 1))
        return dispatch("reshape", self, shape=shape)

    def unsqueeze(self, dim):
        d = _normalize_dim(dim, self.ndim + 1)
        return dispatch("reshape", self, shape=self.shape[:d] + (1,) + self.shape[d:])

    def permute(self, *dims):
        dims = _shape_arg(dims) if dims and not isinstance(dims[0], (list, tuple)) else tuple(dims[0])
        if len(dims) != self.ndim:
            raise RuntimeError(
                f"permute(sparse_coo): number of dimensions in the tensor input does not match the length "
                f"of the desired ordering of dimensions i.e. input.dim() = {self.ndim} is not equal to "
                f"len(dims) = {len(dims)}"
            )
        axes = tuple(_normalize_dim(d, self.ndim) for d in dims)
        if len(set(axes)) != len(axes):
            raise RuntimeError("permute(): duplicate dims are not allowed.")
        return dispatch("permute", self, dims=axes)

    def transpose(self, dim0, dim1):
        axes = list(range(self.ndim))
        a, b = _normalize_dim(dim0, self.ndim), _normalize_dim(dim1, self.ndim)
        axes[a], axes[b] = axes[b], axes[a]
        return dispatch("permute", self, dims=tuple(axes)) if self.ndim else self

    swapaxes = transpose

    def t(self):
        if self.ndim > 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D")
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim))) if self.ndim else self

    @property
    def mT(self):
        return self.transpose(-2, -1)

    def expand(self, *sizes):
        sizes = _shape_arg(sizes)
        if len(sizes) < self.ndim:
            raise RuntimeError(
                f"expand({self._type_string()}{{{list(self.shape)}}}, size={list(sizes)}): the number of sizes "
                f"provided ({len(sizes)}) must be greater or equal to the number of dimensions in the tensor ({self.ndim})"
            )
        lead = len(sizes) - self.ndim
        target = []
        for i, s in enumerate(sizes):
            own = self.shape[i - lead] if i >= lead else None
            if s == -1:
                if own is None:
                    raise RuntimeError(
                        f"The expanded size of the tensor (-1) isn't allowed in a leading, non-existing dimension {i}"
                    )
                s = own
            if own is not None and own != 1 and own != s:
                raise RuntimeError(
                    f"The expanded size of the tensor ({s}) must match the existing size ({own}) at non-singleton "
                    f"dimension {i}.  Target sizes: {list(sizes)}.  Tensor sizes: {list(self.shape)}"
                )
            target.append(s)
        return dispatch("expand", self, shape=tuple(target))

    def expand_as(self, other):
        return self.expand(other.shape)

    def broadcast_to(self, shape):
        return self.expand(shape)

    def repeat(self, *sizes):
        sizes = _shape_arg(sizes)
        if len(sizes) < self.ndim:
            raise RuntimeError(
                "Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor"
            )
        return dispatch("repeat", self, repeats=sizes)

    def flip(self, *dims):
        dims = _shape_arg(dims)
        return dispatch("flip", self, dims=tuple(_normalize_dim(d, self.ndim) for d in dims))

    def narrow(self, dim, start, length):
        d = _normalize_dim(dim, self.ndim)
        size = self.shape[d]
        if start < 0:
            start += size
        if not 0 <= start <= size or length < 0 or start + length > size:
            raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size ({size}).")
        return self[(slice(None),) * d + (slice(start, start + length),)]

    def select(self, dim, index):
        d = _normalize_dim(dim, self.ndim)
        size = self.shape[d]
        if not -size <= index < size:
            raise IndexError(f"select(): index {index} out of range for tensor of size {list(self.shape)} at dimension {dim}")
        return self[(slice(None),) * d + (index,)]

    def split(self, split_size, dim=0):
        d = _normalize_dim(dim, self.ndim)
        size = self.shape[d]
        if isinstance(split_size, int):
            if split_size <= 0 and size:
                raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got dimension size of {size}")
            sizes = [split_size] * (size // split_size) + ([size % split_size] if size % split_size else []) \
                if split_size else [0]
        else:
            sizes = list(split_size)
            if sum(sizes) != size:
                raise RuntimeError(
                    f"split_with_sizes expects split_sizes to sum exactly to {size} (input tensor's size at "
                    f"dimension {d}), but got split_sizes={sizes}"
                )
        out, start = [], 0
        for s in sizes:
            out.append(self.narrow(d, start, s))
            start += s
        return tuple(out)

    def chunk(self, chunks, dim=0):
        if chunks <= 0:
            raise RuntimeError("chunk expects `chunks` to be greater than 0, got: " + str(chunks))
        size = self.shape[_normalize_dim(dim, self.ndim)]
        return self.split(max(-(-size // chunks), 1) if size else 1, dim) if size else (self,) * 1

    def unbind(self, dim=0):
        d = _normalize_dim(dim, self.ndim)
        return tuple(self.select(d, i) for i in range(self.shape[d]))

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return iter(self.unbind(0))

    def tril(self, diagonal=0):
        return dispatch("tril", self, diagonal=diagonal)

    def triu(self, diagonal=0):
        return dispatch("triu", self, diagonal=diagonal)

    # --- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key):
        index, tensors = _index_key(key, self)
        return dispatch("getitem", self, *tensors, index=index)

    def gather(self, dim, index):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "gather")
        if index.ndim != self.ndim and not (index.ndim <= 1 and self.ndim <= 1):
            raise RuntimeError("Index tensor must have the same number of dimensions as input tensor")
        for i in range(self.ndim):
            if i != d and index.shape[i] > self.shape[i]:
                raise RuntimeError(
                    f"Size does not match at dimension {i} expected index {list(index.shape)} to be smaller "
                    f"than self {list(self.shape)} apart from dimension {d}"
                )
        _check_bounds(index, self.shape[d] if self.ndim else 1, "gather")
        return dispatch("gather", self, index, dim=d)

    def scatter(self, dim, index, src=None, *, value=None, reduce=None):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "scatter")
        _check_bounds(index, self.shape[d], "scatter")
        source = src if src is not None else value
        if isinstance(source, Tensor):
            source = source.to(self.dtype)
        return dispatch("scatter", self, index, source, dim=d, reduce=reduce)

    def scatter_(self, dim, index, src=None, *, value=None, reduce=None):
        self._check_inplace()
        return self._assign(self.scatter(dim, index, src, value=value, reduce=reduce))

    def scatter_add(self, dim, index, src):
        return self.scatter(dim, index, src, reduce="add")

    def index_select(self, dim, index):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "index_select")
        if index.ndim > 1:
            raise IndexError("index_select(): Index is supposed to be a vector")
        _check_bounds(index, self.shape[d] if self.ndim else 1, "index_select")
        return dispatch("index_select", self, index.reshape(-1), dim=d)

    def masked_select(self, mask):
        return self[mask.expand(self.shape) if mask.shape != self.shape else mask]

    def nonzero(self, as_tuple=False):
        from .creation import tensor
        idx = np.nonzero(self._data)
        if as_tuple:
            return tuple(tensor(i.astype(np.int64)) for i in idx)
        return tensor(np.stack(idx, axis=1).astype(np.int64).reshape(-1, self.ndim))


def _scaled(other, alpha):
    return other if alpha == 1 else other * alpha


def _correction(unbiased, correction):
    if correction is not None:
        return correction
    return 0 if unbiased is False else 1


def _check_matmul(a, b):
    if not isinstance(b, Tensor):
        raise TypeError(f"matmul(): argument 'other' (position 1) must be Tensor, not {type(b).__name__}")
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {a.ndim}D and {b.ndim}D")
    if a.dtype is not b.dtype:
        raise RuntimeError(
            f"expected m1 and m2 to have the same dtype, but got: {_c_type(a.dtype)} != {_c_type(b.dtype)}"
        )
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        if a.ndim == 1 and b.ndim == 1:
            raise RuntimeError(
                f"inconsistent tensor size, expected tensor [{k_a}] and src [{k_b}] to have the same number "
                f"of elements, but got {k_a} and {k_b} elements respectively"
            )
        if a.ndim <= 2 and b.ndim <= 2:
            rows = a.shape[0] if a.ndim == 2 else 1
            if b.ndim == 1:
                raise RuntimeError(f"size mismatch, got input ({rows}), mat ({rows}x{k_a}), vec ({k_b})")
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({rows}x{k_a} and {b.shape[0]}x{b.shape[1]})"
            )
        raise RuntimeError(
            f"Expected size for first two dimensions of batch2 tensor to be: [{b.shape[0] if b.ndim > 2 else 1}, "
            f"{k_a}] but got: [{b.shape[0] if b.ndim > 2 else 1}, {k_b}]."
        )
    if a.ndim > 2 or b.ndim > 2:
        broadcast_shapes(a.shape[:-2], b.shape[:-2])


_C_TYPES = {"float32": "float", "float64": "double", "float16": "c10::Half", "bfloat16": "c10::BFloat16",
            "int64": "long int", "int32": "int", "int16": "short int", "int8": "signed char",
            "uint8": "unsigned char", "bool": "bool"}


def _c_type(d):
    return _C_TYPES[d.name]


def _check_index_tensor(index, fn):
    if not isinstance(index, Tensor):
        raise TypeError(f"{fn}(): argument 'index' must be Tensor, not {type(index).__name__}")
    if index.dtype is not dtypes.int64 and index.dtype is not dtypes.int32:
        raise RuntimeError(f"{fn}(): Expected dtype int64 for index")


def _check_bounds(index, size, fn):
    data = index._data
    if data.size and (data.min() < -size or data.max() >= size):
        bad = int(data.max() if data.max() >= size else data.min())
        raise IndexError(f"index {bad} is out of bounds for dimension with size {size}")


def _index_key(key, tensor):
    """Turn a Python indexing key into (attr key with TensorSlot placeholders, index tensors).

    Validates integer indices against the shape so errors read as PyTorch's."""
    from .creation import tensor as make_tensor

    if not isinstance(key, tuple):
        key = (key,)
    items, tensors = [], []
    dim = 0
    for item in key:
        if isinstance(item, (list, np.ndarray)) or (isinstance(item, Tensor)):
            t = item if isinstance(item, Tensor) else make_tensor(item)
            if t.dtype.is_floating_point:
                raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
            if t.dtype is not dtypes.bool_:
                _check_bounds(t, tensor.shape[dim] if dim < tensor.ndim else 0, "index")
            items.append(TensorSlot(len(tensors)))
            tensors.append(t)
            dim += t.ndim if t.dtype is dtypes.bool_ else 1
        elif isinstance(item, (bool, np.bool_)):
            items.append(bool(item))
        elif isinstance(item, (int, np.integer)):
            if dim >= tensor.ndim:
                raise IndexError(f"too many indices for tensor of dimension {tensor.ndim}")
            size = tensor.shape[dim]
            if not -size <= item < size:
                raise IndexError(f"index {item} is out of bounds for dimension {dim} with size {size}")
            items.append(int(item))
            dim += 1
        elif isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                raise ValueError("step must be greater than zero")
            items.append(slice(*(None if v is None else int(v) for v in (item.start, item.stop, item.step))))
            dim += 1
        elif item is None or item is Ellipsis:
            items.append(item)
            if item is Ellipsis:
                dim = tensor.ndim - sum(1 for k in key[key.index(Ellipsis) + 1:] if k is not None)
        else:
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), None and long or byte Variables are valid indices "
                f"(got {type(item).__name__})"
            )
    if dim > tensor.ndim:
        raise IndexError(f"too many indices for tensor of dimension {tensor.ndim}")
    return tuple(items), tensors
