"""Movement emitters that copy (clone, reshape, flip, repeat, cat, pad, tril/triu, gather,
scatter, getitem/index_put with index tensors and boolean masks, index_select) on the interpret
backend against the CPU: values, dtypes, shapes, and gradients (whose rules are movement ops too:
scatter, index_put, getitem, pad, flip)."""

import numpy as np
import pytest

import tracefuse as tf
import tracefuse.nn.functional as F
from conftest import ON_GPU, assert_device_matches, to_numpy
from tracefuse.codegen.triton import recording
from tracefuse.dispatch import dispatch
from tracefuse.ir.ops import TensorSlot

pytestmark = pytest.mark.usefixtures("interpret")

DTYPES = [tf.float64, tf.float32, tf.float16, tf.bfloat16, tf.int64, tf.int32, tf.int8, tf.uint8, tf.bool]
DTYPE_IDS = ["f64", "f32", "f16", "bf16", "i64", "i32", "i8", "u8", "bool"]


def randn(*shape, dtype=tf.float64, scale=1.0):
    """Random values in `dtype` (integers spread over +-scale * 3, bools about half true)."""
    x = tf.randn(*shape, dtype=tf.float64) * scale
    return (x > 0) if dtype is tf.bool else x.to(dtype)


def here(index, like):
    """An index tensor on `like`'s device (the tests' functions run on both)."""
    return index.to(like.device)


def assert_grads_match(fn, *tensors, rtol=1e-12, atol=1e-12):
    """fn's gradients with respect to the float inputs for one random output gradient, on the
    CPU and on cuda:0 (forward and backward on the device)."""
    seed = tf.randn(tuple(fn(*tensors).shape), dtype=tf.float64)

    def grads(device):
        leaves = [t.detach().requires_grad_(t.dtype.is_floating_point) for t in tensors]
        out = fn(*[t.to(device) for t in leaves])
        out.backward(seed.to(out.dtype).to(out.device))
        return [t.grad for t in leaves if t.requires_grad]

    got, expected = grads("cuda:0"), grads("cpu")
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if e is None:
            continue
        assert g.device.type == "cpu" and g.dtype is e.dtype and tuple(g.shape) == tuple(e.shape)
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=rtol, atol=atol)


def kernels(fn, *tensors):
    """The names of the kernels fn launches on copies of tensors on cuda:0."""
    moved = [t.cuda() for t in tensors]
    with recording() as records:
        fn(*moved)
    return [r.kernel.name for r in records]


# --- strided copies ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_copies_every_dtype(dtype):
    x = randn(3, 17, 5, dtype=dtype, scale=9)
    assert_device_matches(lambda x: x.permute(2, 0, 1).clone(), x)
    assert_device_matches(lambda x: x.permute(2, 0, 1).reshape(-1, 17), x)
    assert_device_matches(lambda x: x.flip(0, 2), x)
    assert_device_matches(lambda x: x[:, ::4].repeat(2, 1, 1, 3), x)
    assert_device_matches(lambda x: x.tril(), x)
    assert_device_matches(lambda x: x.t().triu(1) if x.ndim == 2 else x.permute(2, 1, 0).triu(1), x)
    assert_device_matches(lambda x: F.pad(x, (2, 1, 0, 3)), x)


def test_reshape_copy_launches_one_kernel_and_views_launch_none():
    x = randn(4, 6)
    assert kernels(lambda x: x.t().reshape(24), x) == ["reshape_kernel"]
    assert kernels(lambda x: x.reshape(3, 8), x) == []
    assert_device_matches(lambda x: x.t().reshape(2, -1, 2), x)
    assert_device_matches(lambda x: x[:, 1:5:2].reshape(8), x)


def test_flip_repeat_edge_cases():
    x = randn(4, 1, 5)
    assert_device_matches(lambda x: x.flip(1), x)
    assert_device_matches(lambda x: x.flip(0, 1, 2), x)
    assert_device_matches(lambda x: x.repeat(1, 3, 1), x)
    assert_device_matches(lambda x: x.repeat(2, 1, 1, 2), x)
    assert_device_matches(lambda x: x.repeat(0, 1, 2), x)
    assert_device_matches(lambda x: x.flip(0), randn(0, 3))
    assert_device_matches(lambda x: x.repeat(2), tf.tensor(3.5, dtype=tf.float64))
    assert_device_matches(lambda x: x.clone(), tf.tensor(2.5, dtype=tf.float64))


@pytest.mark.parametrize("diagonal", [-2, 0, 3, 40])
def test_triangles(diagonal):
    x = randn(2, 17, 33)
    assert_device_matches(lambda x: x.tril(diagonal), x)
    assert_device_matches(lambda x: x.triu(diagonal), x)
    assert_device_matches(lambda x: x[0, :5].t().triu(-diagonal), x)


def test_64_bit_offsets(monkeypatch):
    """The int64-offset variants (chosen for arrays past 2**31 elements), forced."""
    from tracefuse.codegen.triton import movement, pointwise

    monkeypatch.setattr(movement, "INT32_LIMIT", 0)
    monkeypatch.setattr(pointwise, "INT32_LIMIT", 0)
    x = randn(3, 5, 4)
    assert_device_matches(lambda x: x.flip(1).tril(), x)
    assert_device_matches(lambda x: tf.cat([x, x * 2], 1), x)
    assert_device_matches(lambda x: x[here(tf.tensor([2, 0, -1]), x), 1:, here(tf.tensor([[1], [3]]), x)], x)
    assert_device_matches(lambda x: x[x > 0], x)
    assert_device_matches(lambda x: x.scatter_add(1, here(tf.tensor([[1, 1, 0, 4]] * 3), x)[..., None].expand(3, 4, 4), x), x)


# --- concatenation -------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_cat(dim):
    parts = [randn(*[n if d == dim else s for d, s in enumerate((2, 3, 5))]) for n in (1, 4, 0, 2)]
    assert_device_matches(lambda *xs: tf.cat(xs, dim), *parts)
    assert kernels(lambda *xs: tf.cat(xs, dim), *parts) == ["cat_kernel"]


def test_cat_strided_promoting_and_many_inputs():
    x = randn(6, 7)
    assert_device_matches(lambda x: tf.cat([x.t(), x[::2].t() * 2, x.t()[:, 1::3]], 1), x)
    assert_device_matches(lambda a, b, c: dispatch("cat", a, b, c, dim=0), randn(2, 3, dtype=tf.int32, scale=9),
                          randn(1, 3, dtype=tf.float16), randn(2, 3, dtype=tf.bool), rtol=1e-3)
    assert_device_matches(lambda a, b: dispatch("cat", a, b, dim=1), randn(2, 3, dtype=tf.bfloat16),
                          randn(2, 2, dtype=tf.float16), rtol=1e-3)
    pieces = [randn(2, k % 3 + 1) for k in range(19)]  # past MAX_CAT_INPUTS: one launch per 8 inputs
    assert_device_matches(lambda *xs: tf.cat(xs, 1), *pieces)
    assert kernels(lambda *xs: tf.cat(xs, 1), *pieces) == ["cat_kernel"] * 3


# --- padding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16, tf.bfloat16, tf.int8, tf.bool], ids=["f64", "f16", "bf16", "i8", "bool"])
def test_constant_pad_and_crop(dtype):
    x = randn(2, 5, 7, dtype=dtype, scale=9)
    assert_device_matches(lambda x: F.pad(x, (1, 2)), x)
    assert_device_matches(lambda x: F.pad(x, (-1, 3, 2, -2), value=1), x)
    assert_device_matches(lambda x: F.pad(x, (0, 0, 0, 0, 1, 1), value=3), x)
    assert_device_matches(lambda x: F.pad(x.transpose(1, 2), (2, 0, 1, 1)), x)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_index_pad_modes_on_the_device(mode):
    assert_device_matches(lambda x: F.pad(x, (2, 1, 1, 2), mode=mode), randn(2, 3, 4, 5))


def test_pad_values_convert_to_the_dtype():
    assert_device_matches(lambda x: F.pad(x, (1, 1), value=2.7), randn(2, 3, dtype=tf.int32, scale=9))
    assert_device_matches(lambda x: F.pad(x, (1, 1), value=0.1), randn(2, 3, dtype=tf.float32), rtol=0)
    assert_device_matches(lambda x: F.pad(x, (1, 1), value=0.1), randn(2, 3, dtype=tf.bfloat16), rtol=0)
    assert_device_matches(lambda x: F.pad(x, (1, 1), value=float("-inf")), randn(2, 3))


# --- gather / scatter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_gather(dim):
    x = randn(4, 5, 6)
    index = tf.randint(0, x.shape[dim], (3, 4, 2))
    assert_device_matches(lambda x, i: x.gather(dim, i), x, index)
    index = tf.randint(0, x.shape[2 - dim], (2, 4, 3))  # for x.transpose(0, 2), read transposed too
    assert_device_matches(lambda x, i: x.transpose(0, 2).gather(dim, i.transpose(0, 2)), x, index)


def test_gather_dtypes_and_int32_indices():
    index = tf.tensor([[0, 0, 2], [1, 2, 1]])
    for dtype in (tf.float16, tf.bfloat16, tf.int8, tf.bool):
        assert_device_matches(lambda x, i: x.gather(1, i), randn(2, 3, dtype=dtype, scale=9), index)
    assert_device_matches(lambda x, i: x.gather(1, i), randn(2, 3), index.to(tf.int32))
    assert_device_matches(lambda x, i: x.gather(0, i), randn(5), tf.tensor([4, 0, 4]))


SCATTER_INDEX = tf.tensor([[0, 2, 2, 1], [3, 3, 0, 0], [1, 1, 1, 1]])  # repeats within rows


@pytest.mark.parametrize("reduce", [None, "add", "multiply"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_scatter(reduce, dtype):
    if ON_GPU and reduce is None:
        pytest.skip("SCATTER_INDEX repeats indices: which write wins is unspecified on a GPU (as in PyTorch)")
    x, src = randn(3, 5, dtype=dtype, scale=3), randn(3, 6, dtype=dtype, scale=3)
    rtol = 1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-12
    assert_device_matches(lambda x, i, s: x.scatter(1, i, s, reduce=reduce), x, SCATTER_INDEX, src, rtol=rtol, atol=rtol)
    value = True if dtype is tf.bool else 2
    assert_device_matches(lambda x, i: x.scatter(1, i, value=value, reduce=reduce), x, SCATTER_INDEX, rtol=rtol)


def test_scatter_along_dim0_and_strided():
    index = tf.tensor([[2, 0, 1], [2, 2, 0]])
    assert_device_matches(lambda x, i, s: x.scatter_add(0, i, s), randn(3, 4), index, randn(2, 5))
    assert_device_matches(lambda x, i, s: x.t().scatter(0, i, s.t(), reduce="multiply"), randn(4, 3), index, randn(5, 2))
    assert_device_matches(lambda x, i, s: x.scatter(0, i, s), randn(5), tf.tensor([4, 0]), randn(2))


# --- indexing with index tensors ---------------------------------------------------------------------


I = tf.tensor([0, 2, -1, 3])
KEYS = {
    "one_array": lambda x: x[here(I, x)],
    "slice_array_slice": lambda x: x[:, here(I[:2], x), 1:5:2],
    "arrays_apart_go_first": lambda x: x[here(I, x), :, here(I, x)],
    "broadcast_arrays": lambda x: x[here(I[:2], x)[:, None], here(tf.tensor([1, 0, 4]), x)],
    "none_int_ellipsis": lambda x: x[None, 1, ..., here(I, x)[:, None]],
    "int_and_array_apart": lambda x: x[here(I, x), :, 1],
    "python_bool": lambda x: x[True, here(I[:2], x)],
    "python_bools_only": lambda x: x[1, True, ::2],
    "python_false": lambda x: x[False],
    "int32_index": lambda x: x[:, here(I.to(tf.int32)[:3] % 5, x)],
    "empty_index": lambda x: x[here(tf.tensor([], dtype=tf.int64), x)],
    "cpu_scalar_index": lambda x: x[:, tf.tensor(2), here(I[:3], x)],
}


@pytest.mark.parametrize("key", list(KEYS))
def test_getitem_with_index_arrays(key):
    assert_device_matches(KEYS[key], randn(4, 5, 6))


def test_getitem_dtypes_and_strided_input():
    for dtype in (tf.float16, tf.bfloat16, tf.int8, tf.bool):
        assert_device_matches(lambda x: x[here(I, x)], randn(4, 3, dtype=dtype, scale=9))
    assert_device_matches(lambda x: x.t()[1:, here(I[:3], x)], randn(4, 6))


MASKS = {
    "full_mask": lambda x: x[x > 0.3],
    "leading_mask": lambda x: x[x[:, 0, 0] > 0],
    "middle_mask": lambda x: x[:, x[0, :, 0] > 0, 1:3],
    "int_then_two_dim_mask": lambda x: x[0, x[0] > 0],
    "all_false": lambda x: x[x > 100],
    "zero_dim_mask": lambda x: x[x.sum() > -1000],
    "strided_mask": lambda x: x[:, ::2][(x > 0)[:, ::2]],
}


@pytest.mark.parametrize("mask", list(MASKS))
def test_getitem_with_boolean_masks(mask):
    """The device counts the true elements, copies only that count to the host and gathers."""
    assert_device_matches(MASKS[mask], randn(3, 5, 4))


def test_index_select():
    x = randn(4, 5, 6)
    for dim in range(3):
        assert_device_matches(lambda x: x.index_select(dim, here(tf.tensor([3, 0, 0, 1]), x)), x)
    assert_device_matches(lambda x: x.t().index_select(1, here(tf.tensor([3, 1], dtype=tf.int32), x)), randn(5, 4))


def set_items(key_fn, value_fn):
    def update(x):
        x = x.clone()
        x[key_fn(x)] = value_fn(x)
        return x
    return update


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_setitem(dtype):
    x = randn(4, 5, dtype=dtype, scale=9)
    one = True if dtype is tf.bool else 7
    assert_device_matches(set_items(lambda x: (slice(None), here(tf.tensor([1, 3]), x)), lambda x: one), x)
    assert_device_matches(set_items(lambda x: (here(tf.tensor([2, 0]), x),), lambda x: x[1]), x)
    assert_device_matches(set_items(lambda x: x > 0, lambda x: x[x > 0].flip(0)), x)
    assert_device_matches(set_items(lambda x: (slice(1, 3), 2), lambda x: x[:2, 0]), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_index_put_accumulate_with_repeats(dtype):
    x, values = randn(4, 5, dtype=dtype, scale=3), randn(3, 5, dtype=dtype, scale=3)
    rtol = 1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-12
    # (without accumulate, which repeated write wins is unspecified on a GPU, as in PyTorch)
    for accumulate in (True,) if ON_GPU else (False, True):
        assert_device_matches(lambda x, v, i: dispatch("index_put", x, v, i, index=(TensorSlot(0),), accumulate=accumulate),
                              x, values, tf.tensor([2, 0, 2]), rtol=rtol, atol=rtol)
        assert_device_matches(lambda x, v, i: dispatch("index_put", x, v, i, i, index=(TensorSlot(0), TensorSlot(1)),
                                                       accumulate=accumulate), x, values[0, 0], tf.tensor([3, 1, 3, 3]),
                              rtol=rtol, atol=rtol)


def test_index_put_with_masks_and_0dim_values():
    x = randn(3, 4)
    assert_device_matches(lambda x: dispatch("index_put", x, x[0, 0], x > 0, index=(TensorSlot(0),), accumulate=True), x)
    assert_device_matches(lambda x: dispatch("index_put", x, tf.tensor(5.0, dtype=tf.float64), x > 0,
                                             index=(TensorSlot(0),), accumulate=False), x)  # a 0-dim CPU value


# --- gradients (the backward rules run scatter, index_put, getitem, pad, flip on the device) ---------------


@pytest.mark.parametrize("name", ["getitem", "getitem_mask", "gather", "index_select", "scatter", "scatter_add",
                                  "index_put", "flip", "repeat", "pad", "cat", "tril"])
def test_grad(name):
    x, y = randn(4, 5), randn(4, 5)
    fns = {
        "getitem": lambda x, y: x[here(tf.tensor([1, 1, 3]), x), 1:] * 2,
        "getitem_mask": lambda x, y: x[y > 0],
        "gather": lambda x, y: x.gather(1, here(SCATTER_INDEX, x)),
        "index_select": lambda x, y: x.index_select(1, here(tf.tensor([4, 0, 4]), x)),
        "scatter": lambda x, y: x.scatter(1, here(SCATTER_INDEX[:, :3], x), y[:3, :3]),
        "scatter_add": lambda x, y: x.scatter_add(1, here(SCATTER_INDEX, x), y[:3, :4]),
        "index_put": lambda x, y: dispatch("index_put", x, y[0], here(tf.tensor([2, 0]), x), index=(TensorSlot(0),),
                                           accumulate=False),
        "flip": lambda x, y: x.flip(1) * y,
        "repeat": lambda x, y: x.repeat(2, 1, 3),
        "pad": lambda x, y: F.pad(x, (2, -1, 1, 1)),
        "cat": lambda x, y: tf.cat([x, y.t()[:2].t()], 1),
        "tril": lambda x, y: x.tril(1) + y.triu(),
    }
    assert_grads_match(fns[name], x, y)


def test_out_of_range_indices_do_not_touch_other_memory():
    """Undefined results, as on CUDA, but no write lands outside the output."""
    x = randn(2, 3).cuda()
    out = x.scatter(1, tf.tensor([[5, 0, 1], [-1, 2, 0]]).cuda(), randn(2, 3).cuda())
    assert tuple(out.shape) == (2, 3)
    got = x.gather(1, tf.tensor([[7, 0]]).cuda()).cpu()
    assert to_numpy(got)[0, 0] == 0.0


def test_only_a_mask_count_comes_back_to_the_host(monkeypatch):
    """Emitters read index values on the device; a boolean mask's true count is the one value
    copied to the host (the result's shape depends on it)."""
    from tracefuse.runtime import devices

    x, index = randn(4, 5).cuda(), tf.tensor([[1, 3], [0, 0]]).cuda()
    backend = devices.backend(x.device)
    copied = []
    to_host = backend.to_host
    monkeypatch.setattr(backend, "to_host", lambda a, device: copied.append(a.size) or to_host(a, device))
    x[index[0]], x[:, index], x.gather(1, index), x.scatter_add(1, index, x), x.index_select(1, index[0])
    dispatch("index_put", x, x[0, 0], index, index=(TensorSlot(0),), accumulate=True)
    assert copied == []
    mask = x > 0
    with recording() as records:
        x[mask]
    assert copied == [1]
    assert [r.kernel.name for r in records] == ["mask_count_kernel", "mask_scan_kernel", "mask_positions_kernel",
                                                "getitem_kernel"]


def test_mask_counts_scan_over_many_blocks(monkeypatch):
    """Tiny blocks, so the per-block counts take several steps of the scan's loop."""
    from tracefuse.codegen.triton import movement

    monkeypatch.setattr(movement, "block_size", lambda numel, low=128, high=1024: 4)
    assert_device_matches(lambda x: x[x > 0], randn(7, 9))
    assert_device_matches(set_items(lambda x: x > 0, lambda x: x[x > 0] * 2), randn(7, 9))
