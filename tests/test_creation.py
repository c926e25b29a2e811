"""Tensor factories against PyTorch: tensor() dtype inference, from_numpy aliasing, filled, ranged
and random constructors (shapes, dtypes, value ranges, seeding), the default dtype and repr."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tracefuse
from conftest import assert_same, torch_dtype


def both(fn):
    """fn(m) for m = tracefuse and torch."""
    return fn(tracefuse), fn(torch)


def same(fn, **tol):
    """Same result, or the same exception type and message."""
    try:
        theirs = fn(torch)
    except Exception as e:
        with pytest.raises(type(e)) as ours:
            fn(tracefuse)
        assert str(ours.value) == str(e).replace("torch.", "tracefuse.")
        return
    assert_same(fn(tracefuse), theirs, **tol)


TENSOR_DATA = [
    3, 3.5, True, -0.0, [1, 2], [1.5, 2], [True, False], [True, 2], [True, 2.5], [[1, 2], [3, 4]], ((1, 2), (3, 4)),
    [[[1.0]], [[2.0]]], [], [[]], [[], []], (1, 2.5), [2**40, -1], np.array([1, 2], dtype=np.int32),
    np.array([[1.5]], dtype=np.float16), np.array(2.5), np.array([True]), np.arange(6, dtype=np.uint8).reshape(2, 3),
    np.float64(2.5), np.float32(1.5), np.int16(3), np.bool_(True), [np.float64(1.5)], [np.int32(1)],
    [np.int32(1), 2], [np.float32(1), 2.0], [np.int32(1), 2.5], [np.float16(1)], [[1, 2], np.array([3, 4])],
    [float("inf"), float("nan")], [1e40], np.array([1.0, 2.0])[::2], np.arange(6.0).reshape(2, 3).T,
]


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")
@pytest.mark.parametrize("i", range(len(TENSOR_DATA)))
def test_tensor_dtype_inference(i):
    data = TENSOR_DATA[i]
    same(lambda m: m.tensor(data))
    for d in (tracefuse.float64, tracefuse.int32, tracefuse.bool, tracefuse.float16):
        same(lambda m: m.tensor(data, dtype=getattr(m, d.name)))


def test_tensor_from_tensors():
    same(lambda m: m.tensor([m.tensor(1, dtype=m.int32), 2]))
    same(lambda m: m.tensor([m.tensor(1.5, dtype=m.float64), 1]))
    same(lambda m: m.tensor([m.tensor([1.5]), m.tensor(2.0)]))
    with pytest.warns(UserWarning, match="To copy construct from a tensor"):
        t = tracefuse.tensor(tracefuse.ones(2, requires_grad=True))
    assert t.is_leaf and not t.requires_grad


def test_tensor_copies_and_requires_grad():
    a = np.array([1.0, 2.0])
    t = tracefuse.tensor(a)
    a[0] = 9.0
    assert t.tolist() == [1.0, 2.0]
    assert tracefuse.tensor([1.0], requires_grad=True).requires_grad
    same(lambda m: m.tensor(a, dtype=m.float32, requires_grad=True))
    assert tracefuse.as_tensor(a).numpy() is a  # as_tensor of a same-dtype array shares memory
    t = tracefuse.ones(2)
    assert tracefuse.as_tensor(t) is t
    same(lambda m: m.as_tensor([1, 2], dtype=m.float64))


def test_from_numpy_shares_memory():
    for m in (tracefuse, torch):
        a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
        t = m.from_numpy(a)
        a[0, 0] = 100.0
        t[1, 2] = -1.0
        assert t[0, 0].item() == 100.0 and a[1, 2] == -1.0
        assert t.dtype == m.float32 and tuple(t.shape) == (2, 3)
        assert np.shares_memory(t.numpy(), a)
    for dtype in (np.float64, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_):
        same(lambda m: m.from_numpy(np.ones(3, dtype=dtype)))


SIZE_FORMS = [(2, 3), ((2, 3),), ([2, 3],), ((),), (0,), (1, 0, 2)]


@pytest.mark.parametrize("size", SIZE_FORMS, ids=str)
@pytest.mark.parametrize("name", ["zeros", "ones", "empty", "rand", "randn"])
def test_sized_factories(name, size):
    ours, theirs = both(lambda m: getattr(m, name)(*size))
    assert tuple(ours.shape) == tuple(theirs.shape) and torch_dtype(ours.dtype) == theirs.dtype
    for d in ("float64", "float16", "bfloat16"):
        ours, theirs = both(lambda m: getattr(m, name)(*size, dtype=getattr(m, d)))
        assert tuple(ours.shape) == tuple(theirs.shape) and torch_dtype(ours.dtype) == theirs.dtype
    if name in ("zeros", "ones"):
        same(lambda m: getattr(m, name)(*size))
        same(lambda m: getattr(m, name)(*size, dtype=m.int32))
        same(lambda m: getattr(m, name)(*size, dtype=m.bool))


def test_full():
    same(lambda m: m.full((2, 3), 1.5))
    same(lambda m: m.full((2,), 7))
    same(lambda m: m.full((2,), True))
    same(lambda m: m.full([3], 1.5, dtype=m.int64))
    same(lambda m: m.full((), -2, dtype=m.float64))
    same(lambda m: m.full((2,), float("inf"), dtype=m.float16))


ARANGE = [(5,), (0, 1, 0.1), (1, 2.5, 0.5), (0.0, 1.0, 0.3), (10, 0, -3), (-1, 1, 0.1), (0.5, 3), (0, 1, 1 / 3),
          (1, 1), (3, 3, -1), (0.1, 0.9, 0.2), (-5.5, 5.5, 1.1), (0, 10, 3), (2**40, 2**40 + 3)]


@pytest.mark.parametrize("args", ARANGE, ids=str)
def test_arange(args):
    same(lambda m: m.arange(*args))
    for d in ("float64", "float32", "int64"):  # (int32 with fractional steps differs inside PyTorch itself)
        try:
            expected = torch.arange(*args, dtype=getattr(torch, d))
        except ValueError as e:  # a step that truncates to 0
            with pytest.raises(ValueError, match=str(e)):
                tracefuse.arange(*args, dtype=getattr(tracefuse, d))
        else:
            assert_same(tracefuse.arange(*args, dtype=getattr(tracefuse, d)), expected)


LINSPACE = [(0, 1, 7), (-3.3, 7.1, 11), (0, 10, 5), (1, 1, 3), (0, 1, 1), (0, 1, 0), (5, -5, 4), (0, 1, 100)]


@pytest.mark.parametrize("args", LINSPACE, ids=str)
def test_linspace(args):
    same(lambda m: m.linspace(*args))
    same(lambda m: m.linspace(*args, dtype=m.float64), rtol=1e-12, atol=1e-12)
    same(lambda m: m.linspace(*args, dtype=m.int64))


def test_eye():
    for args in [(3,), (2, 4), (4, 2), (0,), (1, 0)]:
        same(lambda m: m.eye(*args))
        same(lambda m: m.eye(*args, dtype=m.int64))
        same(lambda m: m.eye(*args, dtype=m.bool))


def test_random_factories_ranges_and_dtypes():
    tracefuse.manual_seed(0)
    r = tracefuse.rand(2000)
    assert r.dtype is tracefuse.float32 and 0.0 <= r.min().item() and r.max().item() < 1.0
    assert abs(r.mean().item() - 0.5) < 0.05
    n = tracefuse.randn(4000, dtype=tracefuse.float64)
    assert n.dtype is tracefuse.float64 and abs(n.mean().item()) < 0.1 and abs(n.std().item() - 1) < 0.1
    i = tracefuse.randint(3, 10, (500,))
    assert i.dtype is tracefuse.int64 and i.min().item() == 3 and i.max().item() == 9
    assert tracefuse.randint(5, (2, 3)).shape == (2, 3)
    assert tracefuse.randint(0, 2, (4,), dtype=tracefuse.int32).dtype is tracefuse.int32
    p = tracefuse.randperm(10)
    assert p.dtype is tracefuse.int64 and sorted(p.tolist()) == list(range(10))
    assert tracefuse.randperm(0).shape == (0,)
    assert tracefuse.rand(3, dtype=tracefuse.bfloat16).dtype is tracefuse.bfloat16
    x = tracefuse.empty(3, 4)
    x.uniform_(-2, -1)
    assert -2 <= x.min().item() and x.max().item() < -1
    x.normal_(10, 0.01)
    assert abs(x.mean().item() - 10) < 0.1


def test_manual_seed_reproducibility():
    def draw():
        return (tracefuse.rand(3).tolist(), tracefuse.randn(2, 2).tolist(), tracefuse.randint(0, 100, (5,)).tolist(),
                tracefuse.randperm(6).tolist(), tracefuse.empty(3).normal_().tolist())

    tracefuse.manual_seed(1234)
    first = draw()
    assert tracefuse.initial_seed() == 1234
    tracefuse.manual_seed(1234)
    assert draw() == first
    assert draw() != first  # the stream moves on
    tracefuse.manual_seed(99)
    assert draw() != first


def test_like_factories():
    src = tracefuse.tensor([[1, 2, 3]], dtype=tracefuse.int32)
    ref = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    for name in ("zeros_like", "ones_like", "empty_like"):
        ours, theirs = getattr(tracefuse, name)(src), getattr(torch, name)(ref)
        assert tuple(ours.shape) == tuple(theirs.shape) and torch_dtype(ours.dtype) == theirs.dtype
        ours = getattr(tracefuse, name)(src, dtype=tracefuse.float64)
        assert ours.dtype is tracefuse.float64 and ours.shape == (1, 3)
    assert_same(tracefuse.full_like(src, 7), torch.full_like(ref, 7))
    assert_same(tracefuse.full_like(src, 2.5, dtype=tracefuse.float32), torch.full_like(ref, 2.5, dtype=torch.float32))
    f = tracefuse.ones(2, 5, dtype=tracefuse.float64)
    for name in ("rand_like", "randn_like"):
        out = getattr(tracefuse, name)(f)
        assert out.shape == (2, 5) and out.dtype is tracefuse.float64
    assert tracefuse.zeros_like(f, requires_grad=True).requires_grad
    assert_same(f.new_zeros(3), torch.ones(2, 5, dtype=torch.float64).new_zeros(3))
    assert_same(f.new_ones((2, 2)), torch.ones(2, 5, dtype=torch.float64).new_ones((2, 2)))
    assert_same(f.new_full((2,), 3), torch.ones(2, 5, dtype=torch.float64).new_full((2,), 3))
    assert_same(f.new_tensor([1, 2]), torch.ones(2, 5, dtype=torch.float64).new_tensor([1, 2]))


def test_default_dtype():
    assert tracefuse.get_default_dtype() is tracefuse.float32
    try:
        tracefuse.set_default_dtype(tracefuse.float64)
        torch.set_default_dtype(torch.float64)
        for fn in (lambda m: m.tensor([1.5]), lambda m: m.zeros(2), lambda m: m.arange(0, 1, 0.5), lambda m: m.rand(2),
                   lambda m: m.tensor([1, 2]) / 2, lambda m: m.tensor([1]) + 2.5, lambda m: m.full((1,), 2.0),
                   lambda m: m.linspace(0, 1, 3), lambda m: m.eye(2), lambda m: m.tensor([1, 2]).exp()):
            ours, theirs = both(fn)
            assert torch_dtype(ours.dtype) == theirs.dtype
        assert repr(tracefuse.tensor([1.5])) == "tensor([1.5000])"
        with pytest.raises(TypeError, match="only floating-point types are supported as the default type"):
            tracefuse.set_default_dtype(tracefuse.int64)
    finally:
        tracefuse.set_default_dtype(tracefuse.float32)
        torch.set_default_dtype(torch.float32)
    assert repr(tracefuse.tensor([1.5], dtype=tracefuse.float64)) == "tensor([1.5000], dtype=tracefuse.float64)"


REPRS = [
    lambda m: m.tensor([[1.5, -2.0], [3.0, 1e-4]]), lambda m: m.tensor([1, 2], dtype=m.int32), lambda m: m.zeros(2, 0),
    lambda m: m.tensor(3.5, dtype=m.float64), lambda m: m.arange(5), lambda m: m.tensor([True, False]),
    lambda m: m.ones(2, requires_grad=True), lambda m: m.ones(2, requires_grad=True) * 2,
    lambda m: m.tensor([1.0, 2.0], requires_grad=True).sum(), lambda m: m.tensor([1.5, 2], dtype=m.bfloat16),
    lambda m: m.tensor([[1.0, 2.0]], requires_grad=True)[0], lambda m: m.tensor([0.5], requires_grad=True).exp(),
    lambda m: m.tensor([], dtype=m.int64), lambda m: m.tensor([1e10, 1.0]), lambda m: m.tensor([1, 2], dtype=m.uint8),
    lambda m: m.tensor([2.0, 3.0], requires_grad=True).max(0), lambda m: m.tensor([[2.0, 3.0]]).min(1, keepdim=True),
    lambda m: m.tensor([1.0, 2.0], requires_grad=True).t(), lambda m: m.tensor([1.0], requires_grad=True).float().double(),
]


@pytest.mark.parametrize("i", range(len(REPRS)))
def test_repr(i):
    ours, theirs = both(REPRS[i])
    assert repr(ours) == repr(theirs).replace("torch.", "tracefuse.")


def test_dtype_and_device_objects():
    for d in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"):
        ours, theirs = getattr(tracefuse, d), getattr(torch, d)
        assert repr(ours) == repr(theirs).replace("torch", "tracefuse")
        assert ours.is_floating_point == theirs.is_floating_point and ours.itemsize == theirs.itemsize
        assert ours.is_signed == theirs.is_signed
    assert tracefuse.half is tracefuse.float16 and tracefuse.long is tracefuse.int64 and tracefuse.double is tracefuse.float64
    assert tracefuse.float is tracefuse.float32 and tracefuse.int is tracefuse.int32 and tracefuse.short is tracefuse.int16
    for spec in ("cpu", "cuda", "cuda:1", ("cuda", 2)):
        args = spec if isinstance(spec, tuple) else (spec,)
        ours, theirs = tracefuse.device(*args), torch.device(*args)
        assert repr(ours) == repr(theirs) and str(ours) == str(theirs) and ours.type == theirs.type
        assert ours.index == theirs.index
    assert tracefuse.device("cpu") == "cpu" and tracefuse.zeros(1).device == tracefuse.device("cpu")
    assert str(tracefuse.zeros(1).device) == "cpu"
