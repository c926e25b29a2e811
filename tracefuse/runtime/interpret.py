"""The interpret backend: `cuda:0..N-1` as logical devices in host memory, kernels run by
Triton's interpreter (`TRACEFUSE_CUDA=interpret[:N]`, default 2 devices).

Device memory is NumPy arrays owned by this backend; kernels receive `HostPointer`s, the small
adapter Triton's interpreter needs to read them (`data_ptr()`, `dtype` and the storage calls
its argument staging makes). Work runs when it is queued, so streams and events only keep their
order. Triton's interpreter is a process-wide mode chosen when Triton is imported, which is why
this backend turns it on before Triton's first import and refuses to start after a compiling
import.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref

import numpy as np

from .backend import Backend, CaptureError, out_of_memory


class _HostStorage:
    def __init__(self, address):
        self.address = address

    def data_ptr(self):
        return self.address

    def cpu(self):
        return self

    def copy_(self, other):
        pass  # the interpreter wrote straight into this memory


class HostPointer:
    """A kernel argument pointing at the first element of a NumPy array (Triton's interpreter
    treats any object with `data_ptr()` and `dtype` as a pointer of that element type)."""

    def __init__(self, array):
        self.address = array.__array_interface__["data"][0]
        self.dtype = array.dtype

    def data_ptr(self):
        return self.address

    def untyped_storage(self):
        return _HostStorage(self.address)

    def storage_offset(self):
        return 0

    def size(self):
        return ()

    def stride(self):
        return ()

    def new_empty(self, *size, **kwargs):
        staged = HostPointer.__new__(HostPointer)
        staged.address, staged.dtype = self.address, self.dtype
        return staged

    def set_(self, storage, offset, size, stride):
        self.address = storage.data_ptr() + offset * self.dtype.itemsize
        return self


def interpreting() -> bool:
    """Whether Triton interprets kernels in this process (TRITON_INTERPRET, read at its import)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def enable_triton_interpreter():
    """Make Triton interpret kernels; possible only before Triton compiles anything in-process."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "TRACEFUSE_CUDA=interpret needs Triton's interpreter, but Triton was imported without "
            "it: set TRITON_INTERPRET=1 (or TRACEFUSE_CUDA) before importing triton"
        )
    os.environ["TRITON_INTERPRET"] = "1"


def _squeeze_loop_bounds():
    """Triton 3.6's interpreter turns a runtime loop bound into a Python int with `int(array)` on a
    one-element array, which NumPy >= 2.4 refuses; newer Triton squeezes the array first. Do the
    same on every version (idempotent)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "squeezes_loop_bounds", False):
        return

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch.squeezes_loop_bounds = True
    interpreter._patch_lang_tensor = patch


# Triton's interpreter keeps process-wide state while a kernel runs (it patches triton.language and
# holds the program id in one builder), so kernels from different threads (DataParallel's replicas)
# must run one at a time.
_LAUNCH_LOCK = threading.Lock()


class _HostEvent:
    """An event of the interpret backend: work runs as it is queued, so recording is reading the clock."""

    def __init__(self, enable_timing):
        self.enable_timing, self.time = enable_timing, None


class _Graph:
    """Launches recorded by `capture`, with the memory they use (kept alive while the graph lives)."""

    def __init__(self, device):
        self.device, self.launches, self.memory = device, [], []

    def replay(self):
        for kernel, grid, args, constexprs in self.launches:
            _run(kernel, grid, args, constexprs)


def _run(kernel, grid, args, constexprs):
    with _LAUNCH_LOCK, np.errstate(all="ignore"):  # masked-off lanes compute on whatever memory holds
        kernel.fn[grid](*args, **constexprs)


class InterpretBackend(Backend):
    name = "interpret"

    def __init__(self, devices=2, capacity=None):
        """`capacity`: bytes each logical device holds (None: as much as the host gives)."""
        enable_triton_interpreter()
        _squeeze_loop_bounds()
        self._count, self.capacity = devices, capacity
        self._accounting = threading.RLock()  # (an RLock: a finalizer may run inside `empty`)
        self._allocated = [0] * devices
        self._peak = [0] * devices
        self._capturing = threading.local()  # device index -> the _Graph being recorded on this thread

    def device_count(self):
        return self._count

    def empty(self, shape, np_dtype, device):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        with self._accounting:  # DataParallel's replicas allocate from their own threads
            allocated = self._allocated[device.index]
            if self.capacity is not None and allocated + nbytes > self.capacity:
                raise out_of_memory(device, nbytes, self.capacity, allocated)
            try:
                array = np.empty(shape, np_dtype)
            except MemoryError:
                raise out_of_memory(device, nbytes, self.capacity, allocated) from None
            self._allocated[device.index] += array.nbytes
            self._peak[device.index] = max(self._peak[device.index], self._allocated[device.index])
        weakref.finalize(array, self._release, device.index, array.nbytes)
        graph = self._graph(device)
        if graph is not None:
            graph.memory.append(array)
        return array

    def _release(self, index, nbytes):
        with self._accounting:
            self._allocated[index] -= nbytes

    def _graph(self, device):
        return getattr(self._capturing, "graphs", {}).get(device.index)

    def _no_capture(self, device, what):
        if self._graph(device) is not None:
            raise CaptureError(f"{what} cannot be recorded into a CUDA graph (it waits for the device)")

    def from_host(self, array, device):
        # While capturing, an upload (a kernel's pointer table) happens at once, into memory the
        # graph keeps: every replay reads the same data.
        out = self.empty(array.shape, array.dtype, device)
        np.copyto(out, array)
        return out

    def to_host(self, array, device):
        self._no_capture(device, "a copy to host memory")
        return np.array(array, copy=True)

    def copy_between(self, array, source, target):
        self._no_capture(source, "a copy between devices")
        self._no_capture(target, "a copy between devices")
        return self.from_host(array, target)

    def pointer(self, array):
        # A pointer's element type is the array's; a bool array is read as Triton's int1.
        return HostPointer(array)

    def launch(self, kernel, grid, args, signature, constexprs, device, stream=None):
        graph = self._graph(device)
        if graph is not None:
            graph.launches.append((kernel, grid, args, constexprs))
        else:
            _run(kernel, grid, args, constexprs)

    @contextlib.contextmanager
    def capture(self, device):
        graphs = self._capturing.__dict__.setdefault("graphs", {})
        graph = graphs[device.index] = _Graph(device)
        try:
            yield graph
        finally:
            del graphs[device.index]

    def synchronize(self, device=None):
        capturing = getattr(self._capturing, "graphs", {})
        if capturing and (device is None or device.index in capturing):
            raise CaptureError("a synchronization cannot be recorded into a CUDA graph (it waits for the device)")

    def resident_programs(self, device):
        return 1  # the interpreter runs a launch's programs one after another

    # Streams order work by construction here: every handle is the device's one queue.
    def new_stream(self, device, priority=0):
        return None

    def stream_of(self, device):
        return None

    @contextlib.contextmanager
    def using_stream(self, device, stream):
        yield

    def stream_synchronize(self, stream):
        pass

    def destroy_stream(self, stream):
        pass

    def destroy_event(self, event):
        pass

    def stream_wait_event(self, stream, event):
        pass

    def new_event(self, device, enable_timing):
        return _HostEvent(enable_timing)

    def record_event(self, event, device, stream=None):
        event.time = time.perf_counter()

    def event_synchronize(self, event):
        pass

    def event_query(self, event):
        return True

    def event_elapsed(self, start, end):
        return (end.time - start.time) * 1000.0

    def memory_allocated(self, device):
        return self._allocated[device.index]

    def max_memory_allocated(self, device):
        return self._peak[device.index]

    def memory_reserved(self, device):
        return self._allocated[device.index]  # nothing is cached

    def reset_peak_memory_stats(self, device):
        self._peak[device.index] = self._allocated[device.index]

    def empty_cache(self):
        pass  # host memory goes back to NumPy as soon as an array dies: nothing is cached
