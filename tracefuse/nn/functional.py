"""tracefuse.nn.functional: the functional forms of the layers (as torch.nn.functional).

Functions with an op of their own (softmax, layer_norm, embedding, conv, pooling, dropout,
activations) check their arguments the way PyTorch does and dispatch it; the rest (losses,
batch_norm, bilinear, distances) are composed from existing ops, so autograd comes for free.
"""
from __future__ import annotations

import math
import operator
import warnings

import numpy as np

from .. import dtypes
from ..autograd import no_grad
from ..creation import arange, tensor as _as_tensor
from ..dispatch import dispatch
from ..ir.shapes import window_output_size
from ..tensor import _TYPE_NAMES, _normalize_dim, broadcast_shapes

__all__ = [
    "linear", "bilinear", "relu", "relu_", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus",
    "softmax", "log_softmax", "dropout", "embedding", "layer_norm", "batch_norm", "conv1d", "conv2d",
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "pad", "mse_loss", "l1_loss", "cross_entropy",
    "nll_loss", "binary_cross_entropy_with_logits", "cosine_similarity", "pairwise_distance", "normalize",
    "one_hot",
]

# --- linear ---------------------------------------------------------------------------------------


def linear(input, weight, bias=None):
    """y = x W^T + b; inputs with more than two dims are multiplied as one flattened matrix (as PyTorch,
    which is also what its shape errors describe)."""
    if input.ndim > 2:
        out = input.reshape(-1, input.shape[-1]).matmul(weight.t()).reshape(input.shape[:-1] + (weight.shape[0],))
    else:
        out = input.matmul(weight.t())
    return out if bias is None else out + bias


def bilinear(input1, input2, weight, bias=None):
    """y = x1^T A x2 + b for weight A [out, in1, in2]: one matmul against A, then a product with x2."""
    if input1.ndim != input2.ndim:
        raise RuntimeError(f"bilinear(): input dimensions do not match: got {input1.ndim} and {input2.ndim}")
    for i in range(input1.ndim - 1):
        if input1.shape[i] != input2.shape[i]:
            raise RuntimeError(f"bilinear(): input batch dimensions do not match at dim {i}: got "
                               f"{input1.shape[i]} and {input2.shape[i]}")
    out_f, in1, in2 = weight.shape
    for k, (x, expected) in enumerate(((input1, in1), (input2, in2)), start=1):
        if x.shape[-1] != expected:
            raise RuntimeError(f"bilinear(): input{k} size does not match weight size: got {x.shape[-1]} "
                               f"but expected {expected}")
    if bias is not None and bias.shape[-1] != out_f:
        raise RuntimeError(f"bilinear(): bias size does not match weight size: got {bias.shape[-1]} "
                           f"but expected {out_f}")
    x1, x2 = input1.reshape(-1, in1), input2.reshape(-1, in2)
    mixed = x1.matmul(weight.permute(1, 0, 2).reshape(in1, out_f * in2)).reshape(-1, out_f, in2)
    out = (mixed * x2.unsqueeze(1)).sum(-1)
    if bias is not None:
        out = out + bias
    return out.reshape(input1.shape[:-1] + (out_f,))


# --- activations ----------------------------------------------------------------------------------


def _pointwise(op, input, inplace=False, **attrs):
    return input._inplace(op, **attrs) if inplace else dispatch(op, input, **attrs)


def relu(input, inplace=False):
    return _pointwise("relu", input, inplace)


def relu_(input):
    return _pointwise("relu", input, True)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return _pointwise("leaky_relu", input, inplace, negative_slope=negative_slope)


def elu(input, alpha=1.0, inplace=False):
    return _pointwise("elu", input, inplace, alpha=float(alpha))


def gelu(input, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return dispatch("gelu", input, approximate=approximate)


def sigmoid(input):
    return dispatch("sigmoid", input)


def tanh(input):
    return dispatch("tanh", input)


def softplus(input, beta=1.0, threshold=20.0):
    return dispatch("softplus", input, beta=beta, threshold=threshold)


def _implicit_softmax_dim(name, ndim, stacklevel):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax(op, input, dim, stacklevel, dtype):
    if dim is None:
        dim = _implicit_softmax_dim(op, input.ndim, stacklevel + 1)
    if dtype is not None:
        input = input.to(dtype)
    d = _normalize_dim(dim, input.ndim)
    if input.ndim == 0:
        return dispatch(op, input.reshape(1), dim=0).reshape(())
    return dispatch(op, input, dim=d)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _softmax("softmax", input, dim, _stacklevel, dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _softmax("log_softmax", input, dim, _stacklevel, dtype)


def dropout(input, p=0.5, training=True, inplace=False):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return input
    out, _ = dispatch("dropout", input, p=float(p))
    if inplace:
        input._check_inplace()
        return input._assign(out)
    return out


# --- embedding and normalization ------------------------------------------------------------------


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0):
    if weight.ndim != 2:
        raise RuntimeError("'weight' must be 2-D")
    num = weight.shape[0]
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise AssertionError("Padding_idx must be within num_embeddings")
        padding_idx = padding_idx % num
    if input.dtype not in (dtypes.int64, dtypes.int32):
        raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                           f"Long, Int; but got tracefuse.{_TYPE_NAMES[input.dtype.name]}Tensor instead (while "
                           "checking arguments for embedding)")
    if max_norm is not None:
        _embedding_renorm_(weight, input, max_norm, norm_type)
    return dispatch("embedding", weight, input, padding_idx=padding_idx)


def _embedding_renorm_(weight, indices, max_norm, norm_type):
    """Rescale, in place, the looked-up rows whose norm exceeds max_norm (PyTorch's embedding_renorm_).
    Repeated indices write the same row value twice; reading the indices' values (np.unique) would
    make a compiled graph depend on one batch's tokens."""
    with no_grad():
        rows = indices.reshape(-1)
        picked = weight.index_select(0, rows)
        norms = picked.norm(p=norm_type, dim=1, keepdim=True)
        scale = dispatch("where", norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        weight[rows] = picked * scale


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    if not isinstance(normalized_shape, (tuple, list)):
        raise TypeError("layer_norm(): argument 'normalized_shape' (position 2) must be tuple of ints, not "
                        f"{type(normalized_shape).__name__}")
    shape = tuple(normalized_shape)
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one "
                           "element, but got normalized_shape = []")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(t.shape)} and normalized_shape = {list(shape)}")
    if len(shape) > input.ndim or tuple(input.shape[input.ndim - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape "
                           f"[*, {', '.join(map(str, shape))}], but got input of size{list(input.shape)}")
    return dispatch("layer_norm", input, weight, bias, normalized_shape=shape, eps=float(eps))


def _verify_batch_size(size):
    if size[0] * math.prod(size[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """Normalize over every dim but the channel dim (1). In training the batch statistics are used
    and the running ones move towards them (the running variance with Bessel's correction)."""
    if training:
        _verify_batch_size(input.size())
    channels = input.shape[1] if input.ndim > 1 else 1
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError(f"running_{'mean' if running_mean is None else 'var'} must be defined in evaluation mode")
    axes = (0,) + tuple(range(2, input.ndim))
    shape = (1, channels) + (1,) * (input.ndim - 2)
    if training:
        mean = input.mean(dim=axes, keepdim=True)
        var = input.var(dim=axes, correction=0, keepdim=True)
        if running_mean is not None:
            n = input.numel() // channels  # (a symbolic size under dynamic=True: the update keeps it one)
            with no_grad():
                running_mean.mul_(1 - momentum).add_(mean.reshape(channels) * momentum)
                running_var.mul_(1 - momentum).add_(var.reshape(channels) * n / max(n - 1, 1) * momentum)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    out = (input - mean) * (var + eps).rsqrt()
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


# --- convolution ----------------------------------------------------------------------------------


def _ntuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _conv_param(name, value, n):
    """A conv argument as one int per spatial dim: PyTorch accepts one int or exactly n of them."""
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {n} values to match the "
                           f"convolution dimensions, but got {name}={list(value)}")
    return tuple(int(v) for v in value)


def _same_padding(input, kernel, stride, dilation):
    """'same' padding: half the dilated kernel on each side; an odd remainder is padded on the right first."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    left = tuple(t // 2 for t in totals)
    extra = [t - 2 * lo for t, lo in zip(totals, left)]
    if any(extra):
        warnings.warn("Using padding='same' with even kernel lengths and odd dilation may require a zero-padded "
                      "copy of the input be created", stacklevel=4)
        flat = []
        for e in reversed(extra):
            flat += [0, e]
        input = pad(input, flat)
    return input, left


def _conv(nd, input, weight, bias, stride, padding, dilation, groups):
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to conv{nd}d, "
                           f"but got input of size: {list(input.shape)}")
    batched = input.ndim == nd + 2
    x = input if batched else input.unsqueeze(0)
    k = weight.ndim - 2
    stride = _conv_param("stride", _ntuple(stride, nd), k)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        dilation = _conv_param("dilation", _ntuple(dilation, nd), k)
        if padding == "same":
            x, padding = _same_padding(x, weight.shape[2:], stride, dilation)
        else:
            padding = (0,) * k
    else:
        padding = _conv_param("padding", _ntuple(padding, nd), k)
        dilation = _conv_param("dilation", _ntuple(dilation, nd), k)
    _check_conv_shapes(x, weight, bias, stride, padding, dilation, groups)
    out = dispatch("conv", x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return out if batched else out.squeeze(0)


def _check_conv_shapes(x, weight, bias, stride, padding, dilation, groups):
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("non-positive dilation is not supported")
    w_shape, x_shape = list(weight.shape), list(x.shape)
    if w_shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size [{w_shape}] instead")
    if x_shape[1] != w_shape[1] * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {w_shape}, expected input{x_shape} to have "
                           f"{w_shape[1] * groups} channels, but got {x_shape[1]} channels instead")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != w_shape[0]):
        raise RuntimeError(f"Given weight of size {w_shape}, expected bias to be 1-dimensional with {w_shape[0]} "
                           f"elements, but got bias of size {list(bias.shape)} instead")
    padded = [n + 2 * p for n, p in zip(x_shape[2:], padding)]
    spans = [d * (k - 1) + 1 for k, d in zip(w_shape[2:], dilation)]
    if any(s > n for s, n in zip(spans, padded)):
        raise RuntimeError(f"Calculated padded input size per channel: ({' x '.join(map(str, padded))}). Kernel "
                           f"size: ({' x '.join(map(str, spans))}). Kernel size can't be greater than actual "
                           "input size")


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


# --- pooling --------------------------------------------------------------------------------------
# PyTorch runs 2-d pooling, avg_pool1d and max_pool1d(return_indices=True) through one shape check
# (pool2d_shape_check) and plain max_pool1d through its own; the messages follow those two paths.


def _pool2d_tuple(fn, name, value, wording):
    value = _ntuple(value, 2)
    if len(value) not in (1, 2):
        raise RuntimeError(f"{fn}: {name} must {wording}")
    return value * 2 if len(value) == 1 else tuple(value)


def _pool2d_args(fn, kernel_size, stride, padding, dilation=1):
    kernel = _pool2d_tuple(fn, "kernel_size", kernel_size, "either be a single int, or a tuple of two ints")
    stride = kernel if stride is None or stride == [] or stride == () else \
        _pool2d_tuple(fn, "stride", stride, "either be omitted, a single int, or a tuple of two ints")
    padding = _pool2d_tuple(fn, "padding", padding, "either be a single int, or a tuple of two ints")
    dilation = _pool2d_tuple(fn, "dilation", dilation, "be either a single int, or a tuple of two ints")
    return kernel, stride, padding, dilation


def _check_pool2d(x, kernel, stride, padding, dilation, ceil_mode, nd):
    """pool2d_shape_check on the (N, C, H, W) form; `nd` trailing dims are the real spatial ones."""

    if any(s == 0 for s in stride):
        raise RuntimeError("stride should not be zero")
    for k, p, d in zip(kernel, padding, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise RuntimeError(f"pad should be at most half of effective kernel size, but got pad={p}, "
                               f"kernel_size={k} and dilation={d}")
    if any(k <= 0 for k in kernel):
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}")
    if any(s < 0 for s in stride):
        raise RuntimeError(f"stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, but got dilationH: {dilation[0]} "
                           f"dilationW: {dilation[1]}")
    if any(p > k // 2 for k, p in zip(kernel, padding)):
        raise RuntimeError(f"pad should be smaller than or equal to half of kernel size, but got padW = {padding[1]}, "
                           f"padH = {padding[0]}, kW = {kernel[1]}, kH = {kernel[0]}")
    spatial = x.shape[-2:] if nd == 2 else (1, x.shape[-1])
    out = [window_output_size(n, k, s, p, d, ceil_mode)
           for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation)]
    if any(o < 1 for o in out):
        planes = x.shape[-nd - 1]
        raise RuntimeError(f"Given input size: ({planes}x{spatial[0]}x{spatial[1]}). Calculated output size: "
                           f"({planes}x{out[0]}x{out[1]}). Output size is too small")


def _check_pool_input_dims(fn, x, nd):
    if x.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"Expected {nd + 1} to {nd + 2} dimensions, but got {x.ndim}-dimensional tensor for "
                           f"argument #1 'self' (while checking arguments for {fn})")


def _pool1d_as_2d(fn, kernel_size, stride, padding, dilation=1):
    """1-d pooling arguments in their (1, k) 2-d form, as PyTorch checks them."""
    def one(name, v):
        v = _ntuple(v, 1)
        if len(v) != 1:
            raise RuntimeError(f"{fn}() argument '{name}' should contain one int (got {len(v)})")
        return (1, v[0])
    kernel = one("kernel_size", kernel_size)
    stride = kernel if stride is None or stride == [] or stride == () else one("stride", stride)
    return kernel, stride, (0, _ntuple(padding, 1)[0]), (1, _ntuple(dilation, 1)[0])


def _max_pool1d_args(kernel_size, stride, padding, dilation):
    """Plain max_pool1d's own argument checks (its kernel is not the 2-d one)."""
    def one(name, v, wording):
        v = _ntuple(v, 1)
        if len(v) != 1:
            raise RuntimeError(f"max_pool1d() {name} must be {wording} of size 1 but got size {len(v)}")
        return v[0]
    k = one("kernel_size", kernel_size, "an int, list of ints or tuple of ints")
    s = k if stride is None or stride == [] or stride == () else \
        one("stride", stride, "None, an int, list of ints, or tuple of ints")
    p = one("padding", padding, "an int, list of ints, or tuple of ints")
    d = one("dilation", dilation, "an int, list of ints or tuple of ints")
    for name, v in (("kernel_size", k), ("stride", s)):
        if v <= 0:
            raise RuntimeError(f"max_pool1d() {name} must be greater than zero, but got {v}")
    if p < 0:
        raise RuntimeError(f"max_pool1d() padding must be non-negative, but got {p}")
    if p > k // 2:
        raise RuntimeError(f"max_pool1d() padding should be at most half of kernel size, but got padding={p} and "
                           f"kernel_size={k}")
    if d <= 0:
        raise RuntimeError(f"max_pool1d() dilation must be greater than zero, but got {d}")
    return k, s, p, d


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):

    if return_indices:
        _check_pool_input_dims("max_pool1d", input, 1)
        kernel, stride, padding, dilation = _pool1d_as_2d("max_pool1d", kernel_size, stride, padding, dilation)
        _check_pool2d(input, kernel, stride, padding, dilation, ceil_mode, 1)
        k, s, p, d = kernel[1], stride[1], padding[1], dilation[1]
    else:
        if input.ndim not in (2, 3):
            raise RuntimeError("max_pool1d: Expected 2D or 3D (batch mode) tensor with optional 0 dim batch size "
                               f"for input, but got:{list(input.shape)}")
        k, s, p, d = _max_pool1d_args(kernel_size, stride, padding, dilation)
        out = window_output_size(input.shape[-1], k, s, p, d, ceil_mode)
        if out < 1:
            raise RuntimeError(f"max_pool1d() Invalid computed output size: {out}")
    values, indices = dispatch("max_pool", input, kernel_size=(k,), stride=(s,), padding=(p,), dilation=(d,),
                               ceil_mode=bool(ceil_mode))
    return (values, indices) if return_indices else values


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    kernel, stride, padding, dilation = _pool2d_args("max_pool2d", kernel_size, stride, padding, dilation)
    if input.ndim not in (3, 4) or input.numel() == 0:
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    _check_pool2d(input, kernel, stride, padding, dilation, ceil_mode, 2)
    values, indices = dispatch("max_pool", input, kernel_size=kernel, stride=stride, padding=padding,
                               dilation=dilation, ceil_mode=bool(ceil_mode))
    return (values, indices) if return_indices else values


def _avg_pool(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, nd):
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    _check_pool2d(input, kernel, stride, padding, (1, 1), ceil_mode, nd)
    return dispatch("avg_pool", input, kernel_size=kernel[-nd:], stride=stride[-nd:], padding=padding[-nd:],
                    ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
                    divisor_override=divisor_override)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    _check_pool_input_dims("avg_pool1d", input, 1)
    kernel, stride, padding, _ = _pool1d_as_2d("avg_pool1d", kernel_size, stride, padding)
    return _avg_pool(input, kernel, stride, padding, ceil_mode, count_include_pad, None, 1)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    kernel, stride, padding, _ = _pool2d_args("avg_pool2d", kernel_size, stride, padding)
    _normalize_dim(-3, input.ndim)  # PyTorch's first check on too few dims is this index error
    if input.ndim not in (3, 4):
        raise RuntimeError("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but "
                           f"got:{list(input.shape)}")
    return _avg_pool(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, 2)


# --- padding --------------------------------------------------------------------------------------

_NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(input, pad, mode="constant", value=None):
    """Constant padding is the `pad` op; reflect/replicate/circular are gathers (index_select) along
    each padded dim, with the index pattern NumPy's np.pad computes for a range."""
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.ndim:
        raise RuntimeError("Padding length should be less than or equal to two times the input dimension but got "
                           f"padding length {len(pad)} and input of dimension {input.ndim}")
    if mode == "constant":
        return dispatch("pad", input, pad=pad, value=0 if value is None else value)
    if mode not in _NUMPY_PAD_MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    if value is not None and value != 0:
        raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument')
    n = len(pad) // 2
    if n not in (1, 2, 3) or input.ndim not in (n + 1, n + 2):
        raise NotImplementedError(
            f"Padding size {len(pad)} is not supported for {input.ndim}D input tensor.\n"
            "Supported combinations for non-constant padding:\n"
            "  - 2D or 3D input: padding size = 2 (pads last dimension)\n"
            "  - 3D or 4D input: padding size = 4 (pads last 2 dimensions)\n"
            "  - 4D or 5D input: padding size = 6 (pads last 3 dimensions)")
    out = input
    for i in range(n):
        dim = input.ndim - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        size = input.shape[dim]
        if mode == "reflect" and (lo >= size or hi >= size):
            raise RuntimeError(f"Argument #4: Padding size should be less than the corresponding input dimension, "
                               f"but got: padding ({lo}, {hi}) at dimension {dim} of input {list(input.shape)}")
        if mode == "circular" and (lo > size or hi > size):
            raise RuntimeError("Padding value causes wrapping around more than once.")
        index = np.pad(np.arange(operator.index(size)), (lo, hi), mode=_NUMPY_PAD_MODES[mode])
        out = out.index_select(dim, _as_tensor(index, dtype=dtypes.int64, device=input.device))
    return out


# --- losses ---------------------------------------------------------------------------------------


def _legacy_reduction(size_average, reduce):
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    result = "mean" if size_average and reduce else "sum" if reduce else "none"
    warnings.warn(f"size_average and reduce args will be deprecated, please use reduction='{result}' instead.",
                  stacklevel=3)
    return result


def _reduction(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        return _legacy_reduction(size_average, reduce)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def _reduce(loss, reduction, total=None):
    """Apply a reduction; `total` is the mean's denominator when it is not the element count."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if total is None else loss.sum() / total


def _pointwise_loss(kind, input, target, size_average, reduce, reduction, weight):
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
                      "This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)
    reduction = _reduction(size_average, reduce, reduction)
    diff = input - target
    loss = diff * diff if kind == "mse" else diff.abs()
    if weight is None:
        return _reduce(loss, reduction)
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    return _reduce(loss * weight, reduction, weight.sum())


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    return _pointwise_loss("mse", input, target, size_average, reduce, reduction, weight)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    return _pointwise_loss("l1", input, target, size_average, reduce, reduction, weight)


def _check_class_weight(weight, classes, prefix=""):
    if weight is not None and weight.numel() != classes:
        raise RuntimeError(f"{prefix}weight tensor should be defined either for all {classes} classes or no "
                           f"classes but got weight tensor of shape: {list(weight.shape)}")


def _check_nll_shapes(input, target):
    if input.ndim < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {input.ndim})")
    if input.ndim != 1 and input.shape[0] != target.shape[0]:
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                         f"({target.shape[0]}).")
    if input.ndim <= 2:
        if target.ndim > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    elif input.ndim == 4:
        if target.ndim != 3:
            raise RuntimeError("only batches of spatial targets supported (3D tensors) but got targets of "
                               f"dimension: {target.ndim}")
        if tuple(target.shape[1:]) != tuple(input.shape[2:]):
            raise RuntimeError(f"size mismatch (got input: {list(input.shape)} , target: {list(target.shape)}")
    elif tuple(target.shape[1:]) != tuple(input.shape[2:]):
        raise RuntimeError(f"Expected target size {[input.shape[0]] + list(input.shape[2:])}, "
                           f"got {list(target.shape)}")
    if target.dtype not in (dtypes.int64, dtypes.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_TYPE_NAMES[target.dtype.name]}")


def _nll_terms(log_probs, target, weight, ignore_index):
    """Per-element -w[t] * log_probs[t] and the mean's denominator (the sum of those w), for class
    dim 1 (0 for an unbatched input). Ignored elements are masked out, not multiplied by zero, so
    that a batch with every target ignored has zero gradients (and a NaN mean), as in PyTorch."""
    class_dim = 0 if log_probs.ndim == 1 else 1
    classes = log_probs.shape[class_dim]
    target = target.long()
    ignored = target == ignore_index
    # A bounds check, not control flow: read the storage directly so a compiled trace does not
    # guard on the targets' values (a compiled replay does not repeat this check). Targets on a
    # device are not read back (as for index ops: the gather kernel skips bad indices).
    if target.device.type == "cpu":
        data = target._data[~ignored._data]
        if data.size and (data.min() < 0 or data.max() >= classes):
            bad = data[(data < 0) | (data >= classes)][0]
            raise IndexError(f"Target {bad} is out of bounds.")
    safe = target.masked_fill(ignored, 0)
    loss = -log_probs.gather(class_dim, safe.unsqueeze(class_dim)).squeeze(class_dim)
    if weight is None:
        return loss.masked_fill(ignored, 0), (~ignored).sum().to(log_probs.dtype), ignored
    w = weight.index_select(0, safe.reshape(-1)).reshape(safe.shape).masked_fill(ignored, 0)
    return (loss * w).masked_fill(ignored, 0), w.sum(), ignored


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    reduction = _reduction(size_average, reduce, reduction)
    _check_nll_shapes(input, target)
    _check_class_weight(weight, input.shape[0 if input.ndim == 1 else 1])
    loss, total, _ = _nll_terms(input, target, weight, ignore_index)
    return _reduce(loss, reduction, total)


def _class_view(t, ndim, class_dim):
    """A per-class vector shaped to broadcast along `class_dim` of an `ndim`-dim tensor."""
    return t.reshape((1,) * class_dim + (-1,) + (1,) * (ndim - class_dim - 1))


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """log_softmax + nll_loss for class indices; with probabilities as target (same shape as input),
    the cross entropy against them. label_smoothing mixes in the uniform distribution."""
    reduction = _reduction(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim = 0 if input.ndim == 1 else 1
    if tuple(input.shape) == tuple(target.shape):
        return _cross_entropy_probs(input, target, weight, ignore_index, reduction, label_smoothing, class_dim)
    _check_nll_shapes(input, target)
    classes = input.shape[class_dim]
    _check_class_weight(weight, classes)
    log_probs = log_softmax(input, class_dim)
    loss, total, ignored = _nll_terms(log_probs, target, weight, ignore_index)
    nll = _reduce(loss, reduction, total)
    if label_smoothing == 0:
        return nll
    weighted = log_probs if weight is None else log_probs * _class_view(weight, input.ndim, class_dim)
    smooth = (-weighted.sum(class_dim)).masked_fill(ignored, 0)
    return (1 - label_smoothing) * nll + _reduce(smooth, reduction, total) * (label_smoothing / classes)


def _cross_entropy_probs(input, target, weight, ignore_index, reduction, label_smoothing, class_dim):
    if not target.dtype.is_floating_point:
        raise RuntimeError("Expected floating point type for target with class probabilities, got "
                           f"{_TYPE_NAMES[target.dtype.name]}")
    if ignore_index >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    classes = input.shape[class_dim]
    _check_class_weight(weight, classes, prefix="cross_entropy: ")
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / classes
    terms = log_softmax(input, class_dim) * target
    if weight is not None:
        terms = terms * _class_view(weight, input.ndim, class_dim)
    if reduction == "none":
        return -terms.sum(class_dim)
    return _reduce(-terms, reduction, input.numel() // classes)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None, reduction="mean",
                                     pos_weight=None):
    """(1 - t) x + lw * softplus(-x) with lw = 1 + (pos_weight - 1) t: log-sigmoid without overflow."""
    reduction = _reduction(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    log_one_plus = softplus(-input)
    if pos_weight is not None:
        log_one_plus = ((pos_weight - 1) * target + 1) * log_one_plus
    loss = (1 - target) * input + log_one_plus
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


# --- distances ------------------------------------------------------------------------------------


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1/|x1| * x2/|x2|) with each norm clamped to eps in value only (its gradient is the
    unclamped norm's), as PyTorch computes it."""
    shape = broadcast_shapes(x1.shape, x2.shape)
    d = _normalize_dim(dim, len(shape))
    x1, x2 = x1.expand(shape), x2.expand(shape)

    def unit(x):
        n = x.norm(dim=d, keepdim=True)
        return x / (n + (n.clamp_min(eps) - n).detach())
    return (unit(x1) * unit(x2)).sum(d)


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    ndim = max(x1.ndim, x2.ndim)
    return (x1 - x2 + eps).norm(p=p, dim=ndim - 1, keepdim=keepdim)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    return input / input.norm(p=p, dim=dim, keepdim=True).clamp_min(eps)


def one_hot(tensor, num_classes=-1):
    if tensor.dtype is not dtypes.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    data = tensor.numpy()
    if num_classes == -1:
        if data.size == 0:
            raise RuntimeError("Can not infer total number of classes from empty tensor.")
        num_classes = int(data.max()) + 1
    if data.size:
        if data.min() < 0:
            raise RuntimeError("Class values must be non-negative.")
        if data.max() >= num_classes:
            raise RuntimeError("Class values must be smaller than num_classes.")
    elif num_classes < 0:
        raise RuntimeError("Class values must be smaller than num_classes.")
    return (tensor.unsqueeze(-1) == arange(num_classes)).long()
