"""The composite nn ops on a device: softmax family, layer_norm, embedding, convolution and
pooling, with the semantics of their NumPy implementations (codegen/numpy/nn.py).

- softmax / log_softmax: one program per row, as Triton's tutorial 02-fused-softmax; a row that
  fits one block is loaded once, a longer one is read in three passes (maximum, sum, output).
- layer_norm: one program per row (mean, then the variance of the centered row, as the CPU).
- embedding: one program per (index, block of the row) gathers a table row; its backward adds
  the gradient rows into the table's gradient with atomic adds.
- conv: an implicit-GEMM kernel (the im2col columns are gathered inside the kernel and fed to
  `tl.dot`); its backward is three kernels (input gradient as a gather over the taps that reach
  each input position, weight gradient as a GEMM over batch and positions, bias as a sum).
- pooling: one lane per output (forward) or input (avg_pool backward) position looping over the
  window's taps in scan order; max_pool's backward scatters with atomic adds.

Inputs that are not C-contiguous are copied first (a pointwise kernel) where a kernel indexes
them by their logical layout. Every spatial op is generated for its number of spatial dims; the
window geometry (kernel, stride, padding, dilation) is `tl.constexpr`.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from ...ir import shapes
from .heuristics import block_size, cdiv
from .elementwise import contiguous, copy_into
from .launch import emitter, tl_type
from .pointwise import INT32_LIMIT, Pointwise, store_cast

# Rows longer than this are read block by block in a loop instead of in one block.
MAX_ROW_BLOCK = 2048


# --- helpers shared by the emitters --------------------------------------------------------------


def _compute(dtype) -> np.dtype:
    """The type a kernel computes in for results of `dtype`: float16/bfloat16 compute in float32."""
    return dtypes.compute_type(dtypes.from_numpy_dtype(np.dtype(dtype)))


def _accumulator(dtype) -> np.dtype:
    """Atomic-add accumulators: float64 for float64, int64 for integers, float32 otherwise."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        return np.dtype(np.int64)
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _cast(call, x, dtype):
    """A copy of `x` as `dtype` (accumulators to the result type)."""
    if np.dtype(x.dtype) == np.dtype(dtype):
        return x
    out = call.empty(x.shape, dtype)
    copy_into(call, out, x, "cast_kernel")
    return out


def _zeros(call, shape, dtype):
    out = call.empty(shape, dtype)
    fill = Pointwise("zeros_kernel", shape)
    fill.store("out", fill.compute("zero", "tl.zeros([BLOCK], tl.int32)"), out)
    fill.launch(call)
    return out


def _wide(*arrays_or_sizes) -> bool:
    """Whether offsets into any of these (arrays or element counts) need 64 bits."""
    return any((a.size if hasattr(a, "size") else int(a)) > INT32_LIMIT for a in arrays_or_sizes)


def _pid(axis, wide) -> str:
    return f"tl.program_id({axis})" + (".to(tl.int64)" if wide else "")


def _arange(block, wide) -> str:
    """`tl.arange(0, block)`, as int64 where offsets built from it may pass 2**31."""
    return f"tl.arange(0, {block})" + (".to(tl.int64)" if wide else "")


def _lowest(dtype) -> str:
    """The value padding holds for a maximum: -inf, or the integer type's minimum."""
    dtype = np.dtype(dtype)
    return 'float("-inf")' if dtype.kind == "f" or dtype.name == "bfloat16" else str(np.iinfo(dtype).min)


def _split(flat, names, sizes, rest=None) -> list[str]:
    """Lines splitting the flat index `flat` into coordinates `names` over `sizes` (row-major);
    what is left above the first coordinate goes to `rest` (or is the first coordinate itself)."""
    lines, current = [], flat
    for d in range(len(names) - 1, 0, -1):
        lines.append(f"{names[d]} = {current} % {sizes[d]}")
        above = f"{flat}_over{d}"
        if d == 1 and rest is None:
            lines.append(f"{names[0]} = {current} // {sizes[d]}")
            return lines
        lines.append(f"{above} = {current} // {sizes[d]}")
        current = above
    if rest is None:
        return lines + [f"{names[0]} = {current}"]
    return lines + [f"{names[0]} = {current} % {sizes[0]}", f"{rest} = {current} // {sizes[0]}"]


def _join(coords, sizes) -> str:
    """The row-major flat index of `coords` over `sizes`."""
    expr = coords[0]
    for c, n in zip(coords[1:], sizes[1:]):
        expr = f"{expr if ' ' not in expr else '(' + expr + ')'} * {n} + {c}"
    return expr


def _product(names) -> str:
    return " * ".join(names)


def _kernel_source(name, params: list, body: list) -> str:
    """`@triton.jit def name(...)` from grouped parameter lines ('# comment' lines kept) and body lines."""
    head = "\n".join(f"    {p}" for p in params)
    return f"@triton.jit\ndef {name}(\n{head}\n):\n" + "\n".join(f"    {line}" if line else "" for line in body) + "\n"


def _indent(lines, levels=1) -> list[str]:
    return ["    " * levels + line for line in lines]


# --- softmax family ------------------------------------------------------------------------------


@emitter("softmax", "log_softmax")
def softmax(call):
    (x,) = call.inputs
    log = call.op.name == "log_softmax"
    scalar = x.ndim == 0  # a 0-dim input is a row of one
    if scalar:
        x = x.reshape(1)
    out = call.empty(x.shape, call.out_dtype)
    if out.size == 0:
        return out
    dim = call.attrs["dim"] % x.ndim
    x = contiguous(call, x)
    n_cols = x.shape[dim]
    inner = math.prod(x.shape[dim + 1:])
    block = block_size(n_cols, high=MAX_ROW_BLOCK)
    source = _softmax_source(call.op.name, log, _compute(out.dtype), out.dtype, n_cols <= block, _wide(x))
    kernel = call.kernel(f"{call.op.name}_kernel", source)
    call.launch(kernel, (x.size // n_cols,), x, out, n_cols, inner, BLOCK=block)
    return out.reshape(()) if scalar else out


def _softmax_source(name, log, compute, out_dtype, one_block, wide) -> str:
    ct = tl_type(compute)
    params = [
        "# pointers: input and output, both C-contiguous, seen as [outer, n_cols, inner]",
        "x_ptr, out_ptr,",
        "# the length of the softmax dim, and its stride (the product of the dims after it)",
        "n_cols, inner,",
        "BLOCK: tl.constexpr,",
    ]
    body = [
        "# one program per row: the n_cols elements at one (outer, inner) position",
        f"row = {_pid(0, wide)}",
        "row_start = (row // inner) * n_cols * inner + row % inner",
    ]

    def load(indent):
        return _indent([
            "row_mask = cols < n_cols",
            f"x = tl.load(x_ptr + row_start + cols * inner, mask=row_mask, other=0).to({ct})",
            'x = tl.where(row_mask, x, float("-inf"))',
        ], indent)

    shift = [
        "# a row whose maximum is not finite (inf, or NaN) is shifted by 0, as on the CPU",
        "row_shift = tl.where(tl.abs(row_max) < float(\"inf\"), row_max, 0.0)",
    ]
    result = "shifted - tl.log(denominator)" if log else "tl.exp(shifted) / denominator"
    if one_block:
        body += [f"cols = {_arange('BLOCK', wide)}"] + load(0)
        body += ["row_max = tl.max(x, axis=0)"] + shift
        body += ["shifted = x - row_shift", "numerator = tl.exp(shifted)", "denominator = tl.sum(numerator, axis=0)"]
        body += [f"{name} = {'shifted - tl.log(denominator)' if log else 'numerator / denominator'}",
                 f"tl.store(out_ptr + row_start + cols * inner, {store_cast(name, out_dtype)}, mask=row_mask)"]
        return _kernel_source(f"{name}_kernel", params, body)
    loop = ["for start in range(0, n_cols, BLOCK):", f"    cols = start + {_arange('BLOCK', wide)}"]
    body += ["# pass 1: the row's maximum", f'running_max = tl.full([BLOCK], float("-inf"), {ct})']
    body += loop + load(1) + ["    running_max = tl.maximum(running_max, x)"]
    body += ["row_max = tl.max(running_max, axis=0)"] + shift
    body += ["# pass 2: the sum of exponentials", f"running_sum = tl.zeros([BLOCK], {ct})"]
    body += loop + load(1) + ["    running_sum += tl.exp(x - row_shift)"]
    body += ["denominator = tl.sum(running_sum, axis=0)", "# pass 3: the output"]
    body += loop + load(1) + ["    shifted = x - row_shift", f"    {name} = {result}",
                              f"    tl.store(out_ptr + row_start + cols * inner, {store_cast(name, out_dtype)}, mask=row_mask)"]
    return _kernel_source(f"{name}_kernel", params, body)


# --- layer_norm ----------------------------------------------------------------------------------


@emitter("layer_norm")
def layer_norm(call):
    x, weight, bias = (list(call.inputs) + [None, None])[:3]
    out = call.empty(x.shape, call.out_dtype)
    n_cols = math.prod(call.attrs["normalized_shape"])
    if out.size == 0:
        return out
    x, weight, bias = (contiguous(call, a) for a in (x, weight, bias))
    compute = _compute(out.dtype)
    block = block_size(n_cols, high=MAX_ROW_BLOCK)
    source = _layer_norm_source(compute, out.dtype, weight is not None, bias is not None, n_cols <= block, _wide(x))
    kernel = call.kernel("layer_norm_kernel", source)
    args = [x] + [a for a in (weight, bias) if a is not None] + [out, n_cols]
    call.launch(kernel, (x.size // n_cols,), *args, EPS=float(call.attrs["eps"]), BLOCK=block)
    return out


def _layer_norm_source(compute, out_dtype, has_weight, has_bias, one_block, wide) -> str:
    ct = tl_type(compute)
    affine = ", ".join(p for p, has in (("weight_ptr", has_weight), ("bias_ptr", has_bias)) if has)
    params = [
        "# pointers: input and output [rows, n_cols] (C-contiguous)" + (f", {affine} [n_cols]" if affine else ""),
        "x_ptr, " + (affine + ", " if affine else "") + "out_ptr,",
        "# the normalized length (the product of normalized_shape)",
        "n_cols,",
        "EPS: tl.constexpr,",
        "BLOCK: tl.constexpr,",
    ]
    body = ["# one program per row", f"row = {_pid(0, wide)}", "row_start = row * n_cols",
            f"eps = tl.full([], EPS, {ct})  # exact in float64 too"]

    def load(indent):
        return _indent(["row_mask = cols < n_cols",
                        f"x = tl.load(x_ptr + row_start + cols, mask=row_mask, other=0).to({ct})"], indent)

    def output(indent):
        lines = ["layer_norm = centered / tl.sqrt(var + eps)"]
        if has_weight:
            lines.append(f"layer_norm = layer_norm * tl.load(weight_ptr + cols, mask=row_mask, other=0).to({ct})")
        if has_bias:
            lines.append(f"layer_norm = layer_norm + tl.load(bias_ptr + cols, mask=row_mask, other=0).to({ct})")
        lines.append(f"tl.store(out_ptr + row_start + cols, {store_cast('layer_norm', out_dtype)}, mask=row_mask)")
        return _indent(lines, indent)

    if one_block:
        body += ["cols = tl.arange(0, BLOCK)"] + load(0)
        body += ["mean = tl.sum(x, axis=0) / n_cols",
                 "centered = tl.where(row_mask, x - mean, 0.0)",
                 "var = tl.sum(centered * centered, axis=0) / n_cols"]
        return _kernel_source("layer_norm_kernel", params, body + output(0))
    loop = ["for start in range(0, n_cols, BLOCK):", "    cols = start + tl.arange(0, BLOCK)"]
    body += ["# pass 1: the mean", f"running_sum = tl.zeros([BLOCK], {ct})"]
    body += loop + load(1) + ["    running_sum += x"]
    body += ["mean = tl.sum(running_sum, axis=0) / n_cols", "# pass 2: the variance of the centered row",
             f"running_squares = tl.zeros([BLOCK], {ct})"]
    body += loop + load(1) + ["    centered = tl.where(row_mask, x - mean, 0.0)",
                              "    running_squares += centered * centered"]
    body += ["var = tl.sum(running_squares, axis=0) / n_cols", "# pass 3: the output"]
    body += loop + load(1) + ["    centered = x - mean"] + output(1)
    return _kernel_source("layer_norm_kernel", params, body)


# --- embedding -----------------------------------------------------------------------------------


def _embedding_row(wide) -> list[str]:
    """The head of an embedding kernel: this program's index and block of its row's columns."""
    return [
        "# one program per (index, block of its row)",
        f"position = {_pid(0, wide)}",
        "cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)",
        "col_mask = cols < dim",
        "index = tl.broadcast_to(tl.load(indices_ptr + position).to(tl.int64), [BLOCK])  # one per lane",
    ]


@emitter("embedding")
def embedding(call):
    """Rows of the table picked by the indices. The values are not checked on the device: an
    index out of range gives a row of zeros (the CPU raises IndexError)."""
    weight, indices = call.inputs
    dim = weight.shape[1]
    out = call.empty(tuple(indices.shape) + (dim,), call.out_dtype)
    if out.size == 0:
        return out
    indices = contiguous(call, indices)
    block = block_size(dim, high=1024)
    wide = _wide(weight, out)
    params = [
        "# pointers: the table [num_weights, dim] (strided), the indices (flat), the output [n_indices, dim]",
        "weight_ptr, indices_ptr, out_ptr,",
        "# the table's sizes and strides (elements)",
        "num_weights, dim, weight_stride0, weight_stride1,",
        "BLOCK: tl.constexpr,",
    ]
    body = _embedding_row(wide) + [
        "in_range = (index >= 0) & (index < num_weights)",
        "row = tl.load(weight_ptr + index * weight_stride0 + cols * weight_stride1, mask=col_mask & in_range, other=0)",
        "tl.store(out_ptr + position * dim + cols, row, mask=col_mask)",
    ]
    kernel = call.kernel("embedding_kernel", _kernel_source("embedding_kernel", params, body))
    strides = [s // weight.itemsize for s in weight.strides]
    call.launch(kernel, (indices.size, cdiv(dim, block)), weight, indices, out, weight.shape[0], dim,
                *strides, BLOCK=block)
    return out


@emitter("embedding_backward")
def embedding_backward(call):
    """The table's gradient: each gradient row added at its index (atomic adds into a float32
    accumulator for float16/bfloat16, into the result otherwise); the padding row gets nothing."""
    grad, indices = call.inputs
    num_weights, padding_idx = call.attrs["num_weights"], call.attrs["padding_idx"]
    dim = grad.shape[-1]
    out_dtype = np.dtype(call.out_dtype.np_type)
    accumulator = _zeros(call, (num_weights, dim), _accumulator(out_dtype))
    if grad.size:
        grad, indices = contiguous(call, grad), contiguous(call, indices)
        block = block_size(dim, high=1024)
        wide = _wide(grad, accumulator)
        params = [
            "# pointers: output gradient rows [n_indices, dim], the indices (flat), the table's gradient [num_weights, dim]",
            "grad_ptr, indices_ptr, grad_weight_ptr,",
            "# sizes; padding_idx is -1 when there is none",
            "num_weights, dim, padding_idx,",
            "BLOCK: tl.constexpr,",
        ]
        body = _embedding_row(wide) + [
            "accumulate = (index >= 0) & (index < num_weights) & (index != padding_idx)",
            f"grad_row = tl.load(grad_ptr + position * dim + cols, mask=col_mask, other=0).to({tl_type(accumulator.dtype)})",
            "tl.atomic_add(grad_weight_ptr + index * dim + cols, grad_row, mask=col_mask & accumulate)",
        ]
        kernel = call.kernel("embedding_backward_kernel", _kernel_source("embedding_backward_kernel", params, body))
        call.launch(kernel, (indices.size, cdiv(dim, block)), grad, indices, accumulator, num_weights, dim,
                    -1 if padding_idx is None else padding_idx % num_weights, BLOCK=block)
    return _cast(call, accumulator, out_dtype)


# --- convolution ---------------------------------------------------------------------------------


def _window_constexprs(kernel, stride, padding, dilation) -> dict:
    constexprs = {}
    for d, (k, s, p, dil) in enumerate(zip(kernel, stride, padding, dilation)):
        constexprs.update({f"KERNEL{d}": int(k), f"STRIDE{d}": int(s), f"PADDING{d}": int(p), f"DILATION{d}": int(dil)})
    return constexprs


def _window_params(nd) -> list[str]:
    names = lambda prefix: ", ".join(f"{prefix}{d}: tl.constexpr" for d in range(nd))  # noqa: E731
    return ["# window geometry per spatial dim",
            f"{names('KERNEL')}, {names('STRIDE')},", f"{names('PADDING')}, {names('DILATION')},"]


def _size_names(prefix, nd):
    return [f"{prefix}{d}" for d in range(nd)]


def _conv_geometry(attrs, weight_shape):
    """(number of spatial dims, the window constexprs) of a convolution."""
    nd = len(weight_shape) - 2
    return nd, _window_constexprs(weight_shape[2:], attrs["stride"], attrs["padding"], attrs["dilation"])


def _taps(tap, nd, indent=0) -> list[str]:
    """Lines splitting the flat tap index `tap` (over KERNEL0 x ... row-major) into tap0, tap1, ..."""
    return _indent(_split(tap, [f"tap{d}" for d in range(nd)], [f"KERNEL{d}" for d in range(nd)]), indent)


@emitter("conv")
def conv(call):
    x, weight, bias = (list(call.inputs) + [None])[:3]
    groups = call.attrs["groups"]
    nd, window = _conv_geometry(call.attrs, weight.shape)
    (out_shape,) = shapes.conv([x.shape, weight.shape], call.attrs)
    out = call.empty(out_shape, call.out_dtype)
    if out.size == 0:
        return out
    reduction = math.prod(weight.shape[1:])
    if reduction == 0:
        return _conv_bias_only(call, out, bias)
    x, weight, bias = (contiguous(call, a) for a in (x, weight, bias))
    compute = _compute(out.dtype)
    in_sizes, out_sizes = x.shape[2:], out.shape[2:]
    out_numel = math.prod(out_sizes)
    group_in, group_out = x.shape[1] // groups, out.shape[1] // groups
    block_l, block_o, block_r = block_size(out_numel, high=64), block_size(group_out, high=64), block_size(reduction, high=32)
    source = _conv_source(nd, compute, out.dtype, bias is not None, _wide(x, out, weight))
    kernel = call.kernel("conv_kernel", source)
    position_blocks = cdiv(out_numel, block_l)
    grid = (position_blocks * x.shape[0] * groups, cdiv(group_out, block_o))
    args = [x, weight] + ([bias] if bias is not None else []) + [out]
    call.launch(kernel, grid, *args, groups, group_in, group_out, position_blocks, *in_sizes, *out_sizes,
                **window, WINDOW=math.prod(weight.shape[2:]), BLOCK_L=block_l, BLOCK_O=block_o, BLOCK_R=block_r)
    return out


def _conv_bias_only(call, out, bias):
    """A convolution over no input channels: the bias (or zeros) at every position."""
    if bias is None:
        return _zeros(call, out.shape, out.dtype)
    fill = Pointwise("conv_bias_kernel", out.shape)
    fill.store("out", fill.load("bias", np.reshape(bias, (out.shape[1],) + (1,) * (out.ndim - 2))), out)
    fill.launch(call)
    return out


def _implicit_gemm_head(nd, ct, wide, side, block_c, source) -> list[str]:
    """The opening of an implicit GEMM per (image, group) over the positions of `side` ("out" for
    the convolution, "in" for its input gradient): this program's BLOCK_L positions (split into
    per-dim coordinates) and `block_c` channels of that side, its image of `source` (laid out by the
    other side), and the reduction loop's head over (channel of the other side, tap)."""
    other = "in" if side == "out" else "out"
    sizes = {s: _size_names(f"{s}_size", nd) for s in ("in", "out")}
    body = [
        f"pid = {_pid(0, wide)}",
        "position_block = pid % position_blocks",
        "image_group = pid // position_blocks",
        "group = image_group % groups",
        "positions = position_block * BLOCK_L + tl.arange(0, BLOCK_L)",
        f"{side}_numel = {_product(sizes[side])}",
        f"{other}_numel = {_product(sizes[other])}",
        f"position_mask = positions < {side}_numel",
    ]
    body += _split("positions", [f"{side}{d}" for d in range(nd)], sizes[side])
    body += [
        f"channels = tl.program_id(1) * {block_c} + tl.arange(0, {block_c})",
        f"channel_mask = channels < group_{side}",
        f"reduction = group_{other} * WINDOW",
        f"{source}_image = {source}_ptr + image_group * group_{other} * {other}_numel",
        f"acc = tl.zeros([BLOCK_L, {block_c}], dtype={ct})",
        "for start in range(0, reduction, BLOCK_R):",
        f"    r = start + {_arange('BLOCK_R', wide)}",
        "    r_mask = r < reduction",
        f"    {other}_channel = r // WINDOW",
        "    tap = r % WINDOW",
    ]
    return body + _taps("tap", nd, 1)


def _conv_source(nd, compute, out_dtype, has_bias, wide) -> str:
    ct = tl_type(compute)
    ins, outs = _size_names("in_size", nd), _size_names("out_size", nd)
    params = [
        "# pointers: input [N, C, *in], weight [O, C/groups, *kernel]" + (", bias [O]" if has_bias else "")
        + ", output [N, O, *out] (C-contiguous)",
        "x_ptr, w_ptr, " + ("bias_ptr, " if has_bias else "") + "out_ptr,",
        "# channels per group (input, output), output position blocks per image, spatial sizes",
        "groups, group_in, group_out, position_blocks,",
        ", ".join(ins + outs) + ",",
    ] + _window_params(nd) + [
        "# taps per window (prod(KERNEL)); block sizes over positions, output channels, reduction",
        "WINDOW: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,",
    ]
    body = [
        "# an implicit GEMM per (image, group): out[positions, channels] = columns[positions, r] @ weight[r, channels]",
        "# where r runs over (input channel, tap) and the columns are gathered from the input (im2col)",
    ] + _implicit_gemm_head(nd, ct, wide, "out", "BLOCK_O", "x")
    inside = ["position_mask[:, None] & r_mask[None, :]"]
    for d in range(nd):
        body.append(f"    in{d} = out{d}[:, None] * STRIDE{d} - PADDING{d} + tap{d}[None, :] * DILATION{d}")
        inside.append(f"(in{d} >= 0) & (in{d} < in_size{d})")
    body += [
        "    inside = " + " & ".join(inside),
        f"    x_offsets = in_channel[None, :] * in_numel + {_join([f'in{d}' for d in range(nd)], ins)}",
        f"    columns = tl.load(x_image + x_offsets, mask=inside, other=0).to({ct})",
        "    w_offsets = (group * group_out + channels)[None, :] * reduction + r[:, None]",
        f"    weights = tl.load(w_ptr + w_offsets, mask=r_mask[:, None] & channel_mask[None, :], other=0).to({ct})",
        f'    acc = tl.dot(columns, weights, acc, input_precision="ieee", out_dtype={ct})',
    ]
    if has_bias:
        body.append(f"acc += tl.load(bias_ptr + group * group_out + channels, mask=channel_mask, other=0).to({ct})[None, :]")
    body += [
        "out_offsets = (image_group * group_out + channels)[None, :] * out_numel + positions[:, None]",
        f"tl.store(out_ptr + out_offsets, {store_cast('acc', out_dtype)}, mask=position_mask[:, None] & channel_mask[None, :])",
    ]
    return _kernel_source("conv_kernel", params, body)


@emitter("conv_backward")
def conv_backward(call):
    grad, x, weight = call.inputs
    groups, mask = call.attrs["groups"], call.attrs["output_mask"]
    nd, window = _conv_geometry(call.attrs, weight.shape)
    out_dtype = np.dtype(call.out_dtype.np_type)
    compute = np.result_type(*[_compute(a.dtype) for a in (grad, x, weight)])
    grad, x, weight = (contiguous(call, a) for a in (grad, x, weight))
    batch, channels = x.shape[:2]
    out_channels = weight.shape[0]
    group_in, group_out = channels // groups, out_channels // groups
    in_sizes, out_sizes = x.shape[2:], grad.shape[2:]
    in_numel, out_numel = math.prod(in_sizes), math.prod(out_sizes)
    taps = math.prod(weight.shape[2:])
    wide = _wide(grad, x, weight)
    common = dict(window, WINDOW=taps)
    sizes = (groups, group_in, group_out, *in_sizes, *out_sizes)

    grad_x = grad_w = grad_b = None
    if mask[0] and x.size and grad.size and weight.size:
        grad_x = call.empty(x.shape, out_dtype)
        block_l, block_c, block_r = block_size(in_numel, high=64), block_size(group_in, high=64), block_size(group_out * taps, high=32)
        kernel = call.kernel("conv_input_grad_kernel", _conv_input_grad_source(nd, compute, out_dtype, wide))
        position_blocks = cdiv(in_numel, block_l)
        call.launch(kernel, (position_blocks * batch * groups, cdiv(group_in, block_c)), grad, weight, grad_x,
                    *sizes, position_blocks, **common, BLOCK_L=block_l, BLOCK_C=block_c, BLOCK_R=block_r)
    if mask[1] and x.size and grad.size and weight.size:
        grad_w = call.empty(weight.shape, out_dtype)
        columns = group_in * taps
        block_o, block_j, block_r = block_size(group_out, high=64), block_size(columns, high=64), block_size(batch * out_numel, high=32)
        kernel = call.kernel("conv_weight_grad_kernel", _conv_weight_grad_source(nd, compute, out_dtype, wide))
        channel_blocks = cdiv(group_out, block_o)
        call.launch(kernel, (channel_blocks * groups, cdiv(columns, block_j)), grad, x, grad_w,
                    *sizes, batch, channel_blocks, **common, BLOCK_O=block_o, BLOCK_J=block_j, BLOCK_R=block_r)
    if mask[2] and out_channels and grad.size:
        grad_b = call.empty((out_channels,), out_dtype)
        block = block_size(batch * out_numel, high=1024)
        params = [
            "# pointers: output gradient [N, O, *out] (C-contiguous), bias gradient [O]",
            "grad_ptr, grad_bias_ptr,",
            "# sizes",
            "batch, out_channels, out_numel,",
            "BLOCK: tl.constexpr,",
        ]
        body = [
            "# one program per output channel: the sum over images and positions",
            "channel = tl.program_id(0)",
            f"total = tl.zeros([BLOCK], {tl_type(compute)})",
            "for start in range(0, batch * out_numel, BLOCK):",
            f"    r = start + {_arange('BLOCK', wide)}",
            "    image = r // out_numel",
            "    position = r % out_numel",
            "    grad_offsets = (image * out_channels + channel) * out_numel + position",
            f"    total += tl.load(grad_ptr + grad_offsets, mask=r < batch * out_numel, other=0).to({tl_type(compute)})",
            "grad_bias = tl.sum(total, axis=0)",
            f"tl.store(grad_bias_ptr + channel, {store_cast('grad_bias', out_dtype)})",
        ]
        kernel = call.kernel("conv_bias_grad_kernel", _kernel_source("conv_bias_grad_kernel", params, body))
        call.launch(kernel, (out_channels,), grad, grad_b, batch, out_channels, out_numel, BLOCK=block)
    return (grad_x if grad_x is not None else _zeros(call, x.shape, out_dtype),
            grad_w if grad_w is not None else _zeros(call, weight.shape, out_dtype),
            grad_b if grad_b is not None else _zeros(call, (out_channels,), out_dtype))


def _conv_backward_params(nd, pointers, extra, blocks) -> list[str]:
    ins, outs = _size_names("in_size", nd), _size_names("out_size", nd)
    return pointers + [
        "# channels per group (input, output), spatial sizes, " + extra[0],
        "groups, group_in, group_out,",
        ", ".join(ins + outs) + ",",
        extra[1],
    ] + _window_params(nd) + [
        "# taps per window (prod(KERNEL)); block sizes",
        "WINDOW: tl.constexpr, " + ", ".join(f"{b}: tl.constexpr" for b in blocks) + ",",
    ]


def _conv_input_grad_source(nd, compute, out_dtype, wide) -> str:
    ct = tl_type(compute)
    outs = _size_names("out_size", nd)
    params = _conv_backward_params(
        nd, ["# pointers: output gradient [N, O, *out], weight [O, C/groups, *kernel], input gradient [N, C, *in]",
             "grad_ptr, w_ptr, grad_x_ptr,"],
        ("input position blocks per image", "position_blocks,"), ("BLOCK_L", "BLOCK_C", "BLOCK_R"))
    body = [
        "# per (image, group): grad_x[positions, channels] = grads[positions, r] @ weight[r, channels], where r",
        "# runs over (output channel, tap) and grads holds the output gradient at the position whose window",
        "# puts that tap on this input position (zero where none does)",
    ] + _implicit_gemm_head(nd, ct, wide, "in", "BLOCK_C", "grad")
    hit = ["position_mask[:, None] & r_mask[None, :]"]
    for d in range(nd):
        body += [f"    span{d} = in{d}[:, None] + PADDING{d} - tap{d}[None, :] * DILATION{d}",
                 f"    out{d} = span{d} // STRIDE{d}"]
        hit.append(f"(span{d} >= 0) & (span{d} % STRIDE{d} == 0) & (out{d} < out_size{d})")
    body += [
        "    hit = " + " & ".join(hit),
        f"    grad_offsets = out_channel[None, :] * out_numel + {_join([f'out{d}' for d in range(nd)], outs)}",
        f"    grads = tl.load(grad_image + grad_offsets, mask=hit, other=0).to({ct})",
        "    w_offsets = ((group * group_out + out_channel)[:, None] * group_in + channels[None, :]) * WINDOW + tap[:, None]",
        f"    weights = tl.load(w_ptr + w_offsets, mask=r_mask[:, None] & channel_mask[None, :], other=0).to({ct})",
        f'    acc = tl.dot(grads, weights, acc, input_precision="ieee", out_dtype={ct})',
        "grad_x_offsets = (image_group * group_in + channels)[None, :] * in_numel + positions[:, None]",
        f"tl.store(grad_x_ptr + grad_x_offsets, {store_cast('acc', out_dtype)}, mask=position_mask[:, None] & channel_mask[None, :])",
    ]
    return _kernel_source("conv_input_grad_kernel", params, body)


def _conv_weight_grad_source(nd, compute, out_dtype, wide) -> str:
    ct = tl_type(compute)
    ins, outs = _size_names("in_size", nd), _size_names("out_size", nd)
    params = _conv_backward_params(
        nd, ["# pointers: output gradient [N, O, *out], input [N, C, *in], weight gradient [O, C/groups, *kernel]",
             "grad_ptr, x_ptr, grad_w_ptr,"],
        ("batch size, output channel blocks per group", "batch, channel_blocks,"), ("BLOCK_O", "BLOCK_J", "BLOCK_R"))
    body = [
        "# per group: grad_w[channels, columns] = grads[channels, r] @ inputs[r, columns], where r runs over",
        "# (image, output position) and the columns over (input channel, tap), gathered as im2col",
        f"pid = {_pid(0, wide)}",
        "channel_block = pid % channel_blocks",
        "group = pid // channel_blocks",
        "channels = channel_block * BLOCK_O + tl.arange(0, BLOCK_O)",
        "channel_mask = channels < group_out",
        f"columns = {_pid(1, wide)} * BLOCK_J + tl.arange(0, BLOCK_J)",
        "column_mask = columns < group_in * WINDOW",
        "in_channel = columns // WINDOW",
        "tap = columns % WINDOW",
    ]
    body += _taps("tap", nd)
    body += [
        f"in_numel = {_product(ins)}",
        f"out_numel = {_product(outs)}",
        f"acc = tl.zeros([BLOCK_O, BLOCK_J], dtype={ct})",
        "for start in range(0, batch * out_numel, BLOCK_R):",
        f"    r = start + {_arange('BLOCK_R', wide)}",
        "    r_mask = r < batch * out_numel",
        "    image = r // out_numel",
        "    position = r % out_numel",
    ]
    body += _indent(_split("position", [f"out{d}" for d in range(nd)], outs), 1)
    body += [
        "    grad_offsets = ((image * groups + group) * group_out)[None, :] * out_numel + channels[:, None] * out_numel + position[None, :]",
        f"    grads = tl.load(grad_ptr + grad_offsets, mask=channel_mask[:, None] & r_mask[None, :], other=0).to({ct})",
    ]
    inside = ["r_mask[:, None] & column_mask[None, :]"]
    for d in range(nd):
        body.append(f"    in{d} = out{d}[:, None] * STRIDE{d} - PADDING{d} + tap{d}[None, :] * DILATION{d}")
        inside.append(f"(in{d} >= 0) & (in{d} < in_size{d})")
    body += [
        "    inside = " + " & ".join(inside),
        "    x_offsets = ((image * groups + group) * group_in)[:, None] * in_numel + in_channel[None, :] * in_numel"
        f" + {_join([f'in{d}' for d in range(nd)], ins)}",
        f"    inputs = tl.load(x_ptr + x_offsets, mask=inside, other=0).to({ct})",
        f'    acc = tl.dot(grads, inputs, acc, input_precision="ieee", out_dtype={ct})',
        "grad_w_offsets = (group * group_out + channels)[:, None] * (group_in * WINDOW) + columns[None, :]",
        f"tl.store(grad_w_ptr + grad_w_offsets, {store_cast('acc', out_dtype)}, mask=channel_mask[:, None] & column_mask[None, :])",
    ]
    return _kernel_source("conv_weight_grad_kernel", params, body)


# --- pooling -------------------------------------------------------------------------------------


def _pool_shapes(x_shape, attrs, dilation):
    """(input spatial sizes, output spatial sizes, output shape) of a pooling over the trailing
    len(kernel_size) dims (the leading ones are rows)."""
    nd = len(attrs["kernel_size"])
    lead, spatial = tuple(x_shape[:len(x_shape) - nd]), tuple(x_shape[len(x_shape) - nd:])
    out_sizes = tuple(shapes.window_output_size(n, k, s, p, d, attrs["ceil_mode"]) for n, k, s, p, d
                      in zip(spatial, attrs["kernel_size"], attrs["stride"], attrs["padding"], dilation))
    return spatial, out_sizes, lead + out_sizes


def _output_lanes(nd, wide, sizes_prefix, coords_prefix) -> list[str]:
    """Body lines: one lane per element of [rows, *sizes]; its row and spatial coordinates."""
    sizes = _size_names(sizes_prefix, nd)
    return [
        f"offsets = {_pid(0, wide)} * BLOCK + tl.arange(0, BLOCK)",
        "in_bounds = offsets < numel",
    ] + _split("offsets", [f"{coords_prefix}{d}" for d in range(nd)], sizes, rest="row")


def _lane_params(nd, comment, pointers) -> list[str]:
    """The parameters of a one-lane-per-position pooling kernel: its pointers (after their
    comment), the lane count and spatial sizes, the window geometry and BLOCK."""
    ins, outs = _size_names("in_size", nd), _size_names("out_size", nd)
    return [comment, pointers, "# sizes", "numel, " + ", ".join(ins + outs) + ","] + _window_params(nd) + [
        "BLOCK: tl.constexpr,"]


@emitter("max_pool")
def max_pool(call):
    (x,) = call.inputs
    attrs = call.attrs
    nd = len(attrs["kernel_size"])
    spatial, out_sizes, out_shape = _pool_shapes(x.shape, attrs, attrs["dilation"])
    values, indices = call.empty(out_shape, call.out_dtype), call.empty(out_shape, np.int64)
    if values.size == 0:
        return values, indices
    x = contiguous(call, x)
    compute = _compute(values.dtype)
    if compute.kind in "iub":
        compute = np.dtype(np.int64)
    ct = tl_type(compute)
    lowest = _lowest(x.dtype)
    ins = _size_names("in_size", nd)
    params = _lane_params(nd, "# pointers: input [rows, *in] (C-contiguous), the maxima [rows, *out] and their flat indices over *in", "x_ptr, out_ptr, indices_ptr,")
    body = ["# one lane per output: its window's first maximum in scan order (a NaN is the maximum),"
            " padding holding the lowest value"]
    body += _output_lanes(nd, _wide(x, values), "out_size", "out")
    body += [f"x_row = x_ptr + row * ({_product(ins)})"]
    body += [f"first{d} = out{d} * STRIDE{d} - PADDING{d}" for d in range(nd)]
    body += [f"best = tl.full([BLOCK], {lowest}, {ct})",
             f"best_index = ({_join([f'first{d}' for d in range(nd)], ins)}).to(tl.int64)"]
    inside = ["in_bounds"]
    for d in range(nd):
        body += _indent([f"for tap{d} in range(KERNEL{d}):", f"    in{d} = first{d} + tap{d} * DILATION{d}"], d)
        inside.append(f"(in{d} >= 0) & (in{d} < in_size{d})")
    position = _join([f"in{d}" for d in range(nd)], ins)
    body += _indent([
        "inside = " + " & ".join(inside),
        f"value = tl.load(x_row + {position}, mask=inside, other=0).to({ct})",
        f"value = tl.where(inside, value, {lowest})",
        "take = (value > best) | ((value != value) & (best == best))",
        "best = tl.where(take, value, best)",
        f"best_index = tl.where(take, ({position}).to(tl.int64), best_index)",
    ], nd)
    body += [f"tl.store(out_ptr + offsets, {store_cast('best', values.dtype)}, mask=in_bounds)",
             "tl.store(indices_ptr + offsets, best_index, mask=in_bounds)"]
    kernel = call.kernel("max_pool_kernel", _kernel_source("max_pool_kernel", params, body))
    block = block_size(values.size, high=256)
    call.launch(kernel, (cdiv(values.size, block),), x, values, indices, values.size, *spatial, *out_sizes,
                **_window_constexprs(attrs["kernel_size"], attrs["stride"], attrs["padding"], attrs["dilation"]),
                BLOCK=block)
    return values, indices


@emitter("max_pool_backward")
def max_pool_backward(call):
    """Each output's gradient added at the input position its maximum came from (atomic adds)."""
    grad, indices = call.inputs
    input_shape, nd = tuple(call.attrs["input_shape"]), call.attrs["spatial_ndim"]
    out_dtype = np.dtype(call.out_dtype.np_type)
    accumulator = _zeros(call, input_shape, _accumulator(out_dtype))
    plane = math.prod(input_shape[len(input_shape) - nd:])
    if grad.size and plane:
        grad, indices = contiguous(call, grad), contiguous(call, indices)
        out_numel = math.prod(grad.shape[grad.ndim - nd:])
        params = [
            "# pointers: output gradient and indices [rows, out_numel] (C-contiguous), input gradient [rows, plane]",
            "grad_ptr, indices_ptr, grad_x_ptr,",
            "# sizes",
            "numel, out_numel, plane,",
            "BLOCK: tl.constexpr,",
        ]
        body = [
            "# one lane per output gradient element",
            f"offsets = {_pid(0, _wide(grad, accumulator))} * BLOCK + tl.arange(0, BLOCK)",
            "in_bounds = offsets < numel",
            "row = offsets // out_numel",
            "index = tl.load(indices_ptr + offsets, mask=in_bounds, other=0)",
            "valid = in_bounds & (index >= 0) & (index < plane)",
            f"grad = tl.load(grad_ptr + offsets, mask=in_bounds, other=0).to({tl_type(accumulator.dtype)})",
            "tl.atomic_add(grad_x_ptr + row * plane + index, grad, mask=valid)",
        ]
        kernel = call.kernel("max_pool_backward_kernel", _kernel_source("max_pool_backward_kernel", params, body))
        block = block_size(grad.size, high=1024)
        call.launch(kernel, (cdiv(grad.size, block),), grad, indices, accumulator, grad.size, out_numel, plane,
                    BLOCK=block)
    return _cast(call, accumulator, out_dtype)


def _avg_divisor_lines(nd, coords, attrs) -> list[str]:
    """Lines computing `divisor` for output coordinates `coords` as the CPU's _avg_divisor."""
    if attrs["divisor_override"]:
        return [f"divisor = {int(attrs['divisor_override'])}"]
    lines = []
    for d in range(nd):
        c = coords[d]
        lines += [f"start{d} = {c} * STRIDE{d} - PADDING{d}",
                  f"end{d} = tl.minimum(start{d} + KERNEL{d}, in_size{d} + PADDING{d})"]
        if attrs["count_include_pad"]:
            lines.append(f"count{d} = end{d} - start{d}")
        else:
            lines.append(f"count{d} = tl.minimum(end{d}, in_size{d}) - tl.maximum(start{d}, 0)")
    lines.append("divisor = " + _product([f"count{d}" for d in range(nd)]))
    return lines


def _avg_constexprs(attrs) -> dict:
    nd = len(attrs["kernel_size"])
    return _window_constexprs(attrs["kernel_size"], attrs["stride"], attrs["padding"], (1,) * nd)


@emitter("avg_pool")
def avg_pool(call):
    (x,) = call.inputs
    attrs = call.attrs
    nd = len(attrs["kernel_size"])
    spatial, out_sizes, out_shape = _pool_shapes(x.shape, attrs, (1,) * nd)
    out = call.empty(out_shape, call.out_dtype)
    if out.size == 0:
        return out
    x = contiguous(call, x)
    compute = _compute(out.dtype)
    integral = compute.kind in "iub"
    ct = tl_type(np.int64 if integral else compute)
    ins = _size_names("in_size", nd)
    params = _lane_params(nd, "# pointers: input [rows, *in] (C-contiguous), output [rows, *out]", "x_ptr, out_ptr,")
    body = ["# one lane per output: the sum over its window (padding counts as zeros) over the divisor"]
    body += _output_lanes(nd, _wide(x, out), "out_size", "out")
    body += [f"x_row = x_ptr + row * ({_product(ins)})", f"total = tl.zeros([BLOCK], {ct})"]
    body += [f"first{d} = out{d} * STRIDE{d} - PADDING{d}" for d in range(nd)]
    inside = ["in_bounds"]
    for d in range(nd):
        body += _indent([f"for tap{d} in range(KERNEL{d}):", f"    in{d} = first{d} + tap{d}"], d)
        inside.append(f"(in{d} >= 0) & (in{d} < in_size{d})")
    body += _indent([
        "inside = " + " & ".join(inside),
        f"total += tl.load(x_row + {_join([f'in{d}' for d in range(nd)], ins)}, mask=inside, other=0).to({ct})",
    ], nd)
    body += _avg_divisor_lines(nd, [f"out{d}" for d in range(nd)], attrs)
    body += [f"avg_pool = total{'.to(tl.float64)' if integral else ''} / divisor",
             f"tl.store(out_ptr + offsets, {store_cast('avg_pool', out.dtype)}, mask=in_bounds)"]
    kernel = call.kernel("avg_pool_kernel", _kernel_source("avg_pool_kernel", params, body))
    block = block_size(out.size, high=256)
    call.launch(kernel, (cdiv(out.size, block),), x, out, out.size, *spatial, *out_sizes,
                **_avg_constexprs(attrs), BLOCK=block)
    return out


@emitter("avg_pool_backward")
def avg_pool_backward(call):
    """A gather: each input position sums, over the taps in scan order, the share (gradient over
    divisor) of the output whose window puts that tap on it (the CPU's col2im adds in that order)."""
    (grad,) = call.inputs
    attrs = call.attrs
    input_shape = tuple(attrs["input_shape"])
    nd = len(attrs["kernel_size"])
    out = call.empty(input_shape, call.out_dtype)
    if out.size == 0:
        return out
    if grad.size == 0:
        return _zeros(call, input_shape, out.dtype)
    grad = contiguous(call, grad)
    spatial, out_sizes = input_shape[len(input_shape) - nd:], grad.shape[grad.ndim - nd:]
    ct = tl_type(_compute(out.dtype))
    outs = _size_names("out_size", nd)
    params = _lane_params(nd, "# pointers: output gradient [rows, *out] (C-contiguous), input gradient [rows, *in]", "grad_ptr, grad_x_ptr,")
    body = ["# one lane per input position"]
    body += _output_lanes(nd, _wide(grad, out), "in_size", "in")
    body += [f"grad_row = grad_ptr + row * ({_product(outs)})", f"total = tl.zeros([BLOCK], {ct})"]
    hit = ["in_bounds"]
    for d in range(nd):
        body += _indent([f"for tap{d} in range(KERNEL{d}):",
                         f"    span{d} = in{d} + PADDING{d} - tap{d}",
                         f"    out{d} = span{d} // STRIDE{d}"], d)
        hit.append(f"(span{d} >= 0) & (span{d} % STRIDE{d} == 0) & (out{d} < out_size{d})")
    body += _indent([
        "# the output whose window puts this tap here, if any",
        "hit = " + " & ".join(hit),
        f"grad = tl.load(grad_row + {_join([f'out{d}' for d in range(nd)], outs)}, mask=hit, other=0).to({ct})",
    ] + _avg_divisor_lines(nd, [f"out{d}" for d in range(nd)], attrs) + [
        "total += tl.where(hit, grad / divisor, 0.0)",
    ], nd)
    body += [f"tl.store(grad_x_ptr + offsets, {store_cast('total', out.dtype)}, mask=in_bounds)"]
    kernel = call.kernel("avg_pool_backward_kernel", _kernel_source("avg_pool_backward_kernel", params, body))
    block = block_size(out.size, high=256)
    call.launch(kernel, (cdiv(out.size, block),), grad, out, out.size, *spatial, *out_sizes,
                **_avg_constexprs(attrs), BLOCK=block)
    return out
