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


class CaptureError(RuntimeError):
    """Work that cannot be recorded into a CUDA graph (a host copy, a synchronization) was asked
    for while a graph was being captured."""


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
    def to_host(self, array, device):
        """A host NumPy copy of the array `array` of `device` (waits for the work queued before)."""

    @abc.abstractmethod
    def copy_between(self, array, source, target):
        """A copy on device `target` of the array `array` of device `source`."""

    @abc.abstractmethod
    def pointer(self, array):
        """The kernel argument that points at `array`'s first element."""

    def address(self, array) -> int:
        """The device address of `array`'s first element (what pointer tables hold)."""
        return array.__array_interface__["data"][0]

    @abc.abstractmethod
    def launch(self, kernel, grid, args, signature, constexprs, device, stream=None):
        """Launch `kernel` (codegen/triton Kernel) over `grid` with `args` already converted by
        `pointer`, in order, typed by `signature` (argument name -> Triton type), on `stream`
        (default: the device's current stream)."""

    @abc.abstractmethod
    def synchronize(self, device=None): ...

    @abc.abstractmethod
    def resident_programs(self, device) -> int:
        """How many programs of one launch can run at once on `device` and wait for each other
        (a kernel may spread a scan over that many); 1 where programs run one after another."""

    # --- streams and events (tracefuse.cuda.Stream / Event hold the handles these return) ---

    @abc.abstractmethod
    def new_stream(self, device, priority=0): ...

    @abc.abstractmethod
    def stream_of(self, device):
        """The stream this thread queues `device`'s work on (see `using_stream`)."""

    @abc.abstractmethod
    def using_stream(self, device, stream):
        """A context manager: this thread queues `device`'s work on `stream` inside it."""

    @abc.abstractmethod
    def stream_synchronize(self, stream): ...

    @abc.abstractmethod
    def destroy_stream(self, stream):
        """Release a stream made by `new_stream` (its queued work still runs)."""

    @abc.abstractmethod
    def destroy_event(self, event): ...

    @abc.abstractmethod
    def stream_wait_event(self, stream, event): ...

    @abc.abstractmethod
    def new_event(self, device, enable_timing): ...

    @abc.abstractmethod
    def record_event(self, event, device, stream=None): ...

    @abc.abstractmethod
    def event_synchronize(self, event): ...

    @abc.abstractmethod
    def event_query(self, event) -> bool: ...

    @abc.abstractmethod
    def event_elapsed(self, start, end) -> float:
        """Milliseconds between two recorded events."""

    # --- CUDA graphs ---

    @abc.abstractmethod
    def capture(self, device):
        """A context manager recording the work queued on `device` inside it into a graph instead of
        running it; yields the graph, whose `replay()` runs that work again on the same memory.
        Memory allocated inside belongs to the graph while it lives. Host copies and
        synchronizations inside raise CaptureError."""

    # --- memory statistics ---

    @abc.abstractmethod
    def memory_allocated(self, device) -> int:
        """Bytes of live device arrays on `device`."""

    @abc.abstractmethod
    def max_memory_allocated(self, device) -> int:
        """The peak of `memory_allocated` since the start or the last reset."""

    @abc.abstractmethod
    def memory_reserved(self, device) -> int:
        """Bytes held from the driver on `device`, cached free blocks included."""

    @abc.abstractmethod
    def reset_peak_memory_stats(self, device) -> None: ...

    @abc.abstractmethod
    def empty_cache(self) -> None:
        """Return cached, unused device memory to the driver."""
