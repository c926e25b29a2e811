"""tracefuse.nn.init against torch.nn.init: gains, the distributions' statistics and bounds on
large tensors, orthogonality, in-place semantics under no_grad, warnings and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tracefuse as tf
import tracefuse.nn as nn
from tests.nn.test_functional import assert_same_error, same_warning

init = nn.init


def param(*shape, dtype=tf.float32):
    """A leaf requiring grad: init functions must still write into it (they run under no_grad)."""
    return nn.Parameter(tf.zeros(*shape, dtype=dtype))


@pytest.mark.parametrize("args", [("linear",), ("conv2d",), ("conv_transpose3d",), ("sigmoid",), ("tanh",),
                                  ("relu",), ("leaky_relu",), ("leaky_relu", 0.2), ("leaky_relu", 3), ("selu",)])
def test_calculate_gain_matches_torch(args):
    assert init.calculate_gain(*args) == torch.nn.init.calculate_gain(*args)


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.init.calculate_gain("softsign"),
    lambda lib: lib.nn.init.calculate_gain("leaky_relu", True),
    lambda lib: lib.nn.init.calculate_gain("leaky_relu", "0.1"),
    lambda lib: lib.nn.init.kaiming_uniform_(lib.zeros(5)),
    lambda lib: lib.nn.init.xavier_normal_(lib.zeros(5)),
    lambda lib: lib.nn.init.kaiming_normal_(lib.zeros(3, 4), mode="fan_avg"),
    lambda lib: lib.nn.init.eye_(lib.zeros(2, 2, 2)),
    lambda lib: lib.nn.init.orthogonal_(lib.zeros(4)),
])
def test_init_errors(call):
    assert_same_error(call)


def _stats(t):
    a = t.detach().numpy().astype(np.float64)
    return a.mean(), a.std(), a.min(), a.max()


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_uniform_and_normal_fill_in_place(dtype):
    tf.manual_seed(0)
    w = param(300, 200, dtype=dtype)
    assert init.uniform_(w, -2.0, 3.0) is w
    mean, std, lo, hi = _stats(w)
    assert -2.0 <= lo < -1.99 and 2.99 < hi <= 3.0
    assert abs(mean - 0.5) < 0.02 and abs(std - 5 / math.sqrt(12)) < 0.02
    assert init.normal_(w, 1.5, 0.5) is w
    mean, std, _, _ = _stats(w)
    assert abs(mean - 1.5) < 0.005 and abs(std - 0.5) < 0.005
    assert w.requires_grad and w.grad_fn is None and w.dtype is dtype


def test_constant_ones_zeros_and_eye():
    w = param(3, 4)
    assert init.constant_(w, 2.5) is w and (w.detach().numpy() == 2.5).all()
    assert init.ones_(w) is w and (w.detach().numpy() == 1).all()
    assert init.zeros_(w) is w and not w.detach().numpy().any()
    assert init.eye_(w) is w
    np.testing.assert_array_equal(w.detach().numpy(), np.eye(3, 4))
    assert w.grad_fn is None


@pytest.mark.parametrize("shape", [(300, 200), (64, 32, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_xavier(shape, gain):
    tf.manual_seed(1)
    fan_in, fan_out = shape[1] * math.prod(shape[2:]), shape[0] * math.prod(shape[2:])
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    w = param(*shape)
    init.xavier_uniform_(w, gain=gain)
    mean, s, lo, hi = _stats(w)
    bound = math.sqrt(3.0) * std
    assert -bound <= lo and hi <= bound and abs(s - std) < 0.02 * std and abs(mean) < 0.02 * std
    init.xavier_normal_(w, gain=gain)
    mean, s, _, _ = _stats(w)
    assert abs(s - std) < 0.02 * std and abs(mean) < 0.02 * std


@pytest.mark.parametrize("a, mode, nonlinearity", [(0, "fan_in", "leaky_relu"), (math.sqrt(5), "fan_in", "leaky_relu"),
                                                   (0, "fan_out", "relu"), (0.1, "Fan_Out", "tanh")])
def test_kaiming(a, mode, nonlinearity):
    tf.manual_seed(2)
    shape = (128, 64, 3, 3)
    fan = (64 if mode == "fan_in" else 128) * 9
    std = torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    w = param(*shape)
    init.kaiming_uniform_(w, a=a, mode=mode, nonlinearity=nonlinearity)
    mean, s, lo, hi = _stats(w)
    bound = math.sqrt(3.0) * std
    assert -bound <= lo < -0.99 * bound and 0.99 * bound < hi <= bound and abs(s - std) < 0.02 * std
    init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nonlinearity)
    mean, s, _, _ = _stats(w)
    assert abs(s - std) < 0.02 * std and abs(mean) < 0.02 * std


def test_kaiming_on_zero_element_tensors_warns_and_does_nothing():
    for name in ("kaiming_uniform_", "kaiming_normal_"):
        message = same_warning(lambda lib: getattr(lib.nn.init, name)(lib.zeros(0, 3)))
        assert message == "Initializing zero-element tensors is a no-op"


@pytest.mark.parametrize("shape", [(20, 8), (8, 20), (6, 3, 2, 2), (10, 10)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal(shape, gain):
    tf.manual_seed(3)
    w = param(*shape, dtype=tf.float64)
    assert init.orthogonal_(w, gain=gain) is w
    flat = w.detach().numpy().reshape(shape[0], -1) / gain
    small = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(small, np.eye(min(flat.shape)), atol=1e-12)
    assert np.abs(flat).max() <= 1 + 1e-12 and w.grad_fn is None


def test_orthogonal_draws_vary_with_the_seed_and_repeat_with_it():
    draws = []
    for seed in (5, 5, 6):
        tf.manual_seed(seed)
        draws.append(init.orthogonal_(param(4, 4)).detach().numpy())
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.allclose(draws[0], draws[2])


def _truncated_moments(mean, std, a, b):
    """Mean and standard deviation of N(mean, std^2) truncated to [a, b]."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = [math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) for z in (alpha, beta)]
    mass = 0.5 * (math.erf(beta / math.sqrt(2)) - math.erf(alpha / math.sqrt(2)))
    shift = (pdf[0] - pdf[1]) / mass
    var = std ** 2 * (1 + (alpha * pdf[0] - beta * pdf[1]) / mass - shift ** 2)
    return mean + std * shift, math.sqrt(var)


@pytest.mark.parametrize("mean, std, a, b", [(0.0, 1.0, -2.0, 2.0), (0.5, 2.0, -1.0, 1.0), (0.0, 1.0, 1.5, 3.0)])
def test_trunc_normal_respects_bounds_and_moments(mean, std, a, b):
    """The last case keeps under 30% of the mass, so it exercises the accept/reject branch."""
    tf.manual_seed(4)
    w = param(200, 200)
    assert init.trunc_normal_(w, mean, std, a, b) is w
    m, s, lo, hi = _stats(w)
    expected_mean, expected_std = _truncated_moments(mean, std, a, b)
    assert a <= lo and hi <= b
    assert abs(m - expected_mean) < 0.01 and abs(s - expected_std) < 0.01


def test_trunc_normal_warns_when_mean_is_far_from_the_interval():
    message = same_warning(lambda lib: lib.nn.init.trunc_normal_(lib.zeros(10), mean=5.0, std=1.0, a=-1.0, b=1.0))
    assert message.startswith("mean is more than 2 std from [a, b] in nn.init.trunc_normal_.")
