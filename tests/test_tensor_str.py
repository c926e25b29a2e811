"""tracefuse._tensor_str must print exactly what PyTorch prints; torch is used only as the oracle."""
import zlib

import ml_dtypes
import numpy as np
import pytest
import torch

from tracefuse._tensor_str import tensor_repr

FLOAT_SHAPES = [(), (5,), (3, 4), (2, 3, 4), (2, 2, 2, 2), (1200,), (40, 40), (2, 600),
                (100,), (10, 12, 9), (7, 3), (1, 1, 1)]
KINDS = ["tiny", "unit", "thousands", "huge", "integers", "big_integers", "negative",
         "nan_inf", "wide_ratio", "zeros", "all_nan"]
INT_DTYPES = ["int64", "int32", "int16", "int8", "uint8", "bool"]
INT_SHAPES = [(), (5,), (3, 4), (2, 3, 4), (1200,), (40, 40), (30,)]


def _values(kind, shape, rng):
    """Random float64 values of one magnitude class, seeded by the caller."""
    normal = rng.standard_normal(shape)
    if kind == "tiny":
        return normal * 1e-6
    if kind == "unit":
        return normal
    if kind == "thousands":
        return np.abs(normal) * 1e3 + 1.0
    if kind == "huge":
        return normal * 1e9
    if kind == "integers":
        return rng.integers(-50, 50, shape).astype(np.float64)
    if kind == "big_integers":
        return rng.integers(-3, 3, shape) * 1e9
    if kind == "negative":
        return -np.abs(normal) * 10
    if kind == "nan_inf":
        values = normal * 5
        flat = values.reshape(-1)
        flat[::3] = np.nan
        flat[1::4] = np.inf
        flat[2::5] = -np.inf
        return values
    if kind == "wide_ratio":
        return normal * 10.0 ** rng.integers(-3, 3, shape)
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "all_nan":
        return np.full(shape, np.nan)
    raise ValueError(kind)


def _torch_tensor(array, dtype_name):
    if dtype_name == "bfloat16":
        return torch.from_numpy(np.array(array, dtype=np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def _numpy_values(t, dtype_name):
    if dtype_name == "bfloat16":
        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().numpy()


def _expected(t):
    return repr(t).replace("torch.", "tracefuse.")


def _check(array, dtype_name, **kwargs):
    t = _torch_tensor(array, dtype_name)
    assert tensor_repr(array, dtype_name, **kwargs) == _expected(t)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", FLOAT_SHAPES, ids=str)
def test_float_matches_torch(shape, kind, dtype_name):
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind, dtype_name)).encode()))
    array = _values(kind, shape, rng).astype(dtype_name)
    _check(array, dtype_name)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["unit", "integers", "negative", "nan_inf", "tiny", "thousands"])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4), (1200,), (40, 40)], ids=str)
def test_half_matches_torch(shape, kind, dtype_name):
    rng = np.random.default_rng(7)
    values = _values(kind, shape, rng)
    np_type = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float16
    _check(values.astype(np_type), dtype_name)


@pytest.mark.parametrize("dtype_name", INT_DTYPES)
@pytest.mark.parametrize("shape", INT_SHAPES, ids=str)
def test_integer_and_bool_match_torch(shape, dtype_name):
    rng = np.random.default_rng(11)
    if dtype_name == "bool":
        array = rng.random(shape) < 0.5
    else:
        info = np.iinfo(dtype_name)
        array = rng.integers(max(info.min, -10**6), min(info.max, 10**6), shape, dtype=dtype_name)
    _check(np.asarray(array), dtype_name)


@pytest.mark.parametrize("value", [3.0, 0.5, -0.0, np.nan, -np.inf, 1e-9, 6.5e4, 1234.5678])
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16"])
def test_scalars_match_torch(value, dtype_name):
    _check(np.array(value, dtype=dtype_name), dtype_name)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"] + INT_DTYPES)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4)], ids=str)
def test_empty_matches_torch(shape, dtype_name):
    np_type = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else dtype_name
    _check(np.zeros(shape, dtype=np_type), dtype_name)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (2, 600), (0, 3)], ids=str)
def test_autograd_suffixes_match_torch(shape, dtype_name):
    values = np.random.default_rng(3).standard_normal(shape)
    np_type = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else dtype_name
    array = values.astype(np_type)
    leaf = _torch_tensor(array, dtype_name).requires_grad_()
    assert tensor_repr(array, dtype_name, requires_grad=True) == _expected(leaf)
    result = leaf * 2
    assert tensor_repr(_numpy_values(result, dtype_name), dtype_name, requires_grad=True,
                       grad_fn_name=type(result.grad_fn).__name__) == _expected(result)


def test_suffix_wraps_past_linewidth():
    """A dtype and grad_fn suffix that overflow the last line move to a new, indented line."""
    array = np.linspace(-1, 1, 8, dtype=np.float16)
    result = _torch_tensor(array, "float16").requires_grad_() * 2
    assert "],\n       dtype=" in repr(result)
    assert tensor_repr(_numpy_values(result, "float16"), "float16",
                       grad_fn_name=type(result.grad_fn).__name__) == _expected(result)


def test_parameter_prefix_matches_torch():
    array = np.random.default_rng(5).standard_normal((3, 30)).astype(np.float32)
    param = torch.nn.Parameter(torch.from_numpy(array.copy()))
    got = tensor_repr(array, "float32", requires_grad=True, prefix="Parameter containing:\ntensor")
    assert got == _expected(param)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "int64"])
@pytest.mark.parametrize("shape", [(3,), (0,), (0, 2)], ids=str)
def test_default_float64_matches_torch(float64_default, shape, dtype_name):
    array = np.arange(np.prod(shape), dtype=dtype_name).reshape(shape)
    _check(array, dtype_name, default_float="float64")


def test_device_suffix_comes_first():
    array = np.array([1.0, 2.0], dtype=np.float16)
    got = tensor_repr(array, "float16", device="cuda:0", requires_grad=True)
    assert got == "tensor([1., 2.], device='cuda:0', dtype=tracefuse.float16, requires_grad=True)"
