"""The dispatcher: the one entry point every tensor operation goes through.

`dispatch(op, *inputs, **attrs)` looks the op up in the op table, works out the result dtype by
the table's dtype rule, runs the op on the inputs' device and, when grad mode is on and an input
requires grad, records the op for autograd.
"""
from __future__ import annotations

import numpy as np

from . import autograd, dtypes
from . import tensor as _tensor
from .codegen import numpy as _numpy_backend  # noqa: F401  (registers the NumPy implementations)
from .device import as_device
from .ir import infer as _infer
from .ir import ops as _ops
from .ir import symbolic as _symbolic
from .runtime import devices as _devices
from .tracer import context as _trace

_COMPUTE_IN_FLOAT32 = ("elementwise", "reduce", "matmul", "composite")
_HALF = (dtypes.float16.np_type, dtypes.bfloat16.np_type)


def dispatch(name: str, *inputs, **attrs):
    """Run op `name` on `inputs` (tensors and Python scalars); returns a tensor or a tuple."""
    op = _ops.get(name)
    if _symbolic.active() is not None:  # a symbolic trace records the sizes' expressions, runs their values
        recorded_inputs, recorded_attrs = inputs, attrs
        inputs, attrs = _symbolic.concrete(inputs), _symbolic.concrete(attrs)
    else:
        recorded_inputs = recorded_attrs = None
    Tensor = _tensor.Tensor
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    device = _common_device(tensors, attrs)
    out_dtype = _result_dtype(op, inputs, attrs)
    if name == "to_device" and "cuda" in (device.type, attrs["device"].type):  # the result lives elsewhere
        result, device = _devices.transfer(inputs[0]._data, device, attrs["device"]), attrs["device"]
    elif device.type == "cpu":
        result = op.impl(*_arguments(op, inputs, out_dtype), **attrs)
    else:
        result = _run_on_device(op, inputs, attrs, out_dtype, device)
    arrays = result if isinstance(result, tuple) else (result,)
    outputs = tuple(_wrap(op, j, a, out_dtype, device) for j, a in enumerate(arrays))
    if recorded_attrs is not None:
        inputs, attrs = recorded_inputs, recorded_attrs
    if op.kind == "movement" and tensors:
        _mark_views(name, inputs, attrs, outputs)
    trace = _trace.current()
    if trace is not None:  # first: autograd's record reads the outputs' (symbolic) shapes
        trace.record(op, inputs, attrs, outputs)
    if op.differentiable and autograd.is_grad_enabled() and any(t.requires_grad for t in tensors):
        autograd.record(op, inputs, outputs, attrs)
    return outputs[0] if op.n_outputs == 1 else outputs


def _common_device(tensors, attrs):
    if not tensors:
        return as_device(attrs.get("device"))
    first = tensors[0].device
    for t in tensors[1:]:
        # As in PyTorch, a 0-dim CPU tensor may take part in an op on another device.
        if t.device != first and not (t.ndim == 0 and t.device.type == "cpu"):
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{first} and {t.device}!"
            )
    return first


def _run_on_device(op, inputs, attrs, out_dtype, device):
    """Views re-describe device memory; everything else runs as generated kernels. A 0-dim CPU
    tensor taking part is passed as a scalar, as PyTorch does."""
    _devices.backend(device)
    from .codegen import triton as _triton_backend
    from .codegen.triton.views import as_view

    Tensor = _tensor.Tensor
    arguments = [(x.item() if x.device.type == "cpu" else x._data) if isinstance(x, Tensor) else x for x in inputs]
    if op.kind == "movement":
        view = as_view(op.name, arguments, attrs)
        if view is not None:
            return view
    try:
        return _triton_backend.run_op(op, arguments, attrs, out_dtype, device)
    except _triton_backend.NoEmitterError as exc:
        trace = _trace.current()
        if trace is None:
            raise
        where = " ".join(s for s in (trace.scope(), _trace.user_source()) if s)
        raise _trace.TracingError(f"tracefuse.compile: {exc} (at {where or 'the compiled call'})") from None


def _result_dtype(op, inputs, attrs):
    Tensor = _tensor.Tensor
    return _infer.result_dtype(op, [(x.dtype, x.ndim) if isinstance(x, Tensor) else x for x in inputs], attrs)


def _arguments(op, inputs, out_dtype):
    """The NumPy arrays the implementation sees: promoted to the compute type where the rule says,
    float16/bfloat16 computed in float32 (rounded once on the way out), indices left alone."""
    Tensor = _tensor.Tensor
    if op.dtype_rule in ("promote", "float", "bool"):
        ct = dtypes.compute_type(out_dtype)

        def convert(i, x):
            if x is None or i in op.keep_inputs:
                return x._data if isinstance(x, Tensor) else x
            # A Python int too wide for the compute type wraps around, as in PyTorch (int8 * 1000).
            return _cast(x._data, ct) if isinstance(x, Tensor) else np.array(x).astype(ct)
    else:
        upcast = op.kind in _COMPUTE_IN_FLOAT32 and op.dtype_rule != "custom"

        def convert(i, x):
            if not isinstance(x, Tensor):
                return x
            return _cast(x._data, np.float32) if upcast and x._data.dtype in _HALF else x._data
    return [convert(i, x) for i, x in enumerate(inputs)]


def _cast(a, np_type):
    if a.dtype == np_type:
        return a
    with np.errstate(all="ignore"):  # overflow to inf when narrowing, silently, as in PyTorch
        return a.astype(np_type)


def _wrap(op, j, array, out_dtype, device):
    array = np.asarray(array)
    if device.type != "cpu":  # emitters write the result type themselves
        return _tensor.Tensor._wrap(array, dtypes.from_numpy_dtype(array.dtype), device)
    if out_dtype is None or j in op.aux_outputs:
        d = dtypes.from_numpy_dtype(array.dtype)
    else:
        d = dtypes.bool_ if op.dtype_rule == "bool" else out_dtype
        array = _cast(array, d.np_type)
    return _tensor.Tensor._wrap(array, d, device)


def _mark_views(name, inputs, attrs, outputs):
    """Outputs that alias their input's memory are views: in-place writes bump one shared version,
    and a view made in grad mode keeps how to re-derive itself from its base (for autograd)."""
    parent = inputs[0]
    root = parent._base if parent._base is not None else parent
    for out in outputs:
        if not np.may_share_memory(out._data, parent._data):
            continue
        out._version = parent._version
        out._base = root
        out._view_version = out._version.value
        if autograd.is_grad_enabled() and (parent._base is None or parent._view_fn is not None):
            out._view_fn = _view_fn(parent._view_fn, name, inputs[1:], attrs)


def _view_fn(parent_fn, name, args, attrs):
    def view(base):
        return dispatch(name, parent_fn(base) if parent_fn is not None else base, *args, **attrs)
    return view
