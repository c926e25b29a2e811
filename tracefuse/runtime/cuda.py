"""The CUDA backend: tracefuse's device runtime on NVIDIA GPUs through cuda-python's driver API.

Each logical device `cuda:i` owns a stream, a caching allocator and its memory statistics, on
the primary context of a physical GPU: `cuda:i` is GPU i, or with `TRACEFUSE_CUDA=virtual:N`,
N logical devices share the GPUs round-robin (one GPU can stand for several, so the
multi-device paths run end to end on one card).

Device memory reaches NumPy as arrays that *describe* it: `_Block` exposes an allocation through
`__array_interface__`, so shape, strides, dtype, slicing, reshapes and `np.may_share_memory` work
as for host arrays (codegen reads only those and the pointer), while the values are only ever
touched by kernels and by this module's copies. An array keeps its block alive through NumPy's
`base` chain; when the last view dies the block goes back to the allocator.

Kernels are compiled for the device's architecture by Triton (in-process, cached by Triton and
here per code/signature/constexprs/alignment), loaded with cuModuleLoadData and launched with
cuLaunchKernel on the device's current stream with Triton's metadata: warps, dynamic shared
memory (opting in above 48 KiB), the global and profile scratch pointers Triton appends to the
parameters, and cooperative launch when a kernel asks for co-residency. Every driver call's
result is checked and a failure names the call; errors that a faulting kernel leaves behind name
the kernels launched since the device last synchronized.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import threading
import weakref

import numpy as np

from .backend import Backend, CaptureError, KernelLaunchError, format_bytes, out_of_memory


class CudaError(RuntimeError):
    """A CUDA driver call failed; `code` is the driver's error name (e.g. CUDA_ERROR_OUT_OF_MEMORY)."""

    def __init__(self, call, code):
        super().__init__(f"CUDA error: {call} failed with {code}")
        self.call, self.code = call, code


# Errors a kernel leaves in its context: reported with the kernels that may have caused them.
_KERNEL_FAULTS = {"CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_ILLEGAL_INSTRUCTION",
                  "CUDA_ERROR_MISALIGNED_ADDRESS", "CUDA_ERROR_ASSERT", "CUDA_ERROR_HARDWARE_STACK_ERROR",
                  "CUDA_ERROR_INVALID_PC", "CUDA_ERROR_LAUNCH_TIMEOUT", "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"}


class Driver:
    """cuda-python's driver module with every call checked: `driver("cuMemAlloc", n)` returns the
    call's values (one value alone, None for none) or raises CudaError naming the call."""

    def __init__(self, api):
        self.api = api
        self.success = api.CUresult.CUDA_SUCCESS

    def __call__(self, name, *args):
        err, *values = getattr(self.api, name)(*args)
        if err != self.success:
            raise CudaError(name, getattr(err, "name", str(err)))
        return values[0] if len(values) == 1 else (tuple(values) or None)


# --- memory ------------------------------------------------------------------------------------


class _Block:
    """One device allocation as NumPy sees it: bytes at a device address (never read on the host)."""

    __slots__ = ("address", "size", "__array_interface__", "__weakref__")

    def __init__(self, address, size):
        self.address, self.size = address, size
        self.__array_interface__ = {"data": (address, False), "shape": (size,), "typestr": "|u1", "version": 3}


def size_class(nbytes: int) -> int:
    """The bin a request of `nbytes` is served from: multiples of 512 B up to 1 MiB, then four
    classes per power of two (1, 1.25, 1.5, 1.75 x 2^k), so freed blocks fit later requests of
    similar size without wasting more than a quarter."""
    if nbytes <= 1 << 20:
        return max(512, -(-nbytes // 512) * 512)
    step = 1 << (nbytes.bit_length() - 3)
    return -(-nbytes // step) * step


class CachingAllocator:
    """Device memory for one logical device: freed blocks wait in size-class bins for the next
    request on the same stream (work on one stream runs in order, so a block freed there is free
    for whatever that stream does next); cuMemFree only runs in `empty_cache` or when the device
    is full. `capacity` caps the bytes in use (None: what the GPU has)."""

    def __init__(self, driver, capacity=None):
        self.driver, self.capacity = driver, capacity
        self.bins: dict = collections.defaultdict(list)  # size class -> [(address, stream)]
        self.allocated = self.peak = self.reserved = 0
        self.lock = threading.RLock()  # replicas allocate from their own threads; finalizers may run anywhere
        self.private: list = []  # pools of CUDA-graph captures in progress (see `private_pool`)

    def allocate(self, nbytes, device, stream, fresh=False):
        """A block of at least `nbytes` for work on `stream`; `fresh`: never one used before
        (memory a CUDA graph's capture fills at once while its recorded work reuses other blocks)."""
        size = size_class(nbytes)
        with self.lock:
            if self.capacity is not None and self.allocated + nbytes > self.capacity:
                raise out_of_memory(device, nbytes, self.capacity, self.allocated)
            pool = self.bins if fresh or not self.private else self.private[-1]
            free = [] if fresh else pool.get(size) or []
            address = next((free.pop(i)[0] for i, (_, where) in enumerate(free) if where == stream), None)
            if address is None:
                address = self._new_block(size, nbytes, device)
            self.allocated += nbytes
            self.peak = max(self.peak, self.allocated)
        block = _Block(address, size)
        weakref.finalize(block, self._release, address, size, nbytes, stream, pool)
        return block

    def _new_block(self, size, nbytes, device):
        try:
            address = int(self.driver("cuMemAlloc", size))
        except CudaError as exc:
            if exc.code != "CUDA_ERROR_OUT_OF_MEMORY":
                raise
            if self.private:  # a graph is being captured: freeing the cache would synchronize
                raise out_of_memory(device, nbytes, self.capacity, self.allocated) from None
            self.release_cached()
            try:
                address = int(self.driver("cuMemAlloc", size))
            except CudaError as again:
                if again.code != "CUDA_ERROR_OUT_OF_MEMORY":
                    raise
                total = int(self.driver("cuDeviceTotalMem", self.driver("cuCtxGetDevice")))
                raise out_of_memory(device, nbytes, total, self.allocated) from None
        self.reserved += size
        return address

    def _release(self, address, size, nbytes, stream, pool):
        with self.lock:
            self.allocated -= nbytes
            if pool is not self.bins and pool.get("closed"):
                pool = self.bins  # its graph is gone: the block is ordinary memory again
            pool.setdefault(size, []).append((address, stream))

    def release_cached(self):
        """cuMemFree every cached block (after the device's work that may still use them)."""
        with self.lock:
            self.driver("cuCtxSynchronize")
            for size, blocks in self.bins.items():
                for address, _ in blocks:
                    self.driver("cuMemFree", address)
                    self.reserved -= size
            self.bins.clear()

    @contextlib.contextmanager
    def private_pool(self, pool: dict):
        """Serve and take back this device's allocations from `pool` (a CUDA graph's memory: its
        replays write there, so nothing else may be handed those blocks while the graph lives)."""
        with self.lock:
            self.private.append(pool)
        try:
            yield pool
        finally:
            with self.lock:
                self.private.remove(pool)

    def close_pool(self, pool: dict):
        """The graph owning `pool` is gone: its blocks become ordinary cached memory."""
        with self.lock:
            pool["closed"] = True
            for size, blocks in pool.items():
                if size != "closed":
                    self.bins[size].extend(blocks)
                    blocks.clear()


class _PinnedStaging:
    """A page-locked host buffer host<->device copies go through, in chunks (the DMA engines read
    pinned memory directly; pageable memory would be staged by the driver anyway). Small uploads
    (a launch's pointer tables, every optimizer step) go straight from their pageable array: the
    driver copies it to its own staging before returning, in stream order, without waiting for
    the stream's earlier work as a refill of our buffer must."""

    CHUNK = 16 << 20
    SMALL = 256 << 10

    def __init__(self, driver):
        self.driver, self.lock, self.buffer = driver, threading.Lock(), None

    def _view(self):
        if self.buffer is None:
            address = int(self.driver("cuMemHostAlloc", self.CHUNK, 0x01))  # CU_MEMHOSTALLOC_PORTABLE
            self.buffer = (ctypes.c_uint8 * self.CHUNK).from_address(address)
        return np.frombuffer(self.buffer, np.uint8)

    def to_device(self, host: np.ndarray, address: int, stream):
        data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        if data.size <= self.SMALL:
            self.driver("cuMemcpyHtoDAsync", address, data.ctypes.data, data.size, stream)
            return
        with self.lock:
            staging = self._view()
            for start in range(0, data.size, self.CHUNK):
                piece = data[start:start + self.CHUNK]
                staging[:piece.size] = piece
                self.driver("cuMemcpyHtoDAsync", address + start, staging.ctypes.data, piece.size, stream)
                self.driver("cuStreamSynchronize", stream)  # before the staging buffer is refilled

    def to_host(self, address: int, nbytes: int, stream) -> np.ndarray:
        out = np.empty(nbytes, np.uint8)
        with self.lock:
            staging = self._view()
            for start in range(0, nbytes, self.CHUNK):
                n = min(self.CHUNK, nbytes - start)
                self.driver("cuMemcpyDtoHAsync", staging.ctypes.data, address + start, n, stream)
                self.driver("cuStreamSynchronize", stream)
                out[start:start + n] = staging[:n]
        return out


# --- devices ------------------------------------------------------------------------------------


class _Device:
    """A logical device: its GPU, context, stream, allocator and recent launches."""

    def __init__(self, driver, index, ordinal, handle, context, capacity):
        self.index, self.ordinal, self.handle, self.context = index, ordinal, handle, context
        driver("cuCtxSetCurrent", context)
        self.stream = driver("cuStreamCreate", 1)  # CU_STREAM_NON_BLOCKING: never waits on the legacy stream
        self.allocator = CachingAllocator(driver, capacity)
        attribute = driver.api.CUdevice_attribute
        major = driver("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle)
        minor = driver("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle)
        self.arch = 10 * major + minor
        self.shared_optin = driver("cuDeviceGetAttribute",
                                   attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, handle)
        self.multiprocessors = driver("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                                      handle)
        self.recent = collections.deque(maxlen=8)  # (kernel name, file name) since the last sync


class _Loaded:
    """A kernel compiled for one architecture and loaded into one context."""

    __slots__ = ("function", "num_warps", "num_ctas", "shared", "scratch", "cooperative", "module")

    def __init__(self, driver, image: bytes, meta: dict, device):
        """`image`: the cubin; `meta`: Triton's metadata of it (aot.load_or_compile)."""
        buffer = ctypes.create_string_buffer(image, len(image))
        self.module = driver("cuModuleLoadData", ctypes.addressof(buffer))
        self.function = driver("cuModuleGetFunction", self.module, meta["name"].encode())
        self.num_warps, self.num_ctas, self.shared = meta["num_warps"], meta.get("num_ctas", 1), meta["shared"]
        if self.num_ctas != 1:
            raise NotImplementedError(f"kernel {meta['name']}: launching thread-block clusters (num_ctas="
                                      f"{self.num_ctas}) is not supported by tracefuse's CUDA backend")
        self.scratch = [(meta.get(f"{kind}_scratch_size") or 0, meta.get(f"{kind}_scratch_align") or 1)
                        for kind in ("global", "profile")]
        self.cooperative = bool(meta.get("launch_cooperative_grid", False))
        if self.shared > 49152 and device.shared_optin > 49152:  # above 48 KiB a kernel must opt in
            attribute = driver.api.CUfunction_attribute
            static = driver("cuFuncGetAttribute", attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, self.function)
            driver("cuFuncSetAttribute", self.function, attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                   device.shared_optin - static)


_PARAMETER_TYPES = {"i1": ctypes.c_int8, "i8": ctypes.c_int8, "u8": ctypes.c_uint8, "i16": ctypes.c_int16,
                    "i32": ctypes.c_int32, "i64": ctypes.c_int64, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64,
                    "fp32": ctypes.c_float, "fp64": ctypes.c_double}


def _parameter(triton_type, value):
    if triton_type.startswith("*"):
        return ctypes.c_uint64(value)
    return _PARAMETER_TYPES[triton_type](value)


def alignment_attrs(arg_names, signature: dict, args) -> dict:
    """Triton's divisibility hints for the arguments that have them (pointers and ints that are
    multiples of 16), keyed as ASTSource wants (by position among the kernel's `arg_names`): what
    Triton's own launcher specializes on."""
    attrs = {}
    for name, value in zip(signature, args):
        if isinstance(value, (int, np.integer)) and value % 16 == 0:
            attrs[(arg_names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


class CudaGraph:
    """A captured CUDA graph of one logical device: `replay()` launches it on the stream it was
    captured on. Its memory pool and the graph are released when it dies."""

    def __init__(self, backend, d, stream, device):
        self.backend, self.d, self.stream, self.device = backend, d, stream, device
        self.pool: dict = {}
        self.exec = None
        self.constants: list = []  # data uploaded while capturing, read by every replay

    def constant(self, array):
        """`array` uploaded now, into memory of its own that the graph keeps (a kernel's pointer
        table: the same for every replay, so it is copied once, not recorded)."""
        block = self.d.allocator.allocate(array.nbytes, self.device, self.stream, fresh=True)
        self.constants.append(block)
        out = np.asarray(block).view(array.dtype)[:array.size].reshape(array.shape)
        if out.size:
            host = np.ascontiguousarray(array)
            self.backend.driver("cuMemcpyHtoD", self.backend.pointer(out), host.ctypes.data, host.nbytes)
        return out

    def instantiate(self, graph):
        driver = self.backend.driver
        try:
            self.exec = driver("cuGraphInstantiate", graph, 0)
        except CudaError:
            driver("cuGraphDestroy", graph)
            raise
        finalizer = weakref.finalize(self, _destroy_graph, driver, self.d.allocator, graph, self.exec, self.pool)
        finalizer.atexit = False  # the driver may be gone by then; the process's end frees everything

    def replay(self):
        """Launch the graph on the device's current stream, as PyTorch does: after the work
        queued there before (the copies of this call's inputs), before what follows."""
        self.backend._activate(self.d)
        try:
            self.backend.driver("cuGraphLaunch", self.exec, self.backend.stream_of(self.device))
        except CudaError as exc:
            raise self.backend._fault(exc, self.d) from None


def _destroy_graph(driver, allocator, graph, executable, pool):
    driver("cuGraphExecDestroy", executable)
    driver("cuGraphDestroy", graph)
    allocator.close_pool(pool)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, virtual=None, capacity=None, driver=None):
        """`virtual`: present that many logical devices over the visible GPUs (None: one per GPU).
        `capacity`: bytes each logical device may hold (None: what the GPU has)."""
        if driver is None:
            from .devices import _driver_api
            from .interpret import interpreting

            if interpreting():
                raise RuntimeError("TRITON_INTERPRET=1 makes Triton interpret kernels, so they cannot run on a GPU: "
                                   "unset it, or set TRACEFUSE_CUDA=interpret to run CUDA tensors on the interpreter")
            driver = Driver(_driver_api())
        self.driver = driver
        driver("cuInit", 0)
        physical = driver("cuDeviceGetCount")
        if physical == 0:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        handles = [driver("cuDeviceGet", i) for i in range(physical)]
        contexts = [driver("cuDevicePrimaryCtxRetain", h) for h in handles]
        count = virtual or physical
        self.devices = [_Device(driver, i, i % physical, handles[i % physical], contexts[i % physical], capacity)
                        for i in range(count)]
        self.staging = _PinnedStaging(driver)
        self._current = threading.local()  # per thread: the context made current, the stream overrides
        self._compiled: dict = {}  # (kernel, signature, constexprs, attrs, arch) -> (cubin, Triton's metadata)
        self._loaded: dict = {}  # (compiled key, GPU ordinal) -> _Loaded
        self._compile_lock = threading.Lock()
        self._owners = {int(d.stream): d for d in self.devices}  # stream/event handle -> its logical device
        self._enable_peer_access(handles, contexts)

    def _enable_peer_access(self, handles, contexts):
        """Let every GPU read and write every other's memory where the hardware allows it."""
        for i, ctx in enumerate(contexts):
            for j, peer in enumerate(contexts):
                if i != j and self.driver("cuDeviceCanAccessPeer", handles[i], handles[j]):
                    self.driver("cuCtxSetCurrent", ctx)
                    try:
                        self.driver("cuCtxEnablePeerAccess", peer, 0)
                    except CudaError as exc:
                        if exc.code != "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED":
                            raise

    # --- contexts and streams ---

    def _enter(self, device) -> _Device:
        """The logical device, its context current on this thread (contexts are per thread)."""
        return self._activate(self.devices[device.index])

    def _activate(self, d: _Device) -> _Device:
        if getattr(self._current, "context", None) is not d.context:
            self.driver("cuCtxSetCurrent", d.context)
            self._current.context = d.context
        return d

    def stream_of(self, device):
        """The stream work on `device` is queued on from this thread (`tracefuse.cuda.stream`)."""
        overrides = getattr(self._current, "streams", None)
        d = self.devices[device.index]
        return overrides.get(device.index, d.stream) if overrides else d.stream

    @contextlib.contextmanager
    def using_stream(self, device, stream):
        overrides = getattr(self._current, "streams", None)
        if overrides is None:
            overrides = self._current.streams = {}
        previous = overrides.get(device.index)
        overrides[device.index] = stream
        try:
            yield
        finally:
            if previous is None:
                del overrides[device.index]
            else:
                overrides[device.index] = previous

    def new_stream(self, device, priority=0):
        self._enter(device)
        return self._own(self.driver("cuStreamCreateWithPriority", 1, priority), device)

    def destroy_stream(self, stream):
        self._owners.pop(int(stream), None)
        self.driver("cuStreamDestroy", stream)  # (the driver lets queued work finish first)

    def destroy_event(self, event):
        self._owners.pop(int(event), None)
        self.driver("cuEventDestroy", event)

    def new_event(self, device, enable_timing):
        self._enter(device)
        event = self.driver("cuEventCreate", 0 if enable_timing else 0x02)  # CU_EVENT_DISABLE_TIMING
        return self._own(event, device)

    def record_event(self, event, device, stream=None):
        self._enter(device)
        self.driver("cuEventRecord", event, stream if stream is not None else self.stream_of(device))

    def event_synchronize(self, event):
        self._checked_sync("cuEventSynchronize", event)

    def event_query(self, event) -> bool:
        err, = self.driver.api.cuEventQuery(event)
        if err == self.driver.api.CUresult.CUDA_ERROR_NOT_READY:
            return False
        if err != self.driver.success:
            raise self._fault(CudaError("cuEventQuery", getattr(err, "name", str(err))), self._owner_of(event))
        return True

    def _own(self, handle, device):
        """`handle` (a stream or event) belongs to `device`: its errors name that device's kernels."""
        self._owners[int(handle)] = self.devices[device.index]
        return handle

    def _owner_of(self, handle):
        return self._owners.get(int(handle), self.devices[0])

    def event_elapsed(self, start, end) -> float:
        return float(self.driver("cuEventElapsedTime", start, end))

    def stream_synchronize(self, stream):
        self._checked_sync("cuStreamSynchronize", stream)

    def stream_wait_event(self, stream, event):
        self.driver("cuStreamWaitEvent", stream, event, 0)

    def _order(self, later, earlier, earlier_device):
        """Work queued on stream `later` from now on runs after what `earlier` (a stream of
        `earlier_device`) holds now; the event is made in `earlier`'s context, as cuEventRecord requires."""
        if later is earlier:
            return
        self._activate(earlier_device)
        event = self.driver("cuEventCreate", 0x02)
        self.driver("cuEventRecord", event, earlier)
        self.driver("cuStreamWaitEvent", later, event, 0)
        self.driver("cuEventDestroy", event)  # released once the wait is done

    # --- memory ---

    def device_count(self):
        return len(self.devices)

    def empty(self, shape, np_dtype, device):
        d = self._enter(device)
        np_dtype = np.dtype(np_dtype)
        count = int(np.prod(shape, dtype=np.int64))
        block = d.allocator.allocate(count * np_dtype.itemsize, device, self.stream_of(device))
        return np.asarray(block).view(np_dtype)[:count].reshape(shape)

    def pointer(self, array):
        return array.__array_interface__["data"][0]

    def from_host(self, array, device):
        graph = self._capturing(device)
        if graph is not None:
            return graph.constant(array)
        out = self.empty(array.shape, array.dtype, device)
        if out.size:
            self.staging.to_device(array, self.pointer(out), self.stream_of(device))
        return out

    def to_host(self, array, device):
        self._no_capture(device, "a copy to host memory")
        self._enter(device)
        source = self._contiguous(array, device)
        if not source.size:
            return np.empty(array.shape, array.dtype)
        try:
            data = self.staging.to_host(self.pointer(source), source.nbytes, self.stream_of(device))
        except CudaError as exc:
            raise self._fault(exc, self.devices[device.index]) from None
        return data.view(array.dtype).reshape(array.shape)

    def copy_between(self, array, source, target):
        self._no_capture(source, "a copy between devices")
        self._no_capture(target, "a copy between devices")
        array = self._contiguous(array, source)
        out = self.empty(array.shape, array.dtype, target)
        if not out.size:
            return out
        src, dst = self.devices[source.index], self.devices[target.index]
        src_stream, dst_stream = self.stream_of(source), self.stream_of(target)
        self._order(src_stream, dst_stream, dst)  # the new block may still be in use by work queued before
        self._activate(src)
        if src.context is dst.context:
            self.driver("cuMemcpyDtoDAsync", self.pointer(out), self.pointer(array), out.nbytes, src_stream)
        else:
            self.driver("cuMemcpyPeerAsync", self.pointer(out), dst.context, self.pointer(array), src.context,
                        out.nbytes, src_stream)
        self._order(dst_stream, src_stream, src)  # the target's work reads the copy after it is done
        return out

    def _contiguous(self, array, device):
        if array.flags.c_contiguous:
            return array
        from ..codegen.triton import copy_into

        out = self.empty(array.shape, array.dtype, device)
        copy_into(device, out, array)
        return out

    # --- kernels ---

    def launch(self, kernel, grid, args, signature, constexprs, device, stream=None):
        d = self._enter(device)
        loaded = self._load(kernel, signature, args, constexprs, d)
        stream = stream if stream is not None else self.stream_of(device)
        programs = grid[0] * (grid[1] if len(grid) > 1 else 1) * (grid[2] if len(grid) > 2 else 1)
        keep = [_parameter(t, a) for t, a in zip(signature.values(), args)]
        scratch = []
        for size, align in loaded.scratch:
            if size:
                block = d.allocator.allocate(programs * loaded.num_ctas * size + align, device, stream)
                scratch.append(block)
                keep.append(ctypes.c_uint64(-(-block.address // align) * align))
            else:
                keep.append(ctypes.c_uint64(0))
        params = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(k) for k in keep])
        gx, gy, gz = (tuple(grid) + (1, 1))[:3]
        d.recent.append((kernel.name, kernel.path.name))
        call = "cuLaunchCooperativeKernel" if loaded.cooperative else "cuLaunchKernel"
        extra = () if loaded.cooperative else (0,)
        try:
            self.driver(call, loaded.function, gx * loaded.num_ctas, gy, gz, 32 * loaded.num_warps, 1, 1,
                        loaded.shared, stream, ctypes.addressof(params), *extra)
        except CudaError as exc:
            if self._capturing(device) is not None:
                raise CaptureError(f"{kernel.name} ({call}) cannot be recorded into a CUDA graph: {exc.code}") from exc
            raise self._fault(exc, d) from None
        del scratch  # back to the allocator, stream-ordered after this launch

    def _load(self, kernel, signature, args, constexprs, d) -> _Loaded:
        attrs = alignment_attrs(kernel.arg_names, signature, args)
        key = (kernel, tuple(signature.items()), tuple(sorted(constexprs.items())), tuple(sorted(attrs)), d.arch)
        loaded = self._loaded.get((key, d.ordinal))
        if loaded is None:
            with self._compile_lock:
                built = self._compiled.get(key)
                if built is None:
                    from ..codegen.triton.aot import load_or_compile

                    built = self._compiled[key] = load_or_compile(kernel, signature, constexprs, d.arch, attrs)
                loaded = self._loaded.get((key, d.ordinal))
                if loaded is None:
                    loaded = self._loaded[(key, d.ordinal)] = _Loaded(self.driver, *built, d)
        return loaded

    def _fault(self, exc, d):
        """A CudaError as the user should see it: a kernel fault names the kernels that ran."""
        if exc.code not in _KERNEL_FAULTS:
            return exc
        kernels = ", ".join(f"{name} ({file})" for name, file in d.recent) or "none recorded"
        return KernelLaunchError(f"{exc} on cuda:{d.index}; kernels launched since the last synchronization "
                                 f"(the last is the likely cause): {kernels}. The CUDA context is no longer usable.")

    def _checked_sync(self, call, handle):
        try:
            self.driver(call, handle)
        except CudaError as exc:
            raise self._fault(exc, self._owner_of(handle)) from None

    def synchronize(self, device=None):
        for d in self.devices if device is None else [self.devices[device.index]]:
            self._no_capture(d, "a synchronization")
            self._activate(d)
            try:
                self.driver("cuCtxSynchronize")
            except CudaError as exc:
                raise self._fault(exc, d) from None
            d.recent.clear()

    def resident_programs(self, device):
        """One program per multiprocessor, shared among the logical devices on that GPU (their
        replicas run at the same time)."""
        d = self.devices[device.index]
        sharing = sum(1 for other in self.devices if other.ordinal == d.ordinal)
        return max(1, d.multiprocessors // sharing)

    # --- CUDA graphs ---

    @contextlib.contextmanager
    def capture(self, device):
        d = self._enter(device)
        stream = self.stream_of(device)
        graph = CudaGraph(self, d, stream, device)
        capturing = self._current.__dict__.setdefault("capturing", {})
        capturing[device.index] = graph
        try:
            with d.allocator.private_pool(graph.pool):
                self.driver("cuStreamBeginCapture", stream, self.driver.api.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED)
                try:
                    yield graph
                except BaseException:
                    with contextlib.suppress(CudaError):
                        self.driver("cuGraphDestroy", self.driver("cuStreamEndCapture", stream))
                    raise
                try:
                    graph.instantiate(self.driver("cuStreamEndCapture", stream))
                except CudaError as exc:
                    raise CaptureError(f"the captured work cannot form a CUDA graph: {exc}") from exc
        except BaseException:
            d.allocator.close_pool(graph.pool)  # no graph will replay into it
            raise
        finally:
            del capturing[device.index]

    def _capturing(self, device):
        """The graph this thread is capturing on `device`, if any."""
        return getattr(self._current, "capturing", {}).get(device.index)

    def _no_capture(self, device, what):
        if self._capturing(device) is not None:
            raise CaptureError(f"{what} cannot be recorded into a CUDA graph (it waits for the device)")

    # --- statistics ---

    def memory_allocated(self, device):
        return self.devices[device.index].allocator.allocated

    def max_memory_allocated(self, device):
        return self.devices[device.index].allocator.peak

    def memory_reserved(self, device):
        return self.devices[device.index].allocator.reserved

    def reset_peak_memory_stats(self, device):
        allocator = self.devices[device.index].allocator
        allocator.peak = allocator.allocated

    def empty_cache(self):
        for d in self.devices:
            self._activate(d)
            d.allocator.release_cached()

    def describe(self) -> str:
        gpus = sorted({(d.ordinal, d.arch) for d in self.devices})
        return (f"{len(self.devices)} logical device(s) on {len(gpus)} GPU(s) "
                f"({', '.join(f'GPU {o} sm_{a}' for o, a in gpus)}); "
                f"{format_bytes(sum(d.allocator.reserved for d in self.devices))} reserved")
