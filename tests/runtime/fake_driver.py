"""A fake of cuda-python's driver module (`cuda.bindings.driver`) for testing the CUDA backend
without a GPU.

It keeps cuda-python's conventions: every call returns `(CUresult, *values)`; enums and handle
types (CUstream, CUdeviceptr, ...) are cuda-python's own. Where no driver is installed, every
call's arguments are also handed to the real cuda-python function, which converts them before it
looks for the driver, so arguments that cuda-python would reject on a GPU fail here too.

Device memory is host memory (NumPy buffers kept by address): copies are memmoves, and a copy
outside a live allocation fails as on a GPU. With `protect=True` it is mapped inaccessible except
while the fake copies, so a host read of device memory crashes (run such tests in a subprocess
with faulthandler on) instead of quietly working as it would not on a GPU.

Streams run their work at once, in order; events read a clock that each launch advances by
`LAUNCH_MS`. A stream being captured records its work instead and a graph launch runs it;
synchronizing it breaks the capture, as on a GPU. Launches are recorded with their kernel
parameters decoded.

Test hooks: `fail(call, error)` makes the next `call` return `error`; `param_types[kernel]`
(ctypes types) says how to decode a kernel's parameters (else they are read as unsigned ints of
the sizes the cubin's parameter records give); `calls` lists every call with its arguments;
`ready = False` makes events report work in flight.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import itertools
import struct
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from tracefuse.runtime.devices import _driver_api

real = _driver_api()
LAUNCH_MS = 0.5
_DISABLE_TIMING = 0x02
_MAX_SHARED_DEFAULT = 48 << 10
_UNSIGNED = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def _loader_error():
    """The exception cuda-python raises for any call where no driver is installed (None where one is)."""
    try:
        real.cuInit(0)
    except Exception as exc:  # noqa: BLE001 (whatever the loader raises)
        return type(exc)
    return None


_LOADER_ERROR = _loader_error()


def _check_arguments(name, args):
    """Raise what cuda-python raises for these arguments (TypeError, OverflowError...), if anything."""
    if _LOADER_ERROR is None:
        return  # a real driver would run the call
    try:
        getattr(real, name)(*args)
    except _LOADER_ERROR:
        return  # converted fine, then went looking for the driver
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"cuda-python refuses {name}{args!r}: {type(exc).__name__}: {exc}") from exc


class _Fail(Exception):
    def __init__(self, code):
        self.code = getattr(real.CUresult, code)


def _api(returns=False):
    """A driver call: arguments checked, logged, failing on request; `(CUresult, value)` or `(CUresult,)`."""
    def wrap(method):
        name = method.__name__

        @functools.wraps(method)
        def call(self, *args):
            _check_arguments(name, args)
            self.calls.append((name, args))
            try:
                if self.failures[name]:
                    raise _Fail(self.failures[name].pop(0))
                value = method(self, *args)
            except _Fail as failure:
                return (failure.code, None) if returns else (failure.code,)
            return (real.CUresult.CUDA_SUCCESS, value) if returns else (real.CUresult.CUDA_SUCCESS,)
        return call
    return wrap


@dataclass
class Stream:
    context: int
    capture: list | None = None  # the work recorded while captured
    broken: bool = False  # the capture was invalidated


@dataclass
class Event:
    context: int
    timing: bool
    time: float | None = None


@dataclass
class Function:
    context: int
    name: str
    parameter_sizes: list | None  # from the cubin, where it says
    max_dynamic_shared: int = _MAX_SHARED_DEFAULT


@dataclass
class Launch:
    function: str
    grid: tuple
    block: tuple
    shared: int
    stream: int
    params: list | None
    cooperative: bool = False
    replayed: bool = False


# --- device memory: NumPy buffers, or pages mapped inaccessible (protect=True) ---


@dataclass
class Allocation:
    buffer: np.ndarray | None  # None: pages from `_map`
    size: int
    gpu: int


def _aligned(size, align=256):
    """A host buffer of `size` bytes starting at a multiple of `align` (as cuMemAlloc's are),
    filled with a pattern so that reading memory nobody wrote shows."""
    raw = np.full(size + align, 0xA5, np.uint8)
    start = -raw.ctypes.data % align
    return raw, raw.ctypes.data + start


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype, _libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                            ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_PROT_NONE, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS = 0, 3, 0x22


def _pages(size):
    return max(4096, -(-size // 4096) * 4096)


def _map(size):
    """Fresh pages the host cannot touch (until `_open`)."""
    return _libc.mmap(None, _pages(size), _PROT_NONE, _MAP_PRIVATE_ANONYMOUS, -1, 0)


def _open(address, size, writable=True):
    _libc.mprotect(address, _pages(size), _PROT_READ_WRITE if writable else _PROT_NONE)


# --- cubins ---


def _elf_image(address):
    """The bytes of the ELF image (a cubin) at `address`: its headers say how long it is."""
    header = ctypes.string_at(address, 64)
    if header[:4] != b"\x7fELF" or header[4] != 2:
        raise _Fail("CUDA_ERROR_INVALID_IMAGE")
    (phoff, shoff), (phentsize, phnum, shentsize, shnum) = (struct.unpack_from("<QQ", header, 0x20),
                                                            struct.unpack_from("<HHxxHH", header, 0x36))
    return ctypes.string_at(address, max(64, phoff + phentsize * phnum, shoff + shentsize * shnum))


def _sections(image):
    """{name: bytes} of the ELF image's sections."""
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, names_index = struct.unpack_from("<HHH", image, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize) for i in range(shnum)]
    names = headers[names_index][4] if headers else 0
    return {image[names + h[0]:image.index(b"\0", names + h[0])].decode(): image[h[4]:h[4] + h[5]] for h in headers}


def cubin_parameter_sizes(image, kernel):
    """The byte sizes of `kernel`'s parameters, in order, from the cubin's EIATTR_KPARAM_INFO
    records (None when the image has none, as `fake_cubin`'s)."""
    info, sizes, at = _sections(image).get(f".nv.info.{kernel}", b""), {}, 0
    while at < len(info):
        form, attribute = info[at], info[at + 1]
        length = struct.unpack_from("<H", info, at + 2)[0] if form == 0x04 else 0  # EIFMT_SVAL carries data
        if attribute == 0x17:  # EIATTR_KPARAM_INFO: index, ordinal, offset, flags (size in bits 18..31)
            _, ordinal, _, flags = struct.unpack_from("<IHHI", info, at + 4)
            sizes[ordinal] = (flags >> 18) & 0x3FFF
        at += 4 + length
    return [sizes[i] for i in range(len(sizes))] or None


def fake_cubin(*names: str) -> bytes:
    """A minimal ELF64 image whose bytes contain `names` (what cuModuleGetFunction looks for)."""
    payload = b"\0".join(n.encode() for n in names) + b"\0"
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x28, 64 + len(payload))  # e_shoff: the image ends there (no sections)
    return bytes(header) + payload


class StandInTriton:
    """A stand-in for `aot.compile_function` (Triton): records each build and returns a
    CompiledKernel-like object whose metadata is `meta` (Triton's fields: warps, shared bytes,
    scratch sizes...) and whose cubin is a `fake_cubin` naming the kernel."""

    def __init__(self):
        self.builds: list = []
        self.meta = dict(num_warps=4, num_ctas=1, shared=1024, global_scratch_size=0, global_scratch_align=1,
                         profile_scratch_size=0, profile_scratch_align=1, launch_cooperative_grid=False)

    def __call__(self, fn, signature, constexprs, arch, attrs=None):
        self.builds.append(SimpleNamespace(signature=dict(signature), constexprs=dict(constexprs), arch=arch,
                                           attrs=attrs))
        metadata = collections.namedtuple("KernelMetadata", ["name", *self.meta])(fn.__name__, *self.meta.values())
        return SimpleNamespace(metadata=metadata, asm={"cubin": fake_cubin("other_kernel", fn.__name__)})


class FakeDriver:
    """`gpus` GPUs of `memory` bytes each, compute capability `arch`; `peer_access` between them."""

    CUresult = real.CUresult
    CUdevice_attribute = real.CUdevice_attribute
    CUfunction_attribute = real.CUfunction_attribute
    CUstreamCaptureMode = real.CUstreamCaptureMode

    def __init__(self, gpus=1, memory=1 << 30, arch=(9, 0), peer_access=True, shared_optin=227 << 10,
                 protect=False):
        self.gpus, self.memory, self.peer_access, self.protect = gpus, memory, peer_access, protect
        attribute = real.CUdevice_attribute
        self.attributes = {attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: arch[0],
                           attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: arch[1],
                           attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: shared_optin,
                           attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: 132,
                           attribute.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: 1024}
        self.calls: list = []
        self.failures = collections.defaultdict(list)
        self.param_types: dict = {}
        self.allocations: dict = {}  # address -> Allocation
        self.freed: list = []  # addresses given back with cuMemFree
        self.pinned: dict = {}
        self.streams, self.events, self.functions, self.graphs, self.executables = {}, {}, {}, {}, {}
        self.images: dict = {}  # module id -> (context, image bytes)
        self.peers: set = set()  # (context, peer context) with access enabled
        self.waits: list = []  # (stream id, event id) of cuStreamWaitEvent
        self.launches: list = []
        self.clock, self.ready, self._replaying = 0.0, True, False
        self._ids = itertools.count(0x1000)
        self._thread = threading.local()

    # --- test hooks and helpers ---

    def fail(self, call, error="CUDA_ERROR_ILLEGAL_ADDRESS", times=1):
        self.failures[call].extend([error] * times)

    def count(self, call):
        return sum(name == call for name, _ in self.calls)

    def args_of(self, call):
        return [args for name, args in self.calls if name == call]

    def used(self, gpu=0):
        return sum(a.size for a in self.allocations.values() if a.gpu == gpu)

    def _context(self):
        context = getattr(self._thread, "context", None)
        if context is None:
            raise _Fail("CUDA_ERROR_INVALID_CONTEXT")
        return context

    @staticmethod
    def _find(table, handle):
        found = table.get(int(handle))
        if found is None:
            raise _Fail("CUDA_ERROR_INVALID_HANDLE")
        return found

    def _device_range(self, address, nbytes, gpu=None):
        """Raise unless [address, address + nbytes) lies in one live allocation (on `gpu`)."""
        address = int(address)
        for start, a in self.allocations.items():
            if start <= address and address + nbytes <= start + a.size and gpu in (None, a.gpu):
                return
        if nbytes:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")

    def _copy(self, target, source, nbytes):
        """memmove, with protected device memory opened for the copy only."""
        protected = [(address, a.size) for address, a in self.allocations.items() if a.buffer is None]
        for address, size in protected:
            _open(address, size)
        ctypes.memmove(int(target), int(source), nbytes)
        for address, size in protected:
            _open(address, size, writable=False)

    def _run(self, stream, work):
        """Run `work` on `stream` now, or record it while the stream is captured."""
        s = self._find(self.streams, stream)
        if s.capture is not None:
            s.capture.append(work)
        else:
            work()

    def _no_capture(self, streams):
        """Waiting for a stream being captured breaks its capture (and fails)."""
        for s in streams:
            if s.capture is not None:
                s.broken = True
                raise _Fail("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED")

    # --- devices and contexts ---

    @_api()
    def cuInit(self, flags):
        pass

    @_api(returns=True)
    def cuDeviceGetCount(self):
        return self.gpus

    @_api(returns=True)
    def cuDeviceGet(self, ordinal):
        if not 0 <= ordinal < self.gpus:
            raise _Fail("CUDA_ERROR_INVALID_DEVICE")
        return real.CUdevice(ordinal)

    @_api(returns=True)
    def cuDeviceGetAttribute(self, attribute, device):
        if attribute not in self.attributes:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        return self.attributes[attribute]

    @_api(returns=True)
    def cuDeviceTotalMem(self, device):
        return self.memory

    @_api(returns=True)
    def cuDevicePrimaryCtxRetain(self, device):
        return real.CUcontext(0x100 + int(device))  # the same context for every retain

    @_api()
    def cuCtxSetCurrent(self, context):
        self._thread.context = int(context)

    @_api(returns=True)
    def cuCtxGetDevice(self):
        return real.CUdevice(self._context() - 0x100)

    @_api()
    def cuCtxSynchronize(self):
        self._no_capture(s for s in self.streams.values() if s.context == self._context())

    @_api(returns=True)
    def cuDeviceCanAccessPeer(self, device, peer):
        return int(self.peer_access and int(device) != int(peer))

    @_api()
    def cuCtxEnablePeerAccess(self, peer, flags):
        pair = (self._context(), int(peer))
        if pair in self.peers:
            raise _Fail("CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED")
        self.peers.add(pair)

    # --- memory ---

    @_api(returns=True)
    def cuMemAlloc(self, size):
        gpu = self._context() - 0x100
        if self.used(gpu) + size > self.memory:
            raise _Fail("CUDA_ERROR_OUT_OF_MEMORY")
        buffer, address = (None, _map(size)) if self.protect else _aligned(size)
        self.allocations[address] = Allocation(buffer, size, gpu)
        return real.CUdeviceptr(address)

    @_api()
    def cuMemFree(self, pointer):
        allocation = self.allocations.pop(int(pointer), None)
        if allocation is None:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        if allocation.buffer is None:
            _libc.munmap(int(pointer), _pages(allocation.size))
        self.freed.append(int(pointer))

    @_api(returns=True)
    def cuMemHostAlloc(self, size, flags):
        buffer, address = _aligned(size)
        self.pinned[address] = buffer
        return address

    @_api()
    def cuMemcpyHtoD(self, device, host, nbytes):
        self._device_range(device, nbytes)
        self._copy(device, host, nbytes)

    @_api()
    def cuMemcpyHtoDAsync(self, device, host, nbytes, stream):
        self._device_range(device, nbytes)
        self._run(stream, lambda: self._copy(device, host, nbytes))

    @_api()
    def cuMemcpyDtoHAsync(self, host, device, nbytes, stream):
        self._device_range(device, nbytes)
        self._run(stream, lambda: self._copy(host, device, nbytes))

    @_api()
    def cuMemcpyDtoDAsync(self, target, source, nbytes, stream):
        self._device_range(target, nbytes)
        self._device_range(source, nbytes)
        self._run(stream, lambda: self._copy(target, source, nbytes))

    @_api()
    def cuMemcpyPeerAsync(self, target, target_context, source, source_context, nbytes, stream):
        self._device_range(target, nbytes, int(target_context) - 0x100)
        self._device_range(source, nbytes, int(source_context) - 0x100)
        self._run(stream, lambda: self._copy(target, source, nbytes))

    # --- streams and events ---

    def _new(self, table, item, handle_type):
        key = next(self._ids)
        table[key] = item
        return handle_type(key)

    @_api(returns=True)
    def cuStreamCreate(self, flags):
        return self._new(self.streams, Stream(self._context()), real.CUstream)

    @_api(returns=True)
    def cuStreamCreateWithPriority(self, flags, priority):
        return self._new(self.streams, Stream(self._context()), real.CUstream)

    @_api()
    def cuStreamDestroy(self, stream):
        self._find(self.streams, stream)
        del self.streams[int(stream)]

    @_api()
    def cuStreamSynchronize(self, stream):
        self._no_capture([self._find(self.streams, stream)])

    @_api()
    def cuStreamWaitEvent(self, stream, event, flags):
        self._find(self.streams, stream)
        self._find(self.events, event)
        self.waits.append((int(stream), int(event)))

    @_api(returns=True)
    def cuEventCreate(self, flags):
        return self._new(self.events, Event(self._context(), not flags & _DISABLE_TIMING), real.CUevent)

    @_api()
    def cuEventRecord(self, event, stream):
        e, s = self._find(self.events, event), self._find(self.streams, stream)
        if e.context != s.context:  # the driver's rule: event and stream of one context
            raise _Fail("CUDA_ERROR_INVALID_HANDLE")
        self._run(stream, lambda: setattr(e, "time", self.clock))

    @_api()
    def cuEventSynchronize(self, event):
        self._find(self.events, event)

    @_api()
    def cuEventQuery(self, event):
        self._find(self.events, event)
        if not self.ready:
            raise _Fail("CUDA_ERROR_NOT_READY")

    @_api(returns=True)
    def cuEventElapsedTime(self, start, end):
        start, end = self._find(self.events, start), self._find(self.events, end)
        if not (start.timing and end.timing) or start.time is None or end.time is None:
            raise _Fail("CUDA_ERROR_INVALID_HANDLE")
        return end.time - start.time

    @_api()
    def cuEventDestroy(self, event):
        self._find(self.events, event)
        del self.events[int(event)]

    # --- modules and launches ---

    @_api(returns=True)
    def cuModuleLoadData(self, image):
        data = bytes(image) if isinstance(image, (bytes, bytearray)) else _elf_image(int(image))
        return self._new(self.images, (self._context(), data), real.CUmodule)

    @_api(returns=True)
    def cuModuleGetFunction(self, module, name):
        context, image = self._find(self.images, module)
        if name not in image:
            raise _Fail("CUDA_ERROR_NOT_FOUND")
        function = Function(context, name.decode(), cubin_parameter_sizes(image, name.decode()))
        return self._new(self.functions, function, real.CUfunction)

    @_api(returns=True)
    def cuFuncGetAttribute(self, attribute, function):
        f = self._find(self.functions, function)
        values = {real.CUfunction_attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: 0,
                  real.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: f.max_dynamic_shared}
        if attribute not in values:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        return values[attribute]

    @_api()
    def cuFuncSetAttribute(self, function, attribute, value):
        f = self._find(self.functions, function)
        optin = self.attributes[real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN]
        if attribute != real.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES or value > optin:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        f.max_dynamic_shared = value

    def _decode(self, f, params):
        """The kernel's parameters from the `void**` array at `params`: typed as `param_types`
        says, else as unsigned ints of the sizes the cubin gives (None when neither is known)."""
        types = self.param_types.get(f.name)
        if types is not None and f.parameter_sizes is not None:
            assert [ctypes.sizeof(t) for t in types] == f.parameter_sizes, (f.name, types, f.parameter_sizes)
        if types is None and f.parameter_sizes is not None:
            types = [_UNSIGNED[size] for size in f.parameter_sizes]
        if types is None or not params:
            return None
        pointers = (ctypes.c_void_p * len(types)).from_address(int(params))
        return [t.from_address(p).value for t, p in zip(types, pointers)]

    def _launch(self, function, grid, block, shared, stream, params, cooperative):
        f, s = self._find(self.functions, function), self._find(self.streams, stream)
        if f.context != self._context() or s.context != f.context:
            raise _Fail("CUDA_ERROR_INVALID_HANDLE")
        if min(grid + block) < 1 or max(grid[1:]) > 65535 or np.prod(block) > 1024 or shared > f.max_dynamic_shared:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        launch = Launch(f.name, grid, block, shared, int(stream), self._decode(f, params), cooperative)

        def run():  # a replayed launch runs on the stream the graph is launched on
            self.clock += LAUNCH_MS
            replayed = self._replaying is not False
            on = self._replaying if replayed else launch.stream
            self.launches.append(dataclasses.replace(launch, replayed=replayed, stream=on))
        self._run(stream, run)

    @_api()
    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        if params and extra:
            raise _Fail("CUDA_ERROR_INVALID_VALUE")
        self._launch(function, (gx, gy, gz), (bx, by, bz), shared, stream, params, False)

    @_api()
    def cuLaunchCooperativeKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params):
        self._launch(function, (gx, gy, gz), (bx, by, bz), shared, stream, params, True)

    # --- CUDA graphs ---

    @_api()
    def cuStreamBeginCapture(self, stream, mode):
        s = self._find(self.streams, stream)
        if s.capture is not None:
            raise _Fail("CUDA_ERROR_ILLEGAL_STATE")
        s.capture, s.broken = [], False

    @_api(returns=True)
    def cuStreamEndCapture(self, stream):
        s = self._find(self.streams, stream)
        if s.capture is None:
            raise _Fail("CUDA_ERROR_ILLEGAL_STATE")
        work, s.capture = s.capture, None
        if s.broken:
            raise _Fail("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED")
        return self._new(self.graphs, work, real.CUgraph)

    @_api(returns=True)
    def cuGraphInstantiate(self, graph, flags):
        return self._new(self.executables, list(self._find(self.graphs, graph)), real.CUgraphExec)

    @_api()
    def cuGraphLaunch(self, executable, stream):
        self._find(self.streams, stream)
        self._replaying = int(stream)
        try:
            for work in self._find(self.executables, executable):
                self._run(stream, work)
        finally:
            self._replaying = False

    @_api()
    def cuGraphExecDestroy(self, executable):
        self._find(self.executables, executable)
        del self.executables[int(executable)]

    @_api()
    def cuGraphDestroy(self, graph):
        self._find(self.graphs, graph)
        del self.graphs[int(graph)]
