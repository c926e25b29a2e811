"""Factories on a device (the interpret backend): full, arange, linspace and eye equal the CPU to
the bit; rand, randn, randint and randperm are checked by their statistics and invariants."""
import math

import numpy as np
import pytest

import tracefuse as tf
from conftest import ON_GPU
from tracefuse.codegen import triton as tt
from tracefuse.codegen.triton import creation
from tracefuse.ir import ops

pytestmark = pytest.mark.usefixtures("interpret")

DTYPES = [tf.float64, tf.float32, tf.float16, tf.bfloat16, tf.int64, tf.int32, tf.int8, tf.uint8, tf.bool]


def test_every_creation_op_has_an_emitter():
    missing = [name for name, op in ops.OPS.items() if op.kind == "creation" and name not in tt.EMITTERS]
    assert not missing


def assert_bitwise_equal(make):
    """make(device) gives the same dtype, shape and bits (NaNs, signed zeros) on cuda:0 and the CPU,
    or raises what the CPU raises."""
    try:
        expected = make("cpu")
    except (RuntimeError, ValueError) as error:
        with pytest.raises(type(error), match=str(error)):
            make("cuda:0")
        return
    got = make("cuda:0")
    assert got.device == tf.device("cuda:0")
    got = got.cpu()
    assert got.dtype is expected.dtype and got.shape == expected.shape
    a, b = got.numpy(), expected.numpy()
    if ON_GPU and a.dtype.kind == "f":  # a GPU writes its canonical NaN, whatever the NaN's payload
        nan = np.isnan(a)
        assert (nan == np.isnan(b)).all() and a[~nan].tobytes() == b[~nan].tobytes(), (a, b)
        return
    assert a.tobytes() == b.tobytes(), (a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_full(dtype):
    values = [0, 1, 3, True, 2.5, 0.1, 1e-3]
    if dtype.is_floating_point:
        values += [-0.0, math.nan, math.inf, -1e10, 1e10]  # 1e10 overflows float16 to inf, as on the CPU
    elif dtype is not tf.uint8:
        values += [-7, -2.5]
    for value in values:
        assert_bitwise_equal(lambda d: tf.full((3, 5), value, dtype=dtype, device=d))
    assert_bitwise_equal(lambda d: tf.zeros(0, 4, dtype=dtype, device=d))
    assert_bitwise_equal(lambda d: tf.ones((), dtype=dtype, device=d))


@pytest.mark.parametrize("dtype", DTYPES)
def test_arange(dtype):
    for args in [(10,), (2, 17, 3), (-3, 4), (0.0, 1.0, 0.1), (1.5, -2.5, -0.3), (0, 0), (5, 1, -1),
                 (0.1, 100.3, 0.7), (2**40, 2**40 + 5)]:
        if dtype is tf.uint8 and min(args) < 0 or dtype in (tf.int8, tf.int32, tf.uint8, tf.bool, tf.float16) \
                and max(args) > 1000:
            continue
        assert_bitwise_equal(lambda d: tf.arange(*args, dtype=dtype, device=d))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linspace(dtype):
    for args in [(0, 1, 5), (-1.5, 2.25, 7), (3, -3, 1), (0, 10, 0), (0.1, 0.7, 33), (-7, 100, 1031), (1, 2, 2)]:
        if dtype is tf.uint8 and min(args[:2]) < 0:
            continue
        assert_bitwise_equal(lambda d: tf.linspace(*args, dtype=dtype, device=d))


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.bfloat16, tf.int64, tf.bool])
def test_eye(dtype):
    for n, m in [(3, 3), (4, 7), (7, 2), (0, 3), (1, 1), (40, 33)]:
        assert_bitwise_equal(lambda d: tf.eye(n, m, dtype=dtype, device=d))


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
def test_rand_and_randn_statistics(dtype):
    n = 20000
    u = tf.rand(100, n // 100, dtype=dtype, device="cuda:0")
    assert u.dtype is dtype and u.shape == (100, n // 100)
    u = u.cpu().float().numpy().ravel()
    assert u.min() >= 0 and u.max() <= 1  # float16/bfloat16 may round up to 1, as on the CPU
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005  # 5 standard errors
    assert len(np.unique(u)) > (n // 2 if dtype in (tf.float64, tf.float32) else 200)
    z = tf.randn(n, dtype=dtype, device="cuda:0").cpu().float().numpy()
    assert abs(z.mean()) < 0.04 and abs(z.std() - 1) < 0.03
    assert abs(np.mean(z**3)) < 0.1 and abs(np.mean(z**4) - 3) < 0.3
    assert abs(np.mean(z < -1.0) - 0.1587) < 0.015  # the normal CDF at -1


def test_random_draws_differ_per_call_and_repeat_after_manual_seed():
    for make in [lambda: tf.rand(50, device="cuda:0"), lambda: tf.randn(50, dtype=tf.float64, device="cuda:0"),
                 lambda: tf.randint(0, 1000, (50,), device="cuda:0"), lambda: tf.randperm(50, device="cuda:0")]:
        assert not make().cpu().equal(make().cpu())
        tf.manual_seed(11)
        first = make().cpu()
        tf.manual_seed(11)
        assert first.equal(make().cpu())


@pytest.mark.parametrize("dtype", [tf.int64, tf.int32, tf.int8, tf.uint8, tf.float32])
def test_randint_range_and_uniformity(dtype):
    low, high = (3, 250) if dtype is tf.uint8 else (-5, 7)
    r = tf.randint(low, high, (6000,), dtype=dtype, device="cuda:0")
    assert r.dtype is dtype
    r = r.cpu().numpy().astype(np.int64)
    assert r.min() >= low and r.max() < high
    counts = np.bincount(r - low, minlength=high - low)
    expected = len(r) / (high - low)
    assert ((counts - expected) ** 2 / expected).sum() < 2 * (high - low) + 60  # chi-square, far in the tail


def test_randint_wide_range():
    r = tf.randint(-2**62, 2**62, (2000,), device="cuda:0").cpu().numpy()
    assert r.min() >= -2**62 and r.max() < 2**62 and r.min() < -2**61 and r.max() > 2**61


@pytest.mark.parametrize("n", [0, 1, 2, 5, 37])
def test_randperm_is_a_permutation(n):
    p = tf.randperm(n, device="cuda:0")
    assert p.dtype is tf.int64 and p.shape == (n,)
    assert sorted(p.cpu().numpy().tolist()) == list(range(n))


def test_randperm_through_the_bitonic_network(monkeypatch):
    """Past SORT_IN_ONE_PROGRAM elements the keys are sorted in device memory, one launch per step."""
    monkeypatch.setattr(creation, "SORT_IN_ONE_PROGRAM", 16)
    monkeypatch.setattr(creation, "MERGE_BLOCK", 16)
    with tt.recording() as records:
        p = tf.randperm(100, dtype=tf.float32, device="cuda:0")
    assert p.dtype is tf.float32
    assert sorted(p.cpu().numpy().tolist()) == list(range(100))
    assert sum(r.kernel.name == "randperm_merge_kernel" for r in records) == 7 * 8 // 2  # 128 = 2^7 wide


def test_randperm_positions_are_uniform():
    first = np.array([tf.randperm(4, device="cuda:0").cpu().numpy()[0] for _ in range(120)])
    counts = np.bincount(first, minlength=4)
    assert counts.min() > 10  # 30 expected per value
