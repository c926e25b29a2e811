"""Gradient rules of the elementwise, reduction, matmul and movement ops."""
from __future__ import annotations

import math

from ..dispatch import dispatch
from ..ir.ops import TensorSlot
from ._rule import rule, sum_to, unsqueeze_dims


def _shape(ctx, i):
    return ctx.input_meta[i][0]


def _zeros(ctx, i, like):
    from ..creation import zeros
    return zeros(_shape(ctx, i), dtype=like.dtype, device=like.device)


# --- elementwise unary ---------------------------------------------------------------------------

@rule("neg")
def _neg(ctx, g):
    return -g


@rule("abs", inputs=(0,))
def _abs(ctx, g):
    return g * ctx.saved_input(0).sign()


@rule("relu", outputs=(0,))
def _relu(ctx, g):
    return g * (ctx.saved_output(0) > 0)


def _zero_grad(ctx, g):
    return g * 0


for _name in ("sign", "floor", "ceil", "round", "trunc"):
    rule(_name)(_zero_grad)


@rule("exp", outputs=(0,))
def _exp(ctx, g):
    return g * ctx.saved_output(0)


@rule("expm1", outputs=(0,))
def _expm1(ctx, g):
    return g * (ctx.saved_output(0) + 1)


@rule("log", inputs=(0,))
def _log(ctx, g):
    return g / ctx.saved_input(0)


@rule("log1p", inputs=(0,))
def _log1p(ctx, g):
    return g / (ctx.saved_input(0) + 1)


@rule("log2", inputs=(0,))
def _log2(ctx, g):
    return g / (ctx.saved_input(0) * math.log(2.0))


@rule("sqrt", outputs=(0,))
def _sqrt(ctx, g):
    return g / (2 * ctx.saved_output(0))


@rule("rsqrt", outputs=(0,))
def _rsqrt(ctx, g):
    y = ctx.saved_output(0)
    return -0.5 * g * y * y * y


@rule("sin", inputs=(0,))
def _sin(ctx, g):
    return g * ctx.saved_input(0).cos()


@rule("cos", inputs=(0,))
def _cos(ctx, g):
    return -g * ctx.saved_input(0).sin()


@rule("sigmoid", outputs=(0,))
def _sigmoid(ctx, g):
    y = ctx.saved_output(0)
    return g * y * (1 - y)


@rule("tanh", outputs=(0,))
def _tanh(ctx, g):
    y = ctx.saved_output(0)
    return g * (1 - y * y)


@rule("erf", inputs=(0,))
def _erf(ctx, g):
    x = ctx.saved_input(0)
    return g * (2.0 / math.sqrt(math.pi)) * (-(x * x)).exp()


@rule("reciprocal", outputs=(0,))
def _reciprocal(ctx, g):
    y = ctx.saved_output(0)
    return -g * y * y


@rule("gelu", inputs=(0,))
def _gelu(ctx, g):
    x = ctx.saved_input(0)
    if ctx.attrs["approximate"] == "tanh":
        k = math.sqrt(2.0 / math.pi)
        inner = k * (x + 0.044715 * x * x * x)
        t = inner.tanh()
        d_inner = k * (1 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * d_inner)
    cdf = 0.5 * (1 + (x / math.sqrt(2.0)).erf())
    pdf = (-0.5 * x * x).exp() / math.sqrt(2 * math.pi)
    return g * (cdf + x * pdf)


@rule("leaky_relu", inputs=(0,))
def _leaky_relu(ctx, g):
    x = ctx.saved_input(0)
    return g * dispatch("where", x > 0, 1.0, ctx.attrs["negative_slope"]).to(g.dtype)


@rule("elu", inputs=(0,), outputs=(0,))
def _elu(ctx, g):
    x, y = ctx.saved_input(0), ctx.saved_output(0)
    return dispatch("where", x > 0, g, g * (y + ctx.attrs["alpha"]))


@rule("softplus", inputs=(0,))
def _softplus(ctx, g):
    x = ctx.saved_input(0)
    beta, threshold = ctx.attrs["beta"], ctx.attrs["threshold"]
    return dispatch("where", x * beta > threshold, g, g * (x * beta).sigmoid())


@rule("cast", node_name="ToCopyBackward0")
def _cast(ctx, g):
    return g.to(ctx.input_meta[0][1])


# --- elementwise binary ----------------------------------------------------------------------

@rule("add")
def _add(ctx, g):
    return [None if m is None else sum_to(g, m[0]) for m in ctx.input_meta]


@rule("sub")
def _sub(ctx, g):
    a, b = ctx.input_meta
    return (None if a is None else sum_to(g, a[0]), None if b is None else sum_to(-g, b[0]))


def _operand(ctx, i):
    """A saved tensor input, or the Python scalar that stood in its place."""
    saved = ctx.saved_input(i)
    return saved if saved is not None else ctx.scalars[i]


# Binary rules read a saved operand only for the gradient that needs it, as PyTorch saves it only
# then: `y = x * 2` can be backpropagated twice, and x may change in place after `x * w` when only
# w's gradient is asked for.

@rule("mul", inputs=(0, 1))
def _mul(ctx, g):
    return (sum_to(g * _operand(ctx, 1), _shape(ctx, 0)) if ctx.needs_input_grad[0] else None,
            sum_to(g * _operand(ctx, 0), _shape(ctx, 1)) if ctx.needs_input_grad[1] else None)


@rule("div", inputs=(0, 1))
def _div(ctx, g):
    y = _operand(ctx, 1)
    return (sum_to(g / y, _shape(ctx, 0)) if ctx.needs_input_grad[0] else None,
            sum_to(-g * _operand(ctx, 0) / (y * y), _shape(ctx, 1)) if ctx.needs_input_grad[1] else None)


@rule("div_mode")
def _div_mode(ctx, g):
    return [None if m is None else sum_to(g * 0, m[0]) for m in ctx.input_meta]


@rule("pow", inputs=(0, 1), outputs=(0,))
def _pow(ctx, g):
    x, y = _operand(ctx, 0), _operand(ctx, 1)
    gx = gy = None
    if ctx.needs_input_grad[0]:
        if isinstance(y, (int, float)) and y == 0:
            gx = g * 0
        else:
            gx = sum_to(g * y * x ** (y - 1), _shape(ctx, 0))
    if ctx.needs_input_grad[1]:
        # d/dy x^y = x^y log x, taken as 0 where x == 0 and y >= 0 (as PyTorch).
        if ctx.input_meta[0] is not None:
            grad = g * ctx.saved_output(0) * x.log()
            gy = dispatch("where", (x == 0) & (y >= 0), 0.0, grad)
        elif x == 0:
            gy = dispatch("where", y >= 0, 0.0, g * ctx.saved_output(0) * -math.inf)
        else:
            gy = g * ctx.saved_output(0) * (math.log(x) if x > 0 else math.nan)
        gy = sum_to(gy, _shape(ctx, 1))
    return gx, gy


def _extreme_grad(ctx, g, pick_first):
    x, y = _operand(ctx, 0), _operand(ctx, 1)
    half = g / 2
    zero = g * 0
    first = dispatch("where", pick_first(x, y), g, dispatch("where", x == y, half, zero))
    second = dispatch("where", pick_first(y, x), g, dispatch("where", x == y, half, zero))
    return (sum_to(first, _shape(ctx, 0)) if ctx.needs_input_grad[0] else None,
            sum_to(second, _shape(ctx, 1)) if ctx.needs_input_grad[1] else None)


@rule("maximum", inputs=(0, 1))
def _maximum(ctx, g):
    return _extreme_grad(ctx, g, lambda a, b: a > b)


@rule("minimum", inputs=(0, 1))
def _minimum(ctx, g):
    return _extreme_grad(ctx, g, lambda a, b: a < b)


@rule("remainder", inputs=(0, 1))
def _remainder(ctx, g):
    x, y = _operand(ctx, 0), _operand(ctx, 1)
    return (sum_to(g, _shape(ctx, 0)) if ctx.needs_input_grad[0] else None,
            sum_to(-g * dispatch("div_mode", x, y, rounding_mode="floor"), _shape(ctx, 1))
            if ctx.needs_input_grad[1] else None)


@rule("atan2", inputs=(0, 1))
def _atan2(ctx, g):
    x, y = _operand(ctx, 0), _operand(ctx, 1)
    denom = x * x + y * y
    return (sum_to(g * y / denom, _shape(ctx, 0)) if ctx.needs_input_grad[0] else None,
            sum_to(-g * x / denom, _shape(ctx, 1)) if ctx.needs_input_grad[1] else None)


@rule("where", inputs=(0,))
def _where(ctx, g):
    cond = ctx.saved_input(0)
    zero = g * 0
    return (None,
            sum_to(dispatch("where", cond, g, zero), _shape(ctx, 1)) if ctx.needs_input_grad[1] else None,
            sum_to(dispatch("where", cond, zero, g), _shape(ctx, 2)) if ctx.needs_input_grad[2] else None)


@rule("clamp", inputs=(0,))
def _clamp(ctx, g):
    x = ctx.saved_input(0)
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    keep = None
    if lo is not None:
        keep = x >= lo
    if hi is not None:
        keep = (x <= hi) if keep is None else keep & (x <= hi)
    return g * keep


@rule("masked_fill", inputs=(1,))
def _masked_fill(ctx, g):
    return sum_to(g.masked_fill(ctx.saved_input(1), 0), _shape(ctx, 0)), None


@rule("dropout", outputs=(1,))
def _dropout(ctx, g, _g_mask):
    p = ctx.attrs["p"]
    return g * ctx.saved_output(1) * (0.0 if p >= 1 else 1.0 / (1.0 - p))


# --- reductions --------------------------------------------------------------------------------

def _expand_back(ctx, g):
    shape = _shape(ctx, 0)
    return unsqueeze_dims(g, ctx.attrs["dim"], ctx.attrs["keepdim"], len(shape)).expand(shape)


@rule("sum")
def _sum(ctx, g):
    return _expand_back(ctx, g)


@rule("mean")
def _mean(ctx, g):
    shape = _shape(ctx, 0)
    dims = ctx.attrs["dim"]
    count = math.prod(shape) if dims is None else math.prod(shape[d] for d in dims)
    return _expand_back(ctx, g) / max(count, 1)


@rule("prod", inputs=(0,))
def _prod(ctx, g):
    """d prod / d x_i is the product of the other elements: out / x_i where x_i != 0; with one zero
    in the slice, the product of the non-zeros at the zero (and 0 elsewhere); with more, 0."""
    x = ctx.saved_input(0)
    dims = ctx.attrs["dim"]
    is_zero = x == 0
    nonzero_prod = dispatch("where", is_zero, 1.0, x).prod(dim=dims, keepdim=True) if x.ndim else \
        dispatch("where", is_zero, 1.0, x)
    zeros = is_zero.sum(dim=dims, keepdim=True) if x.ndim else is_zero.long()
    others = dispatch("where", is_zero, dispatch("where", zeros == 1, nonzero_prod, 0.0),
                      dispatch("where", zeros == 0, nonzero_prod / dispatch("where", is_zero, 1.0, x), 0.0))
    return _expand_back(ctx, g) * others


def _amax_grad(ctx, g):
    x, out = ctx.saved_input(0), ctx.saved_output(0)
    ndim = len(_shape(ctx, 0))
    dims, keepdim = ctx.attrs["dim"], ctx.attrs["keepdim"]
    hit = (x == unsqueeze_dims(out, dims, keepdim, ndim)).to(g.dtype)
    count = hit.sum(dim=dims, keepdim=True) if ndim else hit
    return _expand_back(ctx, g) * hit / count


rule("amax", inputs=(0,), outputs=(0,))(_amax_grad)
rule("amin", inputs=(0,), outputs=(0,))(_amax_grad)


def _pick_grad(ctx, g, _g_indices):
    """max(dim)/min(dim): the gradient goes to the selected element."""
    idx = ctx.saved_output(1)
    shape = _shape(ctx, 0)
    dim, keepdim = ctx.attrs["dim"], ctx.attrs["keepdim"]
    if not keepdim and len(shape):
        g, idx = g.unsqueeze(dim), idx.unsqueeze(dim)
    return dispatch("scatter", _zeros(ctx, 0, g), idx, g, dim=dim, reduce=None) if len(shape) else g


rule("max_dim", outputs=(1,))(_pick_grad)
rule("min_dim", outputs=(1,))(_pick_grad)


@rule("var", inputs=(0,))
def _var(ctx, g):
    x = ctx.saved_input(0)
    shape = _shape(ctx, 0)
    dims = ctx.attrs["dim"]
    n = math.prod(shape) if dims is None else math.prod(shape[d] for d in dims)
    mean = x.mean(dim=dims, keepdim=True) if dims is not None or len(shape) else x
    return _expand_back(ctx, g) * 2 * (x - mean) / (n - ctx.attrs["correction"])


@rule("norm", inputs=(0,), outputs=(0,))
def _norm(ctx, g):
    x, out = ctx.saved_input(0), ctx.saved_output(0)
    p = ctx.attrs["p"]
    ndim = len(_shape(ctx, 0))
    out = unsqueeze_dims(out, ctx.attrs["dim"], ctx.attrs["keepdim"], ndim)
    gx = _expand_back(ctx, g)
    if p == 0:
        return gx * 0
    if p == 1:
        return gx * x.sign()
    if math.isinf(p):
        hit = (x.abs() == out).to(g.dtype)
        count = hit.sum(dim=ctx.attrs["dim"], keepdim=True) if ndim else hit
        return gx * x.sign() * hit / count
    if p == 2:
        return dispatch("where", out == 0, 0.0, gx * x / out)
    scale = x * x.abs() ** (p - 2) / out ** (p - 1)
    return dispatch("where", out == 0, 0.0, gx * scale)


@rule("logsumexp", inputs=(0,), outputs=(0,))
def _logsumexp(ctx, g):
    x, out = ctx.saved_input(0), ctx.saved_output(0)
    out = unsqueeze_dims(out, ctx.attrs["dim"], ctx.attrs["keepdim"], len(_shape(ctx, 0)))
    return _expand_back(ctx, g) * (x - out).exp()


@rule("cumsum")
def _cumsum(ctx, g):
    d = ctx.attrs["dim"]
    return g.flip(d).cumsum(d).flip(d)


# --- matmul ------------------------------------------------------------------------------------

@rule("matmul", inputs=(0, 1), node_name="MmBackward0")
def _matmul(ctx, g):
    a, b = ctx.saved_input(0), ctx.saved_input(1)
    a2 = a.unsqueeze(0) if a.ndim == 1 else a
    b2 = b.unsqueeze(-1) if b.ndim == 1 else b
    g2 = g
    if b.ndim == 1:
        g2 = g2.unsqueeze(-1)
    if a.ndim == 1:
        g2 = g2.unsqueeze(-2)
    ga = gb = None
    if ctx.needs_input_grad[0]:
        ga = g2.matmul(b2.transpose(-1, -2))
        ga = sum_to(ga, a2.shape) if ga.shape != a2.shape else ga
        ga = ga.reshape(a.shape)
    if ctx.needs_input_grad[1]:
        gb = a2.transpose(-1, -2).matmul(g2)
        gb = sum_to(gb, b2.shape) if gb.shape != b2.shape else gb
        gb = gb.reshape(b.shape)
    return ga, gb


# --- movement ----------------------------------------------------------------------------------

@rule("reshape", node_name="ViewBackward0")
def _reshape(ctx, g):
    return g.reshape(_shape(ctx, 0))


@rule("permute")
def _permute(ctx, g):
    dims = ctx.attrs["dims"]
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d] = i
    return dispatch("permute", g, dims=tuple(inverse))


@rule("expand")
def _expand(ctx, g):
    return sum_to(g, _shape(ctx, 0))


@rule("flip")
def _flip(ctx, g):
    return dispatch("flip", g, dims=ctx.attrs["dims"])


@rule("repeat")
def _repeat(ctx, g):
    shape = _shape(ctx, 0)
    repeats = ctx.attrs["repeats"]
    padded = (1,) * (len(repeats) - len(shape)) + tuple(shape)
    split = []
    for r, s in zip(repeats, padded):
        split += [r, s]
    summed = g.reshape(split).sum(dim=tuple(range(0, len(split), 2)))
    return summed.reshape(shape)


@rule("clone")
def _clone(ctx, g):
    return g


@rule("to_device")
def _to_device(ctx, g):
    return g.to(ctx.attrs["source"])


def _saved_index_tensors(ctx, start):
    return [ctx.saved_input(i) for i in range(start, len(ctx.input_meta))]


@rule("getitem", inputs=slice(1, None), node_name="IndexBackward0")
def _getitem(ctx, g):
    tensors = _saved_index_tensors(ctx, 1)
    return (dispatch("index_put", _zeros(ctx, 0, g), g, *tensors, index=ctx.attrs["index"], accumulate=True),
            *([None] * len(tensors)))


@rule("index_put", inputs=slice(2, None))
def _index_put(ctx, g):
    tensors = _saved_index_tensors(ctx, 2)
    index = ctx.attrs["index"]
    gx = gv = None
    if ctx.needs_input_grad[0]:
        gx = g if ctx.attrs["accumulate"] else dispatch(
            "index_put", g, g.new_zeros(()), *tensors, index=index, accumulate=False)
    if ctx.needs_input_grad[1]:
        gv = sum_to(dispatch("getitem", g, *tensors, index=index), _shape(ctx, 1))
    return (gx, gv, *([None] * len(tensors)))


@rule("cat")
def _cat(ctx, g):
    d = ctx.attrs["dim"]
    sizes = [m[0][d] for m in ctx.input_meta]
    return g.split(sizes, d)


@rule("gather", inputs=(1,))
def _gather(ctx, g):
    idx = ctx.saved_input(1)
    return dispatch("scatter", _zeros(ctx, 0, g), idx, g, dim=ctx.attrs["dim"], reduce="add"), None


@rule("scatter", inputs=(1,))
def _scatter(ctx, g):
    idx = ctx.saved_input(1)
    d = ctx.attrs["dim"]
    gx = g if ctx.attrs["reduce"] == "add" else dispatch("scatter", g, idx, 0.0, dim=d, reduce=None)
    gsrc = g.gather(d, idx) if ctx.input_meta[2] is not None and ctx.needs_input_grad[2] else None
    return gx, None, gsrc


@rule("index_select", inputs=(1,))
def _index_select(ctx, g):
    idx = ctx.saved_input(1)
    key = (slice(None),) * ctx.attrs["dim"] + (TensorSlot(0),)
    return dispatch("index_put", _zeros(ctx, 0, g), g, idx, index=key, accumulate=True), None


@rule("pad")
def _pad(ctx, g):
    return dispatch("pad", g, pad=tuple(-p for p in ctx.attrs["pad"]), value=0)


@rule("tril")
def _tril(ctx, g):
    return g.tril(ctx.attrs["diagonal"])


@rule("triu")
def _triu(ctx, g):
    return g.triu(ctx.attrs["diagonal"])
