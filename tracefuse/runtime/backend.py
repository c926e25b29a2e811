"""The device backend interface: what the rest of tracefuse asks of a GPU runtime.

A backend owns the memory of its devices (`empty`, copies to, from and between devices),
launches compiled kernels on streams and synchronizes. Two implement it: the interpret
backend (runtime/interpret.py: Triton's interpreter on host memory, so CI runs the generated
kernels with no GPU) and the CUDA backend (cuda-python on a real GPU).

Device arrays are array objects with NumPy's metadata (`shape`, `strides` in bytes, `dtype`,
views by slicing); codegen only ever reads that metadata and a device pointer
(`backend.pointer(array)`), never the values, so the same emitters serve both backends.
"""
from __future__ import annotations

import abc
import time


class OutOfMemoryError(RuntimeError):
    """A device allocation did not fit (torch.cuda.OutOfMemoryError)."""


class KernelLaunchError(RuntimeError):
    """A kernel failed on the device; the message names the kernel and what it computes."""


def format_bytes(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def out_of_memory(device, requested, capacity, allocated) -> OutOfMemoryError:
    """PyTorch's message, with the size asked for and what is allocated."""
    free = "an unknown amount" if capacity is None else format_bytes(max(capacity - allocated, 0))
    total = "unknown" if capacity is None else format_bytes(capacity)
    return OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {format_bytes(requested)}. GPU {device.index} has a total capacity "
        f"of {total} of which {free} is free. Of the allocated memory {format_bytes(allocated)} is allocated by "
        "tracefuse.")


class Backend(abc.ABC):
    """One runtime for `cuda:0..device_count-1`."""

    name: str

    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def empty(self, shape, np_dtype, device):
        """An uninitialised C-contiguous device array on `device`."""

    @abc.abstractmethod
    def from_host(self, array, device):
        """A device copy of the host NumPy array `array` on `device`."""

    @abc.abstractmethod
    def to_host(self, array):
        """A host NumPy copy of the device array `array` (synchronizes its stream)."""

    @abc.abstractmethod
    def copy_between(self, array, device):
        """A copy of device array `array` on another device (peer copy)."""

    @abc.abstractmethod
    def pointer(self, array):
        """The kernel argument that points at `array`'s first element."""

    @abc.abstractmethod
    def launch(self, kernel, grid, args, constexprs, device, stream=None):
        """Launch `kernel` (codegen/triton Kernel) over `grid` with `args` already converted by
        `pointer`, in order, on `stream` (default: the device's current stream)."""

    @abc.abstractmethod
    def synchronize(self, device=None): ...

    @abc.abstractmethod
    def memory_allocated(self, device) -> int:
        """Bytes of live device arrays on `device`."""

    @abc.abstractmethod
    def max_memory_allocated(self, device) -> int:
        """The peak of `memory_allocated` since the start or the last reset."""

    @abc.abstractmethod
    def reset_peak_memory_stats(self, device) -> None: ...

    @abc.abstractmethod
    def empty_cache(self) -> None:
        """Return cached, unused device memory to the driver."""


class Event:
    """A point in a stream's work; `elapsed_time` in milliseconds, as torch.cuda.Event."""

    def __init__(self, enable_timing=False):
        self.enable_timing = enable_timing
        self._time = None

    def record(self, stream=None):
        (stream or Stream()).synchronize()
        self._time = time.perf_counter()

    def query(self) -> bool:
        return self._time is not None

    def synchronize(self):
        if self._time is None:
            raise RuntimeError("Event.synchronize() called before the event was recorded")

    def elapsed_time(self, end) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self._time is None or end._time is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end._time - self._time) * 1000.0


class Stream:
    """An in-order queue of device work. The interpret backend runs work as it is queued, so its
    streams only order by construction; the CUDA backend maps them to CUstreams."""

    def __init__(self, device=None, priority=0):
        self.device = device
        self.priority = priority

    def synchronize(self):
        pass

    def wait_event(self, event):
        event.synchronize()

    def wait_stream(self, stream):
        stream.synchronize()

    def record_event(self, event=None):
        event = event or Event()
        event.record(self)
        return event
