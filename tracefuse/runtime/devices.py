"""Device backends. The CPU runs NumPy directly; CUDA devices need a backend (cuda-python on a
real GPU, or Triton's interpreter on host memory), which later stages register here."""
from __future__ import annotations

_BACKENDS: dict[str, object] = {}


def register_backend(device_type: str, backend) -> None:
    _BACKENDS[device_type] = backend


def backend(device):
    """The backend that owns `device`; a clear RuntimeError when none is available."""
    found = _BACKENDS.get(device.type)
    if found is None:
        raise RuntimeError(
            f"Cannot use device '{device}': no CUDA backend is available in this build of tracefuse "
            "(no GPU runtime has been initialised). Use the 'cpu' device."
        )
    return found


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports; 0 without a driver or without cuda-python."""
    try:
        from cuda.bindings import driver
    except ImportError:
        return 0
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return 0
        err, count = driver.cuDeviceGetCount()
        return count if err == driver.CUresult.CUDA_SUCCESS else 0
    except Exception:  # a missing libcuda surfaces as various loader errors
        return 0
