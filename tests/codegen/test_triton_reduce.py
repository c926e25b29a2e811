"""Reduction emitters on the interpret backend against the same ops on the CPU: every reduce op,
along any dims and all of them, keepdim, every dtype, NaN, ties, empty extents, strided inputs."""
import math

import numpy as np
import pytest

import tracefuse as tf
from conftest import assert_device_matches, on_device, to_numpy
from tracefuse.codegen import triton as tt
from tracefuse.codegen.triton import reduce as tr
from tracefuse.dispatch import dispatch
from tracefuse.ir import ops

pytestmark = pytest.mark.usefixtures("interpret")

TOLERANCE = {tf.float64: 1e-12, tf.float32: 2e-5, tf.float16: 2e-3, tf.bfloat16: 1.6e-2}
FLOATS = [tf.float64, tf.float32, tf.float16, tf.bfloat16]


def test_every_reduce_op_has_an_emitter():
    missing = [name for name, op in ops.OPS.items() if op.kind == "reduce" and name not in tt.EMITTERS]
    assert not missing


def _inputs(dtype):
    """A 3-d tensor of `dtype`, its NaN-holding twin (floats), a transposed view and a sliced one."""
    base = tf.randn(6, 5, 4, dtype=tf.float64) * 3
    x = base.to(dtype)
    out = {"contiguous": x, "permuted": x.permute(2, 0, 1), "sliced": x[::2, 1:, ::3]}
    if dtype.is_floating_point:
        nan = x.clone()
        nan[1, 2, 0] = math.nan
        nan[4, 0, 3] = math.nan
        out["nan"] = nan
    return out


DIMS = [None, (0,), (2,), (0, 2), (1, 2)]


def _reduce(name, **attrs):
    return lambda t: dispatch(name, t, **attrs)


@pytest.mark.parametrize("dtype", FLOATS + [tf.int64, tf.int16, tf.uint8, tf.bool])
@pytest.mark.parametrize("name", ["sum", "prod", "amax", "amin", "any", "all"])
def test_reductions_over_dims(name, dtype):
    tol = TOLERANCE.get(dtype, 0)
    for label, x in _inputs(dtype).items():
        if name == "prod" and dtype.is_floating_point:
            x = (x.float().abs() * 0.1 + 0.95).to(dtype)  # keep products of 120 factors finite
        for dims in DIMS:
            for keepdim in (False, True):
                assert_device_matches(_reduce(name, dim=dims, keepdim=keepdim), x, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_reductions(dtype):
    tol = TOLERANCE[dtype]
    for label, x in _inputs(dtype).items():
        for dims in DIMS[:4]:
            keep = dims == (0,)
            for fn in [_reduce("mean", dim=dims, keepdim=keep), _reduce("logsumexp", dim=dims, keepdim=keep),
                       _reduce("var", dim=dims, keepdim=keep, correction=1),
                       _reduce("var", dim=dims, keepdim=not keep, correction=0)]:
                assert_device_matches(fn, x, rtol=tol, atol=tol)
            for p in [2.0, 1.0, 0.0, 3.0, -1.0, math.inf, -math.inf]:
                assert_device_matches(_reduce("norm", dim=dims, keepdim=keep, p=p), x, rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16, tf.int32, tf.uint8])
def test_arg_reductions_first_index_and_nan(dtype):
    for label, x in _inputs(dtype).items():
        ties = (x.float() / 3).round().to(dtype)  # many equal values: the first index wins
        for t in (x, ties):
            for dim in [None, 0, 1, 2]:
                for keepdim in (False, True):
                    for name in ["argmax", "argmin"]:
                        assert_device_matches(_reduce(name, dim=dim, keepdim=keepdim), t)
                    if dim is not None:
                        for name in ["max_dim", "min_dim"]:
                            assert_device_matches(_reduce(name, dim=dim, keepdim=keepdim), t)


def test_extremes_propagate_nan_and_find_it_first():
    x = tf.tensor([[1.0, math.nan, 5.0, math.nan], [-math.inf, -math.inf, 2.0, 2.0], [0.0, -0.0, -1.0, math.inf]])
    for name in ["amax", "amin"]:
        assert_device_matches(_reduce(name, dim=(1,), keepdim=False), x)
    for name in ["argmax", "argmin", "max_dim", "min_dim"]:
        assert_device_matches(_reduce(name, dim=1, keepdim=False), x)
    values, index = on_device(lambda t: t.max(dim=1), x)
    assert to_numpy(index).tolist() == [1, 2, 3] and math.isnan(to_numpy(values)[0])


def test_wide_rows_and_columns_cross_blocks():
    """Reduced extents and row counts past one BLOCK / one program, odd sizes (masks)."""
    rows = tf.randn(3, 2500, dtype=tf.float64)
    cols = tf.randn(1100, 5, dtype=tf.float32)
    for fn in [lambda t: t.sum(1), lambda t: t.amax(1), lambda t: t.argmin(1), lambda t: t.var(1),
               lambda t: t.logsumexp(1), lambda t: t.cumsum(1)]:
        assert_device_matches(fn, rows, rtol=1e-11, atol=1e-11)
    for fn in [lambda t: t.sum(0), lambda t: t.max(0), lambda t: t.mean(), lambda t: t.cumsum(0),
               lambda t: t.norm(dim=0)]:
        assert_device_matches(fn, cols, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.bfloat16, tf.int32, tf.int8, tf.bool])
def test_cumsum(dtype):
    tol = 10 * TOLERANCE.get(dtype, 0)
    for label, x in _inputs(dtype).items():
        for dim in range(x.ndim):
            assert_device_matches(lambda t: dispatch("cumsum", t, dim=dim), x, rtol=tol, atol=tol)
    assert_device_matches(lambda t: dispatch("cumsum", t, dim=0), tf.tensor(3.5).to(dtype) if dtype.is_floating_point
                          else tf.tensor(3).to(dtype))


def test_integer_sums_accumulate_in_int64():
    big = tf.full((3, 1000), 2**30, dtype=tf.int32)
    for fn in [lambda t: t.sum(), lambda t: t.sum(1), lambda t: t.cumsum(1), lambda t: t.prod(0)]:
        assert_device_matches(fn, big)
    assert on_device(lambda t: t.sum(), big).dtype is tf.int64
    assert on_device(lambda t: t.to(tf.bool).sum(), big).dtype is tf.int64
    assert on_device(lambda t: t.to(tf.uint8).any(1), big).dtype is tf.uint8


def test_zero_dim_and_identity_reductions():
    scalar = tf.tensor(2.5, dtype=tf.float64)
    for name in ["sum", "prod", "mean", "amax", "amin", "logsumexp", "any", "all"]:
        assert_device_matches(_reduce(name, dim=(), keepdim=False), scalar)
        assert_device_matches(_reduce(name, dim=None, keepdim=True), scalar)
    for name in ["argmax", "max_dim"]:
        assert_device_matches(_reduce(name, dim=0, keepdim=False), scalar)
    x = tf.randn(3, 4, dtype=tf.float64)
    assert_device_matches(_reduce("sum", dim=(), keepdim=False), x)  # no dims: the input itself


def _matches_or_raises_the_same(fn, x):
    """fn on the device gives fn's CPU value, or the ValueError the CPU raises."""
    try:
        fn(x)
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)):
            fn(x.cuda())
        return
    assert_device_matches(fn, x)


def test_empty_inputs_give_the_cpu_values_or_its_errors():
    empties = [tf.zeros(0, 4, dtype=tf.float64), tf.zeros(3, 0, dtype=tf.float64)]
    for x in empties:
        for dims in [None, (0,), (1,)]:
            for name, attrs in [("sum", {}), ("prod", {}), ("mean", {}), ("any", {}), ("all", {}),
                                ("var", {"correction": 1}), ("norm", {"p": 2.0}), ("norm", {"p": math.inf}),
                                ("amax", {}), ("amin", {}), ("logsumexp", {})]:
                _matches_or_raises_the_same(_reduce(name, dim=dims, keepdim=False, **attrs), x)
        for dim in [0, 1]:
            for name in ["argmax", "argmin", "max_dim", "min_dim"]:
                _matches_or_raises_the_same(_reduce(name, dim=dim, keepdim=True), x)
    assert_device_matches(lambda t: t.cumsum(0), empties[0])
    with pytest.raises(RuntimeError, match="Expected reduction dim"):  # the Tensor layer's check, before any kernel
        empties[0].cuda().max()


def test_var_correction_beyond_the_extent():
    x = tf.randn(4, 3, dtype=tf.float64)
    for correction in [0, 1, 2.5, 3, 5]:
        assert_device_matches(_reduce("var", dim=(1,), keepdim=False, correction=correction), x)


def test_layout_merges_contiguous_dims_and_reads_views_through_strides():
    x = np.zeros((2, 3, 4, 5))
    layout = tr._Layout(x, (2, 3))
    assert (layout.n_rows, layout.n_reduce, layout.row_sizes, layout.red_sizes) == (6, 20, [6], [20])
    assert layout.strides_of(0) == [20, 1]
    layout = tr._Layout(x.transpose(0, 2, 1, 3), (1, 3))  # (2, 4, 3, 5): both pairs merge through strides
    assert layout.row_sizes == [6] and layout.red_sizes == [20] and layout.strides_of(0) == [20, 1]
    layout = tr._Layout(x.transpose(2, 0, 1, 3), (0, 2))  # (4, 2, 3, 5): no pair is contiguous
    assert layout.row_sizes == [2, 5] and layout.red_sizes == [4, 3] and layout.strides_of(0) == [60, 1, 5, 20]
    assert tr.block_sizes(6, 20) == (8, 32) and tr.block_sizes(1, 10**6) == (1, 1024)
    assert tr.block_sizes(10**6, 3) == (512, 4)


def test_64_bit_offsets_when_the_input_reaches_past_2_31_elements():
    class Huge:  # only metadata: a broadcast view whose strides reach far
        shape, ndim, itemsize, size = (3, 2**31), 2, 4, 3 * 2**31
        strides = (4 * 2**31, 4)

    layout = tr._Layout(Huge(), (1,))
    kernel, _ = tr._reduction_source("sum", np.dtype(np.float32), layout, np.dtype(np.float32), {})
    source = kernel.source()
    assert layout.wide and "pid.to(tl.int64)" in source and "tl.arange(0, BLOCK).to(tl.int64)" in source


def test_generated_source_reads_like_a_tutorial():
    with tt.recording() as records:
        tf.randn(5, 7).cuda().var(1)
    source = records[0].kernel.source
    for piece in ["def var_kernel(", "row_mask = rows < n_rows", "ROWS: tl.constexpr, BLOCK: tl.constexpr",
                  "for start in range(0, n_reduce, BLOCK):", "mean = tl.sum(total, axis=1) / n_reduce"]:
        assert piece in source
    assert records[0].constexprs == {"ROWS": 8, "BLOCK": 8}


# --- gradients through device reductions -----------------------------------------------------

def _grad(fn, x, device):
    x = x.detach().requires_grad_(True)
    fn(x.to(device)).backward()
    return x.grad


@pytest.mark.parametrize("fn", [
    lambda t: t.sum(1).pow(2).sum() + t.mean() + t.prod(0).sum(),
    lambda t: t.var(0).sum() + t.norm(dim=1).sum() + t.norm(p=3) + t.logsumexp(1).sum(),
    lambda t: t.amax(1).sum() + t.max(dim=0)[0].sum() + t.min(dim=1, keepdim=True)[0].sum(),
    lambda t: (t.cumsum(1) * t).sum(),
], ids=["sum_mean_prod", "var_norm_logsumexp", "extremes", "cumsum"])
def test_gradients_through_device_reductions(fn):
    x = tf.randn(4, 6, dtype=tf.float64)
    expected, got = _grad(fn, x, "cpu"), _grad(fn, x, "cuda:0")
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-11, atol=1e-12)
