"""The CUDA backend on a real GPU (two logical devices on it, from tests/conftest.py): the caching
allocator, events, copies between devices and the capacity cap (CUDA graphs of compiled models:
tests/tracer/test_cuda_graphs.py, which runs on the GPU too). Skipped where no GPU is visible
(tests/runtime/test_cuda_backend.py covers the same code on a fake driver)."""
from __future__ import annotations

import gc
import re

import ml_dtypes
import numpy as np
import pytest

import tracefuse as tf
from tests.conftest import device_backend
from tracefuse.runtime import devices

pytestmark = pytest.mark.gpu_only


def address(t):
    return t._data.__array_interface__["data"][0]


def _clear_cache():
    gc.collect()  # tensors of earlier tests
    tf.cuda.synchronize()
    tf.cuda.empty_cache()


def test_the_backend_is_the_cuda_one(interpret):
    backend = devices.active_backend()
    assert backend.name == "cuda" and tf.cuda.device_count() == 2, f"{backend.name}: {backend.describe()}"


def test_a_freed_tensors_memory_serves_the_next_tensor_of_its_size(interpret):
    _clear_cache()
    first = tf.randn(256, 256).to("cuda:0")
    where = address(first)
    del first
    second = tf.randn(256, 256).to("cuda:0")
    assert address(second) == where, f"{address(second):#x} != {where:#x}: the cached block was not reused"


def test_memory_reserved_stays_after_del_and_drops_after_empty_cache(interpret):
    _clear_cache()
    reserved = tf.cuda.memory_reserved(0)
    x = tf.zeros(1 << 20).to("cuda:0")  # 4 MiB
    assert tf.cuda.memory_reserved(0) == reserved + (4 << 20), (reserved, tf.cuda.memory_reserved(0))
    allocated = tf.cuda.memory_allocated(0)
    del x
    assert tf.cuda.memory_allocated(0) == allocated - (4 << 20), (allocated, tf.cuda.memory_allocated(0))
    assert tf.cuda.memory_reserved(0) == reserved + (4 << 20), "del gave memory back to the driver"
    tf.cuda.empty_cache()
    assert tf.cuda.memory_reserved(0) <= reserved, (reserved, tf.cuda.memory_reserved(0))


def test_events_time_a_matmul(interpret):
    a, b = tf.randn(2048, 2048).to("cuda:0"), tf.randn(2048, 2048).to("cuda:0")
    a @ b  # compiled and loaded before timing
    start, end = tf.cuda.Event(enable_timing=True), tf.cuda.Event(enable_timing=True)
    start.record()
    product = a @ b
    end.record()
    end.synchronize()
    assert end.query(), "the end event is not complete after synchronize()"
    elapsed = start.elapsed_time(end)
    assert elapsed > 0, f"elapsed_time {elapsed} ms for a 2048^3 matmul"
    assert product.shape == (2048, 2048)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool", "bfloat16"])
def test_roundtrip_through_both_devices(interpret, dtype):
    values = np.random.default_rng(0).normal(size=(37, 19)) * 100
    host = values > 0 if dtype == "bool" else values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    x = tf.from_numpy(host)
    on_1 = x.to("cuda:0").to("cuda:1")
    assert on_1.device == tf.device("cuda:1") and on_1.dtype is x.dtype, (on_1.device, on_1.dtype)
    np.testing.assert_array_equal(on_1.cpu().numpy(), host, err_msg=f"{dtype} cpu -> cuda:0 -> cuda:1 -> cpu")


def test_roundtrip_of_a_non_contiguous_device_tensor(interpret):
    host = np.arange(35 * 24, dtype=np.float32).reshape(35, 24)
    transposed = tf.from_numpy(host).to("cuda:0").t()  # copied to cuda:1 through a contiguous copy kernel
    np.testing.assert_array_equal(transposed.to("cuda:1").cpu().numpy(), host.T)
    np.testing.assert_array_equal(transposed.cpu().numpy(), host.T)


def test_out_of_memory_under_a_capacity_leaves_earlier_tensors_intact(monkeypatch):
    monkeypatch.setattr(devices, "_backend", device_backend(1, capacity=1 << 20))
    kept = tf.arange(1000, dtype=tf.float32).to("cuda:0")
    with pytest.raises(tf.cuda.OutOfMemoryError, match=re.escape(
            "CUDA out of memory. Tried to allocate 2.00 MiB. GPU 0 has a total capacity of 1.00 MiB")):
        tf.zeros(512, 1024).to("cuda:0")
    np.testing.assert_array_equal(kept.cpu().numpy(), np.arange(1000, dtype=np.float32))
    assert tf.cuda.memory_allocated(0) == 4000, tf.cuda.memory_allocated(0)
