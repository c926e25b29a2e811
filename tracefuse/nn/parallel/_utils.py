"""Device helpers shared by the data-parallel primitives (torch._utils / torch.cuda._utils)."""
from __future__ import annotations

import contextlib

from ...device import device as _device
from ...runtime import devices

__all__ = ["available_device_count", "cuda_device", "device_guard", "get_device", "get_device_index"]


def available_device_count() -> int:
    """CUDA devices tracefuse can use: the active backend's (the interpret backend's logical
    devices, or the CUDA backend's GPUs); without a backend, the GPUs the driver reports."""
    count = getattr(devices, "device_count", None)
    found = count() if count is not None else 0
    return found or devices.cuda_device_count()


def current_device() -> int:
    current = getattr(devices, "current_device", None)
    return current() if current is not None else 0


def get_device_index(device, optional: bool = False, allow_cpu: bool = False) -> int:
    """The CUDA ordinal of an int, a device or a device string, as torch's `_get_device_index`:
    'cuda:1' -> 1; a CPU device -> -1 where `allow_cpu`; no index (None, 'cuda') -> the current
    device where `optional`."""
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = _device(device)
    index = None
    if isinstance(device, _device):
        if allow_cpu:
            if device.type not in ("cuda", "cpu"):
                raise ValueError(f"Expected a cuda or cpu device, but got: {device}")
        elif device.type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {device}")
        index = -1 if device.type == "cpu" else device.index
    if index is None:
        if optional:
            return current_device()
        raise ValueError(f"Expected a tracefuse.device with a specified index or an integer, but got:{device}")
    return index


def cuda_device(index: int) -> _device:
    return _device("cuda", index)


def get_device(tensor) -> int:
    """Tensor.get_device(): the CUDA ordinal, -1 on the CPU."""
    return tensor.device.index if tensor.device.type == "cuda" else -1


@contextlib.contextmanager
def device_guard(index):
    """Make `index` the calling thread's current CUDA device inside the block (torch.cuda.device)."""
    set_device = getattr(devices, "set_device", None)
    if index is None or index < 0 or set_device is None:
        yield
        return
    previous = current_device()
    set_device(index)
    try:
        yield
    finally:
        set_device(previous)
