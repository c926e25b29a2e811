"""The composite nn ops: softmax family, layer_norm, embedding, convolution and pooling.

Convolution and pooling work on windows: `np.lib.stride_tricks.sliding_window_view` gives every
output position's receptive field as a view, convolution copies it once into columns and runs one
matmul (im2col), pooling reduces over it. Backward ops scatter back with one strided add per
kernel offset (col2im), never a Python loop over pixels. The trailing `len(kernel_size)` dims are
the spatial ones; everything before them is batch and channel.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...ir.ops import register_impl
from ...ir.shapes import window_output_size

# --- softmax family ------------------------------------------------------------------------------


@register_impl("softmax")
def softmax(x, *, dim):
    e = np.exp(_shift_by_max(x, dim))
    return e / e.sum(axis=dim, keepdims=True)


@register_impl("log_softmax")
def log_softmax(x, *, dim):
    shifted = _shift_by_max(x, dim)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


def _shift_by_max(x, dim):
    """x - max(x) along dim (stable exp); rows whose max is infinite are shifted by 0."""
    m = np.max(x, axis=dim, keepdims=True) if x.size else np.zeros_like(x)
    with np.errstate(invalid="ignore"):
        return x - np.where(np.isfinite(m), m, 0)


# --- layer_norm ----------------------------------------------------------------------------------


@register_impl("layer_norm")
def layer_norm(x, weight, bias, *, normalized_shape, eps):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    out = centered / np.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.astype(x.dtype, copy=False)


# --- embedding -----------------------------------------------------------------------------------


@register_impl("embedding")
def embedding(weight, indices, *, padding_idx):
    """Rows of weight picked by indices (padding_idx only matters to the gradient)."""
    if indices.size and (indices.min() < 0 or indices.max() >= weight.shape[0]):
        raise IndexError("index out of range in self")
    return np.take(weight, indices, axis=0)


@register_impl("embedding_backward")
def embedding_backward(grad, indices, *, num_weights, padding_idx):
    """Rows of the weight gradient: the sum of the output grads at each index (index add)."""
    dim = grad.shape[-1]
    out = np.zeros((num_weights, dim), dtype=grad.dtype)
    np.add.at(out, indices.reshape(-1), grad.reshape(-1, dim))
    if padding_idx is not None:
        out[padding_idx] = 0
    return out


# --- windows shared by convolution and pooling ---------------------------------------------------


def _pad_for_windows(x, out_sizes, kernel, stride, padding, dilation, value):
    """x padded on its spatial dims so that `out_sizes` windows fit (ceil_mode may need extra on the right)."""
    nd = len(kernel)
    widths = [(0, 0)] * (x.ndim - nd)
    for n, size, k, s, p, d in zip(out_sizes, x.shape[-nd:], kernel, stride, padding, dilation):
        needed = (n - 1) * s + d * (k - 1) + 1
        widths.append((p, max(needed - size - p, 0)))
    if not any(lo or hi for lo, hi in widths):
        return x
    return np.pad(x, widths, constant_values=value)


def _windows(xp, out_sizes, kernel, stride, dilation):
    """View of padded `xp` [..., *spatial] as [..., *out, *kernel] receptive fields (no copy)."""
    nd = len(kernel)
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = sliding_window_view(xp, span, axis=tuple(range(xp.ndim - nd, xp.ndim)))
    key = (Ellipsis,) + tuple(slice(0, n * s, s) for n, s in zip(out_sizes, stride)) \
        + tuple(slice(None, None, d) for d in dilation)
    return view[key]


def _out_sizes(spatial, kernel, stride, padding, dilation, ceil_mode=False):
    return tuple(window_output_size(n, k, s, p, d, ceil_mode)
                 for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation))


def _scatter_windows(cols, input_shape, padding, kernel, stride, dilation):
    """col2im: add every window's values [..., *out, *kernel] back at its place in the padded
    input, one strided add per kernel offset, and return the input-shaped (cropped) result."""
    nd = len(kernel)
    out_sizes = cols.shape[-2 * nd:-nd]
    spatial = tuple(input_shape[-nd:])
    padded = tuple(max(n + 2 * p, (o - 1) * s + d * (k - 1) + 1) for n, p, o, s, d, k
                   in zip(spatial, padding, out_sizes, stride, dilation, kernel))
    out = np.zeros(tuple(input_shape[:-nd]) + padded, dtype=cols.dtype)
    lead = (slice(None),) * (len(input_shape) - nd)
    for offset in itertools.product(*(range(k) for k in kernel)):
        dst = lead + tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                           for o, d, n, s in zip(offset, dilation, out_sizes, stride))
        out[dst] += cols[(Ellipsis,) + offset]
    return np.ascontiguousarray(out[(Ellipsis,) + tuple(slice(p, p + n) for n, p in zip(spatial, padding))])


# --- convolution ---------------------------------------------------------------------------------


def _im2col(x, kernel, stride, padding, dilation, groups):
    """Columns [N, G, L, C/G * prod(kernel)] of x [N, C, *spatial], and the output sizes."""
    n, c = x.shape[:2]
    out_sizes = _out_sizes(x.shape[2:], kernel, stride, padding, dilation)
    xp = _pad_for_windows(x, out_sizes, kernel, stride, padding, dilation, 0)
    win = _windows(xp, out_sizes, kernel, stride, dilation)  # [N, C, *out, *k]
    nd = len(kernel)
    win = win.reshape((n, groups, c // groups) + win.shape[2:])
    # -> [N, G, *out, C/G, *k]
    order = (0, 1) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    cols = win.transpose(order).reshape(n, groups, math.prod(out_sizes), -1)
    return cols, out_sizes


@register_impl("conv")
def conv(x, weight, bias, *, stride, padding, dilation, groups):
    kernel = weight.shape[2:]
    n, out_ch = x.shape[0], weight.shape[0]
    cols, out_sizes = _im2col(x, kernel, stride, padding, dilation, groups)
    w = weight.reshape(groups, out_ch // groups, -1)
    out = np.matmul(cols, w.transpose(0, 2, 1))  # [N, G, L, O/G]
    out = out.transpose(0, 1, 3, 2).reshape((n, out_ch) + out_sizes)
    if bias is not None:
        out = out + bias.reshape((out_ch,) + (1,) * len(kernel))
    return out


@register_impl("conv_backward")
def conv_backward(grad, x, weight, *, stride, padding, dilation, groups, output_mask):
    """Gradients of conv's (input, weight, bias); outputs masked off come back as zeros."""
    kernel = weight.shape[2:]
    nd = len(kernel)
    n, out_ch = grad.shape[:2]
    c = x.shape[1]
    g = grad.reshape(n, groups, out_ch // groups, -1)  # [N, G, O/G, L]
    w = weight.reshape(groups, out_ch // groups, -1)  # [G, O/G, C/G*k]
    gx = gw = None
    if output_mask[0]:
        cols = np.matmul(g.transpose(0, 1, 3, 2), w)  # [N, G, L, C/G*k]
        out_sizes = grad.shape[2:]
        cols = cols.reshape((n, groups) + out_sizes + (c // groups,) + kernel)
        order = (0, 1, 2 + nd) + tuple(range(2, 2 + nd)) + tuple(range(3 + nd, 3 + 2 * nd))
        cols = cols.transpose(order).reshape((n, c) + out_sizes + kernel)
        gx = _scatter_windows(cols, x.shape, padding, kernel, stride, dilation)
    if output_mask[1]:
        cols, _ = _im2col(x, kernel, stride, padding, dilation, groups)  # [N, G, L, C/G*k]
        gw = np.einsum("ngol,nglk->gok", g, cols, optimize=True).reshape(weight.shape)
    gb = grad.sum(axis=(0,) + tuple(range(2, grad.ndim))) if output_mask[2] else None
    return (gx if gx is not None else np.zeros_like(x),
            gw if gw is not None else np.zeros_like(weight),
            gb if gb is not None else np.zeros(out_ch, dtype=grad.dtype))


# --- pooling -------------------------------------------------------------------------------------


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@register_impl("max_pool")
def max_pool(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    """Max over each window, and the flat index (over the input's spatial dims) it came from."""
    nd = len(kernel_size)
    spatial = x.shape[-nd:]
    out_sizes = _out_sizes(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    xp = _pad_for_windows(x, out_sizes, kernel_size, stride, padding, dilation, _lowest(x.dtype))
    win = _windows(xp, out_sizes, kernel_size, stride, dilation)
    win = win.reshape(win.shape[:-nd] + (-1,))
    arg = np.argmax(win, axis=-1)  # first maximum in scan order, NaN counting as the maximum
    values = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    offsets = np.unravel_index(arg, kernel_size)
    flat = np.zeros(arg.shape, dtype=np.int64)
    for i, (o, n, s, p, d) in enumerate(zip(offsets, out_sizes, stride, padding, dilation)):
        pos = np.arange(n).reshape((n,) + (1,) * (nd - 1 - i)) * s - p + o * d
        flat = flat * spatial[i] + pos
    return values, flat


@register_impl("max_pool_backward")
def max_pool_backward(grad, indices, *, input_shape, spatial_ndim):
    """Each output's gradient added at the input position its maximum came from."""
    plane = math.prod(input_shape[len(input_shape) - spatial_ndim:])
    rows = math.prod(input_shape[:len(input_shape) - spatial_ndim])
    flat = indices.reshape(rows, -1) + (np.arange(rows) * plane)[:, None]
    out = np.bincount(flat.reshape(-1), weights=grad.reshape(-1), minlength=rows * plane)
    return out.astype(grad.dtype, copy=False).reshape(input_shape)


def _avg_divisor(spatial, out_sizes, kernel, stride, padding, count_include_pad, divisor_override):
    """Per-output divisor, as PyTorch's kernel: the window clipped to the padded input
    (count_include_pad) or to the input itself, unless overridden."""
    if divisor_override:
        return divisor_override
    nd = len(kernel)
    divisor = np.ones((), dtype=np.int64)
    for i, (size, n, k, s, p) in enumerate(zip(spatial, out_sizes, kernel, stride, padding)):
        start = np.arange(n) * s - p
        end = np.minimum(start + k, size + p)
        count = end - start if count_include_pad else np.minimum(end, size) - np.maximum(start, 0)
        divisor = divisor * count.reshape((n,) + (1,) * (nd - 1 - i))
    return divisor


@register_impl("avg_pool")
def avg_pool(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    nd = len(kernel_size)
    spatial = x.shape[-nd:]
    ones = (1,) * nd
    out_sizes = _out_sizes(spatial, kernel_size, stride, padding, ones, ceil_mode)
    xp = _pad_for_windows(x, out_sizes, kernel_size, stride, padding, ones, 0)
    sums = _windows(xp, out_sizes, kernel_size, stride, ones).sum(axis=tuple(range(-nd, 0)))
    divisor = _avg_divisor(spatial, out_sizes, kernel_size, stride, padding, count_include_pad, divisor_override)
    return (sums / divisor).astype(x.dtype, copy=False)


@register_impl("avg_pool_backward")
def avg_pool_backward(grad, *, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      divisor_override):
    """Each output's gradient, divided by its divisor, spread over its window (the output sizes
    come from grad; ceil_mode is kept only so that the double-backward rule can rebuild avg_pool)."""
    nd = len(kernel_size)
    spatial, out_sizes = tuple(input_shape[-nd:]), grad.shape[-nd:]
    ones = (1,) * nd
    divisor = _avg_divisor(spatial, out_sizes, kernel_size, stride, padding, count_include_pad, divisor_override)
    share = (grad / divisor).astype(grad.dtype, copy=False)
    cols = np.broadcast_to(share.reshape(share.shape + ones), share.shape + tuple(kernel_size))
    return _scatter_windows(cols, input_shape, padding, kernel_size, stride, ones)
