"""The matmul emitter and the fused matmul epilogue on the interpret backend against the CPU:
NumPy's matmul semantics (1-D, 2-D, batched with broadcasting), every dtype, strided operands,
odd sizes that leave ragged tiles, gradients."""

import numpy as np
import pytest

import tracefuse as tf
from conftest import assert_device_matches, to_numpy
from tracefuse.codegen.triton import recording
from tracefuse.dispatch import dispatch

pytestmark = pytest.mark.usefixtures("interpret")

# (dtype, rtol, atol): float64 to rounding, float32 to a few ulps of the sums (BLAS and the tiles
# add in different orders), half types within an ulp or two of the rounded float32 result.
FLOATS = [(tf.float64, 1e-12, 1e-12), (tf.float32, 1e-5, 1e-5), (tf.float16, 2e-3, 2e-3), (tf.bfloat16, 1.6e-2, 2e-2)]
FLOAT_IDS = ["f64", "f32", "f16", "bf16"]


def randn(*shape, dtype=tf.float64, scale=1.0):
    return (tf.randn(*shape, dtype=tf.float64) * scale).to(dtype)


def mm(a, b):
    return dispatch("matmul", a, b)


SHAPES = {
    "2d_odd": ((17, 33), (33, 9)),
    "vec_mat": ((33,), (33, 5)),
    "mat_vec": ((4, 33), (33,)),
    "dot": ((7,), (7,)),
    "batched_broadcast": ((2, 1, 5, 6), (3, 6, 4)),
    "batch_times_matrix": ((3, 5, 6), (6, 2)),
    "vec_batched": ((6,), (2, 6, 3)),
    "multi_tile": ((70, 40), (40, 65)),
}


@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("case", list(SHAPES))
def test_float_shapes(case, dtype, rtol, atol):
    sa, sb = SHAPES[case]
    assert_device_matches(mm, randn(*sa, dtype=dtype), randn(*sb, dtype=dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [tf.int64, tf.int32, tf.int16, tf.int8, tf.uint8])
@pytest.mark.parametrize("case", ["2d_odd", "mat_vec", "batched_broadcast"])
def test_integers_exact(case, dtype):
    """Integer products are exact (accumulated in int64) and wrap to the result type as the CPU."""
    sa, sb = SHAPES[case]
    scale = 1000.0 if dtype is tf.int64 else 40.0
    assert_device_matches(mm, randn(*sa, scale=scale).to(dtype), randn(*sb, scale=scale).to(dtype))


def test_int64_products_wrap_as_on_the_cpu():
    a = tf.tensor([[2**40, 3], [-(2**35), 1]])
    b = tf.tensor([[2**30, 1], [5, 2**62]])
    assert_device_matches(mm, a, b)


def test_bool():
    assert_device_matches(mm, randn(5, 7) > 0.8, randn(7, 3) > 0.5)


def test_mixed_dtypes_promote():
    assert_device_matches(mm, randn(5, 7, dtype=tf.float16), randn(7, 3, dtype=tf.float32), rtol=1e-5, atol=1e-5)
    assert_device_matches(mm, randn(5, 7, scale=9).to(tf.int32), randn(7, 3), rtol=1e-12)
    assert_device_matches(mm, randn(5, 7, dtype=tf.bfloat16), randn(7, 3, dtype=tf.float16), rtol=1e-5, atol=1e-5)


def test_strided_operands_need_no_copy():
    a, b = randn(9, 17), randn(2, 9, 5)
    with recording() as records:
        out = a.cuda().t() @ b.cuda()[1, :, ::2]
    assert [r.kernel.name for r in records] == ["matmul_kernel"]
    np.testing.assert_allclose(to_numpy(out.cpu()), to_numpy(a.t() @ b[1, :, ::2]), rtol=1e-12)
    assert_device_matches(lambda x, y: x.permute(0, 2, 1) @ y.permute(0, 2, 1), randn(3, 6, 5, dtype=tf.float32),
                          randn(3, 4, 6, dtype=tf.float32), rtol=1e-5, atol=1e-5)
    assert_device_matches(lambda x, y: x.expand(4, 5, 6) @ y, randn(5, 6), randn(4, 6, 3))


def test_empty_and_zero_inner_dim():
    assert_device_matches(mm, randn(3, 0), randn(0, 4))  # zeros
    assert_device_matches(mm, randn(0, 3), randn(3, 2))
    assert_device_matches(mm, randn(2, 0, 3), randn(3, 2))
    assert_device_matches(mm, randn(0), randn(0))


def test_special_values():
    inf, nan = float("inf"), float("nan")
    a = tf.tensor([[1.0, inf], [nan, 2.0], [0.0, 0.0]])
    b = tf.tensor([[1.0, 0.0], [2.0, -1.0]])
    assert_device_matches(mm, a, b)


def test_64_bit_offsets(monkeypatch):
    from tracefuse.codegen.triton import matmul as triton_matmul

    monkeypatch.setattr(triton_matmul, "INT32_LIMIT", 0)
    assert_device_matches(mm, randn(2, 1, 5, 6), randn(3, 6, 4))
    assert_device_matches(mm, randn(5, 6, scale=9).to(tf.int32), randn(6, 17, scale=9).to(tf.int32))


@pytest.mark.parametrize("case", ["2d_odd", "vec_mat", "mat_vec", "dot", "batched_broadcast"])
def test_grad(case):
    sa, sb = SHAPES[case]
    assert_grads_match(mm, randn(*sa), randn(*sb))


def assert_grads_match(fn, *tensors, rtol=1e-12, atol=1e-12):
    """fn's input gradients for one random output gradient, on the CPU and on cuda:0."""
    expected_out = fn(*tensors)
    seed = tf.randn(tuple(expected_out.shape), dtype=tf.float64)

    def grads(device):
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        out = fn(*[t.to(device) for t in leaves])
        out.backward(seed.to(out.dtype).to(out.device))
        return [t.grad for t in leaves]

    for g, e in zip(grads("cuda:0"), grads("cpu")):
        assert g.device.type == "cpu" and g.dtype is e.dtype and tuple(g.shape) == tuple(e.shape)
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=rtol, atol=atol)


# --- fused epilogue --------------------------------------------------------------------------------


def epilogue(x, w, bias=None, activation=None):
    """act(x @ w + bias) through matmul_epilogue on a device; the same ops one by one on the CPU."""
    if x.device.type == "cpu":
        out = x @ w
        if bias is not None:
            out = out + bias
        return {None: lambda t: t, "relu": tf.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid}[activation](out)
    from tracefuse.codegen.triton.launch import OpCall
    from tracefuse.codegen.triton.matmul import matmul_epilogue
    from tracefuse.ir import ops
    from tracefuse.tensor import Tensor

    call = OpCall(ops.get("matmul"), [], {}, None, x.device)
    with recording() as records:
        array = matmul_epilogue(call, x._data, w._data, None if bias is None else bias._data, activation)
    assert len(records) == 1 and records[0].kernel.name == "matmul_epilogue_kernel"
    return Tensor._wrap(array, tf.dtypes.from_numpy_dtype(array.dtype), x.device)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
def test_epilogue(activation, dtype, rtol, atol):
    x, w, b = randn(17, 33, dtype=dtype), randn(33, 9, dtype=dtype), randn(9, dtype=dtype)
    assert_device_matches(lambda x, w, b: epilogue(x, w, b, activation), x, w, b, rtol=rtol, atol=atol)


def test_epilogue_bias_shapes_and_operands():
    x, w = randn(2, 5, 6), randn(6, 7)
    assert_device_matches(lambda x, w: epilogue(x, w, None, "tanh"), x, w)
    assert_device_matches(lambda x, w, b: epilogue(x, w, b, "relu"), x, w, randn(5, 1))
    assert_device_matches(lambda x, w, b: epilogue(x.t(), w, b), randn(6, 5), w, randn(1, 7))
    assert_device_matches(lambda x, w, b: epilogue(x, w, b, "sigmoid"), randn(6), w, randn(7))
    assert_device_matches(lambda x, w, b: epilogue(x, w, b), randn(3, 6), randn(6), randn(3))
    assert_device_matches(lambda x, w, b: epilogue(x, w, b, "relu"), randn(3, 6, scale=9).to(tf.int32),
                          randn(6, 4, scale=9).to(tf.int32), randn(4, scale=9).to(tf.int32))
    assert_device_matches(lambda x, w, b: epilogue(x, w, b, "tanh"), randn(3, 6, dtype=tf.float32),
                          randn(6, 4, dtype=tf.float32), randn(4), rtol=1e-12)  # a float64 bias promotes


def test_epilogue_rejects_bad_activations():
    x = randn(3, 4).cuda()
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        epilogue(x, randn(4, 2).cuda(), None, "gelu")
    with pytest.raises(TypeError, match="needs a floating-point product"):
        epilogue(x.long(), randn(4, 2).long().cuda(), None, "tanh")
    with pytest.raises(ValueError, match=r"bias of shape \(2, 1, 2\) does not broadcast to the product's shape \(3, 2\)"):
        epilogue(x, randn(4, 2).cuda(), randn(2, 1, 2).cuda())
