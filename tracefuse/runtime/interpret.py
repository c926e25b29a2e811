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

import os
import sys
import threading
import weakref

import numpy as np

from .backend import Backend, out_of_memory


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
        return array

    def _release(self, index, nbytes):
        with self._accounting:
            self._allocated[index] -= nbytes

    def from_host(self, array, device):
        out = self.empty(array.shape, array.dtype, device)
        np.copyto(out, array)
        return out

    def to_host(self, array):
        return np.array(array, copy=True)

    def copy_between(self, array, device):
        return self.from_host(array, device)

    def pointer(self, array):
        # A pointer's element type is the array's; a bool array is read as Triton's int1.
        return HostPointer(array)

    def launch(self, kernel, grid, args, constexprs, device, stream=None):
        with _LAUNCH_LOCK, np.errstate(all="ignore"):  # masked-off lanes compute on whatever memory holds
            kernel.fn[grid](*args, **constexprs)

    def synchronize(self, device=None):
        pass

    def memory_allocated(self, device):
        return self._allocated[device.index]

    def max_memory_allocated(self, device):
        return self._peak[device.index]

    def reset_peak_memory_stats(self, device):
        self._peak[device.index] = self._allocated[device.index]

    def empty_cache(self):
        pass  # host memory goes back to NumPy as soon as an array dies: nothing is cached
