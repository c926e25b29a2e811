"""Elementwise emitters on the interpret backend against the same ops on the CPU."""
import pytest

import tracefuse as tf
from conftest import assert_device_matches

pytestmark = pytest.mark.usefixtures("interpret")

SHAPES = [((), ()), ((5,), (5,)), ((3, 7), (7,)), ((2, 1, 5), (3, 1)), ((4, 33), ())]


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum", "eq", "lt", "ge"])
@pytest.mark.parametrize("shapes", SHAPES)
def test_binary_broadcasting(name, shapes):
    a, b = tf.randn(shapes[0], dtype=tf.float64), tf.randn(shapes[1], dtype=tf.float64)
    assert_device_matches(getattr(tf, name), a, b)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.float16, tf.bfloat16, tf.int64, tf.int32, tf.uint8])
def test_add_every_dtype(dtype):
    a = (tf.randn(6, 5) * 10).to(dtype)
    b = (tf.randn(5) * 10).to(dtype)
    assert_device_matches(lambda x, y: x + y * 2, a, b, rtol=1e-6)


def test_strided_operands_and_outputs():
    a = tf.randn(8, 6, dtype=tf.float64)
    assert_device_matches(lambda x: x.t() * x.t()[0] + x[::2].t()[:, :1], a)


def test_in_place_write_through_a_view():
    def update(x):
        x = x.clone()
        x[:, 1:3].mul_(3.0)
        return x
    assert_device_matches(update, tf.randn(4, 5, dtype=tf.float64))
