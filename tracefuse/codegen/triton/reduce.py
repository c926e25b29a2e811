"""Reductions on a device: sum, prod, mean, var, norm, logsumexp, amax/amin, max_dim/min_dim,
argmax/argmin, all/any along any dims or all of them, and cumsum along one dim.

The input is seen as a matrix through its strides, without moving it: one row per output element
(the kept dims, in order), the reduced dims (in order, so a flat index over them is NumPy's) as
the columns. Kept dims and reduced dims are each merged where the input is contiguous across
them, so a reduction over a contiguous trailing dim reads each row with one stride. Each program
owns ROWS rows and walks their reduced extent in BLOCK-column chunks, accumulating a
[ROWS, BLOCK] tile elementwise and reducing it across columns once at the end (as Triton's
tutorials accumulate a matmul tile). Two-pass reductions (var: the mean, then the squared
deviations; logsumexp: the max, then the sum of exponentials) walk the columns twice.

The semantics are the NumPy implementation's (codegen/numpy/reduce.py): NaN propagates through
max/min, argmax/argmin and max_dim/min_dim return the first extreme (a NaN counts as the
extreme), integer sums and products accumulate in int64, float16/bfloat16 in float32, and the
reductions without an identity raise NumPy's ValueError on an empty reduced extent.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from .launch import emitter, tl_type
from .pointwise import INT32_LIMIT, store_cast

# Elements per [ROWS, BLOCK] tile, and the widest BLOCK: the knobs of `block_sizes`.
TILE = 2048
MAX_BLOCK = 1024

_NO_IDENTITY = {  # NumPy's error for an empty reduced extent
    "amax": "zero-size array to reduction operation maximum which has no identity",
    "amin": "zero-size array to reduction operation minimum which has no identity",
    "logsumexp": "zero-size array to reduction operation maximum which has no identity",
    "argmax": "attempt to get argmax of an empty sequence",
    "argmin": "attempt to get argmin of an empty sequence",
    "max_dim": "attempt to get argmax of an empty sequence",
    "min_dim": "attempt to get argmin of an empty sequence",
}


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def block_sizes(rows: int, extent: int) -> tuple[int, int]:
    """(ROWS, BLOCK): BLOCK covers the reduced extent up to MAX_BLOCK columns; ROWS fills the rest
    of a TILE-element tile with rows (fewer when there are fewer rows)."""
    block = min(_next_power_of_2(max(extent, 1)), MAX_BLOCK)
    return min(_next_power_of_2(max(rows, 1)), max(TILE // block, 1)), block


def _merge(sizes, stride_lists):
    """Merge adjacent dims that are contiguous in every stride list; drop size-1 dims."""
    merged: list = []
    for i, n in enumerate(sizes):
        if n == 1:
            continue
        strides = [s[i] for s in stride_lists]
        if merged and all(ps == s * n for ps, s in zip(merged[-1][1], strides)):
            merged[-1] = (merged[-1][0] * n, strides)
        else:
            merged.append((n, strides))
    return [n for n, _ in merged], [[st[k] for _, st in merged] for k in range(len(stride_lists))]


class _Layout:
    """The input (and, for cumsum, the output) as rows x reduced columns, through strides."""

    def __init__(self, x, axes, out=None):
        strides = [s // x.itemsize for s in x.strides]
        arrays = [strides] + ([[s // out.itemsize for s in out.strides]] if out is not None else [])
        kept = [i for i in range(x.ndim) if i not in axes]
        self.n_rows = math.prod(x.shape[i] for i in kept)
        self.n_reduce = math.prod(x.shape[i] for i in axes)
        self.row_sizes, self.row_strides = _merge([x.shape[i] for i in kept], [[a[i] for i in kept] for a in arrays])
        self.red_sizes, self.red_strides = _merge([x.shape[i] for i in axes], [[a[i] for i in axes] for a in arrays])
        reach = 1 + sum((n - 1) * abs(s) for n, s in zip(x.shape, strides))
        self.wide = max(reach, x.size) > INT32_LIMIT

    def strides_of(self, k):
        """Kernel arguments: operand k's element strides over the kept dims, then the reduced dims."""
        return self.row_strides[k] + self.red_strides[k]

    def sizes(self):
        """Kernel arguments: row count, reduced extent, and each merged dim's size but the first."""
        return [self.n_rows, self.n_reduce] + self.row_sizes[1:] + self.red_sizes[1:]

    def params(self, operand):
        return [f"{operand}_row_stride{d}" for d in range(len(self.row_sizes))] + \
               [f"{operand}_red_stride{d}" for d in range(len(self.red_sizes))]

    def size_params(self):
        return ["n_rows", "n_reduce"] + [f"row_size{d}" for d in range(1, len(self.row_sizes))] + \
               [f"red_size{d}" for d in range(1, len(self.red_sizes))]


def _axes(attrs, ndim):
    dim = attrs.get("dim")
    if ndim == 0:
        return ()
    if dim is None:
        return tuple(range(ndim))
    return (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)


def _split(flat, kind, rank, lines, indent) -> list:
    """Lines splitting the flat index `flat` over the merged `kind` dims ("row" or "red") into
    one index per dim (C order); returns the index expressions."""
    if rank <= 1:
        return [flat] * rank
    rest = flat
    for d in range(rank - 1, 0, -1):
        lines.append(f"{indent}{kind}_index{d} = {rest} % {kind}_size{d}")
        lines.append(f"{indent}{kind}_rest{d} = {rest} // {kind}_size{d}")
        rest = f"{kind}_rest{d}"
    lines.append(f"{indent}{kind}_index0 = {rest}")
    return [f"{kind}_index{d}" for d in range(rank)]


def _offset(indices, kind, operand, flat) -> str:
    """`operand`'s element offset at per-dim `indices` of the merged `kind` dims (a zero shaped
    like `flat` when there are none)."""
    return " + ".join(f"{i} * {operand}_{kind}_stride{d}" for d, i in enumerate(indices)) or f"{flat} * 0"


class _Kernel:
    """Source of one reduction kernel: the row prologue, column loops and the epilogue."""

    def __init__(self, name, layout, outputs, scalars=(), helpers=""):
        self.name, self.layout, self.outputs, self.scalars, self.helpers = name, layout, outputs, scalars, helpers
        self.lines: list = []

    def head(self) -> str:
        lay = self.layout
        params = ["    # input: pointer, strides (elements) of the kept dims, then of the reduced dims",
                  "    " + ", ".join(["x_ptr"] + lay.params("x")) + ","]
        params += [f"    # outputs: {self.outputs[1]}", "    " + ", ".join(self.outputs[0]) + ","]
        if self.scalars:
            params += ["    # scalars", "    " + ", ".join(self.scalars) + ","]
        params += ["    # rows (kept elements), reduced elements per row, sizes of the merged dims after the first",
                   "    " + ", ".join(lay.size_params()) + ",",
                   "    ROWS: tl.constexpr, BLOCK: tl.constexpr,"]
        return "\n".join(params)

    def prologue(self):
        lay = self.layout
        pid = "pid.to(tl.int64)" if lay.wide else "pid"
        self.lines += ["    pid = tl.program_id(0)",
                       f"    rows = {pid} * ROWS + tl.arange(0, ROWS)",
                       "    row_mask = rows < n_rows"]
        self.row_indices = _split("rows", "row", len(lay.row_sizes), self.lines, "    ")
        self.lines.append(f"    row_start = {_offset(self.row_indices, 'row', 'x', 'rows')}  # each row's first element")

    def loop(self, identity, acc_type, body):
        """`for` over the reduced extent: `x` is the [ROWS, BLOCK] tile in `acc_type`, `identity`
        in its masked lanes; `body` are the loop's own lines."""
        lay = self.layout
        self.lines += ["    for start in range(0, n_reduce, BLOCK):",
                       "        cols = start + tl.arange(0, BLOCK)" + (".to(tl.int64)" if lay.wide else ""),
                       "        col_mask = cols < n_reduce",
                       "        mask = row_mask[:, None] & col_mask[None, :]"]
        self.col_indices = _split("cols", "red", len(lay.red_sizes), self.lines, "        ")
        offset = _offset(self.col_indices, "red", "x", "cols")
        self.lines.append(f"        x = tl.load(x_ptr + row_start[:, None] + ({offset})[None, :], mask=mask, other=0)"
                          f".to({acc_type})")
        if str(identity) != "0":
            self.lines.append(f"        x = tl.where(mask, x, {identity})")
        self.lines += [f"        {line}" for line in body]

    def add(self, *lines):
        self.lines += [f"    {line}" for line in lines]

    def source(self) -> str:
        helpers = self.helpers.strip() + "\n\n\n" if self.helpers else ""
        return (helpers + "@triton.jit\ndef " + self.name + "(\n" + self.head() + "\n):\n" + "\n".join(self.lines) + "\n")


def _compute_type(np_dtype) -> str:
    """float16/bfloat16 compute in float32; others in their own type (bool as int8)."""
    if np_dtype in (np.float16, dtypes.bfloat16.np_type) or np_dtype == np.float32:
        return "tl.float32"
    if np_dtype == np.bool_:
        return "tl.int8"
    return tl_type(np_dtype)


def _float_acc(np_dtype) -> str:
    """The accumulator of mean/var/norm/logsumexp: float64 for float64 and integers (NumPy's)."""
    return "tl.float64" if np_dtype == np.float64 or np_dtype.kind in "iub" else "tl.float32"


def _sum_acc(np_dtype) -> str:
    """The accumulator of sum/prod/cumsum: int64 for integers and bool."""
    return "tl.int64" if np_dtype.kind in "iub" else _float_acc(np_dtype)


def _lowest(acc, maximum: bool) -> str:
    """The identity of max (maximum=True) or min in `acc`."""
    if acc.startswith("tl.float"):
        return 'float("-inf")' if maximum else 'float("inf")'
    info = np.iinfo(np.dtype(acc[3:]))
    return str(info.min if maximum else info.max)


_MULTIPLY = '''
@triton.jit
def multiply(a, b):
    return a * b
'''


@emitter("sum", "prod", "mean", "var", "norm", "logsumexp", "amax", "amin", "all", "any")
def reduce(call):
    op, (x,), attrs = call.op.name, call.inputs, call.attrs
    axes = _axes(attrs, x.ndim)
    lay = _Layout(x, axes)
    if op in _NO_IDENTITY and lay.n_reduce == 0:
        raise ValueError(_NO_IDENTITY[op])
    p = float(attrs["p"]) if op == "norm" else None
    if op == "norm" and abs(p) == math.inf and lay.n_reduce == 0:
        raise ValueError(_NO_IDENTITY["amax" if p > 0 else "amin"])
    (out_shape,) = call.op.shape([x.shape], attrs)
    if op in ("all", "any"):
        out_dtype = np.dtype(np.uint8) if x.dtype == np.uint8 else np.dtype(np.bool_)
    else:
        out_dtype = call.out_dtype.np_type
    out = call.empty(out_shape, out_dtype)
    kernel, scalars = _reduction_source(op, x.dtype, lay, out_dtype, attrs)
    rows, block = block_sizes(lay.n_rows, lay.n_reduce)
    args = [x] + lay.strides_of(0) + [out] + scalars + lay.sizes()
    call.launch(call.kernel(f"{op}_kernel", kernel.source()), ((lay.n_rows + rows - 1) // rows,), *args,
                ROWS=rows, BLOCK=block)
    return out


def _nan_max(acc, tile, maximum=True, floating=True):
    """Lines reducing the [ROWS, BLOCK] `tile` across columns into `acc` with NaN propagating."""
    fn = "tl.max" if maximum else "tl.min"
    if not floating:
        return [f"{acc} = {fn}({tile}, axis=1)"]
    return [f"{acc} = tl.where(tl.max(({tile} != {tile}).to(tl.int32), axis=1) > 0, float(\"nan\"), {fn}({tile}, axis=1))"]


def _reduction_source(op, x_dtype, lay, out_dtype, attrs):
    """The kernel of reduction `op` and its scalar arguments."""
    floating = x_dtype.kind == "f" or x_dtype == dtypes.bfloat16.np_type
    scalars, helpers = [], ""
    if op in ("sum", "prod"):
        acc = _sum_acc(x_dtype)
    elif op in ("amax", "amin"):
        acc = _compute_type(x_dtype)
    elif op in ("all", "any"):
        acc = "tl.int32"
    else:
        acc = _float_acc(x_dtype)
    p = float(attrs["p"]) if op == "norm" else None
    if op == "var":
        scalars = ["dof"]
    if op == "norm" and p not in (0.0, 1.0, 2.0, math.inf, -math.inf):
        scalars = ["p", "inv_p"]
    if op == "prod":
        helpers = _MULTIPLY
    k = _Kernel(f"{op}_kernel", lay, (["out_ptr"], "one value per row"), scalars, helpers)
    k.prologue()
    tile = f"tl.zeros([ROWS, BLOCK], dtype={acc})"
    if op in ("sum", "mean"):
        k.add(f"total = {tile}")
        k.loop(0, acc, ["total += x"])
        k.add("result = tl.sum(total, axis=1)" + (" / n_reduce" if op == "mean" else ""))
    elif op == "prod":
        k.add(f"product = {tile} + 1")
        k.loop(1, acc, ["product *= x"])
        k.add("result = tl.reduce(product, 1, multiply)")
    elif op in ("amax", "amin"):
        maximum = op == "amax"
        k.add(f"best = {tile} + ({_lowest(acc, maximum)})")
        cmp = ">" if maximum else "<"
        nan = " | (x != x)" if floating else ""
        k.loop(_lowest(acc, maximum), acc, [f"best = tl.where((x {cmp} best){nan}, x, best)"])
        k.lines += [f"    {line}" for line in _nan_max("result", "best", maximum, floating)]
    elif op in ("all", "any"):
        if op == "any":
            k.add(f"found = {tile}")
            k.loop(0, _compute_type(x_dtype), ["found = tl.maximum(found, (x != 0).to(tl.int32))"])
            k.add("result = tl.max(found, axis=1)")
        else:
            k.add(f"holds = {tile} + 1")
            k.loop(1, _compute_type(x_dtype), ["holds = tl.minimum(holds, (x != 0).to(tl.int32))"])
            k.add("result = tl.min(holds, axis=1)")
    elif op == "var":
        k.add(f"total = {tile}")
        k.loop(0, acc, ["total += x"])
        k.add("mean = tl.sum(total, axis=1) / n_reduce", f"squares = {tile}")
        k.loop(0, acc, ["deviation = tl.where(mask, x - mean[:, None], 0.0)", "squares += deviation * deviation"])
        k.add("result = tl.sum(squares, axis=1) / dof")
    elif op == "logsumexp":
        k.add(f"best = {tile} + float(\"-inf\")")
        k.loop('float("-inf")', acc, ["best = tl.where((x > best) | (x != x), x, best)"])
        k.lines += [f"    {line}" for line in _nan_max("shift", "best")]
        k.add("shift = tl.where(tl.abs(shift) < float(\"inf\"), shift, 0.0)  # inf, -inf and nan shift by 0",
              f"total = {tile}")
        k.loop(0, acc, ["total += tl.where(mask, tl.exp(x - shift[:, None]), 0.0)"])
        k.add("result = tl.log(tl.sum(total, axis=1)) + shift")
    elif op == "norm":
        _norm_body(k, p, acc, tile)
    k.add(f"tl.store(out_ptr + rows, {store_cast('result', out_dtype)}, mask=row_mask)")
    values = []
    if op == "var":
        values = [float(max(lay.n_reduce - attrs["correction"], 0))]
    elif "p" in scalars:
        values = [p, 1.0 / p]
    return k, values


def _norm_body(k, p, acc, tile):
    """The p-norm of each row (NumPy impl: sqrt of the sum of squares for 2, max/min of |x| for
    +-inf, the count of nonzeros for 0, (sum |x|^p)^(1/p) otherwise, the powers in float64)."""
    if abs(p) == math.inf:
        maximum = p > 0
        identity = "0.0" if maximum else 'float("inf")'  # of max(|x|), min(|x|)
        k.add(f"best = {tile} + {identity}")
        cmp = ">" if maximum else "<"
        k.loop(identity, acc, [f"best = tl.where((tl.abs(x) {cmp} best) | (x != x), tl.abs(x), best)"])
        k.lines += [f"    {line}" for line in _nan_max("result", "best", maximum)]
        return
    k.add(f"total = {tile}")
    if p == 2.0:
        k.loop(0, acc, ["total += x * x"])
        k.add("result = tl.sqrt(tl.sum(total, axis=1))")
    elif p == 1.0:
        k.loop(0, acc, ["total += tl.abs(x)"])
        k.add("result = tl.sum(total, axis=1)")
    elif p == 0.0:
        k.loop(0, acc, ["total += (x != 0).to(total.dtype)"])
        k.add("result = tl.sum(total, axis=1)")
    else:
        k.loop(0, acc, ["power = tl.exp2(p * tl.log2(tl.abs(x).to(tl.float64)))  # |x| ** p",
                        "total += tl.where(mask, power.to(total.dtype), 0.0)"])
        k.add("total_rows = tl.sum(total, axis=1).to(tl.float64)",
              "result = tl.exp2(inv_p * tl.log2(total_rows))  # ** (1 / p)")


@emitter("argmax", "argmin", "max_dim", "min_dim")
def arg_reduce(call):
    """The first index of the max/min along the reduced dims (a NaN is the max and the min), and
    for max_dim/min_dim the value there, read back from the input."""
    op, (x,), attrs = call.op.name, call.inputs, call.attrs
    axes = _axes(attrs, x.ndim)
    lay = _Layout(x, axes)
    if lay.n_reduce == 0:
        raise ValueError(_NO_IDENTITY[op])
    maximum = op in ("argmax", "max_dim")
    with_values = op in ("max_dim", "min_dim")
    shapes = call.op.shape([x.shape], attrs)
    index = call.empty(shapes[-1], np.int64)
    values = call.empty(shapes[0], x.dtype) if with_values else None
    acc = _compute_type(x.dtype)
    floating = acc.startswith("tl.float")
    lowest = _lowest(acc, maximum)
    outputs = (["values_ptr", "index_ptr"], "the extreme value and its index per row") if with_values else \
        (["index_ptr"], "the index of the extreme per row")
    k = _Kernel(f"{op}_kernel", lay, outputs)
    k.prologue()
    index_type = "tl.int64" if lay.wide else "tl.int32"
    cmp = ">" if maximum else "<"
    k.add(f"best = tl.zeros([ROWS, BLOCK], dtype={acc}) + ({lowest})",
          f"best_index = tl.zeros([ROWS, BLOCK], dtype={index_type}) + n_reduce  # none yet")
    nan = " | ((x != x) & (best == best))" if floating else ""
    k.loop(lowest, acc, [
        "# a later column replaces a lane's best only if strictly better: ties keep the first",
        f"take = mask & ((x {cmp} best) | ((x == best) & (best_index == n_reduce)){nan})",
        "best = tl.where(take, x, best)",
        "best_index = tl.where(take, cols[None, :], best_index)",
    ])
    k.lines += [f"    {line}" for line in _nan_max("extreme", "best", maximum, floating)]
    if floating:
        k.add("is_extreme = tl.where((extreme != extreme)[:, None], best != best, best == extreme[:, None])")
    else:
        k.add("is_extreme = best == extreme[:, None]")
    k.add("first = tl.min(tl.where(is_extreme, best_index, n_reduce), axis=1)",
          "tl.store(index_ptr + rows, first.to(tl.int64), mask=row_mask)")
    if with_values:
        offset = "first * x_red_stride0" if lay.red_sizes else "0"
        k.add(f"tl.store(values_ptr + rows, tl.load(x_ptr + row_start + {offset}, mask=row_mask), mask=row_mask)")
    rows, block = block_sizes(lay.n_rows, lay.n_reduce)
    args = [x] + lay.strides_of(0) + ([values] if with_values else []) + [index] + lay.sizes()
    call.launch(call.kernel(f"{op}_kernel", k.source()), ((lay.n_rows + rows - 1) // rows,), *args,
                ROWS=rows, BLOCK=block)
    return (values, index) if with_values else index


@emitter("cumsum")
def cumsum(call):
    """Running sums along one dim: each program scans ROWS rows in BLOCK-column chunks, carrying
    each row's total from one chunk to the next."""
    (x,), attrs = call.inputs, call.attrs
    axes = _axes(attrs, x.ndim)
    out_dtype = call.out_dtype.np_type
    out = call.empty(x.shape, out_dtype)
    lay = _Layout(x, axes, out)
    acc = _sum_acc(x.dtype)
    k = _Kernel("cumsum_kernel", lay, (["out_ptr"] + lay.params("out"), "pointer, strides like the input's"))
    k.prologue()
    k.add(f"out_row_start = {_offset(k.row_indices, 'row', 'out', 'rows')}", f"carry = tl.zeros([ROWS], dtype={acc})")
    out_offset = "cols * out_red_stride0" if lay.red_sizes else "cols * 0"
    k.loop(0, acc, [
        "running = tl.cumsum(x, axis=1) + carry[:, None]",
        f"tl.store(out_ptr + out_row_start[:, None] + ({out_offset})[None, :], {store_cast('running', out_dtype)}, "
        "mask=mask)",
        "# the running total of the chunk's last column carries on (masked columns add zeros)",
        "carry = tl.sum(tl.where(tl.arange(0, BLOCK)[None, :] == BLOCK - 1, running, 0), axis=1)",
    ])
    rows, block = block_sizes(lay.n_rows, lay.n_reduce)
    args = [x] + lay.strides_of(0) + [out] + lay.strides_of(1) + lay.sizes()
    call.launch(call.kernel("cumsum_kernel", k.source()), ((lay.n_rows + rows - 1) // rows,), *args,
                ROWS=rows, BLOCK=block)
    return out
