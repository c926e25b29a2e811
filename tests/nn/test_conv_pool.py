"""Convolution and pooling (F.conv1d/2d, max_pool1d/2d, avg_pool1d/2d) against torch: values,
indices and gradients over strides, paddings (ints, 'same', 'valid'), dilations, groups and
ceil_mode; double backward through the backward ops; central differences; errors; and a speed
check that convolution runs as one matmul rather than a loop over pixels."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

import tracefuse as tf
from tests.conftest import assert_same
from tests.nn.test_functional import F, assert_same_error, check_central_differences, run_both

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")

# --- convolution ---------------------------------------------------------------------------------

CONV_CASES = [
    # (stride, padding, dilation, groups, bias)
    (1, 0, 1, 1, True),
    (2, 1, 1, 1, False),
    (1, 2, 2, 1, True),
    (3, 1, 1, 2, True),
    (2, 0, 2, 3, False),
    (1, "same", 1, 1, True),
    (1, "same", 2, 3, False),
    (1, "valid", 1, 1, True),
]


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", CONV_CASES)
def test_conv2d(stride, padding, dilation, groups, bias, rng):
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal((6, 6 // groups, 3, 2))
    b = rng.standard_normal(6) if bias else None
    run_both(lambda lib, x, w, b: F(lib).conv2d(x, w, b, stride, padding, dilation, groups), x, w, b)


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", CONV_CASES)
def test_conv1d(stride, padding, dilation, groups, bias, rng):
    x = rng.standard_normal((2, 6, 11))
    w = rng.standard_normal((6, 6 // groups, 4))
    b = rng.standard_normal(6) if bias else None
    run_both(lambda lib, x, w, b: F(lib).conv1d(x, w, b, stride, padding, dilation, groups), x, w, b)


def test_conv_tuple_arguments_unbatched_input_and_float32(rng):
    run_both(lambda lib, x, w, b: F(lib).conv2d(x, w, b, stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
             rng.standard_normal((3, 7, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4))
    run_both(lambda lib, x, w, b: F(lib).conv2d(x, w, b, padding=1), rng.standard_normal((2, 3, 6, 6)),
             rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), dtype="float32")
    run_both(lambda lib, x, w: F(lib).conv1d(x, w, padding="same"), rng.standard_normal((3, 8)),
             rng.standard_normal((2, 3, 4)), dtype="float32")


def test_conv_same_padding_with_even_kernel_warns_like_torch(rng):
    """torch warns once per process (TORCH_WARN_ONCE), so only its text is compared."""
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 2, 4))
    message = ("Using padding='same' with even kernel lengths and odd dilation may require a zero-padded copy of "
               "the input be created")
    with pytest.warns(UserWarning, match=re.escape(message)):
        tf.nn.functional.conv2d(tf.tensor(x), tf.tensor(w), padding="same")


@pytest.mark.parametrize("groups, stride", [(1, 1), (2, 2)])
def test_conv_double_backward(groups, stride, rng):
    run_both(lambda lib, x, w, b: F(lib).conv2d(x, w, b, stride=stride, padding=1, groups=groups),
             rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 4 // groups, 3, 3)),
             rng.standard_normal(4), double=True)
    run_both(lambda lib, x, w: F(lib).conv1d(x, w, dilation=2, groups=groups), rng.standard_normal((1, 2, 7)),
             rng.standard_normal((2, 2 // groups, 2)), double=True)


def test_conv_central_differences(rng):
    check_central_differences(lambda x, w, b: tf.nn.functional.conv2d(x, w, b, stride=2, padding=1),
                              rng.standard_normal((1, 2, 4, 5)), rng.standard_normal((2, 2, 2, 3)),
                              rng.standard_normal(2))


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).conv2d(lib.randn(2, 3), lib.randn(2, 3, 1, 1)),
    lambda lib: F(lib).conv1d(lib.randn(2, 3, 4, 5), lib.randn(2, 3, 1)),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 8, 8), lib.randn(20, 10, 4, 4)),
    lambda lib: F(lib).conv2d(lib.randn(3, 8, 8), lib.randn(20, 10, 4, 4)),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 8, 8), lib.randn(20, 2, 4, 4), groups=2),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 2, 2), lib.randn(4, 3, 4, 4)),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 5, 5), lib.randn(4, 3, 3, 3), dilation=3),
    lambda lib: F(lib).conv1d(lib.randn(2, 3, 2), lib.randn(4, 3, 4)),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 8, 8), lib.randn(4, 3, 3, 3), stride=2, padding="same"),
    lambda lib: F(lib).conv2d(lib.randn(2, 3, 8, 8), lib.randn(4, 3, 3, 3), padding="foo"),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(3, 2, 3, 3), groups=2),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 2, 3, 3), groups=0),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3, 3), padding=(1, -1)),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3, 3), stride=0),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3, 3), dilation=0),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3, 3), lib.randn(3)),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3)),
    lambda lib: F(lib).conv2d(lib.randn(2, 4, 8, 8), lib.randn(4, 4, 3, 3), stride=(1, 1, 1)),
])
def test_conv_errors(call):
    assert_same_error(call)


def test_conv_is_one_matmul_not_a_pixel_loop():
    """A ResNet-sized layer (forward + backward) runs in well under a second with im2col."""
    x = tf.randn(8, 32, 32, 32, requires_grad=True)
    w = tf.randn(64, 32, 3, 3, requires_grad=True)
    start = time.perf_counter()
    tf.nn.functional.conv2d(x, w, padding=1).sum().backward()
    assert time.perf_counter() - start < 3.0
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


# --- max pooling ---------------------------------------------------------------------------------

MAX_POOL_CASES = [
    # (kernel, stride, padding, dilation, ceil_mode)
    (2, None, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 3, 1, 2, True),
    (3, 1, 0, 2, False),
    (4, 3, 2, 1, True),
]


def _max_pool(nd, args, return_indices=True):
    kernel, stride, padding, dilation, ceil_mode = args

    def fn(lib, x):
        pool = F(lib).max_pool2d if nd == 2 else F(lib).max_pool1d
        return pool(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=return_indices)
    return fn


@pytest.mark.parametrize("args", MAX_POOL_CASES)
def test_max_pool2d_values_indices_and_grads(args, rng):
    run_both(_max_pool(2, args), rng.standard_normal((2, 3, 9, 8)))
    run_both(_max_pool(2, args, return_indices=False), rng.standard_normal((3, 7, 9)), dtype="float32")


@pytest.mark.parametrize("args", MAX_POOL_CASES)
@pytest.mark.parametrize("return_indices", [True, False])
def test_max_pool1d_values_indices_and_grads(args, return_indices, rng):
    run_both(_max_pool(1, args, return_indices), rng.standard_normal((2, 3, 10)))
    run_both(_max_pool(1, args, return_indices), rng.standard_normal((3, 11)), dtype="float32")


def test_max_pool_ties_pick_the_first_maximum_and_integers_work():
    x = np.array([[[[1.0, 1.0, 0.0], [1.0, 0.5, 2.0], [2.0, 2.0, 2.0]]]])
    run_both(lambda lib, x: F(lib).max_pool2d(x, 2, 1, return_indices=True), x)
    ints = np.arange(24).reshape(1, 2, 3, 4) % 5
    assert_same(tf.nn.functional.max_pool2d(tf.tensor(ints), 2), torch.nn.functional.max_pool2d(torch.tensor(ints), 2))


def test_max_pool_double_backward_and_central_differences(rng):
    """The scale makes the input gradient depend on a tensor, so double backward runs through
    max_pool_backward's own rule."""
    pool = _max_pool(2, (3, 2, 1, 1, True), return_indices=False)
    run_both(lambda lib, x, scale: pool(lib, x) * scale, rng.standard_normal((1, 2, 6, 5)), rng.standard_normal(3),
             double=True)
    check_central_differences(lambda x: tf.nn.functional.max_pool2d(x, 2, 1, padding=1),
                              rng.standard_normal((1, 2, 4, 4)))


# --- average pooling -----------------------------------------------------------------------------

AVG_POOL_CASES = [
    # (kernel, stride, padding, ceil_mode, count_include_pad)
    (2, None, 0, False, True),
    (3, 2, 1, False, True),
    (3, 2, 1, True, False),
    (3, 2, 1, True, True),
    (4, 3, 2, True, False),
]


@pytest.mark.parametrize("args", AVG_POOL_CASES)
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avg_pool2d(args, divisor_override, rng):
    kernel, stride, padding, ceil_mode, count_include_pad = args
    run_both(lambda lib, x: F(lib).avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                              divisor_override), rng.standard_normal((2, 3, 9, 8)))


@pytest.mark.parametrize("args", AVG_POOL_CASES)
def test_avg_pool1d(args, rng):
    run_both(lambda lib, x: F(lib).avg_pool1d(x, *args), rng.standard_normal((2, 3, 10)))
    run_both(lambda lib, x: F(lib).avg_pool1d(x, *args), rng.standard_normal((3, 11)), dtype="float32")


def test_avg_pool_tuple_arguments_double_backward_and_central_differences(rng):
    run_both(lambda lib, x, scale: F(lib).avg_pool2d(x, (3, 2), (2, 1), (1, 0), True, False) * scale,
             rng.standard_normal((1, 2, 6, 5)), rng.standard_normal(4), double=True)
    check_central_differences(lambda x: tf.nn.functional.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
                              rng.standard_normal((1, 2, 4, 5)))


# --- pooling errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 3, padding=2),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), (3, 5), padding=(1, 3)),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), (3, 3), padding=(2, 1), dilation=2),
    lambda lib: F(lib).max_pool2d(lib.randn(8, 8), 3),
    lambda lib: F(lib).max_pool2d(lib.randn(2, 3, 2, 2), 3),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), (1, 2, 3)),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 2, (1, 1, 1)),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 2, 2, (1, 1, 1)),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 2, 2, 0, (1, 1, 1)),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 2, stride=0),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 0),
    lambda lib: F(lib).max_pool2d(lib.randn(1, 1, 8, 8), 2, dilation=0),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 3, padding=2),
    lambda lib: F(lib).max_pool1d(lib.randn(8), 3),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 2), 3),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 2, stride=0),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 0),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 2, dilation=0),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), (2, 2)),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 2, (2, 2)),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 8), 3, padding=2, return_indices=True),
    lambda lib: F(lib).max_pool1d(lib.randn(1, 1, 2), 3, return_indices=True),
    lambda lib: F(lib).max_pool1d(lib.randn(8), 3, return_indices=True),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), 3, padding=2),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), (3, 5), padding=(1, 3)),
    lambda lib: F(lib).avg_pool2d(lib.randn(8, 8), 3),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 1, 4, 4), 2),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 2, 2), 3),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), 3, divisor_override=0),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), (1, 2, 3)),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), 2, (1, 1, 1)),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), 2, 2, (1, 1, 1)),
    lambda lib: F(lib).avg_pool2d(lib.randn(1, 1, 8, 8), 2, 0),
    lambda lib: F(lib).avg_pool1d(lib.randn(1, 1, 8), 3, padding=2),
    lambda lib: F(lib).avg_pool1d(lib.randn(8), 3),
    lambda lib: F(lib).avg_pool1d(lib.randn(1, 1, 2), 3),
    lambda lib: F(lib).avg_pool1d(lib.randn(1, 1, 8), (2, 2)),
    lambda lib: F(lib).avg_pool1d(lib.randn(1, 1, 8), 0),
])
def test_pooling_errors(call):
    assert_same_error(call)
