"""Tensor: shape, dtype, device, storage (a NumPy array on the CPU) and autograd fields.

Every method that computes goes through `dispatch`; this module only normalises arguments the
way PyTorch does (dims, shapes, index keys, scalars), raises PyTorch's errors for bad ones and
implements in-place updates with version counters.
"""
from __future__ import annotations

import collections
import math
import numbers
import operator
import warnings

import numpy as np

from . import autograd, dtypes
from ._tensor_str import tensor_repr
from .device import CPU, as_device
from .dispatch import dispatch
from .ir import shapes as _shapes
from .ir import symbolic as _symbolic
from .ir.ops import TensorSlot
from .tracer import context as _trace


class Size(tuple):
    """A tensor's shape: a tuple that prints as `tracefuse.Size([2, 3])`."""

    def __repr__(self):
        return f"tracefuse.Size({list(self)})"

    def numel(self):
        return _shapes.numel(self) if _symbolic.is_symbolic(self) else int(np.prod(self, dtype=np.int64))


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

def _return_type(name):
    """PyTorch's `torch.return_types.max`-style named pairs (values, indices)."""
    base = collections.namedtuple(name, ["values", "indices"])

    def __repr__(self):
        return f"tracefuse.return_types.{name}(\nvalues={self.values!r},\nindices={self.indices!r})"

    return type(name, (base,), {"__slots__": (), "__repr__": __repr__, "__module__": "tracefuse.return_types"})


RETURN_TYPES = {name: _return_type(name) for name in ("max", "min")}


def _named(out, node_name):
    """Give the autograd node an op just recorded for `out` PyTorch's name for the method that
    called it (`t()` records a permute, but PyTorch shows TBackward0)."""
    if out._grad_fn is not None:
        out._grad_fn._node_name = node_name
    return out


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
    axes = [_normalize_dim(d, ndim) for d in dims]
    for i, a in enumerate(axes):
        if a in axes[:i]:
            raise RuntimeError(f"dim {a} appears multiple times in the list of dims")
    return tuple(sorted(axes)) if ndim else ()


def _int(n):
    """`n` as a Python int, or as it is if it is a symbolic size (compile(dynamic=True))."""
    return n if isinstance(n, _symbolic.SymInt) else int(n)


def _shape_arg(args):
    """Accept f(2, 3), f((2, 3)), f([2, 3]) and f(Size) alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return tuple(_int(a) for a in args)


def broadcast_shapes(*shapes):
    """The broadcast of `shapes`, with PyTorch's error when they don't broadcast."""
    return Size(_shapes.broadcast(*shapes))


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
        t._grad_fn = None
        t._output_nr = 0
        t._version = VersionCounter()
        t._base = None  # a view's base tensor (the root of a chain of views)
        t._view_fn = None  # base -> this view, for views made in grad mode (re-derives history)
        t._view_version = 0  # the version at which grad_fn was last set or re-derived
        t._accumulator_node = None
        t._retains_grad = False
        return t

    # --- metadata ----------------------------------------------------------------------------
    @property
    def shape(self) -> Size:
        env = _symbolic.active()
        symbolic = env.shape_of(self) if env is not None else None
        return Size(self._data.shape if symbolic is None else symbolic)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[_normalize_dim(dim, self.ndim)]

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
        return int(self._data.size) if _symbolic.active() is None else self.shape.numel()

    nelement = numel

    def element_size(self):
        return self._dtype.itemsize

    @property
    def itemsize(self):
        return self._dtype.itemsize

    @property
    def nbytes(self):
        return self.numel() * self._dtype.itemsize

    def ndimension(self):
        return self.ndim

    def data_ptr(self):
        """The address of the first element (tensors viewing one storage differ by their offsets)."""
        return self._data.__array_interface__["data"][0]

    def get_device(self):
        return -1 if self._device.type == "cpu" else self._device.index

    def stride(self, dim=None):
        strides = tuple(s // self._dtype.itemsize for s in self._data.strides)
        env = _symbolic.active()
        if env is not None:  # dynamic=True: strides follow the symbolic sizes, or pin them all
            strides = env.strides(self.shape, strides)
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
        return self._data.shape[0] if _symbolic.active() is None else operator.index(self.shape[0])

    def __hash__(self):
        return id(self)

    def __repr__(self):
        grad_fn = self.grad_fn.name() if self.grad_fn is not None else None
        return tensor_repr(self._host_data(), self._dtype.name, default_float=dtypes.get_default_dtype().name,
                           device=str(self._device), requires_grad=self.requires_grad, grad_fn_name=grad_fn)

    # --- autograd fields ---------------------------------------------------------------------
    @property
    def requires_grad(self):
        if self._view_fn is not None:
            self._refresh_view_history()
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
            raise RuntimeError("only Tensors of floating point dtype can require gradients")
        trace = _trace.current()
        if trace is not None and value != self._requires_grad:
            trace.input_changed(self, "requires_grad")
        self._requires_grad = value

    @property
    def grad_fn(self):
        if self._view_fn is not None:
            self._refresh_view_history()
        return self._grad_fn

    @grad_fn.setter
    def grad_fn(self, node):
        self._grad_fn = node
        self._view_version = self._version.value

    def _refresh_view_history(self):
        """After an in-place write to its base (or to any view of it), a view's history is re-derived
        from the base's new one, as PyTorch regenerates a view's grad_fn."""
        if self._view_version == self._version.value:
            return
        self._view_version = self._version.value
        if self._base.requires_grad:
            with autograd.enable_grad():
                fresh = self._view_fn(self._base)
            self._grad_fn, self._output_nr, self._requires_grad = fresh._grad_fn, fresh._output_nr, True

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
        trace = _trace.current()
        if trace is not None and self._grad is not None:
            trace.grad_read(self)
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type {type(value).__name__}")
            if value.shape != self.shape:
                raise RuntimeError(
                    f"attempting to assign a gradient of size '{list(value.shape)}' to a tensor of size "
                    f"'{list(self.shape)}'. Please ensure that the gradient and the tensor are the same size"
                )
            if value.dtype is not self.dtype:
                raise RuntimeError(
                    f"attempting to assign a gradient with dtype '{_c_type(value.dtype)}' to a tensor with "
                    f"grad_dtype '{_TYPE_NAMES[self.dtype.name]}'. The gradient must match the tensor's grad_dtype "
                    "(defaults to the tensor's dtype)."
                )
        trace = _trace.current()
        if trace is not None:
            trace.grad_written(self)
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
        trace = _trace.current()
        if trace is not None:
            trace.needs_eager_autodiff("a gradient hook")
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

        node, nr = autograd.gradient_edge(self)
        node._retain_grad_hooks[nr] = keep  # runs after the tensor's other hooks, as in PyTorch

    @property
    def retains_grad(self):
        return self._retains_grad

    def detach(self):
        """A tensor on the same storage and version counter, outside the autograd graph (no view base:
        in-place writes through it are not recorded on this tensor, as in PyTorch)."""
        t = Tensor._wrap(self._data, self._dtype, self._device)
        t._version = self._version
        return self._traced_alias(t)

    def _traced_alias(self, alias):
        """`alias` holds this tensor's value: while tracing, it is the same graph value."""
        trace = _trace.current()
        if trace is not None:
            trace.alias(alias, self)
        return alias

    def detach_(self):
        if self._view_fn is not None:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        self.grad_fn = None
        self._requires_grad = False
        return self

    def __deepcopy__(self, memo):
        if not self.is_leaf:
            raise RuntimeError("Only Tensors created explicitly by the user (graph leaves) support the deepcopy "
                               "protocol at the moment.")
        if id(self) not in memo:
            new = type(self)._wrap(self._memory_copy(), self._dtype, self._device, self._requires_grad)
            new._grad = None if self._grad is None else self._grad.__deepcopy__(memo)
            memo[id(self)] = new
        return memo[id(self)]

    def __reduce_ex__(self, protocol):
        """Pickle data, dtype, device and requires_grad, as PyTorch: the result is a leaf, a view its
        own tensor (a CUDA tensor's values are copied to the host and back)."""
        return _rebuild, (type(self), self._host_data(), self._dtype, self.requires_grad, str(self._device))

    @property
    def data(self):
        return self._traced_alias(Tensor._wrap(self._data, self._dtype, self._device))

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be a Tensor, got {type(value).__name__}")
        trace = _trace.current()
        if trace is not None:
            trace.input_changed(self, ".data", outside_too=True)
        self._data, self._dtype, self._device = value._data, value._dtype, value._device

    # --- conversion --------------------------------------------------------------------------
    def _values_read(self, what):
        """Python reads this tensor's values: while tracing, a guard or an error (tracer/context.py)."""
        trace = _trace.current()
        if trace is not None:
            trace.read_values(self, what)

    def item(self):
        self._values_read("item()")
        if self.numel() != 1:
            raise RuntimeError(f"a Tensor with {self.numel()} elements cannot be converted to Scalar")
        return self._host_data().reshape(()).astype(self._host_type()).item()

    def _host_data(self):
        """The values as a host NumPy array (a copy from the device for CUDA tensors)."""
        if self._device.type == "cpu":
            return self._data
        from .runtime import devices
        return devices.backend(self._device).to_host(self._data, self._device)

    def _host_type(self):
        """The NumPy type Python values are read through (bfloat16 via float32)."""
        return np.float32 if self._dtype is dtypes.bfloat16 else self._data.dtype

    def tolist(self):
        self._values_read("tolist()")
        return self._host_data().astype(self._host_type()).tolist()

    def numpy(self, force=False):
        self._values_read("numpy()")
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if self._device.type != "cpu":
            if not force:
                raise TypeError(self._not_on_host())
            return self._host_data()
        return self._data

    def _not_on_host(self):
        return (f"can't convert {self._device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                "tensor to host memory first.")

    def __array__(self, dtype=None, copy=None):
        self._values_read("conversion to a NumPy array")
        if self._device.type != "cpu":
            raise TypeError(self._not_on_host())
        return self._data if dtype is None else self._data.astype(dtype)

    def __bool__(self):
        if self.numel() != 1:
            many = "more than one value" if self.numel() else "no values"
            raise RuntimeError(f"Boolean value of Tensor with {many} is ambiguous")
        return bool(self.item())

    def _scalar(self):
        if self.numel() != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return self.item()

    def __float__(self):
        return float(self._scalar())

    def __int__(self):
        return int(self._scalar())

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
            out = dispatch("to_device", out, device=device, source=self._device)
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

    def byte(self):
        return self.to(dtypes.uint8)

    def char(self):
        return self.to(dtypes.int8)

    def short(self):
        return self.to(dtypes.int16)

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
    def _check_inplace(self, narrowing_view=False):
        """PyTorch's refusals of in-place writes that autograd cannot record. `narrowing_view`: the
        write goes through a view of this tensor (PyTorch's `x[0] = v` writes through `x[0]`)."""
        if not autograd.is_grad_enabled():
            return
        base = self._base
        if (self.is_leaf and self.requires_grad and narrowing_view) or (
                base is not None and base.is_leaf and base.requires_grad):
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
        if self.is_leaf and self.requires_grad:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")

    def _check_overlap(self):
        """An expanded tensor holds one element in several places: arithmetic on it in place is refused."""
        if self._data.size and any(st == 0 and n > 1 for st, n in zip(self._data.strides, self._data.shape)):
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a single memory "
                "location. Please clone() the tensor before performing the operation."
            )

    def _records(self, *others):
        return autograd.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                                  for t in (self,) + others)

    def _inplace(self, op, *args, **attrs):
        """Apply `op(self, *args)` and write the result into this tensor's storage."""
        self._check_inplace()
        self._check_overlap()
        for a in args:
            if isinstance(a, Tensor):
                broadcast_shapes(self.shape, a.shape)
        # Ops that save `self` for backward must see its value before the write.
        src = self._snapshot() if self._records(*args) else self
        return self._assign(dispatch(op, src, *args, **attrs))

    def _history_alias(self, data=None):
        """A tensor object carrying this tensor's current autograd history (on `data`, default: the same storage)."""
        t = Tensor._wrap(self._data if data is None else data, self._dtype, self._device, self.requires_grad)
        t._grad_fn, t._output_nr = self.grad_fn, self._output_nr
        if t._grad_fn is None and t._requires_grad:
            t._accumulator_node = self._accumulator()
        return self._traced_alias(t)

    def _snapshot(self):
        return self._history_alias(self._memory_copy())

    def _memory_copy(self):
        """A copy of this tensor's memory on its device (NumPy on the CPU, a copy kernel on a device)."""
        if self._device.type == "cpu":
            return self._data.copy()
        from .codegen.triton import copy_into
        from .runtime import devices
        out = devices.backend(self._device).empty(self._data.shape, self._data.dtype, self._device)
        copy_into(self._device, out, self._data)
        return out

    def _assign(self, result, overwrite=False):
        """Write `result` (broadcast, cast) into this tensor and take over its autograd history;
        `overwrite`: result does not derive from this tensor, whose old history gets a zero gradient."""
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
        trace = _trace.current()
        if trace is not None:
            trace.assigned(self, result)  # before the write: the trace may keep the old value
        self._write_memory(result.to(self._device)._data)
        self._version.bump()
        if autograd.is_grad_enabled():
            self._rebase_history(result, overwrite)
        return self

    def _write_memory(self, array):
        """Copy `array` (same device; broadcast, cast) into this tensor's memory: nothing else
        (no version bump, no autograd). On a device the copy is a kernel."""
        if self._device.type == "cpu":
            np.copyto(self._data, array, casting="unsafe")
        else:
            from .codegen.triton import copy_into
            copy_into(self._device, self._data, array)

    def _rebase_history(self, result, overwrite):
        """Record an in-place write for autograd (PyTorch's rebase_history). A tensor that is no view
        takes `result`'s history; a view's write is recorded on its base (PyTorch's CopySlices), from
        which the view, like the base's other views, re-derives its own history when next asked."""
        base = self._base
        if not (result.requires_grad or (base if base is not None else self).requires_grad):
            return
        value = result if result.dtype is self._dtype else result.to(self._dtype)
        if value.shape != self.shape:
            value = value.expand(self.shape)
        if base is None:
            if (overwrite or not value.requires_grad) and self.requires_grad:
                value = dispatch("where", _true(), value, self._history_alias())  # old history: zero gradient
            self._set_history(value)
            return
        if self._view_fn is None:
            raise RuntimeError(
                "A view was created in no_grad mode and is being modified inplace with grad mode enabled. Given "
                "that this use case is ambiguous and error-prone, it is forbidden. You can clarify your code by "
                "moving both the view and the inplace either both inside the no_grad block (if you don't want "
                "the inplace to be tracked) or both outside (if you want the inplace to be tracked)."
            )
        from .creation import arange
        with autograd.no_grad():
            positions = self._view_fn(arange(base.numel()).reshape(base.shape)).reshape(-1)
        written = dispatch("index_put", base._history_alias().reshape(-1), value.reshape(-1), positions,
                           index=(TensorSlot(0),), accumulate=False)
        base._set_history(_named(written.reshape(base.shape), "CopySlices"))

    def _set_history(self, value):
        self.grad_fn, self._output_nr, self._requires_grad = value.grad_fn, value._output_nr, True

    def copy_(self, src, non_blocking=False):
        self._check_inplace()
        self._check_overlap()
        if not isinstance(src, Tensor):
            raise TypeError(f"copy_(): argument 'src' (position 1) must be Tensor, not {type(src).__name__}")
        return self._assign(src.to(self._device, self._dtype), overwrite=True)

    def fill_(self, value):
        self._check_inplace()
        if isinstance(value, Tensor):
            if value.ndim:
                raise RuntimeError(
                    f"fill_ only supports 0-dimension value tensor but got tensor with {value.ndim} dimensions."
                )
            value = value.item()
        from .creation import full
        return self._assign(full(self.shape, value, dtype=self._dtype, device=self._device))

    def zero_(self):
        return self.fill_(0)

    def add_(self, other, *, alpha=1):
        return self._inplace("add", _scaled(other, alpha))

    def sub_(self, other, *, alpha=1):
        _check_bool_sub(self, other)
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
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            self._check_inplace()
            return self._assign(self._snapshot().clamp(min, max) if self._records(min, max) else self.clamp(min, max))
        return self._inplace("clamp", min=min, max=max)

    clip_ = clamp_

    def clamp_min_(self, min):
        return self.clamp_(min=min)

    def clamp_max_(self, max):
        return self.clamp_(max=max)

    def addcmul_(self, tensor1, tensor2, *, value=1):
        return self.add_(tensor1 * tensor2, alpha=value)

    def addcdiv_(self, tensor1, tensor2, *, value=1):
        return self.add_(tensor1 / tensor2, alpha=value)

    def lerp_(self, end, weight):
        return self.add_((end - self) * weight)

    def masked_fill_(self, mask, value):
        self._check_inplace()
        src = self._snapshot() if self._records(value) else self
        return self._assign(src.masked_fill(mask, value))

    def uniform_(self, a=0.0, b=1.0):
        from .creation import rand
        return self._assign_noise(lambda: rand(self.shape, dtype=dtypes.float64) * (b - a) + a)

    def normal_(self, mean=0.0, std=1.0):
        from .creation import randn
        return self._assign_noise(lambda: randn(self.shape, dtype=dtypes.float64) * std + mean)

    def _assign_noise(self, sample):
        self._check_inplace()
        with autograd.no_grad():
            values = sample().to(self._dtype)
        return self._assign(values)

    def __setitem__(self, key, value):
        index, tensors = _index_key(key, self)
        self._check_inplace(narrowing_view=any(
            item is None or isinstance(item, numbers.Integral) or (isinstance(item, slice) and item != slice(None))
            for item in index))
        if isinstance(value, (int, float, _symbolic.SymInt)):
            from .creation import tensor
            value = tensor(value, dtype=self._dtype, device=self._device)
        elif not isinstance(value, Tensor):
            raise TypeError(f"can't assign a {_qualified_name(value)} to a {self._type_string()}")
        elif tensors and value.dtype is not self._dtype:
            raise RuntimeError(
                "Index put requires the source and destination dtypes match, got "
                f"{_TYPE_NAMES[self._dtype.name]} for the destination and {_TYPE_NAMES[value.dtype.name]} for the source."
            )
        if value.numel() == 1:
            # One value fills every selected element whatever their number (a boolean mask's
            # count changes from call to call in a compiled graph): no shape to fit.
            value = value.reshape(())
        else:
            with autograd.no_grad():
                target = dispatch("getitem", self, *tensors, index=index).shape
            value = _fit_to(value, target)
        # index_put saves only the index tensors, so `self` itself can stand for its value before the write.
        self._assign(dispatch("index_put", self, value.to(self._dtype), *tensors, index=index, accumulate=False))

    # --- arithmetic --------------------------------------------------------------------------
    def _binary(self, op, other, reverse=False, **attrs):
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
        if op == "sub":
            _check_bool_sub(a, b)
        elif op in ("div_mode", "remainder") and _operand_dtype(a) is _operand_dtype(b) is dtypes.bool_:
            kernel = f"div_{attrs['rounding_mode']}" if op == "div_mode" else "remainder"
            raise NotImplementedError(f'"{kernel}_cpu" not implemented for \'Bool\'')
        return dispatch(op, a, b, **attrs)

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
        return self._binary("div_mode", other, rounding_mode="floor")

    def __rfloordiv__(self, other):
        return self._binary("div_mode", other, reverse=True, rounding_mode="floor")

    def __mod__(self, other):
        return self._binary("remainder", other)

    def __rmod__(self, other):
        return self._binary("remainder", other, reverse=True)

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
        return self.neg()

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

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
        _check_bool_sub(self, other)
        return self._binary("sub", _scaled(other, alpha))

    def mul(self, other):
        return self._binary("mul", other)

    def div(self, other, *, rounding_mode=None):
        if rounding_mode is None:
            return self._binary("div", other)
        if rounding_mode not in ("trunc", "floor"):
            raise RuntimeError(
                f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{rounding_mode}'"
            )
        return self._binary("div_mode", other, rounding_mode=rounding_mode)

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
        return self.shape == other.shape and bool((self == other).all())

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        return bool(self.isclose(other, rtol, atol, equal_nan).all())

    def isclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        """|self - other| <= atol + rtol * |other|, elementwise (equal infinities are close)."""
        if self.dtype is dtypes.bool_:
            return self == other
        close = (self == other) | ((self - other).abs() <= atol + rtol * other.abs())
        return close | (self.isnan() & other.isnan()) if equal_nan else close

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise RuntimeError("tracefuse.clamp: At least one of 'min' or 'max' must not be None")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            out = self
            if min is not None:
                out = out.maximum(min)
            if max is not None:
                out = out.minimum(max)
            return out
        # The bounds take part in type promotion (an integer tensor clamped to 0.5 becomes float).
        d = dtypes.result_type([(self._dtype, self.ndim)] + [b for b in (min, max) if b is not None])
        src = self if d is self._dtype else self.to(d)
        return _named(dispatch("clamp", src, min=min, max=max), "ClampBackward1")

    clip = clamp

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def where(self, condition, other):
        from .functions import where
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        if not isinstance(mask, Tensor):
            raise TypeError(f"masked_fill(): argument 'mask' (position 1) must be Tensor, not {type(mask).__name__}")
        if mask.dtype is not dtypes.bool_:
            raise RuntimeError(
                f"masked_fill_ only supports boolean masks, but got mask with dtype {_c_type(mask.dtype)}"
            )
        broadcast_shapes(mask.shape, self.shape)
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

    def softmax(self, dim, dtype=None):
        from .nn import functional
        return functional.softmax(self, dim, dtype=dtype)

    def log_softmax(self, dim, dtype=None):
        from .nn import functional
        return functional.log_softmax(self, dim, dtype=dtype)

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
    def abs(self):
        if self._dtype is dtypes.bool_:
            raise NotImplementedError('"abs_cpu" not implemented for \'Bool\'')
        return self._unary("abs")

    def neg(self):
        if self._dtype is dtypes.bool_:
            raise RuntimeError(
                "Negation, the `-` operator, on a bool tensor is not supported. If you are trying to invert a "
                "mask, use the `~` or `logical_not()` operator instead."
            )
        return self._unary("neg")

    negative = neg
    def sign(self): return self._unary("sign")
    def sin(self): return self._unary("sin")
    def cos(self): return self._unary("cos")
    def sigmoid(self): return self._unary("sigmoid")
    def tanh(self): return self._unary("tanh")
    def relu(self):
        if self._dtype is dtypes.bool_:
            raise RuntimeError("Boolean inputs not supported for relu")
        return self._unary("relu")

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
        out = src._reduce("sum", dim, keepdim)
        return out if dim is None else _named(out, "SumBackward1")

    def prod(self, dim=None, keepdim=False, dtype=None):
        src = self if dtype is None else self.to(dtype)
        return src._reduce("prod", dim, keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None):
        src = self if dtype is None else self.to(dtype)
        if not src.dtype.is_floating_point:
            which = "Input" if dtype is None else "Optional"
            raise RuntimeError(
                f"mean(): could not infer output dtype. {which} dtype must be either a floating point or "
                f"complex dtype. Got: {_TYPE_NAMES[src.dtype.name]}"
            )
        out = src._reduce("mean", dim, keepdim)
        return out if dim is None else _named(out, "MeanBackward1")

    def amax(self, dim=(), keepdim=False):
        return self._reduce_nonempty("amax", dim, keepdim)

    def amin(self, dim=(), keepdim=False):
        return self._reduce_nonempty("amin", dim, keepdim)

    def _reduce_nonempty(self, op, dim, keepdim):
        axes = _normalize_dims(dim, self.ndim)
        self._check_nonempty_dims(op, axes)
        return dispatch(op, self, dim=axes, keepdim=keepdim)

    def _check_nonempty_dims(self, name, axes):
        """max/min/argmax-style reductions have no identity: every reduced dim must be non-empty."""
        if axes is None:
            if self.numel() == 0:
                raise RuntimeError(
                    f"{name}(): Expected reduction dim to be specified for input.numel() == 0. "
                    "Specify the reduction dim with the 'dim' argument."
                )
            return
        for a in axes:
            if self.shape[a] == 0:
                raise IndexError(f"{name}(): Expected reduction dim {a} to have non-zero size.")

    def _extreme(self, name, op_all, op_dim, op_binary, dim, keepdim):
        if isinstance(dim, Tensor):
            return self._binary(op_binary, dim)
        if dim is None:
            self._check_nonempty_dims(name, None)
            return _named(self._reduce(op_all, None, False), f"{name.capitalize()}Backward1")
        d = _normalize_dim(dim, self.ndim)
        self._check_nonempty_dims(name, (d,) if self.ndim else ())
        values, indices = dispatch(op_dim, self, dim=d, keepdim=keepdim)
        return RETURN_TYPES[name](_named(values, f"{name.capitalize()}Backward0"), indices)

    def max(self, dim=None, keepdim=False):
        return self._extreme("max", "amax", "max_dim", "maximum", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return self._extreme("min", "amin", "min_dim", "minimum", dim, keepdim)

    def _arg_extreme(self, op, dim, keepdim):
        if self._dtype is dtypes.bool_:
            raise RuntimeError(f"{op}(): does not support bool input")
        if dim is None:
            if self.numel() == 0:
                raise IndexError(f"{op}(): Expected reduction dim to be specified for input.numel() == 0.")
            out = dispatch(op, self, dim=None, keepdim=False)
            return out.reshape((1,) * self.ndim) if keepdim else out
        axis = _normalize_dim(dim, self.ndim)
        self._check_nonempty_dims(op, (axis,) if self.ndim else ())
        return dispatch(op, self, dim=axis, keepdim=keepdim)

    def argmax(self, dim=None, keepdim=False):
        return self._arg_extreme("argmax", dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return self._arg_extreme("argmin", dim, keepdim)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        if not self._dtype.is_floating_point:
            raise RuntimeError("std and var only support floating point and complex dtypes")
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
        out = dispatch("matmul", self, other)
        if other.ndim == 1 and self.ndim <= 2:
            return _named(out, "DotBackward0" if self.ndim == 1 else "MvBackward0")
        return out

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
        expected = [self.shape[0], self.shape[2]]
        if list(other.shape[:2]) != expected:
            raise RuntimeError(
                f"Expected size for first two dimensions of batch2 tensor to be: {expected} but got: "
                f"{list(other.shape[:2])}."
            )
        return _named(self.matmul(other), "BmmBackward0")

    def mv(self, vec):
        if self.ndim != 2 or vec.ndim != 1:
            raise RuntimeError(f"vector + matrix @ vector expected, got 1, {self.ndim}, {vec.ndim}")
        return _named(self.matmul(vec), "MvBackward0")

    def dot(self, other):
        if self.ndim != 1 or other.ndim != 1:
            raise RuntimeError(f"1D tensors expected, but got {self.ndim}D and {other.ndim}D tensors")
        return _named(self.matmul(other), "DotBackward0")

    # --- shape and movement ------------------------------------------------------------------
    def _infer_shape(self, shape):
        shape = list(shape)
        n = self.numel()
        if shape.count(-1) > 1:
            raise RuntimeError("only one dimension can be inferred")
        for i, s in enumerate(shape):
            if s < -1:
                raise RuntimeError(f"invalid shape dimension {s} at index {i} of shape {shape}")
        known = math.prod(s for s in shape if s != -1)
        if -1 in shape:
            if known == 0 or n % known:
                raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
            shape[shape.index(-1)] = n // known
        elif known != n:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        return tuple(shape)

    def reshape(self, *shape):
        return dispatch("reshape", self, shape=self._infer_shape(_shape_arg(shape)))

    def view(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], dtypes.dtype):
            raise RuntimeError("view(dtype) is not supported by tracefuse")
        target = self._infer_shape(_shape_arg(shape))
        try:
            np.reshape(self._data, _symbolic.concrete(target), copy=False)
        except ValueError:
            raise RuntimeError(
                "view size is not compatible with input tensor's size and stride (at least one dimension "
                "spans across two contiguous subspaces). Use .reshape(...) instead."
            ) from None
        return dispatch("reshape", self, shape=target)

    def ravel(self):
        return self.reshape(-1)

    def movedim(self, source, destination):
        src = [_normalize_dim(d, self.ndim) for d in ((source,) if isinstance(source, int) else source)]
        dst = [_normalize_dim(d, self.ndim) for d in ((destination,) if isinstance(destination, int) else destination)]
        order = [d for d in range(self.ndim) if d not in src]
        for d, s in sorted(zip(dst, src)):
            order.insert(d, s)
        return self.permute(order)

    moveaxis = movedim

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
        return self.reshape(shape[:s] + (Size(shape[s:e + 1]).numel(),) + shape[e + 1:])

    def unflatten(self, dim, sizes):
        d = _normalize_dim(dim, self.ndim)
        sizes = tuple(sizes)
        known = math.prod(s for s in sizes if s != -1)
        if (known != self.shape[d] and -1 not in sizes) or (-1 in sizes and (known == 0 or self.shape[d] % known)):
            raise RuntimeError(
                f"unflatten: Provided sizes {list(sizes)} don't multiply up to the size of dim {dim} "
                f"({self.shape[d]}) in the input tensor"
            )
        return self.view(self.shape[:d] + sizes + self.shape[d + 1:])

    def squeeze(self, dim=None):
        if dim is None:
            shape, name = tuple(s for s in self.shape if s != 1), "SqueezeBackward0"
        else:
            dims = _normalize_dims(dim, self.ndim) or ()
            shape = tuple(s for i, s in enumerate(self.shape) if not (i in dims and s == 1))
            name = "SqueezeBackward1" if isinstance(dim, (int, np.integer)) else "SqueezeBackward2"
        return _named(dispatch("reshape", self, shape=shape), name)

    def unsqueeze(self, dim):
        d = _normalize_dim(dim, self.ndim + 1)
        return _named(dispatch("reshape", self, shape=self.shape[:d] + (1,) + self.shape[d:]), "UnsqueezeBackward0")

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
        return _named(dispatch("permute", self, dims=tuple(axes)), "TransposeBackward0")

    swapaxes = transpose

    def t(self):
        if self.ndim > 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D")
        return _named(dispatch("permute", self, dims=tuple(reversed(range(self.ndim)))), "TBackward0")

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
        if isinstance(split_size, numbers.Integral):
            if split_size <= 0 and size:
                raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got dimension size of {size}")
            pieces = max(-(-size // split_size), 1) if split_size else 1
            sizes = [split_size] * (pieces - 1) + [size - split_size * (pieces - 1)]
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
        return self.split(-(-size // chunks), dim) if size else self.split([0] * chunks, dim)

    def unbind(self, dim=0):
        d = _normalize_dim(dim, self.ndim)
        return tuple(self.select(d, i) for i in range(self.shape[d]))

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return iter(self.unbind(0))

    def tril(self, diagonal=0):
        return self._triangle("tril", diagonal)

    def triu(self, diagonal=0):
        return self._triangle("triu", diagonal)

    def _triangle(self, name, diagonal):
        if self.ndim < 2:
            raise RuntimeError(f"{name}: input tensor must have at least 2 dimensions")
        return dispatch(name, self, diagonal=diagonal)

    # --- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key):
        index, tensors = _index_key(key, self)
        for t in tensors:
            if t.dtype is dtypes.bool_:
                t._values_read("boolean-mask indexing")  # the result's shape depends on the mask's values
        return _named(dispatch("getitem", self, *tensors, index=index), _getitem_node_name(index, tensors))

    def gather(self, dim, index):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "gather", "int32/int64")
        if index.ndim != self.ndim and not (index.ndim <= 1 and self.ndim <= 1):
            raise RuntimeError("Index tensor must have the same number of dimensions as input tensor")
        for i in range(self.ndim):
            if i != d and index.shape[i] > self.shape[i]:
                raise RuntimeError(
                    f"Size does not match at dimension {i} expected index {list(index.shape)} to be no larger "
                    f"than self {list(self.shape)} apart from dimension {d}"
                )
        return dispatch("gather", self, index, dim=d)  # the implementation checks the index range

    def scatter(self, dim, index, src=None, *, value=None, reduce=None):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "scatter", "int64")
        source = src if src is not None else value
        if isinstance(source, Tensor) and source.dtype is not self._dtype:
            raise RuntimeError("scatter(): Expected self.dtype to be equal to src.dtype")
        return dispatch("scatter", self, index, source, dim=d, reduce=reduce)

    def scatter_(self, dim, index, src=None, *, value=None, reduce=None):
        self._check_inplace()
        return self._assign(self.scatter(dim, index, src, value=value, reduce=reduce))

    def scatter_add(self, dim, index, src):
        return self.scatter(dim, index, src, reduce="add")

    def scatter_add_(self, dim, index, src):
        return self.scatter_(dim, index, src, reduce="add")

    def index_select(self, dim, index):
        d = _normalize_dim(dim, self.ndim)
        _check_index_tensor(index, "index_select", "int32 or int64")
        if index.ndim > 1:
            raise IndexError("index_select(): Index is supposed to be a vector")
        size = self.shape[d] if self.ndim else 1
        if _out_of_bounds(index, 0, np.iinfo(np.int64).max) is not None:
            raise IndexError("index out of range in self")
        bad = _out_of_bounds(index, 0, size)
        if bad is not None:
            raise RuntimeError(f"INDICES element is out of DATA bounds, id={bad} axis_dim={size}")
        return dispatch("index_select", self, index.reshape(-1), dim=d)

    def masked_select(self, mask):
        return self[mask.expand(self.shape) if mask.shape != self.shape else mask]

    def nonzero(self, as_tuple=False):
        from .creation import tensor
        self._values_read("nonzero()")  # the result's shape depends on the values
        idx = np.nonzero(self._host_data())
        if as_tuple:
            return tuple(tensor(i.astype(np.int64), device=self._device) for i in idx)
        return tensor(np.stack(idx, axis=1).astype(np.int64).reshape(-1, self.ndim), device=self._device)


def _rebuild(cls, array, dtype, requires_grad, device="cpu"):
    t = cls._wrap(array, dtype, requires_grad=requires_grad)
    return t if device == "cpu" else t.detach().to(device).requires_grad_(requires_grad)


def _qualified_name(value):
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _operand_dtype(x):
    return x.dtype if isinstance(x, Tensor) else dtypes.scalar_dtype(x)


def _check_bool_sub(a, b):
    kinds = (_operand_dtype(a) is dtypes.bool_, _operand_dtype(b) is dtypes.bool_)
    if all(kinds):
        raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported. Use the `^` or "
                           "`logical_xor()` operator instead.")
    if any(kinds):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are trying to "
                           "invert a mask, use the `~` or `logical_not()` operator instead.")


def _scaled(other, alpha):
    return other if alpha == 1 else other * alpha


def _correction(unbiased, correction):
    if correction is not None:
        return correction
    return 0 if unbiased is False else 1


def _true():
    return Tensor._wrap(np.ones((), dtype=np.bool_), dtypes.bool_)


def _fit_to(value, shape):
    """`value` shaped for an indexed write of `shape`: leading size-1 dims dropped, then expanded
    (PyTorch's setitem rules, with expand's error when it does not fit)."""
    while value.ndim > len(shape) and value.shape[0] == 1:
        value = value.reshape(value.shape[1:])
    return value if value.shape == shape else value.expand(shape)


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
    if a.ndim == 1 and b.ndim == 1:
        if k_a != k_b:
            raise RuntimeError(
                f"inconsistent tensor size, expected tensor [{k_a}] and src [{k_b}] to have the same number "
                f"of elements, but got {k_a} and {k_b} elements respectively"
            )
    elif b.ndim <= 2:  # PyTorch folds a's batch dims into rows: mv or mm
        rows = math.prod(a.shape[:-1])
        if k_a != k_b and b.ndim == 1:
            raise RuntimeError(f"size mismatch, got input ({rows}), mat ({rows}x{k_a}), vec ({k_b})")
        if k_a != k_b:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{k_a} and {k_b}x{b.shape[1]})")
    else:  # batched: broadcast the batch dims, then bmm
        batch = math.prod(broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        if k_a != k_b:
            raise RuntimeError(
                f"Expected size for first two dimensions of batch2 tensor to be: [{batch}, {k_a}] but got: "
                f"[{batch}, {k_b}]."
            )


_C_TYPES = {"float32": "float", "float64": "double", "float16": "c10::Half", "bfloat16": "c10::BFloat16",
            "int64": "long int", "int32": "int", "int16": "short int", "int8": "signed char",
            "uint8": "unsigned char", "bool": "bool"}


def _c_type(d):
    return _C_TYPES[d.name]


def _check_index_tensor(index, fn, dtype_text):
    if not isinstance(index, Tensor):
        raise TypeError(f"{fn}(): argument 'index' (position 2) must be Tensor, not {type(index).__name__}")
    if index.dtype is not dtypes.int64 and index.dtype is not dtypes.int32:
        raise RuntimeError(f"{fn}(): Expected dtype {dtype_text} for index")


def _out_of_bounds(index, low, size):
    """The first index value outside [low, size), or None. Indices on a CUDA device are not read
    back to check (a GPU reports them in the kernel, if at all; tracefuse's kernels skip them)."""
    if index.device.type != "cpu":
        return None
    data = index._data
    bad = data[(data < low) | (data >= size)]
    return int(bad.flat[0]) if bad.size else None


def _check_bounds(index, size, dim):
    """Index tensors may count from the end (-size..size-1)."""
    bad = _out_of_bounds(index, -size, size)
    if bad is not None:
        raise IndexError(f"index {bad} is out of bounds for dimension {dim} with size {size}")


def _getitem_node_name(index, tensors):
    """PyTorch applies an index key step by step; its node is named after the last step."""
    if tensors:
        return "IndexBackward0"
    name = "AliasBackward0"
    for item in index:
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            name = "SelectBackward0"
        elif isinstance(item, slice) and item != slice(None):
            name = "SliceBackward0"
        elif item is None:
            name = "UnsqueezeBackward0"
    return name


def _index_key(key, tensor):
    """Turn a Python indexing key into (attr key with TensorSlot placeholders, index tensors).

    Validates indices against the shape so that errors read as PyTorch's."""
    from .creation import tensor as make_tensor

    if not isinstance(key, tuple):
        key = (key,)
    key = tuple(make_tensor(k) if isinstance(k, (list, np.ndarray)) else k for k in key)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = sum(_dims_consumed(k) for k in key)
    if consumed > tensor.ndim:
        raise IndexError(f"too many indices for tensor of dimension {tensor.ndim}")
    items, tensors = [], []
    dim = 0
    for item in key:
        if isinstance(item, Tensor):
            if item.dtype.is_floating_point:
                raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
            if item.dtype is dtypes.bool_:
                _check_mask(item, tensor, dim)
            else:
                _check_bounds(item, tensor.shape[dim], len(tensors))
            items.append(TensorSlot(len(tensors)))
            tensors.append(item)
        elif isinstance(item, (bool, np.bool_)):
            items.append(bool(item))
        elif isinstance(item, (int, np.integer, _symbolic.SymInt)):
            size = tensor.shape[dim]
            if not -size <= item < size:
                raise IndexError(f"index {item} is out of bounds for dimension {dim} with size {size}")
            items.append(_int(item))
        elif isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                raise ValueError("step must be greater than zero")
            items.append(slice(*(None if v is None else _int(v) for v in (item.start, item.stop, item.step))))
        elif item is None or item is Ellipsis:
            items.append(item)
        else:
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), None and long or byte Variables are valid indices "
                f"(got {type(item).__name__})"
            )
        dim += tensor.ndim - consumed if item is Ellipsis else _dims_consumed(item)
    return tuple(items), tensors


def _dims_consumed(item):
    """How many dims of the indexed tensor an index item stands for."""
    if isinstance(item, Tensor):
        return item.ndim if item.dtype is dtypes.bool_ else 1
    if item is None or item is Ellipsis or isinstance(item, (bool, np.bool_)):
        return 0
    return 1


def _check_mask(mask, tensor, dim):
    for j, n in enumerate(mask.shape):
        if n != tensor.shape[dim + j]:
            raise IndexError(
                f"The shape of the mask {list(mask.shape)} at index {j} does not match the shape of the indexed "
                f"tensor {list(tensor.shape)} at index {dim + j}"
            )
