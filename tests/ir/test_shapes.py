"""Every op's shape rule (and `infer`, its shape and dtype rules together) agrees with what the op's
implementation returns, on random valid inputs for each op in the table."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import tracefuse
from tracefuse.autograd import no_grad
from tracefuse.dispatch import dispatch
from tracefuse.ir import ops, shapes
from tracefuse.ir.graph import Graph
from tracefuse.ir.passes.copy_elision import FRESH_KINDS
from tracefuse.ir.infer import DataDependentShapeError, infer
from tracefuse.ir.ops import TensorSlot
from tracefuse.ir.rewrite import infer_outputs

F64, F32, F16, BF16 = tracefuse.float64, tracefuse.float32, tracefuse.float16, tracefuse.bfloat16
I64, I32, U8, BOOL = tracefuse.int64, tracefuse.int32, tracefuse.uint8, tracefuse.bool
CPU = tracefuse.device("cpu")
N_SAMPLES = 10
MORE_SAMPLES = {"getitem": 80, "index_put": 40}  # the key space is large

# --- sample builders -------------------------------------------------------------------------------


def tensor(rng, shape, dtype=F64, low=0.5, high=2.0):
    """Values in [low, high) (positive: safe for log, sqrt, integer division and powers)."""
    if dtype is BOOL:
        data = rng.random(shape) < 0.5
    elif dtype.is_floating_point:
        data = rng.uniform(low, high, shape)
    else:
        data = rng.integers(int(low) if low >= 1 else 1, max(int(high), 2) + 1, shape)
    return tracefuse.tensor(np.asarray(data), dtype=dtype)


def indices(rng, shape, size):
    return tracefuse.tensor(rng.integers(0, size, shape), dtype=I64)


def rand_shape(rng, ndim=None, low=0, high=4):
    ndim = int(rng.integers(0, 4)) if ndim is None else ndim
    return tuple(int(n) for n in rng.integers(low, high, ndim))


def broadcastable(rng, shape):
    """A shape that broadcasts to `shape`: some leading dims dropped, some dims set to 1."""
    kept = shape[int(rng.integers(0, len(shape) + 1)):]
    return tuple(1 if rng.random() < 0.3 else n for n in kept)


def pick(rng, options):
    return options[int(rng.integers(0, len(options)))]


def some_dims(rng, ndim):
    """A sorted non-empty tuple of axes (() for a 0-dim tensor), or None, as the Tensor layer passes them."""
    if ndim == 0:
        return pick(rng, [None, ()])
    if rng.random() < 0.25:
        return None
    return tuple(sorted(int(d) for d in rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False)))


FLOATS, NUMERIC = [F64, F32, F16, BF16], [F64, F32, F16, I64, I32, U8]

# Each generator: rng -> (inputs, attrs) for one call of the op.


def unary(dtypes, **attr_choices):
    def gen(rng):
        attrs = {k: pick(rng, v) for k, v in attr_choices.items()}
        return [tensor(rng, rand_shape(rng), pick(rng, dtypes))], attrs
    return gen


def binary(dtypes, scalars=(2, 1.5)):
    def gen(rng):
        shape = rand_shape(rng)
        a, b = tensor(rng, broadcastable(rng, shape), pick(rng, dtypes)), tensor(rng, shape, pick(rng, dtypes))
        if rng.random() < 0.2:
            b = pick(rng, list(scalars))
        return ([b, a] if rng.random() < 0.5 else [a, b]), {}
    return gen


def where(rng):
    shape = rand_shape(rng)
    x = tensor(rng, broadcastable(rng, shape)) if rng.random() < 0.8 else 1.5
    return [tensor(rng, broadcastable(rng, shape), BOOL), x, tensor(rng, broadcastable(rng, shape), F32)], {}


def masked_fill(rng):
    shape = rand_shape(rng)
    return [tensor(rng, shape, pick(rng, NUMERIC)), tensor(rng, broadcastable(rng, shape), BOOL)], {"value": 3}


def reduction(dtypes, nonempty=False, **extra):
    def gen(rng):
        x = tensor(rng, rand_shape(rng, low=1 if nonempty else 0), pick(rng, dtypes))
        attrs = {k: pick(rng, v) for k, v in extra.items()}
        return [x], {"dim": some_dims(rng, x.ndim), "keepdim": bool(rng.random() < 0.5), **attrs}
    return gen


def one_dim(rng, x):
    return int(rng.integers(0, max(x.ndim, 1)))


def dim_reduction(allow_none):
    def gen(rng):
        x = tensor(rng, rand_shape(rng, low=1), pick(rng, [F64, F16, I64]))
        dim = None if allow_none and rng.random() < 0.3 else one_dim(rng, x)
        return [x], {"dim": dim, "keepdim": bool(rng.random() < 0.5)}
    return gen


def cumsum(rng):
    x = tensor(rng, rand_shape(rng), pick(rng, [F64, I32, BOOL]))
    return [x], {"dim": one_dim(rng, x)}


def matmul(rng):
    m, k, n = (int(v) for v in rng.integers(0, 4, 3))
    batch = rand_shape(rng, int(rng.integers(0, 3)))
    a_shape = pick(rng, [(k,), (m, k), broadcastable(rng, batch) + (m, k)])
    b_shape = pick(rng, [(k,), (k, n), broadcastable(rng, batch) + (k, n)])
    d = pick(rng, [F64, F32, I64])
    return [tensor(rng, a_shape, d), tensor(rng, b_shape, d)], {}


def creation(rng, op):
    d = pick(rng, [F32, F64, I64])
    shape = rand_shape(rng)
    attrs = {
        "full": {"shape": shape, "value": 2},
        "rand": {"shape": shape}, "randn": {"shape": shape},
        "randint": {"low": 0, "high": 5, "shape": shape},
        "arange": pick(rng, [{"start": int(rng.integers(-5, 5)), "end": int(rng.integers(-5, 9)),
                              "step": pick(rng, [1, 2, 3, -1, -2])},
                             {"start": float(rng.uniform(-3, 3)), "end": float(rng.uniform(-3, 6)),
                              "step": pick(rng, [0.3, 1.0, 0.7, -0.4])}]),
        "linspace": {"start": 0.0, "end": 3.0, "steps": int(rng.integers(0, 6))},
        "eye": {"n": int(rng.integers(0, 4)), "m": int(rng.integers(0, 4))},
        "randperm": {"n": int(rng.integers(0, 6))},
    }[op]
    if op in ("rand", "randn", "linspace"):
        d = pick(rng, [F32, F64])
    return [], {**attrs, "dtype": d, "device": CPU}


def reshape(rng):
    x = tensor(rng, rand_shape(rng))
    target = list(x.shape)
    if len(target) >= 2 and rng.random() < 0.5:  # merge two neighbours
        i = int(rng.integers(0, len(target) - 1))
        target[i:i + 2] = [target[i] * target[i + 1]]
    if rng.random() < 0.4:
        target.insert(int(rng.integers(0, len(target) + 1)), 1)
    if target and x.numel() > 0 and rng.random() < 0.5:
        target[int(rng.integers(0, len(target)))] = -1
    return [x], {"shape": tuple(target)}


def permute(rng):
    x = tensor(rng, rand_shape(rng))
    return [x], {"dims": tuple(int(d) for d in rng.permutation(x.ndim))}


def expand(rng):
    x = tensor(rng, tuple(1 if rng.random() < 0.5 else n for n in rand_shape(rng)))
    target = rand_shape(rng, int(rng.integers(0, 3))) + tuple(int(rng.integers(0, 4)) if n == 1 else n for n in x.shape)
    return [x], {"shape": target}


def flip(rng):
    x = tensor(rng, rand_shape(rng))
    return [x], {"dims": some_dims(rng, x.ndim) or ()}


def repeat(rng):
    x = tensor(rng, rand_shape(rng))
    return [x], {"repeats": tuple(int(r) for r in rng.integers(0, 3, x.ndim + int(rng.integers(0, 2))))}


def index_key(rng, x):
    """A random indexing key for x (the attr with TensorSlots, and the index tensors): ints,
    slices, None, one Ellipsis at most, Python bools and integer tensors of broadcastable shapes."""
    common = rand_shape(rng, int(rng.integers(0, 3)), low=1)
    items, tensors, dim = [], [], 0
    ellipsis = False
    for _ in range(int(rng.integers(0, 5))):
        kind = pick(rng, ["int", "slice", "slice", "none", "ellipsis", "bool", "tensor", "tensor"])
        left = x.ndim - dim
        if kind == "none":
            items.append(None)
        elif kind == "bool":
            items.append(True if tensors or rng.random() < 0.7 else False)
        elif kind == "ellipsis" and not ellipsis:
            ellipsis = True
            items.append(Ellipsis)
            dim = x.ndim  # what follows would index the trailing dims: add no more dim-consuming items
        elif left > 0 and kind == "slice":
            bounds = [None, 0, 1, -2, 5, 2, -1, 7]
            items.append(slice(pick(rng, bounds), pick(rng, bounds), pick(rng, [None, 1, 2, 3])))
            dim += 1
        elif left > 0 and kind == "int" and x.shape[dim] > 0:
            items.append(int(rng.integers(-x.shape[dim], x.shape[dim])))
            dim += 1
        elif left > 0 and kind == "tensor" and x.shape[dim] > 0:
            items.append(TensorSlot(len(tensors)))
            tensors.append(tracefuse.tensor(rng.integers(-x.shape[dim], x.shape[dim], broadcastable(rng, common))))
            dim += 1
    return tuple(items), tensors


def getitem(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(0, 5))))
    key, tensors = index_key(rng, x)
    return [x, *tensors], {"index": key}


def index_put(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(0, 5))))
    key, tensors = index_key(rng, x)
    with no_grad():
        target = dispatch("getitem", x, *tensors, index=key).shape
    return [x, tensor(rng, broadcastable(rng, tuple(target))), *tensors], {"index": key,
                                                                             "accumulate": bool(rng.random() < 0.5)}


def cat(rng):
    base = rand_shape(rng, int(rng.integers(1, 4)))
    d = one_dim(rng, tensor(rng, base))
    parts = [base[:d] + (int(rng.integers(0, 3)),) + base[d + 1:] for _ in range(int(rng.integers(1, 4)))]
    return [tensor(rng, s, pick(rng, [F64, F32, I64])) for s in parts], {"dim": d}


def gather(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(1, 4)), low=1))
    d = one_dim(rng, x)
    idx_shape = tuple(int(rng.integers(0, n + 1)) for n in x.shape)
    return [x, indices(rng, idx_shape, x.shape[d])], {"dim": d}


def scatter(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(1, 4)), low=1))
    d = one_dim(rng, x)
    idx_shape = tuple(int(rng.integers(0, n + 1)) for n in x.shape)
    src = tensor(rng, tuple(n + int(rng.integers(0, 2)) for n in idx_shape)) if rng.random() < 0.8 else 2.0
    return [x, indices(rng, idx_shape, x.shape[d]), src], {"dim": d, "reduce": pick(rng, [None, "add", "multiply"])}


def index_select(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(1, 4)), low=1))
    d = one_dim(rng, x)
    return [x, indices(rng, (int(rng.integers(0, 4)),), x.shape[d])], {"dim": d}


def pad(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(1, 4)), low=2, high=5))
    widths = tuple(int(w) for w in rng.integers(-1, 3, 2 * int(rng.integers(1, x.ndim + 1))))
    return [x], {"pad": widths, "value": 0.0}


def triangle(rng):
    return [tensor(rng, rand_shape(rng, int(rng.integers(2, 4))))], {"diagonal": int(rng.integers(-2, 3))}


def softmax(rng):
    x = tensor(rng, rand_shape(rng), pick(rng, [F64, F16, I64]))
    return [x], {"dim": one_dim(rng, x)}


def layer_norm(rng):
    x = tensor(rng, rand_shape(rng, int(rng.integers(1, 4)), low=1), pick(rng, [F64, BF16]))
    norm = tuple(x.shape[x.ndim - int(rng.integers(1, x.ndim + 1)):])
    w = tensor(rng, norm, x.dtype) if rng.random() < 0.6 else None
    b = tensor(rng, norm, x.dtype) if rng.random() < 0.6 else None
    return [x, w, b], {"normalized_shape": norm, "eps": 1e-5}


def embedding(rng):
    w = tensor(rng, (5, int(rng.integers(1, 4))), pick(rng, [F64, F16]))
    return [w, indices(rng, rand_shape(rng), 5)], {"padding_idx": pick(rng, [None, 0])}


def embedding_backward(rng):
    idx = indices(rng, rand_shape(rng), 5)
    return [tensor(rng, tuple(idx.shape) + (3,)), idx], {"num_weights": 5, "padding_idx": pick(rng, [None, 2])}


def conv_args(rng):
    nd = int(rng.integers(1, 4))
    groups = pick(rng, [1, 2])
    c, o = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
    stride = tuple(int(s) for s in rng.integers(1, 3, nd))
    dilation = tuple(int(d) for d in rng.integers(1, 3, nd))
    padding = tuple(int(rng.integers(0, k)) for k in kernel)
    spatial = tuple(d * (k - 1) + 1 - 2 * p + int(rng.integers(0, 4)) for k, d, p in zip(kernel, dilation, padding))
    spatial = tuple(max(s, 1) for s in spatial)
    d = pick(rng, [F64, F32, F16])
    x = tensor(rng, (int(rng.integers(1, 3)), c) + spatial, d)
    w = tensor(rng, (o, c // groups) + kernel, d)
    return x, w, {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


def conv(rng):
    x, w, attrs = conv_args(rng)
    return [x, w, tensor(rng, (w.shape[0],), x.dtype) if rng.random() < 0.5 else None], attrs


def conv_backward(rng):
    x, w, attrs = conv_args(rng)
    with no_grad():
        out = dispatch("conv", x, w, None, **attrs)
    mask = tuple(bool(m) for m in rng.random(3) < 0.6)
    return [tensor(rng, tuple(out.shape), x.dtype), x, w], {**attrs, "output_mask": mask}


def pool_args(rng, dilated):
    nd = int(rng.integers(1, 4))
    kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
    stride = tuple(int(s) for s in rng.integers(1, 4, nd))
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    dilation = tuple(int(d) for d in rng.integers(1, 3, nd)) if dilated else (1,) * nd
    spatial = tuple(d * (k - 1) + 1 + int(rng.integers(0, 5)) for k, d in zip(kernel, dilation))  # no empty windows
    lead = rand_shape(rng, int(rng.integers(1, 3)), low=1)
    x = tensor(rng, lead + spatial, pick(rng, [F64, F32, F16]))
    attrs = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": bool(rng.random() < 0.5)}
    return x, ({**attrs, "dilation": dilation} if dilated else attrs)


def max_pool(rng):
    x, attrs = pool_args(rng, dilated=True)
    return [x], attrs


def max_pool_backward(rng):
    x, attrs = pool_args(rng, dilated=True)
    with no_grad():
        out, idx = dispatch("max_pool", x, **attrs)
    return [tensor(rng, tuple(out.shape), x.dtype), idx], {"input_shape": tuple(x.shape),
                                                           "spatial_ndim": len(attrs["kernel_size"])}


def avg_attrs(rng, attrs):
    return {**attrs, "count_include_pad": bool(rng.random() < 0.5), "divisor_override": pick(rng, [None, 3])}


def avg_pool(rng):
    x, attrs = pool_args(rng, dilated=False)
    return [x], avg_attrs(rng, attrs)


def avg_pool_backward(rng):
    x, attrs = pool_args(rng, dilated=False)
    attrs = avg_attrs(rng, attrs)
    with no_grad():
        out = dispatch("avg_pool", x, **attrs)
    return [tensor(rng, tuple(out.shape), x.dtype)], {"input_shape": tuple(x.shape), **attrs}


GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def layer_args(rng, kind):
    """The inputs and attrs of a recurrent layer: packed lengths, projections (lstm) and biases at random."""
    T, B, I, H = (int(v) for v in rng.integers(1, 4, 4))
    has_bias, has_lengths = bool(rng.random() < 0.6), bool(rng.random() < 0.5)
    has_proj = kind == "lstm" and bool(rng.random() < 0.5)
    P = int(rng.integers(1, H + 1)) if has_proj else H
    d = pick(rng, [F64, F32, F16])
    G = GATES[kind] * H
    states = [tensor(rng, (B, P), d)] + ([tensor(rng, (B, H), d)] if kind == "lstm" else [])
    biases = [tensor(rng, (G,), d), tensor(rng, (G,), d)] if has_bias else [None, None]
    proj = [tensor(rng, (P, H), d) if has_proj else None] if kind == "lstm" else []
    lengths = tracefuse.tensor(rng.integers(1, T + 1, B)) if has_lengths else None
    inputs = [tensor(rng, (T, B, I), d), *states, tensor(rng, (G, I), d), tensor(rng, (G, P), d), *biases, *proj,
              lengths]
    attrs = {"reverse": bool(rng.random() < 0.5), "has_bias": has_bias, "has_proj": has_proj,
             "has_lengths": has_lengths}
    return inputs, ({**attrs, "nonlinearity": pick(rng, ["tanh", "relu"])} if kind == "rnn" else attrs)


def layer(kind):
    return lambda rng: layer_args(rng, kind)


def layer_backward(kind):
    def gen(rng):
        inputs, attrs = layer_args(rng, kind)
        with no_grad():
            outs = dispatch(f"{kind}_layer", *inputs, **attrs)
        grads = [tensor(rng, tuple(o.shape), o.dtype) for o in outs[:-1]]
        return [*grads, *inputs, outs[0], outs[-1]], attrs
    return gen


def cell(kind):
    def gen(rng):
        B, I, H = (int(v) for v in rng.integers(1, 4, 3))
        d, has_bias, G = pick(rng, [F64, F32]), bool(rng.random() < 0.5), GATES[kind] * H
        states = [tensor(rng, (B, H), d) for _ in range(2 if kind == "lstm" else 1)]
        biases = [tensor(rng, (G,), d), tensor(rng, (G,), d)] if has_bias else [None, None]
        attrs = {"has_bias": has_bias, **({"nonlinearity": "tanh"} if kind == "rnn" else {})}
        return [tensor(rng, (B, I), d), *states, tensor(rng, (G, I), d), tensor(rng, (G, H), d), *biases], attrs
    return gen


def tensor_list(rng):
    return [tensor(rng, rand_shape(rng), pick(rng, [F64, F32, F16, BF16])) for _ in range(int(rng.integers(1, 4)))]


def multi_tensor_norm(rng):
    return tensor_list(rng), {"p": pick(rng, [2, 1, 3.0])}


def multi_tensor_scale(rng):
    return [tensor(rng, (), F32), *tensor_list(rng)], {"max_norm": pick(rng, [None, 1.0])}


def _like_each(rng, tensors):
    return [tensor(rng, tuple(t.shape), t.dtype) for t in tensors]


def multi_tensor_sgd(rng):
    params = tensor_list(rng)
    momentum, has_buffers = pick(rng, [0, 0.9]), bool(rng.random() < 0.5)
    buffers = _like_each(rng, params) if momentum and has_buffers else []
    return [*params, *_like_each(rng, params), *buffers], {
        "n": len(params), "lr": 0.1, "momentum": momentum, "dampening": pick(rng, [0, 0.2]),
        "weight_decay": pick(rng, [0, 0.1]), "nesterov": False, "maximize": bool(rng.random() < 0.5),
        "has_buffers": bool(buffers)}


def multi_tensor_adam(rng):
    params, amsgrad = tensor_list(rng), bool(rng.random() < 0.5)
    moments = [_like_each(rng, params) for _ in range(3 if amsgrad else 2)]
    steps = [tensor(rng, (), pick(rng, [F32, F64])) for _ in params]
    return [*params, *_like_each(rng, params), *[t for m in moments for t in m], *steps], {
        "n": len(params), "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": pick(rng, [0, 0.1]),
        "amsgrad": amsgrad, "maximize": bool(rng.random() < 0.5), "decoupled_weight_decay": bool(rng.random() < 0.5)}


SAMPLES = {
    **{name: (lambda op: lambda rng: creation(rng, op))(name)
       for name in ("full", "arange", "linspace", "eye", "rand", "randn", "randint", "randperm")},
    **{name: unary(NUMERIC) for name in ("neg", "abs", "relu", "sign", "floor", "ceil", "round", "trunc",
                                         "exp", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "sin", "cos",
                                         "sigmoid", "tanh", "erf", "reciprocal", "logical_not", "isnan",
                                         "isinf", "isfinite")},
    "gelu": unary(FLOATS, approximate=["none", "tanh"]),
    "leaky_relu": unary(NUMERIC, negative_slope=[0.01, 0.2]),
    "elu": unary(FLOATS, alpha=[1.0, 0.5]),
    "softplus": unary(FLOATS, beta=[1.0, 2.0], threshold=[20.0]),
    "cast": unary(NUMERIC, dtype=[F32, I64, BOOL, F16]),
    "clamp": unary(NUMERIC, min=[None, 1], max=[None, 2.5, 3]),
    "dropout": unary(FLOATS, p=[0.0, 0.5, 1.0]),
    **{name: binary(NUMERIC) for name in ("add", "sub", "mul", "maximum", "minimum", "remainder", "pow", "div",
                                          "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
                                          "logical_or", "logical_xor")},
    "div_mode": lambda rng: (binary(NUMERIC)(rng)[0], {"rounding_mode": pick(rng, ["trunc", "floor"])}),
    "where": where,
    "masked_fill": masked_fill,
    **{name: reduction(NUMERIC + [BOOL]) for name in ("sum", "prod")},
    "mean": reduction(FLOATS, nonempty=True),
    **{name: reduction(NUMERIC, nonempty=True) for name in ("amax", "amin")},
    **{name: dim_reduction(allow_none=False) for name in ("max_dim", "min_dim")},
    **{name: dim_reduction(allow_none=True) for name in ("argmax", "argmin")},
    "var": reduction(FLOATS, nonempty=True, correction=[0]),
    "norm": reduction(FLOATS, p=[2, 1, 0, 3.0, float("inf")]),
    "logsumexp": reduction(FLOATS, nonempty=True),
    "cumsum": cumsum,
    **{name: reduction([BOOL, U8, F32]) for name in ("all", "any")},
    "matmul": matmul,
    "reshape": reshape, "permute": permute, "expand": expand, "flip": flip, "repeat": repeat,
    "clone": unary(NUMERIC + [BOOL]),
    "to_device": unary(NUMERIC + [BOOL], device=[tracefuse.device("cpu")], source=[tracefuse.device("cpu")]),
    "getitem": getitem, "index_put": index_put, "cat": cat, "gather": gather, "scatter": scatter,
    "index_select": index_select, "pad": pad, "tril": triangle, "triu": triangle,
    "softmax": softmax, "log_softmax": softmax, "layer_norm": layer_norm,
    "embedding": embedding, "embedding_backward": embedding_backward,
    "conv": conv, "conv_backward": conv_backward,
    "max_pool": max_pool, "max_pool_backward": max_pool_backward,
    "avg_pool": avg_pool, "avg_pool_backward": avg_pool_backward,
    **{f"{kind}_layer": layer(kind) for kind in GATES},
    **{f"{kind}_layer_backward": layer_backward(kind) for kind in GATES},
    **{f"{kind}_cell": cell(kind) for kind in GATES},
    "multi_tensor_norm": multi_tensor_norm, "multi_tensor_scale": multi_tensor_scale,
    "multi_tensor_sgd": multi_tensor_sgd, "multi_tensor_adam": multi_tensor_adam,
}

# --- tests -------------------------------------------------------------------------------------------


def meta(x):
    return (tuple(x.shape), x.dtype) if isinstance(x, tracefuse.Tensor) else x


def run(name, inputs, attrs):
    with no_grad():
        out = dispatch(name, *inputs, **attrs)
    return [(tuple(o.shape), o.dtype) for o in (out if isinstance(out, tuple) else (out,))]


def test_every_op_has_a_shape_rule_and_samples():
    missing_rule = [name for name, op in ops.OPS.items() if not callable(op.shape)]
    missing_samples = sorted(set(ops.OPS) - set(SAMPLES))
    assert not missing_rule and not missing_samples, (missing_rule, missing_samples)
    assert not set(SAMPLES) - set(ops.OPS)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_rules_give_the_implementations_shapes_and_dtypes(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    op = ops.get(name)
    for _ in range(MORE_SAMPLES.get(name, N_SAMPLES)):
        inputs, attrs = SAMPLES[name](rng)
        expected = run(name, inputs, attrs)
        rule_shapes = op.shape([meta(x)[0] if isinstance(x, tracefuse.Tensor) else None for x in inputs], attrs)
        assert list(rule_shapes) == [s for s, _ in expected], (name, [meta(x) for x in inputs], attrs)
        assert infer(name, [meta(x) for x in inputs], attrs) == expected, (name, attrs)


FLOAT_ONLY = {"dropout", "max_pool", "lstm_layer", "gru_layer", "multi_tensor_norm", "multi_tensor_scale",
              "multi_tensor_sgd", "multi_tensor_adam"}
DTYPE_CASES = [(name, d) for name in ["neg", "sqrt", "eq", "isnan", "sum", "all", "max_dim", "matmul", "cat", "where",
                                      *sorted(FLOAT_ONLY)]
               for d in (F16, BF16, F32, F64, I64, I32, U8, BOOL)
               if (d.is_floating_point or name not in FLOAT_ONLY) and (name, d) != ("matmul", BOOL)]


@pytest.mark.parametrize("name, dtype", DTYPE_CASES)
def test_infer_follows_every_input_dtype(name, dtype):
    """The dtype side of `infer` across dtypes: a sample's float tensors cast to `dtype`."""
    inputs, attrs = SAMPLES[name](np.random.default_rng(7))
    inputs = [x.to(dtype) if isinstance(x, tracefuse.Tensor) and x.dtype.is_floating_point else x for x in inputs]
    assert infer(name, [meta(x) for x in inputs], attrs) == run(name, inputs, attrs)


def test_workspace_lengths_follow_the_layout():
    """T * B * (5H | 4H | 0): lstm gates and cell states, gru gates and W_hn h + b_hn, nothing for rnn."""
    for kind, width in (("lstm", 5), ("gru", 4), ("rnn", 0)):
        n_states = 2 if kind == "lstm" else 1
        shapes_in = [(7, 3, 2)] + [(3, 6)] * n_states + [None] * 6
        assert ops.get(f"{kind}_layer").shape(shapes_in, {})[-1] == (7 * 3 * width * 6,)


def test_broadcast_error_is_pytorchs():
    message = "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        infer("add", [((2, 3), F32), ((4,), F32)], {})
    with pytest.raises(RuntimeError, match=re.escape(message)):
        tracefuse.ones(2, 3) + tracefuse.ones(4)


def test_index_broadcast_error_is_the_implementations():
    x = tracefuse.ones(3, 4, 5)
    a, b = tracefuse.tensor([0, 1]), tracefuse.tensor([0, 1, 2])
    key = (TensorSlot(0), True, TensorSlot(1))
    message = "shape mismatch: indexing arrays could not be broadcast together with shapes (2,) (1,) (3,) "
    with pytest.raises(IndexError, match=re.escape(message)):
        infer("getitem", [meta(x), meta(a), meta(b)], {"index": key})
    with pytest.raises(IndexError, match=re.escape(message)):
        dispatch("getitem", x, a, b, index=key)


def test_boolean_mask_indexing_is_reported_as_data_dependent():
    x, mask = tracefuse.ones(2, 3), tracefuse.tensor([[True, False, True], [False, False, True]])
    assert x[mask].shape == (3,)  # the count of True elements: not a function of the shapes
    with pytest.raises(DataDependentShapeError, match="boolean mask"):
        infer("getitem", [meta(x), meta(mask)], {"index": (TensorSlot(0),)})
    # index_put with a mask keeps x's shape: no data dependence there.
    assert infer("index_put", [meta(x), ((3,), F32), meta(mask)], {"index": (TensorSlot(0),), "accumulate": False}) \
        == [((2, 3), F32)]


def test_adjacent_and_separated_advanced_indices():
    """NumPy puts the broadcast index dims where the first advanced index stood when the advanced
    indices are adjacent, in front otherwise (an Ellipsis separates even when it stands for no dim)."""
    i = (2,)
    assert shapes.indexed((3, 4, 5), (slice(None), TensorSlot(0), TensorSlot(1)), [i, i]) == (3, 2)
    assert shapes.indexed((3, 4, 5), (slice(None), TensorSlot(0), Ellipsis, TensorSlot(1)), [i, i]) == (2, 3)
    assert shapes.indexed((3, 4, 5), (slice(None), 0, None, True, Ellipsis), []) == (1, 3, 1, 5)
    assert shapes.indexed((3, 4), (slice(-2, None, 2), None), []) == (1, 1, 4)


def test_window_sizes_with_ceil_mode():
    """The last window must start inside the input or its left padding (PyTorch's pooling_output_shape)."""
    assert shapes.window_output_size(5, 2, 2, 0, 1, ceil_mode=False) == 2
    assert shapes.window_output_size(5, 2, 2, 0, 1, ceil_mode=True) == 3
    assert shapes.window_output_size(4, 2, 2, 1, 1, ceil_mode=True) == 3
    assert math.prod(shapes.windows((1, 2, 6, 6), (3, 3), (2, 2), (1, 1), (2, 2))) == 1 * 2 * 2 * 2


def test_infer_outputs_uses_the_rules_without_running_ops(monkeypatch):
    """A rewrite's new node gets its metadata from the rules: the op's implementation never runs."""
    graph = Graph()
    x = graph.add_input("x", (4, 3, 2), F32)
    h = graph.add_input("h", (3, 5), F32)
    c = graph.add_input("c", (3, 5), F32)
    w_ih, w_hh = graph.add_input("w_ih", (20, 2), F32), graph.add_input("w_hh", (20, 5), F32)
    monkeypatch.setattr(ops.get("lstm_layer"), "impl", None)
    attrs = {"reverse": False, "has_bias": False, "has_proj": False, "has_lengths": False}
    outputs = infer_outputs(graph, "lstm_layer", (x, h, c, w_ih, w_hh, None, None, None, None), attrs)
    assert outputs == [((4, 3, 5), F32), ((3, 5), F32), ((3, 5), F32), ((4 * 3 * 25,), F32)]


# Copy elision (ir/passes/copy_elision.py) relies on these kinds always returning new memory.
FRESH = sorted(name for name, op in ops.OPS.items() if op.kind in FRESH_KINDS)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
@pytest.mark.parametrize("name", FRESH)
def test_matmul_reduce_and_composite_results_never_share_an_input_s_memory(name, device, request):
    if device != "cpu":
        request.getfixturevalue("interpret")
    rng = np.random.default_rng(sum(map(ord, name)))
    for _ in range(3):
        inputs, attrs = SAMPLES[name](rng)
        inputs = [x.to(device) if isinstance(x, tracefuse.Tensor) else x for x in inputs]
        with no_grad():
            out = dispatch(name, *inputs, **attrs)
        for o in out if isinstance(out, tuple) else (out,):
            for x in inputs:
                if isinstance(x, tracefuse.Tensor):
                    assert not np.shares_memory(o._data, x._data), f"{name} returned (a view of) an input"
