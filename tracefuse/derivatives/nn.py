"""Gradient rules of the composite nn ops (softmax family, layer_norm, embedding, conv, pooling).

The big gradients are ops of their own (`embedding_backward`, `conv_backward`, the pooling
backwards); each of those has a rule too, made of the forward op and itself, so every nn op
supports double backward.
"""
from __future__ import annotations

from ..dispatch import dispatch
from ._rule import rule

# --- softmax family ------------------------------------------------------------------------------


@rule("softmax", outputs=(0,))
def _softmax(ctx, g):
    y = ctx.saved_output(0)
    d = ctx.attrs["dim"]
    return y * (g - (g * y).sum(dim=d, keepdim=True))


@rule("log_softmax", outputs=(0,))
def _log_softmax(ctx, g):
    y = ctx.saved_output(0)
    d = ctx.attrs["dim"]
    return g - y.exp() * g.sum(dim=d, keepdim=True)


# --- layer_norm ----------------------------------------------------------------------------------


def _sum_leading(t, n_lead):
    return t.sum(dim=tuple(range(n_lead))) if n_lead else t


@rule("layer_norm", inputs=(0, 1))
def _layer_norm(ctx, g):
    """Statistics are recomputed from the saved input with tensor ops, so this rule is itself
    differentiable."""
    x, weight = ctx.saved_input(0), ctx.saved_input(1)
    n_lead = x.ndim - len(ctx.attrs["normalized_shape"])
    axes = tuple(range(n_lead, x.ndim))
    centered = x - x.mean(dim=axes, keepdim=True)
    rstd = ((centered * centered).mean(dim=axes, keepdim=True) + ctx.attrs["eps"]).rsqrt()
    x_hat = centered * rstd
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        g_hat = g * weight if weight is not None else g
        gx = rstd * (g_hat - g_hat.mean(dim=axes, keepdim=True)
                     - x_hat * (g_hat * x_hat).mean(dim=axes, keepdim=True))
    if ctx.needs_input_grad[1]:
        gw = _sum_leading(g * x_hat, n_lead)
    if ctx.needs_input_grad[2]:
        gb = _sum_leading(g, n_lead)
    return gx, gw, gb


# --- embedding -----------------------------------------------------------------------------------


@rule("embedding", inputs=(1,))
def _embedding(ctx, g):
    indices = ctx.saved_input(1)
    return dispatch("embedding_backward", g, indices, num_weights=ctx.input_meta[0][0][0],
                    padding_idx=ctx.attrs["padding_idx"]), None


@rule("embedding_backward", inputs=(1,))
def _embedding_backward(ctx, gg):
    """The weight gradient is linear in the output gradient: its adjoint is a lookup, with the
    padding row (which got no gradient) contributing nothing."""
    indices = ctx.saved_input(1)
    padding_idx = ctx.attrs["padding_idx"]
    out = dispatch("embedding", gg, indices, padding_idx=padding_idx)
    if padding_idx is not None:
        out = out.masked_fill((indices == padding_idx).unsqueeze(-1), 0)
    return out, None


# --- convolution ---------------------------------------------------------------------------------

_CONV_ATTRS = ("stride", "padding", "dilation", "groups")


def _conv_attrs(ctx):
    return {k: ctx.attrs[k] for k in _CONV_ATTRS}


@rule("conv", inputs=(0, 1))
def _conv(ctx, g):
    mask = tuple(ctx.needs_input_grad) + (False,) * (3 - len(ctx.needs_input_grad))
    gx, gw, gb = dispatch("conv_backward", g, ctx.saved_input(0), ctx.saved_input(1),
                          output_mask=mask, **_conv_attrs(ctx))
    return tuple(t if need else None for t, need in zip((gx, gw, gb), mask))


@rule("conv_backward", inputs=(0, 1, 2))
def _conv_backward(ctx, ggx, ggw, ggb):
    """conv_backward is linear in grad_out (and bilinear with x or w), so its adjoints are a conv
    and conv_backward again: d/dgrad = conv(ggx, w) + conv(x, ggw) + ggb, d/dx and d/dw are the
    input and weight gradients of those convs."""
    g, x, w = (ctx.saved_input(i) for i in range(3))
    mask = ctx.attrs["output_mask"]
    attrs = _conv_attrs(ctx)
    need_g, need_x, need_w = ctx.needs_input_grad
    dg = dx = dw = None
    if need_g:
        terms = []
        if mask[0]:
            terms.append(dispatch("conv", ggx, w, None, **attrs))
        if mask[1]:
            terms.append(dispatch("conv", x, ggw, None, **attrs))
        if mask[2]:
            terms.append(ggb.reshape((1, -1) + (1,) * (g.ndim - 2)))
        dg = sum(terms[1:], terms[0]) if terms else g * 0
    if need_x and mask[1]:
        dx = dispatch("conv_backward", g, x, ggw, output_mask=(True, False, False), **attrs)[0]
    if need_w and mask[0]:
        dw = dispatch("conv_backward", g, ggx, w, output_mask=(False, True, False), **attrs)[1]
    return dg, dx, dw


# --- pooling -------------------------------------------------------------------------------------


@rule("max_pool", outputs=(1,))
def _max_pool(ctx, g, _g_indices):
    return dispatch("max_pool_backward", g, ctx.saved_output(1), input_shape=tuple(ctx.input_meta[0][0]),
                    spatial_ndim=len(ctx.attrs["kernel_size"]))


@rule("max_pool_backward", inputs=(1,))
def _max_pool_backward(ctx, gg):
    """Adjoint of the scatter to the argmax positions: a gather from them."""
    indices = ctx.saved_input(1)
    n_lead = len(ctx.attrs["input_shape"]) - ctx.attrs["spatial_ndim"]
    rows = gg.shape[:n_lead]
    picked = gg.reshape(rows + (-1,)).gather(n_lead, indices.reshape(rows + (-1,)))
    return picked.reshape(indices.shape), None


_POOL_ATTRS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _pool_attrs(ctx):
    return {k: ctx.attrs[k] for k in _POOL_ATTRS}


@rule("avg_pool")
def _avg_pool(ctx, g):
    return dispatch("avg_pool_backward", g, input_shape=tuple(ctx.input_meta[0][0]), **_pool_attrs(ctx))


@rule("avg_pool_backward")
def _avg_pool_backward(ctx, gg):
    return dispatch("avg_pool", gg, **_pool_attrs(ctx))
