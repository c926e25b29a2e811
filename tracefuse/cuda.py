"""`tracefuse.cuda`, as torch.cuda: devices, streams, events and memory statistics of the
active CUDA backend (runtime/devices.py: the interpret backend with TRACEFUSE_CUDA=interpret[:N])."""
from __future__ import annotations

from .codegen.numpy import random as _random
from .device import as_device
from .runtime import devices as _devices
from .runtime.backend import Event, OutOfMemoryError, Stream

__all__ = ["Event", "OutOfMemoryError", "Stream", "current_device", "device_count", "empty_cache", "is_available", "manual_seed",
           "manual_seed_all", "max_memory_allocated", "memory_allocated", "reset_peak_memory_stats", "set_device",
           "synchronize"]


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
    d, backend = _device(device)
    backend.synchronize(d)


def memory_allocated(device=None) -> int:
    d, backend = _device(device)
    return backend.memory_allocated(d)


def max_memory_allocated(device=None) -> int:
    d, backend = _device(device)
    return backend.max_memory_allocated(d)


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
