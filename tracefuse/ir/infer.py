"""Output metadata (shape, dtype) of an op from its inputs' metadata, without running it.

The op table's rules applied: the shape rule (ir/shapes.py), the dtype rule (`result_dtype`,
which the dispatcher uses too) and, for the outputs whose dtype the implementation picks itself,
the table's `out_dtypes` names (below). Rewrites that build new nodes and the tracer use `infer`.
"""
from __future__ import annotations

import functools

from .. import dtypes
from . import ops


class DataDependentShapeError(RuntimeError):
    """An output shape that depends on the input values, not only on their shapes."""


def result_dtype(op, operands, attrs):
    """The dtype `op`'s dtype rule gives. `operands` follows the op's inputs: a (dtype, ndim) pair
    per tensor, the value of a Python scalar, None for an absent input. For the `bool` rule this is
    the type the operands are compared in (the result itself is bool); None for `custom`."""
    rule = op.dtype_rule
    if rule in ("promote", "float", "bool"):
        result = dtypes.result_type([x for i, x in enumerate(operands) if i not in op.keep_inputs and x is not None])
        if rule == "float" and not result.is_floating_point:
            result = dtypes.get_default_dtype()
        return result
    if rule == "same":
        return operands[0][0]
    if rule == "sum":
        d = operands[0][0]
        return d if d.is_floating_point else dtypes.int64
    if rule == "index":
        return dtypes.int64
    if rule == "attr":
        return attrs["dtype"]
    return None  # custom: the implementation decides


def _compute(d):
    return dtypes.float32 if d in (dtypes.float16, dtypes.bfloat16) else d


# `out_dtypes` names: (the tensor inputs' dtypes, output index, output count) -> dtype.
_OUTPUT_DTYPES = {
    "bool": lambda ins, j, n: dtypes.bool_,
    "int64": lambda ins, j, n: dtypes.int64,
    "first": lambda ins, j, n: ins[0],
    "compute": lambda ins, j, n: _compute(ins[0]),  # float16/bfloat16 work in float32
    "logical": lambda ins, j, n: dtypes.uint8 if ins[0] is dtypes.uint8 else dtypes.bool_,  # all/any keep uint8
    "promote_types": lambda ins, j, n: functools.reduce(dtypes.promote_types, ins),
    "own": lambda ins, j, n: ins[len(ins) - n + j],  # outputs line up with the trailing tensor inputs
}


def infer(op_name, input_metas, attrs) -> list:
    """[(shape, dtype), ...] of op `op_name`'s outputs. `input_metas` follows its inputs: a
    (shape, dtype) pair per tensor, the value of a Python scalar, None for an absent input.
    Raises DataDependentShapeError for indexing with a boolean mask tensor."""
    op = ops.get(op_name)
    tensors = [m for m in input_metas if isinstance(m, tuple)]
    if op_name == "getitem" and any(d is dtypes.bool_ for _, d in tensors[1:]):
        raise DataDependentShapeError("getitem with a boolean mask: the result's length is the number of True "
                                      "elements, which the shapes do not tell")
    shapes = op.shape([m[0] if isinstance(m, tuple) else None for m in input_metas], attrs)
    base = result_dtype(op, [(m[1], len(m[0])) if isinstance(m, tuple) else m for m in input_metas], attrs)
    if op.dtype_rule == "bool":
        base = dtypes.bool_
    names = op.out_dtypes or (None,)
    names = names * len(shapes) if len(names) == 1 else names
    in_dtypes = [d for _, d in tensors]
    return [(tuple(s), base if name is None else _OUTPUT_DTYPES[name](in_dtypes, j, len(shapes)))
            for j, (s, name) in enumerate(zip(shapes, names))]
