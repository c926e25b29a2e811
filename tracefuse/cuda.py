"""`tracefuse.cuda`, as torch.cuda: devices, streams, events and memory statistics of the
active CUDA backend (runtime/devices.py: the GPUs through cuda-python, `TRACEFUSE_CUDA=virtual:N`
logical devices on them, or Triton's interpreter with `TRACEFUSE_CUDA=interpret[:N]`)."""
from __future__ import annotations

import contextlib
import weakref

from .codegen.numpy import random as _random
from .device import as_device
from .runtime import devices as _devices
from .runtime.backend import OutOfMemoryError

__all__ = ["Event", "OutOfMemoryError", "Stream", "current_device", "current_stream", "device_count", "empty_cache",
           "is_available", "manual_seed", "manual_seed_all", "max_memory_allocated", "memory_allocated",
           "memory_reserved", "reset_peak_memory_stats", "set_device", "stream", "synchronize"]


def is_available() -> bool:
    return _devices.device_count() > 0


def device_count() -> int:
    return _devices.device_count()


def current_device() -> int:
    return _devices.current_device()


def set_device(device) -> None:
    _devices.set_device(device if isinstance(device, int) else as_device(device).index)


def _device(device):
    d = as_device("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)
    return d, _devices.backend(d)


def synchronize(device=None) -> None:
    """Wait for all work queued on `device` (default: the current device), as torch.cuda does."""
    d, backend = _device(device)
    backend.synchronize(d)


class Stream:
    """An in-order queue of work on one device (torch.cuda.Stream)."""

    def __init__(self, device=None, priority=0, _handle=None):
        self.device, self._backend = _device(device)
        self.priority = priority
        if _handle is not None:  # a device's own stream (current_stream): not ours to release
            self.handle = _handle
        else:
            self.handle = self._backend.new_stream(self.device, priority)
            weakref.finalize(self, self._backend.destroy_stream, self.handle).atexit = False

    def synchronize(self):
        self._backend.stream_synchronize(self.handle)

    def wait_event(self, event):
        if event.handle is not None:
            self._backend.stream_wait_event(self.handle, event.handle)

    def wait_stream(self, stream):
        self.wait_event(stream.record_event())

    def record_event(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def __eq__(self, other):
        return isinstance(other, Stream) and other.device == self.device and other.handle is self.handle

    def __hash__(self):
        return hash((self.device, id(self.handle)))

    def __repr__(self):
        return f"<tracefuse.cuda.Stream device={self.device}>"


def current_stream(device=None) -> Stream:
    """The stream this thread queues `device`'s work on."""
    d, backend = _device(device)
    return Stream(d, _handle=backend.stream_of(d))


@contextlib.contextmanager
def stream(s):
    """Queue this thread's work on stream `s` inside the block, with `s.device` the current device
    (torch.cuda.stream)."""
    if s is None:
        yield
        return
    previous = _devices.current_device()
    _devices.set_device(s.device.index)
    try:
        with s._backend.using_stream(s.device, s.handle):
            yield
    finally:
        _devices.set_device(previous)


class Event:
    """A marker in a stream's work: wait for it, or time the work between two (torch.cuda.Event)."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        self.enable_timing = enable_timing
        self.handle, self._backend = None, None  # created on the first record, on that stream's device

    def record(self, stream=None):
        stream = stream or current_stream()
        if self.handle is None:
            self._backend = stream._backend
            self.handle = self._backend.new_event(stream.device, self.enable_timing)
            weakref.finalize(self, self._backend.destroy_event, self.handle).atexit = False
        self._backend.record_event(self.handle, stream.device, stream.handle)

    def query(self) -> bool:
        return self.handle is None or self._backend.event_query(self.handle)

    def synchronize(self):
        if self.handle is not None:
            self._backend.event_synchronize(self.handle)

    def wait(self, stream=None):
        (stream or current_stream()).wait_event(self)

    def elapsed_time(self, end) -> float:
        """Milliseconds from this event to `end` (both recorded; waits for `end`)."""
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.handle is None or end.handle is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        end.synchronize()
        return self._backend.event_elapsed(self.handle, end.handle)


def memory_allocated(device=None) -> int:
    d, backend = _device(device)
    return backend.memory_allocated(d)


def max_memory_allocated(device=None) -> int:
    d, backend = _device(device)
    return backend.max_memory_allocated(d)


def memory_reserved(device=None) -> int:
    """Bytes held from the driver, cached free blocks included (what `empty_cache` gives back)."""
    d, backend = _device(device)
    return backend.memory_reserved(d)


def reset_peak_memory_stats(device=None) -> None:
    d, backend = _device(device)
    backend.reset_peak_memory_stats(d)


def empty_cache() -> None:
    if is_available():
        _devices.active_backend().empty_cache()


def manual_seed(seed: int) -> None:
    """Seed the random numbers of CUDA devices. tracefuse draws every device's random numbers from
    its one generator, so this is `tracefuse.manual_seed`."""
    _random.manual_seed(seed)


manual_seed_all = manual_seed
