"""Elementwise ops: one Triton expression per op, used alone (an eager op) or inlined into a
fused group's kernel (codegen/triton/fused.py).

Each entry takes the operand names (already loaded and cast to the compute type) and an `arg`
callback that turns an attribute value into a scalar kernel argument, and returns a Triton
expression. The compute type follows the dispatcher: promote/float/bool ops compute in the
promoted type (float16/bfloat16 in float32), others in their input's type.
"""
from __future__ import annotations

from ... import dtypes
from .launch import emitter
from .pointwise import Pointwise

EXPRESSIONS = {
    "add": lambda a, arg, attrs: f"{a[0]} + {a[1]}",
    "sub": lambda a, arg, attrs: f"{a[0]} - {a[1]}",
    "mul": lambda a, arg, attrs: f"{a[0]} * {a[1]}",
    "div": lambda a, arg, attrs: f"{a[0]} / {a[1]}",
    "neg": lambda a, arg, attrs: f"-{a[0]}",
    "abs": lambda a, arg, attrs: f"tl.abs({a[0]})",
    "exp": lambda a, arg, attrs: f"tl.exp({a[0]})",
    "log": lambda a, arg, attrs: f"tl.log({a[0]})",
    "log2": lambda a, arg, attrs: f"tl.log2({a[0]})",
    "sqrt": lambda a, arg, attrs: f"tl.sqrt({a[0]})",
    "rsqrt": lambda a, arg, attrs: f"1.0 / tl.sqrt({a[0]})",
    "sin": lambda a, arg, attrs: f"tl.sin({a[0]})",
    "cos": lambda a, arg, attrs: f"tl.cos({a[0]})",
    "reciprocal": lambda a, arg, attrs: f"1.0 / {a[0]}",
    "sigmoid": lambda a, arg, attrs: f"1.0 / (1.0 + tl.exp(-{a[0]}))",
    "relu": lambda a, arg, attrs: f"tl.where({a[0]} < 0, 0, {a[0]})",  # keeps -0.0 and nan
    # NaN-propagating, as torch.maximum/minimum
    "maximum": lambda a, arg, attrs: f"tl.where(({a[0]} != {a[0]}) | ({a[0]} > {a[1]}), {a[0]}, {a[1]})",
    "minimum": lambda a, arg, attrs: f"tl.where(({a[0]} != {a[0]}) | ({a[0]} < {a[1]}), {a[0]}, {a[1]})",
    "eq": lambda a, arg, attrs: f"{a[0]} == {a[1]}",
    "ne": lambda a, arg, attrs: f"{a[0]} != {a[1]}",
    "lt": lambda a, arg, attrs: f"{a[0]} < {a[1]}",
    "le": lambda a, arg, attrs: f"{a[0]} <= {a[1]}",
    "gt": lambda a, arg, attrs: f"{a[0]} > {a[1]}",
    "ge": lambda a, arg, attrs: f"{a[0]} >= {a[1]}",
    "logical_and": lambda a, arg, attrs: f"({a[0]} != 0) & ({a[1]} != 0)",
    "logical_not": lambda a, arg, attrs: f"{a[0]} == 0",
    "isnan": lambda a, arg, attrs: f"{a[0]} != {a[0]}",
    "where": lambda a, arg, attrs: f"tl.where({a[0]} != 0, {a[1]}, {a[2]})",
    "cast": lambda a, arg, attrs: f"{a[0]} != 0" if attrs["dtype"] is dtypes.bool_ else a[0],
    "masked_fill": lambda a, arg, attrs: f"tl.where({a[1]} != 0, {arg(attrs['value'])}, {a[0]})",
    "leaky_relu": lambda a, arg, attrs: f"tl.where({a[0]} > 0, {a[0]}, {a[0]} * {arg(attrs['negative_slope'])})",
}


def compute_types(op, inputs, out_dtype):
    """Per input: the type it is loaded as (None: as stored)."""
    if op.dtype_rule in ("promote", "float", "bool"):
        ct = dtypes.compute_type(out_dtype)
        return [None if i in op.keep_inputs else ct for i in range(len(inputs))]
    return [dtypes.compute_type(dtypes.from_numpy_dtype(x.dtype)) if hasattr(x, "dtype") else None for x in inputs]


def output_dtype(op, out_dtype):
    return dtypes.bool_ if op.dtype_rule == "bool" else out_dtype


@emitter(*EXPRESSIONS)
def elementwise(call):
    op = call.op
    shape = _broadcast_shape(call.inputs)
    kernel = Pointwise(f"{op.name}_kernel", shape)
    names = []
    for i, (x, ct) in enumerate(zip(call.inputs, compute_types(op, call.inputs, call.out_dtype))):
        if hasattr(x, "shape"):
            names.append(kernel.load(f"in{i}", x, ct))
        else:
            names.append(kernel.scalar(f"in{i}", x))
    scalars = iter(range(1000))
    result = kernel.compute(op.name, EXPRESSIONS[op.name](names, lambda v: kernel.scalar(f"attr{next(scalars)}", v), call.attrs))
    out = call.empty(shape, output_dtype(op, call.out_dtype))
    kernel.store("out", result, out)
    kernel.launch(call)
    return out


def _broadcast_shape(inputs):
    import numpy as np

    return np.broadcast_shapes(*[x.shape for x in inputs if hasattr(x, "shape")])


def copy_into(call, dst, src):
    """dst[...] = src (broadcast, cast to dst's type): in-place assignment on a device."""
    kernel = Pointwise("copy_kernel", dst.shape)
    kernel.store("dst", kernel.load("src", src), dst)
    kernel.launch(call)
