"""Movement ops that copy, on a device. (Pure views launch nothing: codegen/triton/views.py.)

- clone, reshape (when the strides allow no view), flip and repeat are strided copies built with
  the pointwise builder: flip reads through a view with negative strides, repeat through a view
  with zero strides over the output split as [r0, n0, r1, n1, ...].
- cat: one kernel for up to MAX_CAT_INPUTS inputs; each lane takes its value from the input
  that holds its coordinate along `dim` (converted to the promoted dtype).
- pad, tril/triu, gather and getitem / index_select with index tensors: one lane per output
  element, which computes where its value comes from (the `IndexKernel` builder below).
- scatter and index_put: the output starts as a copy of x, then one lane per written element
  stores its value there, or adds it with `tl.atomic_add` (reduce='add', accumulate=True) into
  the output, or into a 32-bit copy of it for types atomics cannot add (float16/bfloat16 in
  float32, 8/16-bit integers and bool in int32, cast back after). scatter's reduce='multiply'
  has no atomic: one lane per output element multiplies in the index entries along `dim` that
  hit it, in order (as the CPU does).

Index values are device data, and emitters never read them on the host. Like PyTorch on CUDA
(where a device-side assert fires), an out-of-range index is an error the CPU reports and a
device cannot: here its lanes read 0 and write nothing; the result is otherwise undefined.
Negative indices count from the end where NumPy's indexing does (getitem, index_put,
index_select) and are out of range for gather/scatter. Repeated indices in a write that does not
accumulate (index_put accumulate=False, scatter reduce=None) leave one of the values written
(on a GPU which one is unspecified, as in PyTorch; the interpreter runs lanes in order, so the
last one wins there, as on the CPU).

Boolean masks (getitem and index_put): the number of true elements is the result's shape, so the
device counts them (per block, then an exclusive scan), that count alone comes back to the host
(PyTorch's CUDA indexing synchronises the same way), and a third kernel writes the coordinates
of the true elements (nonzero) as integer index arrays that replace the mask in the key.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from ...ir.ops import TensorSlot
from .heuristics import block_size, cdiv
from .launch import emitter, tl_type
from .pointwise import INT32_LIMIT, Pointwise, store_cast

# Inputs one cat kernel reads; a longer list takes one launch per this many.
MAX_CAT_INPUTS = 8


def _element_strides(array) -> list[int]:
    return [s // array.itemsize for s in array.strides]


def _reach(array) -> int:
    """1 + the largest element offset `array` spans from its first element."""
    if array.size == 0:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(array.shape, _element_strides(array)))


def _broadcast_strides(array, shape) -> list[int]:
    """`array`'s element strides after broadcasting it to `shape` (0 on broadcast dims)."""
    strides = [0] * len(shape)
    offset = len(shape) - array.ndim
    for i, (n, s) in enumerate(zip(array.shape, _element_strides(array))):
        if n != 1:
            strides[offset + i] = s
    return strides


def _np(dtype) -> np.dtype:
    return dtype.np_type if isinstance(dtype, dtypes.dtype) else np.dtype(dtype)


def _compute_type(dtype) -> np.dtype:
    """float32 for float16/bfloat16 (what kernels compute them in), else the type itself."""
    return np.dtype(dtypes.compute_type(dtypes.from_numpy_dtype(_np(dtype))))


def _host_scalar(value, dtype):
    """A Python scalar attr as a kernel argument holding exactly what the CPU stores for it in
    `dtype` (a value the CPU converts to the array's type; bfloat16 passed through float32)."""
    dtype = _np(dtype)
    with np.errstate(all="ignore"):
        converted = np.array(value).astype(dtype)
    if dtype.kind in "biu":
        return int(converted)
    return float(converted.astype(np.float64))


def _copy(call, out, x, name="copy_kernel"):
    """out[...] = x (broadcast, converted to out's dtype) as one pointwise kernel."""
    kernel = Pointwise(name, out.shape)
    kernel.store("out", kernel.load("x", x), out)
    kernel.launch(call)
    return out


class IndexKernel:
    """Builder for one kernel with a lane per element of `shape` (C order). Each lane has its
    coordinates o0, o1, ... and its flat position `offsets`; `in_bounds` masks the last block.
    Add pointer operands (with the stride parameters the body needs), scalars and body lines;
    `launch` writes the source, with 64-bit offsets when an operand spans 2**31 elements."""

    def __init__(self, name: str, shape, what: str):
        self.name, self.shape, self.what = name, tuple(int(n) for n in shape), what
        self.params: list[str] = []   # signature lines, '# comment' lines included
        self.args: list = []
        self.lines: list[str] = []
        self.reach = [self.numel]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def comment(self, text: str):
        self.params.append(f"# {text}")

    def pointer(self, param: str, array, strides=None) -> tuple[str, list[str]]:
        """`param_ptr` for `array`, with one `param_stride{d}` per entry of `strides`; returns
        the names."""
        self.params.append(f"{param}_ptr,")
        self.args.append(array)
        self.reach.append(_reach(array))
        names = self.scalars(param + "_stride", strides or [])
        return f"{param}_ptr", names

    def scalars(self, prefix: str, values) -> list[str]:
        """One parameter per value, named prefix0, prefix1, ...; returns the names."""
        names = [f"{prefix}{d}" for d in range(len(values))]
        if names:
            self.params.append(", ".join(names) + ",")
            self.args.extend(v.item() if isinstance(v, np.generic) else v for v in values)
        return names

    def scalar(self, param: str, value) -> str:
        self.params.append(f"{param},")
        self.args.append(value.item() if isinstance(value, np.generic) else value)
        return param

    def line(self, text: str):
        self.lines.append(text)

    @staticmethod
    def dot(coords, strides) -> str:
        """sum(coords[i] * strides[i]) as an expression ("0" when empty)."""
        terms = [f"{c} * {s}" for c, s in zip(coords, strides)]
        return " + ".join(terms) if terms else "0"

    @property
    def coords(self) -> list[str]:
        return [f"o{d}" for d in range(self.rank)]

    def source(self, wide: bool) -> str:
        sizes = "".join(f" size{d}," for d in range(1, self.rank))
        params = self.params + ["# iteration space: element count and sizes of dims 1..", f"numel,{sizes}",
                                "BLOCK: tl.constexpr,"]
        body = [f"# {self.what}", "pid = tl.program_id(0)"]
        body.append("offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)" if wide
                    else "offsets = pid * BLOCK + tl.arange(0, BLOCK)")
        body.append("in_bounds = offsets < numel")
        rest = "offsets"
        for d in range(self.rank - 1, 0, -1):
            body.append(f"o{d} = {rest} % size{d}")
            body.append(f"rest{d} = {rest} // size{d}")
            rest = f"rest{d}"
        if self.rank:
            body.append(f"o0 = {rest}")
        body += self.lines
        head = "\n".join(f"    {p}" for p in params)
        return f"@triton.jit\ndef {self.name}(\n{head}\n):\n" + "\n".join(f"    {b}" for b in body) + "\n"

    def launch(self, call):
        if self.numel == 0:
            return
        wide = max(self.reach) > INT32_LIMIT
        kernel = call.kernel(self.name, self.source(wide))
        block = block_size(self.numel, low=128)
        call.launch(kernel, (cdiv(self.numel, block),), *self.args, self.numel, *self.shape[1:], BLOCK=block)


# --- copies through the pointwise builder ---------------------------------------------------


@emitter("clone")
def clone(call):
    (x,) = call.inputs
    return _copy(call, call.output(0, x.shape, x.dtype), x, "clone_kernel")


@emitter("reshape")
def reshape(call):
    """A reshape the strides cannot express as a view: the elements in C order, copied."""
    (x,) = call.inputs
    shape = call.op.shape([x.shape], call.attrs)[0]
    out = call.output(0, shape, x.dtype)
    kernel = Pointwise("reshape_kernel", x.shape)
    kernel.store("out", kernel.load("x", x), out.reshape(x.shape))  # a C-contiguous array reshapes as a view
    kernel.launch(call)
    return out


@emitter("flip")
def flip(call):
    (x,) = call.inputs
    out = call.output(0, x.shape, x.dtype)
    return _copy(call, out, np.flip(x, call.attrs["dims"]), "flip_kernel")  # a view with negative strides


@emitter("repeat")
def repeat(call):
    """out viewed as [r0, n0, r1, n1, ...] is x broadcast along the r dims."""
    (x,) = call.inputs
    repeats = tuple(call.attrs["repeats"])
    padded = (1,) * (len(repeats) - x.ndim) + tuple(x.shape)
    strides = [0] * (len(repeats) - x.ndim) + list(x.strides)
    out = call.output(0, tuple(r * n for r, n in zip(repeats, padded)), x.dtype)
    split = tuple(v for r, n in zip(repeats, padded) for v in (r, n))
    tiled = np.lib.stride_tricks.as_strided(x, split, tuple(v for s in strides for v in (0, s)))
    _copy(call, out.reshape(split), tiled, "repeat_kernel")
    return out


# --- concatenation ------------------------------------------------------------------------------


@emitter("cat")
def cat(call):
    pieces = list(call.inputs)
    dim = call.attrs["dim"] % pieces[0].ndim
    shape = call.op.shape([x.shape for x in pieces], {"dim": dim})[0]
    out = call.output(0, shape, call.out_dtype)
    starts, start = [], 0
    for x in pieces:
        starts.append(start)
        start += x.shape[dim]
    chosen = [(x, s) for x, s in zip(pieces, starts) if x.size]
    for first in range(0, len(chosen), MAX_CAT_INPUTS):
        _cat_launch(call, out, dim, chosen[first:first + MAX_CAT_INPUTS])
    return out


def _cat_launch(call, out, dim, chosen):
    """Write the inputs `chosen` ((array, start along dim)) into their slab of `out`."""
    begin = chosen[0][1]
    end = chosen[-1][1] + chosen[-1][0].shape[dim]
    slab = out[(slice(None),) * dim + (slice(begin, end),)]
    k = IndexKernel("cat_kernel", slab.shape,
                    f"one lane per output element; its coordinate o{dim} along dim {dim} picks the input")
    k.comment("inputs: pointer and strides (elements) per dim")
    inputs = [k.pointer(f"in{j}", x, _element_strides(x)) for j, (x, _) in enumerate(chosen)]
    k.comment(f"where each input starts along dim {dim}, from the start of this slab")
    starts = k.scalars("start", [s - begin for _, s in chosen])
    ends = k.scalars("end", [s - begin + x.shape[dim] for x, s in chosen])
    k.comment("output: pointer and strides")
    out_ptr, out_strides = k.pointer("out", slab, _element_strides(slab))
    coords = k.coords
    value = None
    for j, (ptr, strides) in enumerate(inputs):
        local = list(coords)
        local[dim] = f"(o{dim} - {starts[j]})"
        k.line(f"from_in{j} = in_bounds & (o{dim} >= {starts[j]}) & (o{dim} < {ends[j]})")
        k.line(f"in{j} = tl.load({ptr} + {k.dot(local, strides)}, mask=from_in{j})")
        converted = store_cast(f"in{j}", out.dtype)
        value = converted if value is None else f"tl.where(from_in{j}, {converted}, value)"
        k.line(f"value = {value}")
        value = "value"
    k.line(f"tl.store({out_ptr} + {k.dot(coords, out_strides)}, value, mask=in_bounds)")
    k.launch(call)


# --- padding and triangles ------------------------------------------------------------------------


@emitter("pad")
def pad(call):
    """(left, right) widths from the last dim backwards; negative widths crop. out[o] = x[o - left]
    where that is inside x, else `value`."""
    (x,) = call.inputs
    widths = call.attrs["pad"]
    shape = call.op.shape([x.shape], call.attrs)[0]
    out = call.output(0, shape, x.dtype)
    left = [0] * x.ndim
    for i in range(len(widths) // 2):
        left[x.ndim - 1 - i] = widths[2 * i]
    padded = [d for d in range(x.ndim) if d >= x.ndim - len(widths) // 2]
    k = IndexKernel("pad_kernel", shape, "one lane per output element: the input element it shows, or the fill value")
    k.comment("input: pointer, strides (elements), sizes and left widths of the padded dims")
    x_ptr, x_strides = k.pointer("x", x, _element_strides(x))
    sizes = k.scalars("x_size", [x.shape[d] for d in padded])
    lefts = k.scalars("left", [left[d] for d in padded])
    k.comment("fill value, output")
    fill = k.scalar("value", _host_scalar(call.attrs["value"], x.dtype))
    out_ptr, _ = k.pointer("out", out)
    source = list(k.coords)
    inside = ["in_bounds"]
    for j, d in enumerate(padded):
        k.line(f"src{d} = o{d} - {lefts[j]}")
        source[d] = f"src{d}"
        inside.append(f"(src{d} >= 0) & (src{d} < {sizes[j]})")
    k.line("inside = " + " & ".join(inside))
    compute = tl_type(_compute_type(x.dtype))
    k.line(f"x = tl.load({x_ptr} + {k.dot(source, x_strides)}, mask=inside).to({compute})")
    k.line(f"padded = tl.where(inside, x, tl.full([BLOCK], {fill}, {compute}))")
    k.line(f"tl.store({out_ptr} + offsets, {store_cast('padded', x.dtype)}, mask=in_bounds)")
    k.launch(call)
    return out


@emitter("tril", "triu")
def triangle(call):
    """Zero the elements above (tril) or below (triu) the `diagonal`-th diagonal of the last two dims."""
    (x,) = call.inputs
    if x.ndim < 2:
        raise RuntimeError(f"{call.op.name}: input tensor must have at least 2 dimensions")
    out = call.output(0, x.shape, x.dtype)
    lower = call.op.name == "tril"
    k = IndexKernel(f"{call.op.name}_kernel", x.shape,
                    f"one lane per element: kept where column - row {'<=' if lower else '>='} diagonal, else 0")
    k.comment("input: pointer and strides (elements); the diagonal; output")
    x_ptr, x_strides = k.pointer("x", x, _element_strides(x))
    diagonal = k.scalar("diagonal", int(call.attrs["diagonal"]))
    out_ptr, _ = k.pointer("out", out)
    row, col = f"o{x.ndim - 2}", f"o{x.ndim - 1}"
    k.line(f"keep = {col} - {row} {'<=' if lower else '>='} {diagonal}")
    k.line(f"x = tl.load({x_ptr} + {k.dot(k.coords, x_strides)}, mask=in_bounds & keep, other=0)")
    k.line(f"tl.store({out_ptr} + offsets, x, mask=in_bounds)")
    k.launch(call)
    return out


# --- gather / scatter along a dim -------------------------------------------------------------------


def _as_1d(x):
    return x.reshape(1) if x.ndim == 0 else x


@emitter("gather")
def gather(call):
    """out[o] = x[o with its coordinate along dim replaced by index[o]]."""
    x, index = call.inputs
    dim = call.attrs["dim"] % max(x.ndim, 1)
    out = call.output(0, index.shape, x.dtype)
    x, index_nd = _as_1d(x), _as_1d(index)
    k = IndexKernel("gather_kernel", index_nd.shape, f"one lane per index element: x at its coordinates, o{dim} replaced by the index")
    k.comment("input: pointer, strides (elements), size along dim")
    x_ptr, x_strides = k.pointer("x", x, _element_strides(x))
    size = k.scalar("dim_size", x.shape[dim])
    k.comment("index: pointer and strides; output")
    index_ptr, index_strides = k.pointer("index", index_nd, _element_strides(index_nd))
    out_ptr, _ = k.pointer("out", out)
    k.line(f"i = tl.load({index_ptr} + {k.dot(k.coords, index_strides)}, mask=in_bounds, other=0).to(tl.int64)")
    k.line(f"valid = in_bounds & (i >= 0) & (i < {size})  # out of range: undefined (reads 0)")
    source = list(k.coords)
    source[dim] = "i"
    k.line(f"x = tl.load({x_ptr} + {k.dot(source, x_strides)}, mask=valid, other=0)")
    k.line(f"tl.store({out_ptr} + offsets, x, mask=in_bounds)")
    k.launch(call)
    return out


def _atomic_type(dtype) -> np.dtype | None:
    """The type to add atomically into for `dtype`, None when atomics add `dtype` itself."""
    dtype = _np(dtype)
    if dtype in (np.float32, np.float64, np.int32, np.int64):
        return None
    return np.dtype(np.float32) if dtype.kind == "f" or dtype.name == "bfloat16" else np.dtype(np.int32)


def _start_writes(call, out, x, accumulate: bool):
    """The array scatter/index_put write into, holding x: `out` itself, or for atomic adds of a
    type atomics cannot add, a 32-bit copy (`_finish_writes` narrows it into `out`)."""
    wider = _atomic_type(x.dtype) if accumulate else None
    return _copy(call, out if wider is None else call.empty(x.shape, wider), x,
                 "copy_kernel" if wider is None else "widen_kernel")


def _finish_writes(call, out, target):
    if target is not out:
        _copy(call, out, target, "narrow_kernel")


@emitter("scatter")
def scatter(call):
    """out = x; out[o with o_dim replaced by index[o]] = src[o] (or += / *=) for o over index."""
    x, index, src = call.inputs
    dim, reduce = call.attrs["dim"] % max(x.ndim, 1), call.attrs["reduce"]
    out = call.output(0, x.shape, x.dtype)
    if reduce == "multiply":
        _scatter_multiply(call, out, x, index, src, dim)
        return out
    accumulate = reduce == "add"
    target = _start_writes(call, out, x, accumulate)
    target_nd, index_nd = _as_1d(target), _as_1d(index)
    k = IndexKernel("scatter_add_kernel" if accumulate else "scatter_kernel", index_nd.shape,
                    f"one lane per index element: src at its coordinates goes to out with o{dim} replaced by the index")
    k.comment("index: pointer and strides (elements)")
    index_ptr, index_strides = k.pointer("index", index_nd, _element_strides(index_nd))
    value = _source_operand(k, src, index_nd.shape, target.dtype)
    k.comment("output (C-contiguous): pointer, strides, size along dim")
    out_ptr, out_strides = k.pointer("out", target_nd, _element_strides(target_nd))
    size = k.scalar("dim_size", target_nd.shape[dim])
    k.line(f"i = tl.load({index_ptr} + {k.dot(k.coords, index_strides)}, mask=in_bounds, other=0).to(tl.int64)")
    k.line(f"valid = in_bounds & (i >= 0) & (i < {size})  # out of range: undefined (not written)")
    destination = list(k.coords)
    destination[dim] = "i"
    write = "tl.atomic_add" if accumulate else "tl.store"
    k.line(f"{write}({out_ptr} + {k.dot(destination, out_strides)}, {value}, mask=valid)")
    k.launch(call)
    _finish_writes(call, out, target)
    return out


def _source_operand(k, src, shape, dtype) -> str:
    """Load scatter's/index_put's values (an array broadcast to `shape`, or a Python scalar)
    and return the expression of one lane's value converted to `dtype`."""
    if not hasattr(src, "shape"):
        k.comment("source value")
        k.scalar("src", _host_scalar(src, dtype))
        k.line(f"value = tl.full([BLOCK], src, {tl_type(_compute_type(dtype))})")
        return store_cast("value", dtype)
    k.comment("source values: pointer and strides (elements), broadcast over the written elements")
    src_ptr, src_strides = k.pointer("src", src, _broadcast_strides(src, shape))
    k.line(f"src = tl.load({src_ptr} + {k.dot(k.coords, src_strides)}, mask=in_bounds)")
    k.line(f"value = {store_cast('src', dtype)}")
    return "value"


def _scatter_multiply(call, out, x, index, src, dim):
    """One lane per output element: multiplies in src[j] for every j along dim (in order) where
    the index, at the lane's other coordinates, holds the lane's coordinate along dim."""
    x_nd, index_nd, out_nd = _as_1d(x), _as_1d(index), _as_1d(out)
    compute = _compute_type(x.dtype)
    k = IndexKernel("scatter_multiply_kernel", out_nd.shape,
                    f"one lane per output element: the product of x and every src hitting it along dim {dim}, in order")
    k.comment("input: pointer and strides (elements)")
    x_ptr, x_strides = k.pointer("x", x_nd, _element_strides(x_nd))
    k.comment("index: pointer, strides, sizes (the lanes it reaches and the entries along dim)")
    index_ptr, index_strides = k.pointer("index", index_nd, _element_strides(index_nd))
    index_sizes = k.scalars("index_size", list(index_nd.shape))
    scalar_src = not hasattr(src, "shape")
    if scalar_src:
        k.comment("source value")
        k.scalar("src", _host_scalar(src, x.dtype))
    else:
        k.comment("source values: pointer and strides")
        src_ptr, src_strides = k.pointer("src", _as_1d(src), _element_strides(_as_1d(src)))
    k.comment("output")
    out_ptr, _ = k.pointer("out", out_nd)
    coords = k.coords
    reached = ["in_bounds"] + [f"(o{d} < {index_sizes[d]})" for d in range(out_nd.ndim) if d != dim]
    k.line("reached = " + " & ".join(reached))
    k.line(f"product = tl.load({x_ptr} + {k.dot(coords, x_strides)}, mask=in_bounds, other=1).to({tl_type(compute)})")
    k.line(f"for j in range(0, {index_sizes[dim]}):")
    along = list(coords)
    along[dim] = "j"
    k.line(f"    i = tl.load({index_ptr} + {k.dot(along, index_strides)}, mask=reached, other=-1)")
    k.line(f"    hit = reached & (i == o{dim})")
    if scalar_src:
        k.line(f"    factor = tl.full([BLOCK], src, {tl_type(compute)})")
    else:
        k.line(f"    factor = tl.load({src_ptr} + {k.dot(along, src_strides)}, mask=hit, other=1).to({tl_type(compute)})")
    step = "product & factor" if x.dtype == np.bool_ else "product * factor"
    if compute != x.dtype:  # float16/bfloat16: each product is rounded to the type, as the CPU does
        step = f"{store_cast(f'({step})', x.dtype)}.to({tl_type(compute)})"
    k.line(f"    product = tl.where(hit, {step}, product)")
    k.line(f"tl.store({out_ptr} + offsets, {store_cast('product', x.dtype)}, mask=in_bounds)")
    k.launch(call)


# --- indexing with index tensors (getitem, index_put, index_select) ----------------------------------


class _Index:
    """An integer index array in an indexing key."""

    def __init__(self, array):
        self.array = array


class IndexPlan:
    """Where `x[key]`'s elements live, NumPy's advanced-indexing rules (those of ir/shapes.py
    `indexed`): the basic items (slices, ints, None) make an affine map from the output
    coordinates, and the advanced ones (index arrays, with ints and Python bools among them)
    broadcast together into the block of output dims `advanced_dims`, whose coordinates pick
    each index array's value."""

    def __init__(self, shape, key):
        self.x_shape = tuple(shape)
        fill = len(shape) - sum(1 for item in key if item is not None and item is not Ellipsis
                                and not isinstance(item, bool))
        if not any(item is Ellipsis for item in key):
            key = tuple(key) + (Ellipsis,)
        basic = []      # (out size, input dim, start, step) for slices; (1, None, 0, 0) for None
        advanced = []   # (broadcast shape, item, input dim or None)
        self.fixed = []  # (input dim, coordinate) of int items
        dim, position, last, adjacent = 0, 0, None, True
        for i, item in enumerate(key):
            if item is Ellipsis:
                basic += [(shape[d], d, 0, 1) for d in range(dim, dim + fill)]
                dim += fill
                continue
            if item is None:
                basic.append((1, None, 0, 0))
                continue
            if isinstance(item, slice):
                start, stop, step = item.indices(shape[dim])
                basic.append((len(range(start, stop, step)), dim, start, step))
                dim += 1
                continue
            if isinstance(item, bool):
                advanced.append(((1,) if item else (0,), item, None))
            elif isinstance(item, int):
                self.fixed.append((dim, item + shape[dim] if item < 0 else item))
                advanced.append(((), item, dim))
                dim += 1
            else:
                advanced.append((tuple(item.array.shape), item, dim))
                dim += 1
            if len(advanced) == 1:
                position = len(basic)
            elif last != i - 1:
                adjacent = False
            last = i
        self.broadcast = tuple(np.broadcast_shapes(*[s for s, _, _ in advanced])) if advanced else ()
        at = position if adjacent else 0
        self.arrays = [(item.array, d) for _, item, d in advanced if isinstance(item, _Index)]
        # output dims: basic dims before `at`, the broadcast block, the other basic dims
        self.dims = basic[:at] + [None] * len(self.broadcast) + basic[at:]
        self.advanced_dims = list(range(at, at + len(self.broadcast)))
        self.shape = tuple(n for n, *_ in basic[:at]) + self.broadcast + tuple(n for n, *_ in basic[at:])

    def layout(self, strides) -> tuple[int, list[int]]:
        """For an array of `x_shape` with element `strides`: the offset of the output's first
        element's basic part (slice starts, int items) and the stride of each output dim."""
        base = sum(c * strides[d] for d, c in self.fixed)
        out_strides = []
        for entry in self.dims:
            if entry is None or entry[1] is None:
                out_strides.append(0)
            else:
                _, d, start, step = entry
                base += start * strides[d]
                out_strides.append(step * strides[d])
        return base, out_strides

    def address(self, k, name, array) -> tuple[str, str]:
        """Add `array` (of `x_shape`) and the index arrays to kernel `k` (iterating over the
        output); returns (offset expression of a lane's element, mask of lanes whose indices are
        in range)."""
        base, out_strides = self.layout(_element_strides(array))
        k.comment(f"{name}: pointer, offset of the first element the slices and ints select, "
                  "stride per output dim (0 for the index arrays' dims)")
        ptr, _ = k.pointer(name, array)
        base_param = k.scalar(f"{name}_base", base)
        strides = k.scalars(f"{name}_out_stride", out_strides)
        if self.arrays:
            k.comment(f"the dims of {name} the index arrays index: strides and sizes")
        dim_strides = k.scalars(f"{name}_indexed_stride", [_element_strides(array)[d] for _, d in self.arrays])
        dim_sizes = k.scalars("indexed_size", [self.x_shape[d] for _, d in self.arrays])
        block = [k.coords[d] for d in self.advanced_dims]
        terms = [k.dot(k.coords, strides)]
        valid = ["in_bounds"]
        for j, (index, _) in enumerate(self.arrays):
            k.comment(f"index array {j}: pointer, strides over the output dims the index arrays broadcast to")
            index_ptr, index_array_strides = k.pointer(f"index{j}", index, _broadcast_strides(index, self.broadcast))
            k.line(f"i{j} = tl.load({index_ptr} + {k.dot(block, index_array_strides)}, mask=in_bounds, other=0).to(tl.int64)")
            k.line(f"i{j} = tl.where(i{j} < 0, i{j} + {dim_sizes[j]}, i{j})  # negative indices count from the end")
            valid.append(f"(i{j} >= 0) & (i{j} < {dim_sizes[j]})")
            terms.append(f"i{j} * {dim_strides[j]}")
        return f"{ptr} + {base_param} + " + " + ".join(terms), " & ".join(valid)


def _resolve_key(call, index, tensors):
    """The indexing key with its placeholders replaced: index arrays wrapped in `_Index`, 0-dim
    CPU tensors (Python scalars here) as ints/bools, boolean masks by the integer arrays of
    their true elements' coordinates (counted on the device)."""
    key = []
    for item in index:
        if not isinstance(item, TensorSlot):
            key.append(item)
            continue
        t = tensors[item.k]
        if not hasattr(t, "shape"):
            key.append(bool(t) if isinstance(t, (bool, np.bool_)) else int(t))
        elif t.dtype == np.bool_:
            coordinates = _nonzero(call, t)
            key.extend([_Index(c) for c in coordinates] if t.ndim else [bool(coordinates)])
        else:
            key.append(_Index(t))
    return tuple(key)


def _nonzero(call, mask):
    """The coordinates of `mask`'s true elements in C order, one int64 array per dim (for a
    0-dim mask: its count). The count is the only value copied to the host."""
    if not mask.flags.c_contiguous:
        mask = _copy(call, call.empty(mask.shape, mask.dtype), mask, "contiguous_kernel")
    flat = mask.reshape(-1)
    block = block_size(flat.size, low=128)
    n_blocks = cdiv(flat.size, block)
    wide = flat.size > INT32_LIMIT
    counts = call.empty((n_blocks,), np.int64)
    starts = call.empty((n_blocks,), np.int64)
    total = call.empty((1,), np.int64)
    if flat.size:
        call.launch(call.kernel("mask_count_kernel", _mask_count_source(wide)), (n_blocks,),
                    flat, counts, flat.size, BLOCK=block)
    scan_block = block_size(n_blocks, low=16)
    call.launch(call.kernel("mask_scan_kernel", _MASK_SCAN), (1,), counts, starts, total, n_blocks, BLOCK=scan_block)
    count = int(call.backend.to_host(total, call.device)[0])
    if mask.ndim == 0:
        return count
    coordinates = [call.empty((count,), np.int64) for _ in range(mask.ndim)]
    if count:
        sizes = list(mask.shape[1:])
        source = _mask_positions_source(mask.ndim, wide)
        call.launch(call.kernel("mask_positions_kernel", source), (n_blocks,),
                    flat, starts, *coordinates, flat.size, *sizes, BLOCK=block)
    return coordinates


def _mask_count_source(wide) -> str:
    pid = "pid.to(tl.int64)" if wide else "pid"
    return f'''@triton.jit
def mask_count_kernel(
    # the mask (C-contiguous) and one count per block
    mask_ptr, counts_ptr,
    numel,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offsets = {pid} * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < numel
    chosen = tl.load(mask_ptr + offsets, mask=in_bounds, other=0) != 0
    tl.store(counts_ptr + pid, tl.sum(chosen.to(tl.int64), axis=0))
'''


_MASK_SCAN = '''@triton.jit
def mask_scan_kernel(
    # per-block counts in, each block's first output slot (exclusive scan) and the total out
    counts_ptr, starts_ptr, total_ptr,
    n_blocks,
    BLOCK: tl.constexpr,
):
    # one program walks the counts block by block, carrying the running total
    running = tl.sum(tl.zeros([BLOCK], tl.int64), axis=0)
    for first in range(0, n_blocks, BLOCK):
        blocks = first + tl.arange(0, BLOCK)
        block_mask = blocks < n_blocks
        counts = tl.load(counts_ptr + blocks, mask=block_mask, other=0)
        tl.store(starts_ptr + blocks, running + tl.cumsum(counts, axis=0) - counts, mask=block_mask)
        running += tl.sum(counts, axis=0)
    tl.store(total_ptr, running)
'''


def _mask_positions_source(ndim, wide) -> str:
    pid = "pid.to(tl.int64)" if wide else "pid"
    outs = ", ".join(f"coords{d}_ptr" for d in range(ndim))
    sizes = "".join(f", size{d}" for d in range(1, ndim))
    lines = ["rest = offsets.to(tl.int64)"]
    for d in range(ndim - 1, 0, -1):
        lines.append(f"tl.store(coords{d}_ptr + slot, rest % size{d}, mask=chosen)")
        lines.append(f"rest = rest // size{d}")
    lines.append("tl.store(coords0_ptr + slot, rest, mask=chosen)")
    body = "\n".join(f"    {line}" for line in lines)
    return f'''@triton.jit
def mask_positions_kernel(
    # the mask (C-contiguous) and each block's first output slot
    mask_ptr, starts_ptr,
    # outputs: the coordinates of the true elements, one array per mask dim
    {outs},
    # the mask's element count and sizes of dims 1..
    numel{sizes},
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offsets = {pid} * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < numel
    chosen = (tl.load(mask_ptr + offsets, mask=in_bounds, other=0) != 0) & in_bounds
    ones = chosen.to(tl.int64)
    slot = tl.load(starts_ptr + pid) + tl.cumsum(ones, axis=0) - ones
{body}
'''


@emitter("getitem")
def getitem(call):
    """x[key] with index tensors (basic keys are views: views.py)."""
    x, *tensors = call.inputs
    plan = IndexPlan(x.shape, _resolve_key(call, call.attrs["index"], tensors))
    return _indexed_copy(call, x, plan, "getitem_kernel")


@emitter("index_select")
def index_select(call):
    x, index = call.inputs
    dim = call.attrs["dim"] % max(x.ndim, 1)
    x_nd = _as_1d(x)
    plan = IndexPlan(x_nd.shape, (slice(None),) * dim + (_Index(index),))
    return _indexed_copy(call, x_nd, plan, "index_select_kernel")


def _indexed_copy(call, x, plan, name):
    out = call.output(0, plan.shape, x.dtype)
    k = IndexKernel(name, plan.shape, "one lane per output element: the input element its coordinates select")
    source, valid = plan.address(k, "x", x)
    k.comment("output")
    out_ptr, _ = k.pointer("out", out)
    if valid != "in_bounds":
        k.line(f"valid = {valid}  # an index out of range is undefined (reads 0)")
    k.line(f"x = tl.load({source}, mask={'valid' if valid != 'in_bounds' else 'in_bounds'}, other=0)")
    k.line(f"tl.store({out_ptr} + offsets, x, mask=in_bounds)")
    k.launch(call)
    return out


@emitter("index_put")
def index_put(call):
    """out = x; out[key] = values (broadcast), or += with accumulate (repeated indices add up)."""
    x, values, *tensors = call.inputs
    out = call.output(0, x.shape, x.dtype)
    plan = IndexPlan(x.shape, _resolve_key(call, call.attrs["index"], tensors))
    accumulate = bool(call.attrs["accumulate"])
    target = _start_writes(call, out, x, accumulate)
    k = IndexKernel("index_put_add_kernel" if accumulate else "index_put_kernel", plan.shape,
                    "one lane per selected element: its value goes to the element its coordinates select")
    value = _source_operand(k, values, plan.shape, target.dtype)
    destination, valid = plan.address(k, "out", target)
    if valid != "in_bounds":
        k.line(f"valid = {valid}  # an index out of range is undefined (not written)")
    k.line(f"{'tl.atomic_add' if accumulate else 'tl.store'}({destination}, {value}, "
           f"mask={'valid' if valid != 'in_bounds' else 'in_bounds'})")
    k.launch(call)
    _finish_writes(call, out, target)
    return out
