"""The op table is complete and well formed: every op has its NumPy implementation, every
differentiable op its gradient rule, and every entry a valid kind, dtype rule and attribute list."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import tracefuse  # noqa: F401  (imports every implementation and gradient rule)
from tracefuse.ir import ops

NAMES = sorted(ops.OPS)


def test_table_is_not_empty_and_keyed_by_name():
    assert len(ops.OPS) > 50
    for name, op in ops.OPS.items():
        assert op.name == name


@pytest.mark.parametrize("name", NAMES)
def test_every_op_has_a_numpy_implementation(name):
    op = ops.OPS[name]
    assert callable(op.impl), f"op '{name}' has no NumPy implementation"
    if isinstance(inspect.unwrap(op.impl), np.ufunc):  # a bare NumPy ufunc takes no attributes
        assert op.attrs == ()
        return
    params = inspect.signature(op.impl).parameters
    keyword_only = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    # Every attribute reaches the implementation as a keyword (dispatch passes them all).
    assert sorted(p.name for p in keyword_only) == sorted(op.attrs) or any(
        p.kind is p.VAR_KEYWORD for p in params.values()), f"'{name}' impl keywords != attrs {op.attrs}"


@pytest.mark.parametrize("name", NAMES)
def test_every_differentiable_op_has_a_gradient_rule(name):
    op = ops.OPS[name]
    if op.differentiable:
        assert callable(op.grad), f"differentiable op '{name}' has no gradient rule"
    else:
        assert op.grad is None, f"op '{name}' is not differentiable but has a gradient rule"


@pytest.mark.parametrize("name", NAMES)
def test_op_definition_is_well_formed(name):
    op = ops.OPS[name]
    assert op.kind in ops.KINDS
    assert op.dtype_rule in ops.DTYPE_RULES
    assert isinstance(op.attrs, tuple) and all(isinstance(a, str) and a.isidentifier() for a in op.attrs)
    assert len(set(op.attrs)) == len(op.attrs)
    assert op.n_outputs == -1 or op.n_outputs >= 1
    assert all(isinstance(j, int) and (op.n_outputs == -1 or 0 <= j < op.n_outputs) for j in op.aux_outputs)
    assert op.n_outputs == -1 or len(op.aux_outputs) < op.n_outputs, "an op needs a main output"
    assert all(isinstance(i, int) and i >= 0 for i in op.keep_inputs)
    if op.keep_inputs:
        assert op.dtype_rule in ("promote", "float", "bool"), "keep_inputs only matters to promoting rules"
    if op.kind == "creation":
        assert {"dtype", "device"} <= set(op.attrs) and op.dtype_rule == "attr" and not op.differentiable
    if op.dtype_rule == "attr":
        assert "dtype" in op.attrs


@pytest.mark.parametrize("name", [n for n in NAMES if ops.OPS[n].grad is not None])
def test_gradient_rules_declare_what_they_save(name):
    rule = ops.OPS[name].grad
    saved_inputs = getattr(rule, "saved_inputs", ())
    assert isinstance(saved_inputs, (tuple, slice))
    assert all(isinstance(j, int) and j >= 0 for j in getattr(rule, "saved_outputs", ()))
    params = list(inspect.signature(rule).parameters.values())
    assert params[0].name == "ctx"


def test_lookup_and_registration_guards():
    with pytest.raises(KeyError, match="unknown op 'no_such_op'"):
        ops.get("no_such_op")
    with pytest.raises(AssertionError, match="two NumPy implementations for 'add'"):
        ops.register_impl("add")(lambda x, y: x)
    with pytest.raises(AssertionError, match="two gradient rules for 'add'"):
        ops.register_grad("add")(lambda ctx, g: g)


# Movement ops that are always views: on a device they re-describe memory and launch nothing
# (codegen/triton/views.py); `to_device` is a copy between devices made by the runtime.
NO_KERNEL = {"permute", "expand", "to_device"}


@pytest.mark.parametrize("name", NAMES)
def test_every_op_has_a_triton_emitter(name):
    from tracefuse.codegen.triton import EMITTERS

    assert (name in EMITTERS) != (name in NO_KERNEL), f"op '{name}': emitter {name in EMITTERS}"
