"""The pointwise kernel builder: one program per BLOCK elements of an iteration shape, with every
operand read through its own strides (0 where it broadcasts) and every result written through
its own strides. Elementwise ops, fused elementwise groups and strided copies are all built here.

Dimensions that are contiguous for every operand are merged first (as PyTorch's TensorIterator
does), so a contiguous operation indexes with one flat offset and a transposed one with two.
"""
from __future__ import annotations

import numpy as np

from .launch import OpCall, tl_type

BLOCK = 1024
INT32_LIMIT = 2**31 - 1


def element_strides(array, shape) -> list[int]:
    """`array`'s strides in elements after broadcasting it to `shape` (0 on broadcast dims)."""
    ndim = len(shape)
    strides = [0] * ndim
    offset = ndim - array.ndim
    for i, (n, st) in enumerate(zip(array.shape, array.strides)):
        if n != 1:
            strides[offset + i] = st // array.itemsize
    return strides


def collapse(shape, stride_lists):
    """Merge adjacent dims that are contiguous for every operand; drop size-1 dims."""
    dims = [(n, [s[i] for s in stride_lists]) for i, n in enumerate(shape) if n != 1]
    merged: list = []
    for n, strides in dims:
        if merged:
            pn, pstrides = merged[-1]
            if all(ps == s * n for ps, s in zip(pstrides, strides)):
                merged[-1] = (pn * n, strides)
                continue
        merged.append((n, strides))
    if not merged:  # a single element
        merged = [(1, [1] * len(stride_lists))]
    sizes = [n for n, _ in merged]
    return sizes, [[st[k] for _, st in merged] for k in range(len(stride_lists))]


def store_cast(value: str, dtype) -> str:
    """`value` converted for storing as `dtype`; bfloat16 rounds to nearest even (kernel.HELPERS)."""
    if np.dtype(dtype).name == "bfloat16":
        return f"round_to_bfloat16({value}.to(tl.float32))"
    return f"{value}.to({tl_type(dtype)})"


class Pointwise:
    """Builder for one pointwise kernel. Add operands (arrays read with broadcasting, or
    scalars), then the lines computing named temporaries, then the results; `launch` writes the
    kernel, specialises it on the collapsed rank and launches it."""

    def __init__(self, name: str, shape):
        self.name, self.shape = name, tuple(shape)
        self.loads: list = []   # (param, array, compute tl type or None)
        self.scalars: list = []  # (param, value)
        self.lines: list = []   # "temp = expression"
        self.stores: list = []  # (param, temp, array)

    def load(self, param, array, compute=None):
        """Read `array` as `param` (cast to `compute`, a tracefuse/NumPy dtype, when given)."""
        self.loads.append((param, array, compute))
        return param

    def scalar(self, param, value):
        self.scalars.append((param, value.item() if isinstance(value, np.generic) else value))
        return param

    def compute(self, temp, expression):
        self.lines.append(f"{temp} = {expression}")
        return temp

    def store(self, param, temp, array):
        self.stores.append((param, temp, array))

    def launch(self, call: OpCall):
        arrays = [a for _, a, _ in self.loads] + [a for _, _, a in self.stores]
        strides = [element_strides(a, self.shape) for a in arrays]
        sizes, strides = collapse(self.shape, strides)
        numel = int(np.prod(self.shape, dtype=np.int64))
        reach = max([numel] + [sum((n - 1) * abs(s) for n, s in zip(sizes, st)) + 1 for st in strides])
        wide = reach > INT32_LIMIT
        flat = [len(sizes) == 1 and st[0] == 1 for st in strides]
        kernel = call.kernel(self.name, self._source(len(sizes), flat, wide))
        args = []
        for a, st, is_flat in zip(arrays, strides, flat):
            args.append(a)
            if not is_flat:
                args.extend(st)
        args.extend(v for _, v in self.scalars)
        args.append(numel)
        args.extend(sizes[1:])
        call.launch(kernel, ((numel + BLOCK - 1) // BLOCK,), *args, BLOCK=BLOCK)

    def _source(self, rank, flat, wide) -> str:
        params = [p for p, _, _ in self.loads] + [p for p, _, _ in self.stores]

        def operand_params(p, is_flat):
            return f"{p}_ptr" + ("" if is_flat else "".join(f", {p}_stride{d}" for d in range(rank)))

        head = [f"    # inputs: pointer{', strides (elements) per dim' if not all(flat) else ''}"]
        head += [f"    {operand_params(p, f)}," for p, f in zip(params[:len(self.loads)], flat)]
        head += ["    # outputs"] + [f"    {operand_params(p, f)}," for p, f in zip(params[len(self.loads):], flat[len(self.loads):])]
        if self.scalars:
            head += ["    # scalars", "    " + ", ".join(p for p, _ in self.scalars) + ","]
        sizes = "".join(f", size{d}" for d in range(1, rank))
        head += ["    # iteration space", f"    numel{sizes},", "    BLOCK: tl.constexpr,"]
        body = ["    pid = tl.program_id(0)"]
        body.append("    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)" if wide
                    else "    offsets = pid * BLOCK + tl.arange(0, BLOCK)")
        body.append("    in_bounds = offsets < numel")
        if not all(flat):
            rest = "offsets"
            for d in range(rank - 1, 0, -1):
                body.append(f"    index{d} = {rest} % size{d}")
                body.append(f"    rest{d} = {rest} // size{d}")
                rest = f"rest{d}"
            body.append(f"    index0 = {rest}")

        def address(p, is_flat):
            if is_flat:
                return f"{p}_ptr + offsets"
            return f"{p}_ptr + " + " + ".join(f"index{d} * {p}_stride{d}" for d in range(rank)) if rank else f"{p}_ptr"

        for (p, _, compute), is_flat in zip(self.loads, flat):
            cast = f".to({tl_type(compute)})" if compute is not None else ""
            body.append(f"    {p} = tl.load({address(p, is_flat)}, mask=in_bounds){cast}")
        body += [f"    {line}" for line in self.lines]
        for (p, temp, array), is_flat in zip(self.stores, flat[len(self.loads):]):
            body.append(f"    tl.store({address(p, is_flat)}, {store_cast(temp, array.dtype)}, mask=in_bounds)")
        return "@triton.jit\ndef " + self.name + "(\n" + "\n".join(head) + "\n):\n" + "\n".join(body) + "\n"
