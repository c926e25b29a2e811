"""The composite nn ops' emitters (softmax family, layer_norm, embedding, conv, pooling) on the
interpret backend against the same ops on the CPU: values, dtypes, shapes and gradients."""

import numpy as np
import pytest

import tracefuse as tf
import tracefuse.nn.functional as F
from conftest import assert_device_matches, on_device, to_numpy
from tracefuse.dispatch import dispatch

pytestmark = pytest.mark.usefixtures("interpret")

# (dtype, rtol, atol): float64 tight, float32 ~1e-6, half types within an ulp or two.
FLOATS = [(tf.float64, 1e-12, 1e-12), (tf.float32, 2e-6, 1e-6), (tf.float16, 2e-3, 1e-3), (tf.bfloat16, 1.6e-2, 1e-2)]
FLOAT_IDS = ["f64", "f32", "f16", "bf16"]


def randn(*shape, dtype=tf.float64):
    return tf.randn(*shape, dtype=tf.float64).to(dtype)


def assert_grads_match(fn, *tensors, rtol=1e-12, atol=1e-12):
    """fn's input gradients for one random output gradient: with the op on the CPU, and with the
    inputs moved to cuda:0 inside the call (forward and backward run on the device)."""
    def grads(device):
        leaves = [t.detach().requires_grad_(t.dtype.is_floating_point) for t in tensors]
        inputs = [t.to(device) if device != "cpu" else t for t in leaves]
        out = fn(*inputs)
        upstream = seed.to(out.dtype).to(out.device)
        out.backward(upstream)
        return [t.grad for t in leaves if t.requires_grad]

    seed = None
    expected_out = fn(*tensors)
    seed = tf.randn(*expected_out.shape, dtype=tf.float64)
    expected, got = grads("cpu"), grads("cuda:0")
    for g, e in zip(got, expected):
        assert g.device.type == "cpu" and g.dtype is e.dtype and tuple(g.shape) == tuple(e.shape)
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=rtol, atol=atol)


# --- softmax family ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape,dim", [((5, 37), -1), ((3, 4, 5), 1), ((7,), 0)])
def test_softmax_family(name, dtype, rtol, atol, shape, dim):
    assert_device_matches(lambda x: getattr(F, name)(x * 3, dim), randn(*shape, dtype=dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_long_rows_loop_over_blocks(name):
    x = randn(2, 2100) * 4
    assert_device_matches(lambda x: getattr(F, name)(x, 1), x)
    assert_device_matches(lambda x: getattr(F, name)(x, 1), x.to(tf.float32), rtol=1e-5, atol=1e-6)


def test_softmax_non_contiguous_integer_and_special_rows():
    x = randn(6, 5)
    assert_device_matches(lambda x: F.softmax(x.t(), 0), x)
    assert_device_matches(lambda x: F.log_softmax(x, 0), tf.tensor([[1, 2], [3, -4], [0, 7]]), rtol=1e-6, atol=1e-6)
    inf, nan = float("inf"), float("nan")
    special = tf.tensor([[1.0, inf, 2.0], [-inf, -inf, -inf], [1.0, nan, 3.0], [-inf, 0.5, 1e300]])
    for name in ("softmax", "log_softmax"):
        assert_device_matches(lambda x: getattr(F, name)(x, 1), special)


def test_softmax_empty():
    assert_device_matches(lambda x: F.softmax(x, 1), randn(0, 4))
    assert_device_matches(lambda x: F.log_softmax(x, 0), randn(0, 4))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_grad(name):
    assert_grads_match(lambda x: getattr(F, name)(x, 1), randn(3, 5, 2))


# --- layer_norm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm(dtype, rtol, atol, affine):
    x, w, b = randn(3, 4, 5, dtype=dtype) * 2 + 1, randn(4, 5, dtype=dtype), randn(4, 5, dtype=dtype)
    args = {"both": (w, b), "weight": (w, None), "none": (None, None)}[affine]
    assert_device_matches(lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-5), x, *args, rtol=rtol, atol=atol)


def test_layer_norm_long_rows_small_variance_and_strides():
    x = randn(2, 2100) * 1e-3 + 5
    assert_device_matches(lambda x, w, b: F.layer_norm(x, (2100,), w, b), x, randn(2100), randn(2100))
    assert_device_matches(lambda x: F.layer_norm(x.t(), (3,), eps=1e-3), randn(3, 7))
    assert_device_matches(lambda x: F.layer_norm(x, (4,)), randn(0, 4))


def test_layer_norm_grad():
    assert_grads_match(lambda x, w, b: F.layer_norm(x, (5,), w, b), randn(3, 5), randn(5), randn(5), rtol=1e-10)


# --- embedding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
def test_embedding(dtype):
    weight = randn(11, 7, dtype=dtype)
    indices = tf.tensor([[0, 3, 10, 3], [2, 2, 9, 1], [5, 0, 0, 7]])
    assert_device_matches(lambda w, i: F.embedding(i, w, padding_idx=3), weight, indices)
    assert_device_matches(lambda w, i: F.embedding(i.t(), w.t().contiguous().t()), weight, indices.to(tf.int32))
    assert_device_matches(lambda w, i: F.embedding(i, w), weight, tf.zeros(0, 3, dtype=tf.int64))


@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
def test_embedding_backward_scatter_adds(dtype, rtol, atol):
    indices = tf.tensor([[0, 3, 10, 3], [2, 3, 9, 1], [5, 0, 3, 7]])
    if dtype is tf.float32:
        indices = indices.to(tf.int32).t().contiguous().t()  # int32 and strided
    grad = randn(3, 4, 33, dtype=dtype)
    for padding_idx in (None, 3, -1):
        pad = None if padding_idx is None else padding_idx % 12
        assert_device_matches(lambda g, i: dispatch("embedding_backward", g, i, num_weights=12, padding_idx=pad),
                              grad, indices, rtol=rtol, atol=atol)


def test_embedding_grad():
    indices = tf.tensor([[1, 4, 4], [0, 1, 4]])
    assert_grads_match(lambda w: F.embedding(indices.to(w.device), w, padding_idx=0), randn(6, 5))


# --- convolution ---------------------------------------------------------------------------------

CONV_CASES = {
    "1d": ((2, 3, 11), (4, 3, 3), dict(stride=2, padding=1)),
    "2d": ((2, 4, 7, 6), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    "2d_depthwise": ((1, 3, 5, 5), (3, 1, 3, 3), dict(padding=1, groups=3)),
}


def _conv(x, w, b, options):
    return (F.conv1d if x.ndim == 3 else F.conv2d)(x, w, b, **options)


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
def test_conv(case, dtype, rtol, atol):
    xs, ws, options = CONV_CASES[case]
    x, w, b = randn(*xs, dtype=dtype), randn(*ws, dtype=dtype), randn(ws[0], dtype=dtype)
    assert_device_matches(lambda x, w, b: _conv(x, w, b, options), x, w, b, rtol=rtol, atol=atol)
    if case == "1d":
        assert_device_matches(lambda x, w: _conv(x, w, None, options), x, w, rtol=rtol, atol=atol)


def test_conv_3d_non_contiguous_and_mixed_dtypes():
    x, w = randn(1, 2, 4, 5, 3), randn(3, 2, 2, 3, 2)
    attrs = dict(stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2), groups=1)
    assert_device_matches(lambda x, w: dispatch("conv", x, w, None, **attrs), x, w)
    assert_device_matches(lambda x, w, b: F.conv2d(x.transpose(2, 3), w, b), randn(1, 2, 6, 5), randn(3, 2, 2, 2),
                          randn(3).to(tf.float32))


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS[:3], ids=FLOAT_IDS[:3])
def test_conv_backward(case, dtype, rtol, atol):
    xs, ws, options = CONV_CASES[case]
    attrs = dict(dict(stride=1, padding=0, dilation=1, groups=1), **options)
    nd = len(xs) - 2
    attrs = {k: v if k == "groups" or isinstance(v, tuple) else (v,) * nd for k, v in attrs.items()}
    x, w = randn(*xs, dtype=dtype), randn(*ws, dtype=dtype)
    grad = F.conv1d(x, w, **options) if nd == 1 else F.conv2d(x, w, **options)
    grad = randn(*grad.shape, dtype=dtype)
    for mask in ((True, True, True), (True, False, False), (False, True, True)):
        assert_device_matches(lambda g, x, w: dispatch("conv_backward", g, x, w, output_mask=mask, **attrs),
                              grad, x, w, rtol=rtol * 2, atol=atol * 4)


def test_conv_grad():
    xs, ws, options = CONV_CASES["2d"]
    assert_grads_match(lambda x, w, b: _conv(x, w, b, options), randn(*xs), randn(*ws), randn(ws[0]), rtol=1e-11)


# --- pooling -------------------------------------------------------------------------------------

MAX_POOL_CASES = [
    ((2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True)),
    ((2, 9), dict(kernel_size=2, ceil_mode=True)),
]


@pytest.mark.parametrize("shape,options", MAX_POOL_CASES)
@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
def test_max_pool(shape, options, dtype):
    pool = F.max_pool2d if len(shape) == 4 else F.max_pool1d
    x = randn(*shape, dtype=dtype)
    assert_device_matches(lambda x: pool(x, return_indices=True, **options), x)


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.uint8])
def test_pools_on_integers(dtype):
    x = (randn(1, 2, 5, 6) * 50).abs().to(dtype)
    assert_device_matches(lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True, return_indices=True), x)
    assert_device_matches(lambda x: F.avg_pool2d(x, 2, 2, padding=1, count_include_pad=False), x)


def test_max_pool_ties_nan_and_minus_infinity():
    inf, nan = float("inf"), float("nan")
    x = tf.tensor([[[1.0, 1.0, -inf, -inf, nan, 2.0, nan, -inf, 0.0]]])
    assert_device_matches(lambda x: F.max_pool1d(x, 3, 1, padding=1, return_indices=True), x)
    assert_device_matches(lambda x: F.max_pool2d(x[:, :, ::2, :], 2, return_indices=True), randn(1, 2, 8, 5))


@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
def test_max_pool_backward(dtype, rtol, atol):
    x = randn(2, 3, 7, 6, dtype=dtype)
    _, indices = F.max_pool2d(x, 3, 1, padding=1, return_indices=True)
    grad = randn(*indices.shape, dtype=dtype)
    assert_device_matches(lambda g, i: dispatch("max_pool_backward", g, i, input_shape=(2, 3, 7, 6), spatial_ndim=2),
                          grad, indices, rtol=rtol, atol=atol)


AVG_POOL_CASES = [
    ((2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)),
    ((1, 2, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True, divisor_override=3)),
    ((2, 3, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
]


@pytest.mark.parametrize("shape,options", AVG_POOL_CASES)
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS, ids=FLOAT_IDS)
def test_avg_pool(shape, options, dtype, rtol, atol):
    pool = F.avg_pool2d if len(shape) == 4 else F.avg_pool1d
    assert_device_matches(lambda x: pool(x, **options), randn(*shape, dtype=dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape,options", AVG_POOL_CASES)
@pytest.mark.parametrize("dtype,rtol,atol", FLOATS[:2], ids=FLOAT_IDS[:2])
def test_avg_pool_grad(shape, options, dtype, rtol, atol):
    pool = F.avg_pool2d if len(shape) == 4 else F.avg_pool1d
    assert_grads_match(lambda x: pool(x, **options), randn(*shape, dtype=dtype), rtol=rtol, atol=atol)


def test_max_pool_grad():
    # the unused indices output's gradient is zeros ('full')
    assert_grads_match(lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), randn(2, 2, 7, 6))


# --- composed: cross entropy ---------------------------------------------------------------------


def test_cross_entropy():
    logits, target = randn(5, 7), tf.tensor([0, 6, 3, -100, 1])
    assert_device_matches(lambda x, t: F.cross_entropy(x, t), logits, target)
    assert_device_matches(lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=0.1), logits, target)
    assert_grads_match(lambda x: F.cross_entropy(x, target.to(x.device)).reshape(1), logits)


def test_outputs_stay_on_the_device():
    y = F.softmax(randn(2, 3).to("cuda:0"), 1)
    assert y.device.type == "cuda"
    values, indices = on_device(lambda x: F.max_pool1d(x, 2, return_indices=True), randn(1, 4))
    assert indices.dtype is tf.int64


def test_64_bit_offsets(monkeypatch):
    """Every kernel's int64-offset variant (chosen for arrays past 2**31 elements), forced here."""
    from tracefuse.codegen.triton import nn as triton_nn

    monkeypatch.setattr(triton_nn, "INT32_LIMIT", 0)
    assert_device_matches(lambda x: F.log_softmax(x, 0), randn(5, 3))
    assert_device_matches(lambda x: F.softmax(x, 1), randn(2, 2100))
    assert_device_matches(lambda x, w: F.layer_norm(x, (5,), w), randn(3, 5), randn(5))
    assert_device_matches(lambda w, i: F.embedding(i, w), randn(5, 3), tf.tensor([4, 0, 4]))
    assert_device_matches(lambda g, i: dispatch("embedding_backward", g, i, num_weights=5, padding_idx=None),
                          randn(3, 3), tf.tensor([4, 0, 4]))
    xs, ws, options = CONV_CASES["2d"]
    assert_device_matches(lambda x, w, b: _conv(x, w, b, options), randn(*xs), randn(*ws), randn(ws[0]))
    grad = randn(2, 6, 4, 4)
    attrs = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, output_mask=(True, True, True))
    assert_device_matches(lambda g, x, w: dispatch("conv_backward", g, x, w, **attrs), grad, randn(*xs), randn(*ws),
                          rtol=1e-11, atol=1e-11)
    assert_device_matches(lambda x: F.max_pool2d(x, 3, 2, padding=1, return_indices=True), randn(1, 2, 5, 6))
    assert_device_matches(lambda x: F.avg_pool1d(x, 3, 2, padding=1, ceil_mode=True), randn(2, 3, 9))
    assert_device_matches(lambda g: dispatch("avg_pool_backward", g, input_shape=(2, 3, 9), kernel_size=(3,),
                                             stride=(2,), padding=(1,), ceil_mode=True, count_include_pad=True,
                                             divisor_override=None), randn(2, 3, 5))
    _, indices = F.max_pool1d(randn(2, 9), 3, 2, return_indices=True)
    assert_device_matches(lambda g, i: dispatch("max_pool_backward", g, i, input_shape=(2, 9), spatial_ndim=1),
                          randn(2, 4), indices)
