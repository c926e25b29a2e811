"""Factories on a device: full, arange, linspace and eye equal the CPU's values exactly; rand,
randn, randint and randperm draw from Triton's Philox generator (tl.rand, tl.randn,
tl.randint4x) at each element's flat index, seeded from tracefuse's generator, so that every call
draws anew and `manual_seed` makes a run repeatable (the values differ from the CPU's draws).

Every value is computed in the arithmetic the NumPy implementation uses (codegen/numpy/creation.py):
arange's float values as start + step * i in float64, linspace's in the float type itself (float64
for integer results). Float parameters travel as their bit patterns (`.to(tl.float64,
bitcast=True)`), so that no launch path rounds them to a float32 scalar on the way.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from .launch import emitter, tl_type
from .pointwise import Pointwise

# randperm sorts all its keys in one program up to this many elements (tl.sort); beyond, a
# bitonic network over device memory, one launch per merge step.
SORT_IN_ONE_PROGRAM = 4096
MERGE_BLOCK = 1024


def _seed() -> int:
    """A fresh Philox seed from tracefuse's generator (codegen/numpy/random.py)."""
    from ..numpy.random import generator

    return int(generator().integers(0, 2**31 - 1))


def _bits(value, float_type):
    """(`value` in `float_type` as a signed integer bit pattern, the kernel expression reading it back)."""
    np_type = np.dtype(float_type)
    int_type = np.dtype(f"int{8 * np_type.itemsize}")
    return int(np.asarray(value, dtype=np_type).view(int_type)), (tl_type(int_type), tl_type(np_type))


def _scalar(kernel, name, value, float_type):
    """A float scalar argument passed as its bits, read back into the kernel variable `name`."""
    bits, (int_tl, float_tl) = _bits(value, float_type)
    param = kernel.scalar(f"{name}_bits", bits)
    return kernel.compute(name, f"{param}.to({int_tl}).to({float_tl}, bitcast=True)")


def _compute(dtype) -> np.dtype:
    """The type a value is stored from: float16/bfloat16 results are rounded from float32."""
    return np.dtype(np.float32) if dtype in (dtypes.float16, dtypes.bfloat16) else dtype.np_type


@emitter("full")
def full(call):
    return fill(call, tuple(call.attrs["shape"]), call.attrs["value"], call.attrs["dtype"])


def fill(call, shape, value, dtype):
    with np.errstate(all="ignore"):  # overflow to inf, quietly, as on the CPU
        value = np.full((), value, dtype=dtype.np_type)  # the CPU's conversion of the fill value
    out = call.empty(shape, dtype)
    kernel = Pointwise("full_kernel", shape)
    ct = _compute(dtype)
    if ct.kind == "f":
        fill = _scalar(kernel, "value", value.astype(ct), ct)
    else:
        fill = f"{kernel.scalar('value', int(value))}.to({tl_type(ct)})"
    kernel.store("out", kernel.compute("fill", f"tl.full([BLOCK], {fill}, {tl_type(ct)})"), out)
    kernel.launch(call)
    return out


@emitter("arange")
def arange(call):
    a = call.attrs
    dtype = a["dtype"]
    (shape,) = call.op.shape([], a)
    out = call.empty(shape, dtype)
    kernel = Pointwise("arange_kernel", shape)
    if all(isinstance(v, int) for v in (a["start"], a["end"], a["step"])):  # in int64, then cast
        start, step = kernel.scalar("start", a["start"]), kernel.scalar("step", a["step"])
        value = f"{start}.to(tl.int64) + {step}.to(tl.int64) * offsets.to(tl.int64)"
    else:  # start + step * i in float64, as PyTorch computes it
        start, step = _scalar(kernel, "start", a["start"], np.float64), _scalar(kernel, "step", a["step"], np.float64)
        value = f"{start} + {step} * offsets.to(tl.float64)"
    kernel.store("out", kernel.compute("value", value), out)
    kernel.launch(call)
    return out


@emitter("linspace")
def linspace(call):
    """PyTorch's formula: the first half counts up from start, the second half down from end, in
    the float type itself (float64 for integer results)."""
    a = call.attrs
    dtype, steps = a["dtype"], a["steps"]
    start, end = a["start"], a["end"]
    if not dtype.is_floating_point:
        start, end = int(start), int(end)
    if steps == 1:
        return fill(call, (1,), start, dtype)
    t = np.dtype(np.float64) if not dtype.is_floating_point or dtype.itemsize == 8 else np.dtype(np.float32)
    step = (t.type(end) - t.type(start)) / t.type(max(steps - 1, 1))  # on the host, in the same type
    out = call.empty((steps,), dtype)
    kernel = Pointwise("linspace_kernel", (steps,))
    ft = tl_type(t)
    start_v, end_v = _scalar(kernel, "start", start, t), _scalar(kernel, "end", end, t)
    step_v, last_v = _scalar(kernel, "step", step, t), _scalar(kernel, "last", steps - 1, t)
    half = kernel.scalar("half", steps // 2)
    index = kernel.compute("index", f"offsets.to({ft})")
    value = (f"tl.where(offsets < {half}, {start_v} + {step_v} * {index}, "
             f"{end_v} - {step_v} * ({last_v} - {index}))")
    kernel.store("out", kernel.compute("value", value), out)
    kernel.launch(call)
    return out


@emitter("eye")
def eye(call):
    n, m, dtype = call.attrs["n"], call.attrs["m"], call.attrs["dtype"]
    out = call.empty((n, m), dtype)
    kernel = Pointwise("eye_kernel", (n, m))
    columns = kernel.scalar("columns", m)
    on_diagonal = kernel.compute("on_diagonal", f"offsets // {columns} == offsets % {columns}")
    kernel.store("out", kernel.compute("value", f"{on_diagonal}.to({tl_type(_compute(dtype))})"), out)
    kernel.launch(call)
    return out


def _uniform53(r_hi, r_lo):
    """A float64 in [0, 1) from two uint32 draws: 53 random bits, as NumPy's `random()`."""
    return f"((({r_hi} >> 5).to(tl.float64) * 67108864.0 + ({r_lo} >> 6).to(tl.float64)) * {2.0 ** -53!r})"


def _random(call, name, values):
    """A new array of the op's dtype and shape, filled by kernel `name` with `values(kernel, seed,
    dtype)` (the value's name), drawn at each element's flat index from a fresh seed."""
    dtype, shape = call.attrs["dtype"], tuple(call.attrs["shape"])
    out = call.empty(shape, dtype)
    kernel = Pointwise(name, shape)
    seed = kernel.scalar("seed", _seed())
    kernel.store("out", values(kernel, seed, dtype), out)
    kernel.launch(call)
    return out


@emitter("rand")
def rand(call):
    def values(kernel, seed, dtype):
        if dtype is dtypes.float64:
            kernel.compute("r0, r1, r2, r3", f"tl.randint4x({seed}, offsets)")
            return kernel.compute("value", _uniform53("r0", "r1"))
        return kernel.compute("value", f"tl.rand({seed}, offsets)")
    return _random(call, "rand_kernel", values)


@emitter("randn")
def randn(call):
    def values(kernel, seed, dtype):
        if dtype is dtypes.float64:  # Box-Muller on 53-bit uniforms (1 - u keeps the log finite)
            kernel.compute("r0, r1, r2, r3", f"tl.randint4x({seed}, offsets)")
            kernel.compute("u1", "1.0 - " + _uniform53("r0", "r1"))
            kernel.compute("u2", _uniform53("r2", "r3"))
            return kernel.compute("value", f"tl.sqrt(-2.0 * tl.log(u1)) * tl.cos({2 * np.pi!r} * u2)")
        return kernel.compute("value", f"tl.randn({seed}, offsets)")
    return _random(call, "randn_kernel", values)


@emitter("randint")
def randint(call):
    """low + (a 64-bit draw mod (high - low)) in int64, then cast (the bias is below 2^-32 for
    ranges below 2^32)."""
    a = call.attrs

    def values(kernel, seed, dtype):
        low, span = kernel.scalar("low", int(a["low"])), kernel.scalar("span", int(a["high"]) - int(a["low"]))
        kernel.compute("r0, r1, r2, r3", f"tl.randint4x({seed}, offsets)")
        kernel.compute("draw", "(r0.to(tl.uint64) << 32) | r1.to(tl.uint64)")
        return kernel.compute("value", f"{low}.to(tl.int64) + (draw % {span}.to(tl.uint64)).to(tl.int64)")
    return _random(call, "randint_kernel", values)


@emitter("randperm")
def randperm(call):
    """Sort (random key, index) pairs packed into int64s and keep the indices: a uniformly random
    permutation (keys tie with probability below n^2 / 2^(62 - log2 n), ties keep index order)."""
    n, dtype = call.attrs["n"], call.attrs["dtype"]
    out = call.empty((n,), dtype)
    if n == 0:
        return out
    size = 1 << max(n - 1, 0).bit_length()  # the sort's power-of-2 width
    index_bits = max((n - 1).bit_length(), 1)
    key_bits = 62 - index_bits
    seed = _seed()
    keys = _KEYS.format(key_shift=64 - key_bits, index_bits=index_bits, padding=1 << 62)
    if size <= SORT_IN_ONE_PROGRAM:
        body = _SMALL.format(keys=keys, store=_store_indices(dtype, index_bits))
        call.launch(call.kernel("randperm_kernel", body), (1,), out, seed, n, SIZE=size)
        return out
    packed = call.empty((size,), np.int64)
    fill = call.kernel("randperm_keys_kernel", _FILL.format(keys=keys))
    call.launch(fill, (size // MERGE_BLOCK,), packed, seed, n, BLOCK=MERGE_BLOCK)
    merge = call.kernel("randperm_merge_kernel", _MERGE)
    k = 2
    while k <= size:  # the bitonic network: merge runs of k, comparing at distance j
        j = k // 2
        while j >= 1:
            call.launch(merge, (size // MERGE_BLOCK,), packed, j, k, BLOCK=MERGE_BLOCK)
            j //= 2
        k *= 2
    take = call.kernel("randperm_indices_kernel", _TAKE.format(store=_store_indices(dtype, index_bits)))
    call.launch(take, ((n + MERGE_BLOCK - 1) // MERGE_BLOCK,), packed, out, n, BLOCK=MERGE_BLOCK)
    return out


def _store_indices(dtype, index_bits):
    from .pointwise import store_cast

    return store_cast(f"(sorted_keys & {(1 << index_bits) - 1})", _compute(dtype) if dtype.is_floating_point else dtype.np_type)


# Random keys in the high bits, the index in the low ones; lanes past n sort last.
_KEYS = """    r0, r1, r2, r3 = tl.randint4x(seed, offsets)
    key = (((r0.to(tl.uint64) << 32) | r1.to(tl.uint64)) >> {key_shift}).to(tl.int64)
    packed = tl.where(offsets < n, (key << {index_bits}) | offsets.to(tl.int64), {padding})"""

_SMALL = """
@triton.jit
def randperm_kernel(
    # output: the permutation
    out_ptr,
    # seed, length
    seed, n,
    SIZE: tl.constexpr,
):
    offsets = tl.arange(0, SIZE)
{keys}
    sorted_keys = tl.sort(packed)
    tl.store(out_ptr + offsets, {store}, mask=offsets < n)
"""

_FILL = """
@triton.jit
def randperm_keys_kernel(
    # output: packed (key, index) pairs, a power of 2 of them
    packed_ptr,
    # seed, length
    seed, n,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
{keys}
    tl.store(packed_ptr + offsets, packed)
"""

_MERGE = """
@triton.jit
def randperm_merge_kernel(
    # packed keys, sorted in place
    packed_ptr,
    # compare-exchange distance, length of the runs being merged
    j, k,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    partner = offsets ^ j
    lower = partner > offsets  # each pair is handled by its lower element's lane
    ascending = (offsets & k) == 0
    mine = tl.load(packed_ptr + offsets)
    theirs = tl.load(packed_ptr + partner, mask=lower)
    swap = lower & tl.where(ascending, mine > theirs, mine < theirs)
    tl.store(packed_ptr + offsets, tl.where(swap, theirs, mine), mask=lower)
    tl.store(packed_ptr + partner, tl.where(swap, mine, theirs), mask=lower)
"""

_TAKE = """
@triton.jit
def randperm_indices_kernel(
    # sorted packed keys in, the permutation out
    packed_ptr, out_ptr,
    # length
    n,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = offsets < n
    sorted_keys = tl.load(packed_ptr + offsets, mask=in_bounds)
    tl.store(out_ptr + offsets, {store}, mask=in_bounds)
"""
