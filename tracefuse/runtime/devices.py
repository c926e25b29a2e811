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


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports; 0 without a driver or without cuda-python."""
    try:
        return len(cuda_gpus()[1])
    except (ImportError, RuntimeError):
        return 0
