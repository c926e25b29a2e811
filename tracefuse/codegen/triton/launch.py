"""Running an op on a CUDA device: the emitter registry, the call an emitter works on, and
kernel launches (recorded for `explain().kernels`, kernel counts and ahead-of-time builds).

An emitter is registered per op name with `@emitter("add", ...)`. It receives an `OpCall`:
the op, its inputs (device arrays, Python scalars, None), attrs, result dtype, device and
provenance; it allocates outputs with `call.empty`, builds kernels with `call.kernel` and
launches them with `call.launch`, and returns the output array (or a tuple). Emitters read only
arrays' metadata (shape, strides, dtype), never their values: the arrays live on the device.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass

import numpy as np

from ... import dtypes
from ...runtime import devices
from ...runtime.backend import KernelLaunchError
from . import kernel as _kernel

EMITTERS: dict = {}


def emitter(*names):
    """Register the decorated function as the Triton emitter of ops `names`."""
    def register(fn):
        for name in names:
            assert name not in EMITTERS, f"two Triton emitters for op '{name}'"
            EMITTERS[name] = fn
        return fn
    return register


class NoEmitterError(NotImplementedError):
    """An op with no Triton emitter was asked to run on a CUDA device."""


# Triton's name for each element type (pointer signatures).
TRITON_TYPES = {
    "float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16", "int64": "i64",
    "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1",
}


def tl_type(dtype) -> str:
    """`tl.float32` etc. for a tracefuse dtype or NumPy dtype (bool is Triton's int1)."""
    name = _np_name(dtype)
    if name not in TRITON_TYPES:
        raise TypeError(f"no Triton type for {name}")
    return "tl.int1" if name == "bool" else f"tl.{name}"


def _np_name(dtype) -> str:
    if isinstance(dtype, dtypes.dtype):
        dtype = dtype.np_type
    return dtype_name(np.dtype(dtype))


@functools.lru_cache(maxsize=None)
def dtype_name(dtype: np.dtype) -> str:
    """`dtype.name`, which NumPy works out each time it is asked (slow for launches over 200 tensors)."""
    return dtype.name


@dataclass
class LaunchRecord:
    """One kernel launch: what `explain().kernels` shows and what an AOT build compiles."""

    kernel: _kernel.Kernel
    grid: tuple
    signature: dict  # argument name -> Triton type ("*fp32", "i32", ...)
    constexprs: dict


class _ThreadState(threading.local):
    """What launches made on this thread are recorded into, labelled with and placed into
    (DataParallel runs replicas on threads of their own)."""

    def __init__(self):
        self.recorders: list[list] = []
        self.provenance = [""]
        self.placement: list = [None]


_state = _ThreadState()


@contextlib.contextmanager
def recording():
    """Collect the `LaunchRecord`s of every launch made inside the block."""
    records: list = []
    _state.recorders.append(records)
    try:
        yield records
    finally:
        _state.recorders.remove(records)


class OpCall:
    """One op to run on a device, as an emitter sees it."""

    def __init__(self, op, inputs, attrs, out_dtype, device, provenance="", destinations=None):
        self.op, self.inputs, self.attrs = op, list(inputs), dict(attrs)
        self.out_dtype, self.device, self.provenance = out_dtype, device, provenance
        self.backend = devices.backend(device)
        self.destinations = destinations or {}  # output index -> memory the graph wants it in
        self.placed: set = set()  # the outputs written straight into their destination

    def empty(self, shape, dtype):
        """A new C-contiguous device array (dtype: a tracefuse or NumPy dtype)."""
        np_dtype = dtype.np_type if isinstance(dtype, dtypes.dtype) else np.dtype(dtype)
        return self.backend.empty(tuple(shape), np_dtype, self.device)

    def output(self, j, shape, dtype):
        """Where to write output `j`: the memory the graph executor planned for it (an input updated
        in place, a slice of a concatenation) when it fits, else a new array. Use it for outputs
        that are written once, element by element, after the inputs at that element are read."""
        dest = self.destinations.get(j)
        np_dtype = dtype.np_type if isinstance(dtype, dtypes.dtype) else np.dtype(dtype)
        if dest is not None and dest.shape == tuple(shape) and dest.dtype == np_dtype and dest.flags.c_contiguous:
            self.placed.add(j)
            return dest
        return self.empty(shape, dtype)

    def kernel(self, name: str, body: str) -> _kernel.Kernel:
        return _kernel.build(name, body, self.provenance)

    def launch(self, kernel, grid, *args, **constexprs):
        """Launch `kernel` over `grid` (a tuple of program counts); arrays among `args` are passed
        as device pointers, ints and floats as scalars."""
        grid = tuple(int(g) for g in grid)
        if not all(grid):
            return  # an empty grid: nothing to compute
        # Bools go as 0/1 ints: Triton 3.6's interpreter cannot stage a bool argument.
        args = [int(a) if isinstance(a, (bool, np.bool_)) else a for a in args]
        converted = [self.backend.pointer(a) if isinstance(a, np.ndarray) else a for a in args]
        signature = _signature(kernel, args)
        if _state.recorders:
            record = LaunchRecord(kernel, grid, signature, dict(constexprs))
            for records in _state.recorders:
                records.append(record)
        try:
            self.backend.launch(kernel, grid, converted, signature, constexprs, self.device)
        except Exception as exc:
            raise KernelLaunchError(f"kernel {kernel.name} ({kernel.path.name}) failed on {self.device}: "
                                    f"{type(exc).__name__}: {exc}\n{self.provenance or 'eager op'}") from exc


def _signature(kernel, args) -> dict:
    names = kernel.arg_names
    wide_floats = any(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in args)
    signature = {}
    for name, a in zip(names, args):
        if isinstance(a, np.ndarray):
            signature[name] = "*" + TRITON_TYPES[dtype_name(a.dtype)]
        elif isinstance(a, (int, np.integer)):
            signature[name] = "i32" if -2**31 <= a < 2**31 else "i64"
        else:
            signature[name] = "fp64" if wide_floats else "fp32"
    return signature


@contextlib.contextmanager
def provenance(text: str):
    """Kernels built inside the block carry `text` (IR nodes, scopes, source lines) in their header."""
    _state.provenance.append(text)
    try:
        yield
    finally:
        _state.provenance.pop()


@contextlib.contextmanager
def placement(destinations: dict):
    """The op run inside the block may write output j into `destinations[j]` (see OpCall.output);
    yields the set of outputs that were written there."""
    call_outputs: set = set()
    _state.placement.append((destinations, call_outputs))
    try:
        yield call_outputs
    finally:
        _state.placement.pop()


def run_op(op, inputs, attrs, out_dtype, device):
    """Run `op` on `device` through its emitter; returns what the emitter returns."""
    emit = EMITTERS.get(op.name)
    if emit is None:
        raise NoEmitterError(f"op '{op.name}' has no Triton emitter, so it cannot run on {device}")
    destinations, placed = _state.placement[-1] or ({}, set())
    _state.placement.append(None)  # ops an emitter runs itself (through dispatch) place nothing
    try:
        call = OpCall(op, inputs, attrs, out_dtype, device, _state.provenance[-1], destinations)
        result = emit(call)
    finally:
        _state.placement.pop()
    placed |= call.placed
    return result
