"""Devices. The CPU runs NumPy directly; `cuda:N` devices belong to a backend chosen once per
process by `TRACEFUSE_CUDA`:

  (unset) / cuda  the GPUs cuda-python sees, one device each (the CUDA backend; none without a GPU)
  virtual:N       N logical devices over the visible GPUs (one GPU can stand for several)
  interpret[:N]   Triton's interpreter on host memory, N logical devices (default 2)
"""
from __future__ import annotations

import os
import threading

_backend = None
_current = threading.local()  # the thread's current CUDA device index (torch.cuda.set_device)
_KINDS = ("cuda", "virtual", "interpret")


def _parse(spec: str):
    kind, _, count = spec.partition(":")
    bad_count = (count and not count.isdigit()) or count == "0" or (kind == "virtual" and not count) or \
        (kind == "cuda" and count)
    if kind not in _KINDS or bad_count:
        raise RuntimeError(f"TRACEFUSE_CUDA={spec!r} is not understood; use 'cuda', 'virtual:N' or 'interpret[:N]' "
                           "(N >= 1)")
    return kind, int(count or 2)


def active_backend():
    """The process's CUDA backend, or None when there is none (no GPU, no interpret mode)."""
    global _backend
    if _backend is None:
        kind, count = _parse(os.environ.get("TRACEFUSE_CUDA") or "cuda")
        if kind == "interpret":
            from .interpret import InterpretBackend

            _backend = InterpretBackend(count)
        elif cuda_device_count() > 0:
            from .cuda import CudaBackend

            _backend = CudaBackend(virtual=count if kind == "virtual" else None)
    return _backend


def device_count() -> int:
    """CUDA devices of the active backend (0 without one)."""
    found = active_backend()
    return found.device_count() if found is not None else 0


def current_device() -> int:
    return getattr(_current, "index", 0)


def set_device(index: int) -> None:
    if not 0 <= index < device_count():
        raise RuntimeError("CUDA error: invalid device ordinal")
    _current.index = index


def backend(device):
    """The backend that owns the non-CPU `device`; a clear RuntimeError when there is none or the
    index is out of range."""
    found = active_backend()
    if found is None:
        raise RuntimeError(
            f"Cannot use device '{device}': no CUDA backend is available (the CUDA driver reports no GPU). "
            "Use the 'cpu' device, or set TRACEFUSE_CUDA=interpret to run CUDA tensors on Triton's interpreter."
        )
    if not 0 <= device.index < found.device_count():
        raise RuntimeError("CUDA error: invalid device ordinal")
    return found


def transfer(array, source, target):
    """A copy of `array` (on device `source`) on device `target`."""
    if target.type == "cpu":
        return backend(source).to_host(array, source) if source.type != "cpu" else array.copy()
    if source.type == "cpu":
        return backend(target).from_host(array, target)
    return backend(target).copy_between(array, source, target)


def _driver_api():
    try:
        from cuda.bindings import driver
    except ImportError:
        from cuda import cuda as driver  # cuda-python < 12.6
    return driver


def cuda_gpus() -> tuple[int, list[str]]:
    """(CUDA driver version, names of the visible GPUs), asked through cuda-python's driver API.
    Raises ImportError without cuda-python and RuntimeError (naming the call) without a driver."""
    driver = _driver_api()

    def check(call, *args):
        try:
            err, *values = getattr(driver, call)(*args)
        except Exception as exc:  # a missing libcuda surfaces as various loader errors
            raise RuntimeError(f"{call}: {type(exc).__name__}: {exc}") from exc
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{call}: {getattr(err, 'name', err)}")
        return values[0] if len(values) == 1 else values

    check("cuInit", 0)
    version = check("cuDriverGetVersion")
    names = []
    for ordinal in range(check("cuDeviceGetCount")):
        device = check("cuDeviceGet", ordinal)
        names.append(bytes(check("cuDeviceGetName", 256, device)).split(b"\0", 1)[0].decode())
    return version, names


_gpu_count = None


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports; 0 without a driver or without cuda-python (asked once)."""
    global _gpu_count
    if _gpu_count is None:
        try:
            _gpu_count = len(cuda_gpus()[1])
        except (ImportError, RuntimeError):
            _gpu_count = 0
    return _gpu_count
