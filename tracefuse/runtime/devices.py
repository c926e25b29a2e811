"""Devices. The CPU runs NumPy directly. CUDA devices need the runtime's CUDA backend
(cuda-python on a real GPU, or Triton's interpreter on host memory), which this version of
tracefuse does not have yet: every request for one ends in `backend`'s clear error."""
from __future__ import annotations


def backend(device):
    """The backend that owns a non-CPU `device`: none yet, so a RuntimeError saying so."""
    raise RuntimeError(
        f"Cannot use device '{device}': no CUDA backend is available in this build of tracefuse "
        "(no GPU runtime has been initialised). Use the 'cpu' device."
    )


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
