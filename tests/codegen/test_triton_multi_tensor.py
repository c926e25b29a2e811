"""Multi-tensor norm and scale (clip_grad_norm_) on the interpret backend against the CPU: one
launch each for any number of tensors."""
import math

import numpy as np
import pytest

import tracefuse as tf
from conftest import assert_device_matches
from tracefuse.codegen.triton import heuristics, multi_tensor, recording
from tracefuse.dispatch import dispatch

pytestmark = pytest.mark.usefixtures("interpret")

FLOATS = [tf.float64, tf.float32, tf.float16, tf.bfloat16]
ORDERS = [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0, 0.5, -1.5]
SHAPES = [(3,), (5, 7), (), (130,)]


def _tol(dtype):
    """Per-tensor norms are rounded to each dtype and the total to the result's: 1 ulp apart at most."""
    return {tf.float64: 1e-12, tf.float32: 2e-6, tf.float16: 1e-3, tf.bfloat16: 8e-3}[dtype]


def _tensors(rng, shapes, dtypes):
    return [tf.tensor(rng.standard_normal(s) * 2).to(dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]


def norm(p):
    return lambda *ts: dispatch("multi_tensor_norm", *ts, p=p)


def scale(max_norm):
    return lambda coef, *ts: dispatch("multi_tensor_scale", coef, *ts, max_norm=max_norm)


@pytest.mark.parametrize("p", ORDERS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_norm_of_each_order_and_dtype(rng, p, dtype):
    shapes = SHAPES + ([(0,)] if abs(p) != math.inf else [])  # an empty tensor's norm is 0
    assert_device_matches(norm(p), *_tensors(rng, shapes, [dtype]), rtol=_tol(dtype), atol=0)


@pytest.mark.parametrize("count", [1, 3, 200])
def test_norm_of_many_tensors_of_odd_sizes(rng, count):
    shapes = [(int(n),) for n in rng.integers(1, 40, size=count)]
    ts = _tensors(rng, shapes, [tf.float32])
    for p in (2.0, math.inf):
        assert_device_matches(norm(p), *ts, rtol=2e-6, atol=0)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, -math.inf, 0.0, 1.5])
def test_norm_of_mixed_dtypes_in_one_launch(rng, p):
    ts = _tensors(rng, SHAPES * 2, [tf.float32, tf.float16, tf.float64, tf.bfloat16])
    # float32 tensors' norms are computed in float64 here (then rounded), in float32 on the CPU
    assert_device_matches(norm(p), *ts, rtol=2e-7, atol=0)
    half = _tensors(rng, SHAPES, [tf.float16, tf.bfloat16])  # promote to float32
    assert_device_matches(norm(p), *half, rtol=2e-6, atol=0)
    with recording() as launches:
        norm(p)(*[t.cuda() for t in ts])
    assert len(launches) == 1


def test_norm_of_tensors_spanning_many_chunks(rng, monkeypatch):
    shapes = [(3000,), (7,), (1025,), (2, 1000)]
    ts = _tensors(rng, shapes, [tf.float64])
    for p in (2.0, -math.inf, 0.5):
        assert_device_matches(norm(p), *ts, rtol=1e-12, atol=0)
    monkeypatch.setattr(heuristics, "TARGET_PROGRAMS", 1)  # several blocks per program
    assert multi_tensor.block_sizes([3000, 7])[1] > multi_tensor.block_sizes([3000, 7])[0]
    for p in (2.0, math.inf, 1.0):
        assert_device_matches(norm(p), *ts, rtol=1e-12, atol=0)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0])
def test_norm_propagates_nan_and_inf(p):
    a = tf.tensor([1.0, float("nan"), -2.0])
    b = tf.tensor([float("inf"), 3.0])
    c = tf.tensor([0.5, -0.25])
    for ts in ([a, c], [b, c], [c, a, b]):
        assert_device_matches(norm(p), *ts)


@pytest.mark.parametrize("p", [math.inf, -math.inf])
def test_infinity_norm_of_an_empty_tensor_raises_like_the_cpu(p):
    ts = [tf.randn(3), tf.zeros(0)]
    with pytest.raises(RuntimeError) as cpu:
        norm(p)(*ts)
    with pytest.raises(RuntimeError) as device:
        norm(p)(*[t.cuda() for t in ts])
    assert str(device.value) == str(cpu.value)


def test_norm_and_scale_of_non_contiguous_tensors(rng):
    a = tf.tensor(rng.standard_normal((6, 5)))
    assert_device_matches(lambda x, y: norm(2.0)(x.t(), y[::2]), a, a[0])
    assert_device_matches(lambda c, x, y: scale(None)(c, x.t(), y[:, ::2]), tf.tensor(0.5, dtype=tf.float64), a, a)


@pytest.mark.parametrize("coef_dtype", FLOATS)
def test_scale_by_a_coefficient(rng, coef_dtype):
    ts = _tensors(rng, SHAPES + [(0,)], FLOATS)
    coef = tf.tensor(0.3337123456789, dtype=coef_dtype)
    assert_device_matches(scale(None), coef, *ts, rtol=0, atol=0)


@pytest.mark.parametrize("norm_dtype", FLOATS)
@pytest.mark.parametrize("max_norm", [1.0, 0.1, 100.0])
def test_scale_clips_by_the_total_norm(rng, norm_dtype, max_norm):
    ts = _tensors(rng, SHAPES, FLOATS)
    total = tf.tensor(3.3337123456789, dtype=norm_dtype)
    assert_device_matches(scale(max_norm), total, *ts, rtol=0, atol=0)


def test_clip_coefficient_of_a_non_finite_norm():
    ts = [tf.tensor([1.0, -2.0]), tf.tensor([3.0], dtype=tf.float64)]
    for bad in (float("nan"), float("inf")):
        assert_device_matches(scale(1.0), tf.tensor(bad), *ts)


def test_200_tensors_norm_then_clip_is_two_launches(rng):
    shapes = [(int(n),) for n in rng.integers(1, 50, size=200)]
    grads = _tensors(rng, shapes, [tf.float32])

    def clip(*ts):
        total = norm(2.0)(*ts)
        return (total,) + scale(0.5)(total, *ts)

    assert_device_matches(clip, *grads, rtol=2e-6, atol=0)
    device = [g.cuda() for g in grads]
    with recording() as launches:
        clip(*device)
    assert [r.kernel.name for r in launches] == ["multi_tensor_norm_kernel", "multi_tensor_scale_kernel"]
    assert launches[0].grid == (200,)


def test_clip_grad_norm_on_device_matches_cpu(rng):
    shapes = [(4, 3), (3,), (7,)]

    def clip(*grads):
        params = [tf.zeros(g.shape, dtype=g.dtype).to(g.device).requires_grad_() for g in grads]
        for p, g in zip(params, grads):
            p.grad = g * 1.0  # a copy: clipping writes the gradients in place
        total = tf.nn.utils.clip_grad_norm_(params, max_norm=0.5)
        return (total,) + tuple(p.grad for p in params)

    assert_device_matches(clip, *_tensors(rng, shapes, [tf.float64]))


def test_no_tensors_and_empty_tensors():
    assert dispatch("multi_tensor_scale", tf.tensor(2.0).cuda(), max_norm=None) == ()
    assert_device_matches(scale(1.0), tf.tensor(2.0), tf.zeros(0), tf.zeros((2, 0)))
    assert_device_matches(norm(2.0), tf.zeros(0), tf.zeros((3, 0)))


def test_integer_tensors_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        norm(2.0)(tf.tensor([1, 2]).cuda())


def test_block_sizes_heuristic():
    assert multi_tensor.block_sizes([1]) == (32, 32)
    assert multi_tensor.block_sizes([100, 3]) == (128, 128)
    assert multi_tensor.block_sizes([10**6]) == (1024, 1024)
    block, chunk = multi_tensor.block_sizes([10**9])
    assert block == 1024 and chunk == 16 * 1024
    assert np.log2(chunk // block) % 1 == 0


def test_scale_writes_into_the_memory_the_graph_executor_plans(rng):
    """A compiled clip_grad_norm_ asks for each clipped gradient in the gradient's own memory."""
    from tracefuse.codegen.triton.launch import placement

    grads = _tensors(rng, [(5,), (130,), (2, 3)], [tf.float64, tf.float32])
    device = [g.cuda() for g in grads]
    with placement({j: d._data for j, d in enumerate(device)}) as placed:
        outs = dispatch("multi_tensor_scale", tf.tensor(0.5, dtype=tf.float64).cuda(), *device, max_norm=None)
    assert placed == {0, 1, 2}
    for g, d, o in zip(grads, device, outs):
        expected = (g.double() * 0.5).to(g.dtype).numpy()
        np.testing.assert_array_equal(d.cpu().numpy(), expected)
        np.testing.assert_array_equal(o.cpu().numpy(), expected)
