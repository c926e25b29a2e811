"""Movement and indexing ops: NumPy views where the layout allows (as PyTorch's views), copies otherwise."""
from __future__ import annotations

import numpy as np

from ...ir.ops import TensorSlot, register_impl


@register_impl("reshape")
def reshape(x, *, shape):
    return np.reshape(x, shape)


@register_impl("permute")
def permute(x, *, dims):
    return np.transpose(x, dims)


@register_impl("expand")
def expand(x, *, shape):
    # Writable like PyTorch's expanded views (Tensor refuses arithmetic in place on overlapping elements).
    b = np.broadcast_to(x, shape)
    return np.lib.stride_tricks.as_strided(x, b.shape, b.strides)


@register_impl("flip")
def flip(x, *, dims):
    return np.flip(x, dims).copy()  # PyTorch's flip copies


@register_impl("repeat")
def repeat(x, *, repeats):
    return np.tile(x.reshape((1,) * (len(repeats) - x.ndim) + x.shape), repeats)


@register_impl("clone")
def clone(x):
    return x.copy()


def _key(index, tensors):
    """The NumPy key for an indexing attr: placeholders replaced by the index arrays. A key of only
    ints and slices gets a trailing Ellipsis so that NumPy returns a view even for a single element."""
    key = tuple(tensors[item.k] if isinstance(item, TensorSlot) else item for item in index)
    if not tensors and Ellipsis not in key:
        key = key + (Ellipsis,)
    return key


@register_impl("to_device")
def to_device(x, *, device, source):
    """Between two CPU places, a copy; copies that involve a device are the runtime's (dispatch)."""
    return x.copy()


@register_impl("getitem")
def getitem(x, *tensors, index):
    return x[_key(index, tensors)]


@register_impl("index_put")
def index_put(x, values, *tensors, index, accumulate):
    out = x.copy()
    key = _key(index, tensors)
    if accumulate:
        np.add.at(out, key, values)
    else:
        out[key] = values
    return out


@register_impl("cat")
def cat(*xs, dim):
    return np.concatenate(xs, axis=dim)


def _leading_block(x, shape, dim):
    """x cut to `shape` in every dim but `dim`: gather/scatter indices may be smaller than x."""
    return x[tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(shape))]


def _check_index_range(x, index, dim):
    """gather/scatter take no negative indices. Checked here, in the implementation, so that a
    compiled graph checks them on every call too (NumPy would wrap a -1 around silently)."""
    size = x.shape[dim] if x.ndim else 1
    bad = index[(index < 0) | (index >= size)]
    if bad.size:
        raise RuntimeError(f"index {int(bad.flat[0])} is out of bounds for dimension {dim} with size {size}")


@register_impl("gather")
def gather(x, index, *, dim):
    _check_index_range(x, index, dim)
    return np.take_along_axis(_leading_block(x, index.shape, dim), index, axis=dim)


@register_impl("scatter")
def scatter(x, index, src, *, dim, reduce):
    _check_index_range(x, index, dim)
    out = x.copy()
    grid = list(np.indices(index.shape, sparse=True))
    grid[dim] = index
    key = tuple(grid)
    values = _leading_block(src, index.shape, dim)[tuple(slice(0, n) for n in index.shape)] \
        if np.ndim(src) else src
    if reduce == "add":
        np.add.at(out, key, values)
    elif reduce == "multiply":
        np.multiply.at(out, key, values)
    else:
        out[key] = values
    return out


@register_impl("index_select")
def index_select(x, index, *, dim):
    return np.take(x, index, axis=dim)


@register_impl("pad")
def pad(x, *, pad, value):
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    crop = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(widths))
    return np.pad(x[crop], [(max(lo, 0), max(hi, 0)) for lo, hi in widths], constant_values=value)


@register_impl("tril")
def tril(x, *, diagonal):
    return np.tril(x, diagonal)


@register_impl("triu")
def triu(x, *, diagonal):
    return np.triu(x, diagonal)
