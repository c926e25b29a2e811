"""Shared test helpers: PyTorch on the CPU is the oracle (a test-only dependency)."""
from __future__ import annotations

import os
import tempfile

from tracefuse.runtime import devices as _probe  # noqa: E402  (imports no Triton)

# The device tests (marked `gpu`) run on a real GPU when one is visible (the CUDA backend, with two
# logical devices on it), else on the interpret backend: generated kernels under Triton's
# interpreter, a process-wide mode Triton reads at import (ahead-of-time GPU builds then run in
# subprocesses without it). TRACEFUSE_CUDA=interpret forces the interpreter. Kernels go to a
# private cache.
ON_GPU = not os.environ.get("TRACEFUSE_CUDA", "").startswith("interpret") and _probe.cuda_device_count() > 0
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRACEFUSE_CACHE_DIR", tempfile.mkdtemp(prefix="tracefuse-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tracefuse  # noqa: E402
from tracefuse.runtime import devices  # noqa: E402

torch.set_num_threads(1)

_TO_TORCH = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "bool": torch.bool,
}


def torch_dtype(d):
    return _TO_TORCH[d.name]


def tf_dtype(d):
    return getattr(tracefuse, str(d).replace("torch.", ""))


def to_torch(t, requires_grad=None):
    """A torch copy of a tracefuse tensor (leaf; requires_grad copied unless given)."""
    data = t.detach().numpy()
    if t.dtype is tracefuse.bfloat16:
        out = torch.from_numpy(data.astype(np.float32).copy()).to(torch.bfloat16)
    else:
        out = torch.from_numpy(np.array(data, copy=True))
    rg = t.requires_grad if requires_grad is None else requires_grad
    return out.requires_grad_(rg) if rg else out


def to_numpy(t):
    """Values of a tracefuse or torch tensor as a float64/int/bool NumPy array."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    data = t.detach().numpy()
    return data.astype(np.float32) if t.dtype in (tracefuse.bfloat16, tracefuse.float16) else data


def assert_same(ours, theirs, rtol=None, atol=None, check_dtype=True):
    """Compare a tracefuse result with torch's: shape, dtype and values (torch.testing defaults)."""
    if isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same(a, b, rtol, atol, check_dtype)
        return
    if theirs is None:
        assert ours is None
        return
    assert ours is not None, "tracefuse returned None where torch returned a tensor"
    assert tuple(ours.shape) == tuple(theirs.shape), f"shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    if check_dtype:
        assert torch_dtype(ours.dtype) == theirs.dtype, f"dtype {ours.dtype} != {theirs.dtype}"
    expected = theirs.detach()
    actual = torch.from_numpy(np.array(to_numpy(ours), copy=True)).to(expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, check_dtype=False)


def raised(fn):
    """(exception type name, message with torch's names spelled tracefuse) of what `fn()` raises."""
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value).__name__, str(info.value).replace("torch", "tracefuse")


def same_error(fn):
    """`fn(lib)` raises the same exception type and message with torch and with tracefuse."""
    ours, theirs = raised(lambda: fn(tracefuse)), raised(lambda: fn(torch))
    assert ours == theirs
    return ours


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """Tests on CUDA devices are `gpu` tests (`pytest -m gpu` runs them); those that need a real
    GPU (marked `gpu_only`) are skipped, with the reason, where there is none."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible; the interpret backend cannot stand in)")
    for item in items:
        if "interpret" in getattr(item, "fixturenames", ()) or "gpu_only" in item.keywords:
            item.add_marker(pytest.mark.gpu)
        if "gpu_only" in item.keywords and not ON_GPU:
            item.add_marker(skip)


def device_backend(count=2, capacity=None):
    """A backend with `count` CUDA devices: logical devices on the GPU when there is one (one
    backend per configuration for the whole session, however conftest was imported: contexts and
    streams are costly), else interpret ones."""
    if not ON_GPU:
        from tracefuse.runtime.interpret import InterpretBackend

        return InterpretBackend(count, capacity=capacity)
    made = devices.__dict__.setdefault("_test_gpu_backends", {})
    if (count, capacity) not in made:
        from tracefuse.runtime.cuda import CudaBackend

        made[count, capacity] = CudaBackend(virtual=count, capacity=capacity)
    return made[count, capacity]


@pytest.fixture
def interpret(monkeypatch):
    """`cuda:0` and `cuda:1`: two logical devices on the GPU, or on the interpret backend."""
    monkeypatch.setattr(devices, "_backend", device_backend(2))
    return "cuda:0"


@pytest.fixture(params=[2, 4])
def n_devices(request, monkeypatch):
    """2, then 4 logical CUDA devices."""
    monkeypatch.setattr(devices, "_backend", device_backend(request.param))
    return request.param


@pytest.fixture
def four_devices(monkeypatch):
    monkeypatch.setattr(devices, "_backend", device_backend(4))
    return 4


# Tolerance floors of device results on a real GPU (fast exp/log approximations, FMA contraction).
_GPU_TOLERANCE = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}


def on_device(fn, *tensors, device="cuda:0", **kwargs):
    """fn run on copies of `tensors` on `device`, results brought back to the CPU (tuples kept)."""
    out = fn(*[t.to(device) if isinstance(t, tracefuse.Tensor) else t for t in tensors], **kwargs)
    if isinstance(out, tuple):
        return tuple(o.cpu() if isinstance(o, tracefuse.Tensor) else o for o in out)
    return out.cpu() if isinstance(out, tracefuse.Tensor) else out


def assert_device_matches(fn, *tensors, rtol=1e-12, atol=1e-12, **kwargs):
    """fn on cuda:0 (interpret backend) gives what it gives on the CPU: dtype, shape, values."""
    expected = fn(*tensors, **kwargs)
    got = on_device(fn, *tensors, **kwargs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if not isinstance(e, tracefuse.Tensor):
            assert g == e
            continue
        assert g.device.type == "cpu" and g.dtype is e.dtype and tuple(g.shape) == tuple(e.shape), (g.dtype, e.dtype, g.shape, e.shape)
        a, b = to_numpy(g), to_numpy(e)
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, b)
        else:
            # on a GPU: within the dtype's floor, relative to the element or to the result's scale
            floor = _GPU_TOLERANCE.get(e.dtype.name, 0.0) if ON_GPU else 0.0
            finite = np.abs(b[np.isfinite(b)])
            scale = float(finite.max()) if finite.size else 1.0
            np.testing.assert_allclose(a, b, rtol=max(rtol, floor), atol=max(atol, floor * max(scale, 1.0)),
                                       equal_nan=True)
