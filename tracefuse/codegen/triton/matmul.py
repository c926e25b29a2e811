"""Matrix products on a device: the `matmul` op (NumPy's matmul semantics) and a fused epilogue
entry point, `matmul_epilogue`, computing act(x @ w + bias) in one kernel.

One tiled kernel, as Triton's tutorial 03-matrix-multiplication: one program per BLOCK_M x BLOCK_N
tile of one batch's output, tiles ordered in groups of GROUP_M rows (so neighbouring programs
share operand tiles in L2), a loop over K in BLOCK_K steps with masks for the ragged edges.
Operands are read through their strides (a transposed view needs no copy); batch dims broadcast
(stride 0), and 1-dim operands are read as a [1, K] row or a [K, 1] column, their dim dropped from
the result as NumPy does.

Accumulation follows the CPU: float64 in float64 and float32 in float32, both with
input_precision="ieee" (no TF32, so results match the CPU to rounding); float16/bfloat16 products
accumulate in float32 and are rounded once (the CPU computes their matmul in float32); integer
products accumulate exactly in int64 and wrap to the result type (as NumPy's integer matmul wraps),
bool is any(a & b). tl.dot takes no integers, so integer and bool products are a broadcast
multiply and sum over each K block (the "no-dot" path), with smaller blocks.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ... import dtypes
from ...ir import shapes
from .elementwise import EXPRESSIONS
from .heuristics import block_size, cdiv
from .launch import emitter, tl_type
from .pointwise import INT32_LIMIT, collapse, store_cast

GROUP_M = 8
ACTIVATIONS = (None, "relu", "tanh", "sigmoid")


def block_sizes(M, N, K, dot: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): the next powers of two covering the problem,
    clamped. tl.dot needs every block dim >= 16; the no-dot path holds a BLOCK_M x BLOCK_K x
    BLOCK_N product in registers, so its blocks stay small. 64 x 64 tiles take 8 warps (a float64
    or IEEE float32 accumulator tile leaves 4 warps at the register limit). An autotuning hook
    would replace this."""
    if dot:
        block_m, block_n, block_k = block_size(M, 16, 64), block_size(N, 16, 64), block_size(K, 16, 32)
        return block_m, block_n, block_k, 8 if block_m * block_n >= 64 * 64 else 4
    return block_size(M, 1, 16), block_size(N, 1, 16), block_size(K, 1, 8), 4


def _np(dtype) -> np.dtype:
    return dtype.np_type if isinstance(dtype, dtypes.dtype) else np.dtype(dtype)


def _accumulator(dtype) -> np.dtype:
    """float64 for float64, float32 for the other floats, int64 for integers and bool."""
    dtype = _np(dtype)
    if dtype == np.float64:
        return dtype
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return np.dtype(np.int64)


def _broadcast_strides(array, shape) -> list[int]:
    strides = [0] * len(shape)
    offset = len(shape) - array.ndim
    for i, (n, s) in enumerate(zip(array.shape, array.strides)):
        if n != 1:
            strides[offset + i] = s // array.itemsize
    return strides


@emitter("matmul")
def matmul(call):
    a, b = call.inputs
    out_dtype = _np(call.out_dtype)
    return _matmul(call, a, b, None, None, out_dtype, out_dtype)


def matmul_epilogue(call, x, w, bias=None, activation=None):
    """act(x @ w + bias) as one kernel: x [..., M, K] (or [K]), w [..., K, N] (or [K]), bias an
    array broadcastable to the product's shape (typically [N]) or None, activation one of
    None, "relu", "tanh", "sigmoid".

    The values are those of the three ops run one by one (matmul, add, the activation): the
    product is rounded to the promoted dtype of x and w, the sum to that of the product and bias
    (the result's dtype, or call.out_dtype when set), the activation computed in float32 for
    float16/bfloat16 and rounded once more."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"matmul_epilogue: unknown activation {activation!r} (one of {ACTIVATIONS})")
    product_dtype = _promote(x, w)
    out_dtype = _np(call.out_dtype) if call.out_dtype is not None else \
        _promote(x, w, bias) if bias is not None else product_dtype
    product = shapes.matmul([x.shape, w.shape], {})[0]
    if bias is not None and tuple(np.broadcast_shapes(bias.shape, product)) != product:
        raise ValueError(f"matmul_epilogue: bias of shape {tuple(bias.shape)} does not broadcast to the product's "
                         f"shape {product}")
    if activation in ("tanh", "sigmoid") and _accumulator(out_dtype).kind != "f":
        raise TypeError(f"matmul_epilogue: activation {activation!r} needs a floating-point product, got {out_dtype}")
    return _matmul(call, x, w, bias, activation, product_dtype, out_dtype)


def _promote(*arrays) -> np.dtype:
    result = dtypes.from_numpy_dtype(arrays[0].dtype)
    for x in arrays[1:]:
        result = dtypes.promote_types(result, dtypes.from_numpy_dtype(x.dtype))
    return _np(result)


def _matmul(call, a, b, bias, activation, product_dtype, out_dtype):
    out_shape = shapes.matmul([a.shape, b.shape], {})[0]
    out = call.output(0, out_shape, out_dtype)
    a2 = a if a.ndim >= 2 else a[None, :]  # a row
    b2 = b if b.ndim >= 2 else b[:, None]  # a column
    (M, K), N = a2.shape[-2:], b2.shape[-1]
    if K != b2.shape[-2]:
        raise RuntimeError(f"matmul: inner dimensions differ ({K} and {b2.shape[-2]})")
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    out3 = out.reshape(batch + (M, N))
    if out3.size == 0:
        return out

    # each operand's strides over [batch.., rows, cols] (0 where it broadcasts)
    strides = [_broadcast_strides(a2, batch + (M, K)), _broadcast_strides(b2, batch + (K, N)),
               _broadcast_strides(out3, batch + (M, N))]
    operands = [a2, b2, out3]
    if bias is not None:
        over_out = _broadcast_strides(bias, out_shape)  # then the dims a 1-dim operand dropped, as 0
        rows = over_out[len(batch)] if a.ndim > 1 else 0
        cols = over_out[-1] if b.ndim > 1 else 0
        strides.append(over_out[:len(batch)] + [rows, cols])
        operands.append(bias)
    # batch dims merged where every operand is contiguous across them
    batch_sizes, batch_strides = collapse(batch, [s[:len(batch)] for s in strides])
    matrix_strides = [s[len(batch):] for s in strides]

    compute = _accumulator(product_dtype)
    dot = compute.kind == "f"
    BLOCK_M, BLOCK_N, BLOCK_K, num_warps = block_sizes(M, N, K, dot)
    # half operands of a half product go to tl.dot as they are, into the tensor cores (their
    # products are exact in the float32 accumulator); anything else is converted to the compute
    # type first (bfloat16 too under Triton's interpreter, which cannot multiply bfloat16 blocks;
    # the conversion is exact)
    native = a.dtype == b.dtype == product_dtype and native_half_dot(call, product_dtype)
    wide = any(x.size > INT32_LIMIT or _span(x) > INT32_LIMIT for x in operands)
    name = "matmul_kernel" if bias is None and activation is None else "matmul_epilogue_kernel"
    source = _source(name, len(batch_sizes), bias is not None, activation, compute, product_dtype, out_dtype,
                     dot, native, wide)
    kernel = call.kernel(name, source)
    tiles = cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)
    args = operands + [M, N, K]
    for pair in matrix_strides:
        args += pair
    args += batch_sizes[1:]
    for per_dim in batch_strides:
        args += per_dim
    call.launch(kernel, (tiles * math.prod(batch_sizes),), *args,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M, num_warps=num_warps)
    return out


def _rounded(value: str, computed, dtype, compute) -> str:
    """`value` (computed in `computed`) rounded to `dtype` and held in `compute`: no casts where
    the types agree."""
    computed, dtype, compute = _np(computed), _np(dtype), _np(compute)
    if computed != dtype:
        value = store_cast(f"({value})", dtype)
    return value if dtype == compute else f"{value}.to({tl_type(compute)})"


def _span(x) -> int:
    return 1 + sum((n - 1) * abs(s) // x.itemsize for n, s in zip(x.shape, x.strides)) if x.size else 0


def native_half_dot(call, dtype) -> bool:
    """Whether `dtype` blocks can go into tl.dot as they are on `call`'s device: float16 always,
    bfloat16 on a GPU (Triton's interpreter multiplies bfloat16 blocks wrongly)."""
    name = np.dtype(dtype).name
    return name == "float16" or (name == "bfloat16" and call.backend.name != "interpret")


@functools.lru_cache(maxsize=256)  # a compiled call builds the same matmuls every time: text once
def _source(name, n_batch, has_bias, activation, compute, product_dtype, out_dtype, dot, native, wide) -> str:
    acc_t = tl_type(compute)  # the accumulator's type, which operands are converted to
    operands = ["a", "b", "out"] + (["bias"] if has_bias else [])
    batch_sizes = "".join(f" batch_size{d}," for d in range(1, n_batch))
    params = [
        "# operands: a [batch.., M, K] @ b [batch.., K, N] -> out [batch.., M, N]" + (" (+ bias [batch.., M, N])" if has_bias else ""),
        ", ".join(f"{p}_ptr" for p in operands) + ",",
        "# matrix sizes",
        "M, N, K,",
        "# strides (elements) of each operand's two matrix dims (0 where it broadcasts)",
        "stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on," + (" stride_biasm, stride_biasn," if has_bias else ""),
    ]
    if n_batch > 1:
        params += ["# batch: sizes of the (merged) batch dims 1..", batch_sizes.strip()]
    params += ["# each operand's stride per batch dim"]
    params += [" ".join(f"{p}_batch_stride{d}," for d in range(n_batch)) for p in operands]
    params += ["BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,"]

    body = [
        "# one program per BLOCK_M x BLOCK_N tile of one batch's output; tiles in groups of GROUP_M",
        "# rows, so that programs running together share their operands' tiles (tutorial 03)",
        "pid = tl.program_id(0)",
        "num_pid_m = tl.cdiv(M, BLOCK_M)",
        "num_pid_n = tl.cdiv(N, BLOCK_N)",
        "batch = pid // (num_pid_m * num_pid_n)",
        "tile = pid % (num_pid_m * num_pid_n)",
        "num_pid_in_group = GROUP_M * num_pid_n",
        "first_pid_m = (tile // num_pid_in_group) * GROUP_M",
        "group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)",
        "pid_m = first_pid_m + (tile % num_pid_in_group) % group_size_m",
        "pid_n = (tile % num_pid_in_group) // group_size_m",
        "",
        "# this batch's matrices",
    ]
    if wide:
        body.append("batch = batch.to(tl.int64)")
    rest = "batch"
    coords = []
    for d in range(n_batch - 1, 0, -1):
        body.append(f"batch{d} = {rest} % batch_size{d}")
        body.append(f"rest{d} = {rest} // batch_size{d}")
        rest = f"rest{d}"
        coords.insert(0, f"batch{d}")
    coords.insert(0, rest)
    for p in operands:
        offset = " + ".join(f"{c} * {p}_batch_stride{d}" for d, c in enumerate(coords))
        body.append(f"{p}_ptr += {offset}")
    arange = (lambda n: f"tl.arange(0, {n}).to(tl.int64)") if wide else (lambda n: f"tl.arange(0, {n})")
    body += [
        "",
        f"rows = pid_m * BLOCK_M + {arange('BLOCK_M')}",
        f"cols = pid_n * BLOCK_N + {arange('BLOCK_N')}",
        f"ks = {arange('BLOCK_K')}",
        "row_mask = rows < M",
        "col_mask = cols < N",
        "a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak",
        "b_ptrs = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn",
        f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})",
        "for k in range(0, tl.cdiv(K, BLOCK_K)):",
        "    k_mask = ks < K - k * BLOCK_K",
    ]
    convert = "" if native else f".to({acc_t})"
    body += [
        f"    a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0){convert}",
        f"    b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0){convert}",
    ]
    if dot:
        precision = ', input_precision="ieee"' if not native else ""
        body.append(f"    acc = tl.dot(a, b, acc{precision}, out_dtype={acc_t})")
    else:
        body.append("    # no integer tl.dot: the products of the K block, summed over it")
        body.append("    acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)")
    body += [
        "    a_ptrs += BLOCK_K * stride_ak",
        "    b_ptrs += BLOCK_K * stride_bk",
        "",
        "tile_mask = row_mask[:, None] & col_mask[None, :]",
    ]
    result = "acc != 0" if _np(product_dtype) == np.bool_ else "acc"
    if has_bias or activation is not None:
        body.append("# epilogue: each op's result rounded to its dtype, as when the ops run one by one")
        out_compute = _accumulator(out_dtype) if _np(out_dtype).kind in "fV" else _np(out_dtype)  # V: bfloat16
        out_ct = tl_type(out_compute)
        body.append(f"value = {_rounded(result, compute, product_dtype, out_compute)}")
        if has_bias:
            body.append("bias = tl.load(bias_ptr + rows[:, None] * stride_biasm + cols[None, :] * stride_biasn, "
                        "mask=tile_mask, other=0)")
            body.append(f"value = {_rounded(f'value + bias.to({out_ct})', out_compute, out_dtype, out_compute)}")
        if activation == "relu":
            body.append("value = tl.where(value < 0, 0, value)  # keeps NaN, as relu")
        elif activation is not None:
            body.append(f"value = {EXPRESSIONS[activation](['value'], None, {})}")
        result = "value"
    body.append(f"tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on, "
                f"{store_cast(f'({result})', out_dtype)}, mask=tile_mask)")
    head = "\n".join(f"    {p}" for p in params)
    return f"@triton.jit\ndef {name}(\n{head}\n):\n" + "\n".join(f"    {line}" if line else "" for line in body) + "\n"
