"""Multi-tensor ops on a device: `multi_tensor_norm` and `multi_tensor_scale` (clip_grad_norm_)
each run as ONE kernel launch for any number of tensors.

The tensors are described to the kernel by a device table built on the host from metadata only
(addresses, element counts, dtype codes) and copied in with one host-to-device copy:

    addresses[t], sizes[t]     tensor t's data (contiguous) and element count
    dtype_codes[t]             which of the launch's dtypes tensor t has (mixed dtypes only)
    program_tensor[pid]        the tensor program `pid` works on
    first_program[t]           tensor t's first program (t = T: the program count)

Each program handles one CHUNK of one tensor (CHUNK elements, BLOCK at a time), like apex's
multi_tensor_apply, so a launch has sum(ceil(numel / CHUNK)) programs whatever the tensor count.
Tensors of different dtypes share the launch: the kernel branches on the dtype code (a uniform
branch, one per dtype present); a launch with one dtype has no branch at all.

multi_tensor_norm, one launch: the "last block" reduction. Every program writes the partial
reduction of its chunk (sum of squares, of |x|, of |x|^p, nonzero count, or NaN-propagating
max/min of |x|) to a workspace, then takes a ticket from an atomic counter (a zero in the table;
the add is acq_rel at GPU scope, after a barrier, and the partials are read back with `.cg` loads
that bypass L1): the program that draws the last ticket has seen every partial, and combines them
in a fixed order: per tensor (rounded to the tensor's dtype, as PyTorch's `_foreach_norm` does), then
the norm of those norms. So the result is deterministic (no float atomics) and no second kernel
runs. Under Triton's interpreter programs run one after another, and the last one combines.
(Chosen over one program per tensor with float atomics: that is neither deterministic nor able to
round each tensor's norm before combining.) All arithmetic runs in float32, or float64 when a
float64 tensor takes part (then float32 tensors' norms are computed in float64 and rounded,
slightly more accurate than the CPU's float32 arithmetic).

multi_tensor_scale, one launch: every program scales its chunk by the 0-dim coefficient, or, with
`max_norm`, by clip_grad_norm_'s min(max_norm / (total_norm + 1e-6), 1), which each program
computes from the total norm in the norm's dtype (half precisions rounded after each operation,
as NumPy does; max_norm travels as float64 bits in the table, so it is not rounded to a float32
kernel scalar), then casts to the tensor's compute type. Outputs go where `call.output` says: a
compiled clip_grad_norm_ writes each gradient in place (every element is read, then written, by
the same program).

Non-contiguous inputs (not produced by autograd in practice) are first copied to contiguous
arrays with the strided copy kernel: one extra launch per such tensor.

Loops with run-time bounds are `while` loops: Triton 3.6's interpreter cannot take `range()` over
a run-time scalar with NumPy 2.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from .heuristics import block_size, multi_tensor_blocks
from .elementwise import contiguous
from .launch import dtype_name, emitter, tl_type
from .pointwise import store_cast

FLOAT_TYPES = ("float32", "float64", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")


# --- host-side helpers ----------------------------------------------------------------------------


def device_address(backend, array) -> int:
    """The device address of `array`'s first element (what goes into a pointer table)."""
    return backend.address(array)


def block_sizes(sizes) -> tuple[int, int]:
    """(BLOCK, CHUNK) with up to 16 blocks per program, so that the norm's last program has few
    partials to combine."""
    return multi_tensor_blocks(sizes, 16)


def _dtype_name(array) -> str:
    return dtype_name(array.dtype)


def _check_floating(op_name, arrays):
    for a in arrays:
        if _dtype_name(a) not in FLOAT_TYPES:
            raise TypeError(f"{op_name} on a CUDA device supports floating-point tensors only, got {_dtype_name(a)}")


class Tables:
    """The int64 tables of one multi-tensor launch, built on the host from metadata only and
    copied to the device at once: element counts (`sizes`), the program table (`program_tensor`,
    `first_program`: one program per CHUNK elements of a tensor), and the sections `add` and
    `addresses` append (pointer tables, dtype codes, counters, float64 bits). Used by the
    multi_tensor ops here and by the optimizer steps (optim.py)."""

    def __init__(self, call, sizes, chunk, at_least_one_chunk):
        self.call = call
        counts = [max(1 if at_least_one_chunk else 0, -(-n // chunk)) for n in sizes]
        first_program = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(counts, out=first_program[1:])
        self.programs = int(first_program[-1])
        self.most_chunks = max(counts, default=1)
        self.sections = {
            "sizes": np.asarray(sizes, np.int64),
            "program_tensor": np.repeat(np.arange(len(sizes), dtype=np.int64), counts),
            "first_program": first_program,
        }

    def add(self, name, values):
        self.sections[name] = np.asarray(values).astype(np.int64).reshape(-1)

    def addresses(self, name, arrays):
        """A pointer table: the device address of each array."""
        self.add(name, [device_address(self.call.backend, a) for a in arrays])

    def to_device(self) -> dict:
        """One device copy of every section; returns a device view of each (a kernel argument)."""
        host = np.concatenate(list(self.sections.values()))
        table = self.call.backend.from_host(host, self.call.device)
        views, start = {}, 0
        for name, values in self.sections.items():
            views[name] = table[start:start + max(values.size, 1)]  # an empty section: never read
            start += values.size
        return views


# --- generated-source helpers -----------------------------------------------------------------------


def _round_to(value: str, name: str, compute: str) -> str:
    """`value` (a name, of type `compute`) rounded to dtype `name` and back to `compute`."""
    if name == "float64" or (name == "float32" and compute == "tl.float32"):
        return value
    if name == "float32":
        return f"{value}.to(tl.float32).to({compute})"
    rounded = store_cast(value, name) + ".to(tl.float32)"
    return rounded if compute == "tl.float32" else f"{rounded}.to({compute})"


def _compute_tl(name: str) -> str:
    return "tl.float64" if name == "float64" else "tl.float32"


def _dtype_blocks(names, code_var, make_block, indent, exhaustive):
    """One block of lines per dtype: unconditional for one dtype, else `if code == k:` branches
    (`exhaustive`: the last one as `else`, so a variable assigned in every branch is defined)."""
    if len(names) == 1:
        return [indent + line for line in make_block(names[0])]
    lines = []
    for k, name in enumerate(names):
        block = make_block(name)
        if not block and not exhaustive:
            continue
        if k == 0:
            head = f"if {code_var} == {k}:  # {name}"
        elif exhaustive and k == len(names) - 1:
            head = f"else:  # {name}"
        else:
            head = f"{'el' if exhaustive else ''}if {code_var} == {k}:  # {name}"
        lines.append(indent + head)
        lines += [indent + "    " + line for line in block or ["pass"]]
    return lines


# --- multi_tensor_norm --------------------------------------------------------------------------------

# Per norm order: how a chunk's elements become terms, how terms combine (sum, or a
# NaN-propagating max/min), the identity of that combination, and how a combined value finishes.
_SUM, _MAX, _MIN = "sum", "max", "min"


def _norm_kind(p):
    if p == 2:
        return "2", _SUM
    if p == 1:
        return "1", _SUM
    if p == math.inf:
        return "inf", _MAX
    if p == -math.inf:
        return "-inf", _MIN
    if p == 0:
        return "0", _SUM
    return "p", _SUM


def _term(kind, x, acc_t):
    return {
        "2": f"{x} * {x}",
        "1": f"tl.abs({x})",
        "inf": f"tl.abs({x})",
        "-inf": f"tl.abs({x})",
        "0": f"({x} != 0).to({acc_t})",
        "p": f"tl.exp2(tl.log2(tl.abs({x})) * p)",
    }[kind]


def _sqrt(value, compute):
    """A correctly rounded square root: tl.sqrt may approximate in float32 on a GPU, and
    tl.sqrt_rn takes float32 only (float64's tl.sqrt is exact)."""
    return f"tl.sqrt_rn({value})" if compute == "tl.float32" else f"tl.sqrt({value})"


def _finish(kind, value, compute):
    return {"2": _sqrt(value, compute), "p": f"tl.exp2(tl.log2({value}) / p)"}.get(kind, value)


def _identity(combine):
    return {_SUM: "0.0", _MAX: "0.0", _MIN: 'float("inf")'}[combine]


def _combine(combine, acc, value):
    if combine == _SUM:
        return f"{acc} + {value}"
    op = ">" if combine == _MAX else "<"
    return f"tl.where(({value} != {value}) | ({value} {op} {acc}), {value}, {acc})"


def _reduce(combine, acc):
    """A block reduced to a scalar; max/min add NaN back, as tl.max/tl.min may drop it on a GPU."""
    if combine == _SUM:
        return f"tl.sum({acc}, axis=0)"
    return f"tl.{combine}({acc}, axis=0) + tl.sum(tl.where({acc} == {acc}, 0.0, {acc}), axis=0)"


def _norm_source(name, kind, combine, p, names, acc_t, result_name):
    mixed = len(names) > 1
    identity = _identity(combine)
    term = _term(kind, "x", acc_t)
    masked_term = kind in ("-inf", "p")  # masked-off lanes would add inf (0 ** -p) or 0 < min

    def load_block(dtype_name):
        return [f"x = tl.load(address.to(tl.pointer_type({tl_type(dtype_name)})) + offsets, mask=in_bounds, other=0.0).to({acc_t})"]

    def round_block(dtype_name):
        rounded = _round_to("tensor_norm", dtype_name, acc_t)
        return [f"tensor_norm = {rounded}"] if rounded != "tensor_norm" else []

    lines = [
        "@triton.jit",
        f"def {name}(",
        "    # tensor table, one entry per tensor: data address, element count" + (", dtype code" if mixed else ""),
        "    addresses, sizes," + (" dtype_codes," if mixed else ""),
        "    # program table: the tensor each program reduces, each tensor's first program",
        "    program_tensor, first_program,",
        "    # workspace: one partial per program, the count of finished programs; the 0-dim result",
        "    partials, finished, out_ptr,",
        "    num_tensors,",
        "    # each program reduces CHUNK elements, BLOCK at a time; the last one reads FINAL_BLOCK partials at a time",
        "    BLOCK: tl.constexpr, CHUNK: tl.constexpr, FINAL_BLOCK: tl.constexpr,",
        "):",
    ]
    body = []
    if kind == "p":
        body.append(f"p = tl.full([], {float(p)!r}, {acc_t})  # the norm's order")
    body += [
        "pid = tl.program_id(0)",
        "tensor = tl.load(program_tensor + pid)",
        "chunk_start = (pid - tl.load(first_program + tensor)) * CHUNK",
        "numel = tl.load(sizes + tensor)",
        "address = tl.load(addresses + tensor)",
    ]
    if mixed:
        body.append("dtype_code = tl.load(dtype_codes + tensor)")
    body.append(f"acc = tl.full([BLOCK], {identity}, {acc_t})")
    body.append("for start in range(0, CHUNK, BLOCK):")
    loop = [
        "offsets = chunk_start + start + tl.arange(0, BLOCK)",
        "in_bounds = offsets < numel",
    ]
    loop += _dtype_blocks(names, "dtype_code", load_block, "", exhaustive=True)
    if masked_term:
        loop.append(f"term = tl.where(in_bounds, {term}, {identity})")
    else:
        loop.append(f"term = {term}")
    loop.append(f"acc = {_combine(combine, 'acc', 'term')}")
    body += ["    " + line for line in loop]
    body += [
        f"tl.store(partials + pid, {_reduce(combine, 'acc')})",
        "# The program that finishes last combines every partial: per tensor, then across tensors.",
        "tl.debug_barrier()",
        "finished_before = tl.atomic_add(finished, 1)",
        "if finished_before == tl.num_programs(0) - 1:",
    ]
    final = [
        "tl.store(finished, 0)  # the counter is zero again for the next launch (a CUDA graph's replay)",
        f"total = tl.full([], {identity}, {acc_t})",
        "t = 0",
        "while t < num_tensors:",
    ]
    per_tensor = [
        "begin = tl.load(first_program + t)",
        "end = tl.load(first_program + t + 1)",
        f"tensor_acc = tl.full([FINAL_BLOCK], {identity}, {acc_t})",
        "j = begin",
        "while j < end:",
        "    index = j + tl.arange(0, FINAL_BLOCK)",
        f"    part = tl.load(partials + index, mask=index < end, other={identity}, cache_modifier=\".cg\")",
        f"    tensor_acc = {_combine(combine, 'tensor_acc', 'part')}",
        "    j += FINAL_BLOCK",
        f"tensor_norm = {_finish(kind, _reduce(combine, 'tensor_acc'), acc_t)}",
    ]
    if kind == "p" and p < 0:  # an empty tensor's norm is 0, not 0 ** (1 / p)
        per_tensor.append("tensor_norm = tl.where(tl.load(sizes + t) == 0, 0.0, tensor_norm)")
    per_tensor += [
        "# each tensor's norm is rounded to its dtype",
    ]
    if mixed:
        per_tensor.append("tensor_code = tl.load(dtype_codes + t)")
    per_tensor += _dtype_blocks(names, "tensor_code", round_block, "", exhaustive=False)
    if kind == "0":
        per_tensor.append(f"total += (tensor_norm != 0).to({acc_t})")
    elif kind == "2":
        per_tensor.append("total += tensor_norm * tensor_norm")
    elif kind == "p":
        per_tensor.append(f"total += {_term('p', 'tensor_norm', acc_t)}")
    else:
        per_tensor.append(f"total = {_combine(combine, 'total', 'tensor_norm')}")
    per_tensor.append("t += 1")
    final += ["    " + line for line in per_tensor]
    final.append(f"total_norm = {_finish(kind, 'total', acc_t)}")
    final.append(f"tl.store(out_ptr, {store_cast('total_norm', result_name)})")
    body += ["    " + line for line in final]
    return "\n".join(lines + ["    " + line for line in body]) + "\n"


def _empty_norm_error(p):
    if p == math.inf:  # PyTorch's messages for these two differ; both are kept
        return RuntimeError("_foreach_norm cannot compute the infinity norm on an empty tensor because the "
                            "operation does not have an identity")
    return RuntimeError("linalg.vector_norm cannot compute the -inf norm on an empty tensor because the "
                        "operation does not have an identity")


@emitter("multi_tensor_norm")
def multi_tensor_norm(call):
    p = call.attrs["p"]
    tensors = [a for a in call.inputs]
    _check_floating("multi_tensor_norm", tensors)
    if p in (math.inf, -math.inf) and any(a.size == 0 for a in tensors):
        raise _empty_norm_error(p)
    result = dtypes.from_numpy_dtype(tensors[0].dtype)
    for a in tensors[1:]:
        result = dtypes.promote_types(result, dtypes.from_numpy_dtype(a.dtype))
    acc_t = _compute_tl(result.name)
    names = sorted({_dtype_name(a) for a in tensors}, key=FLOAT_TYPES.index)
    kind, combine = _norm_kind(p)

    tensors = [contiguous(call, a) for a in tensors]
    sizes = [int(a.size) for a in tensors]
    block, chunk = block_sizes(sizes)
    tables = Tables(call, sizes, chunk, at_least_one_chunk=True)
    tables.addresses("addresses", tensors)
    if len(names) > 1:
        tables.add("dtype_codes", [names.index(_dtype_name(a)) for a in tensors])
    tables.add("finished", [0])
    table = tables.to_device()

    kernel = call.kernel("multi_tensor_norm_kernel",
                         _norm_source("multi_tensor_norm_kernel", kind, combine, p, names, acc_t, result.name))
    partials = call.empty((tables.programs,), np.float64 if acc_t == "tl.float64" else np.float32)
    out = call.empty((), result)
    args = [table["addresses"], table["sizes"]]
    if len(names) > 1:
        args.append(table["dtype_codes"])
    args += [table["program_tensor"], table["first_program"], partials, table["finished"], out, len(tensors)]
    final_block = block_size(tables.most_chunks)
    call.launch(kernel, (tables.programs,), *args, BLOCK=block, CHUNK=chunk, FINAL_BLOCK=final_block)
    return out


# --- multi_tensor_scale -------------------------------------------------------------------------------


def _clip_coefficient_lines(norm_name):
    """clip_grad_norm_'s min(max_norm / (total_norm + 1e-6), 1) in the total norm's dtype: float32
    arithmetic rounded after each operation for half precisions (NumPy's half arithmetic)."""
    ct = _compute_tl(norm_name)
    lines = [
        "# clip coefficient min(max_norm / (total_norm + 1e-6), 1), in the total norm's type",
        f"total_norm = tl.load(total_norm_ptr).to({ct})",
        "max_norm = tl.load(max_norm_bits).to(tl.float64, bitcast=True)" + ("" if ct == "tl.float64" else ".to(tl.float32)"),
        f"eps = tl.full([], 1e-6, {ct})",
        "denominator = total_norm + eps",
        # a correctly rounded division (float32 `/` may approximate on a GPU; div_rn is float32 only)
        "ratio = " + ("max_norm / denominator" if ct == "tl.float64" else "tl.div_rn(max_norm, denominator)"),
    ]
    if norm_name in _HALF:  # round each value to the norm's type, as NumPy's half arithmetic does
        rounded = []
        for line in lines:
            rounded.append(line)
            temp = line.split(" = ")[0]
            if temp in ("max_norm", "eps", "denominator", "ratio"):
                rounded.append(f"{temp} = {_round_to(temp, norm_name, ct)}")
        lines = rounded
    return lines + ["coef = tl.where(ratio > 1.0, 1.0, ratio)"]


def _scale_source(name, names, clip, coef_name):
    mixed = len(names) > 1

    def scale_block(dtype_name):
        ct = _compute_tl(dtype_name)
        pointer = f"tl.pointer_type({tl_type(dtype_name)})"
        return [
            f"source = tl.load(sources + tensor).to({pointer})",
            f"destination = tl.load(destinations + tensor).to({pointer})",
            f"scale = coef.to({ct})",
            "for start in range(0, CHUNK, BLOCK):",
            "    offsets = chunk_start + start + tl.arange(0, BLOCK)",
            "    in_bounds = offsets < numel",
            f"    x = tl.load(source + offsets, mask=in_bounds).to({ct})",
            "    scaled = x * scale",
            f"    tl.store(destination + offsets, {store_cast('scaled', dtype_name)}, mask=in_bounds)",
        ]

    lines = [
        "@triton.jit",
        f"def {name}(",
        "    # tensor table, one entry per tensor: source and destination addresses, element count"
        + (", dtype code" if mixed else ""),
        "    sources, destinations, sizes," + (" dtype_codes," if mixed else ""),
        "    # program table: the tensor each program scales, each tensor's first program",
        "    program_tensor, first_program,",
    ]
    if clip:
        lines += ["    # the 0-dim total norm; clip_grad_norm_'s max_norm (float64 bits)",
                  "    total_norm_ptr, max_norm_bits,"]
    else:
        lines += ["    # the 0-dim coefficient", "    coef_ptr,"]
    lines += [
        "    # each program scales CHUNK elements, BLOCK at a time",
        "    BLOCK: tl.constexpr, CHUNK: tl.constexpr,",
        "):",
    ]
    body = [
        "pid = tl.program_id(0)",
        "tensor = tl.load(program_tensor + pid)",
        "chunk_start = (pid - tl.load(first_program + tensor)) * CHUNK",
        "numel = tl.load(sizes + tensor)",
    ]
    body += _clip_coefficient_lines(coef_name) if clip else ["coef = tl.load(coef_ptr)"]
    if mixed:
        body.append("dtype_code = tl.load(dtype_codes + tensor)")
    body += _dtype_blocks(names, "dtype_code", scale_block, "", exhaustive=False)
    return "\n".join(lines + ["    " + line for line in body]) + "\n"


@emitter("multi_tensor_scale")
def multi_tensor_scale(call):
    coef, *tensors = call.inputs
    max_norm = call.attrs.get("max_norm")
    _check_floating("multi_tensor_scale", tensors)
    if not isinstance(coef, np.ndarray) and not hasattr(coef, "shape"):
        # A Python number (a 0-dim CPU tensor passed as a scalar): a float64 device value.
        coef = call.backend.from_host(np.array(coef, np.float64), call.device)
    if max_norm is not None:
        _check_floating("multi_tensor_scale", [coef])
    # An output may land straight in its input's memory (a gradient clipped in place): each
    # element is read before it is written, by the same program.
    outs = tuple(call.output(j, a.shape, a.dtype) for j, a in enumerate(tensors))
    if not tensors:
        return outs
    names = sorted({_dtype_name(a) for a in tensors}, key=FLOAT_TYPES.index)
    sources = [contiguous(call, a) for a in tensors]
    sizes = [int(a.size) for a in tensors]
    block, chunk = block_sizes(sizes)
    tables = Tables(call, sizes, chunk, at_least_one_chunk=False)
    tables.addresses("sources", sources)
    tables.addresses("destinations", outs)
    if len(names) > 1:
        tables.add("dtype_codes", [names.index(_dtype_name(a)) for a in tensors])
    if max_norm is not None:
        tables.add("max_norm_bits", np.array([max_norm], np.float64).view(np.int64))
    table = tables.to_device()

    clip = max_norm is not None
    kernel = call.kernel("multi_tensor_scale_kernel",
                         _scale_source("multi_tensor_scale_kernel", names, clip, _dtype_name(coef)))
    args = [table["sources"], table["destinations"], table["sizes"]]
    if len(names) > 1:
        args.append(table["dtype_codes"])
    args += [table["program_tensor"], table["first_program"], coef]
    if clip:
        args.append(table["max_norm_bits"])
    call.launch(kernel, (tables.programs,), *args, BLOCK=block, CHUNK=chunk)
    return outs
