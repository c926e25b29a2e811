"""The CUDA backend (runtime/cuda.py) on a fake cuda-python driver (tests/runtime/fake_driver.py):
its allocator, copies, errors, streams, events, CUDA graphs and kernel launches, with no GPU.

Device memory is host memory in the fake, so device arrays can be read directly. Triton is
replaced by a stand-in compiler for the launch tests here (this process interprets kernels); one
subprocess test compiles a real kernel for sm_90 and checks what the backend hands the driver."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("cuda", reason="cuda-python is not installed")

import tracefuse as tf  # noqa: E402
from tests.runtime import fake_driver  # noqa: E402
from tests.runtime.fake_driver import LAUNCH_MS, FakeDriver, StandInTriton, fake_cubin  # noqa: E402
from tracefuse.codegen.triton import aot  # noqa: E402
from tracefuse.runtime import cuda as cuda_runtime  # noqa: E402
from tracefuse.runtime import devices  # noqa: E402
from tracefuse.runtime.backend import CaptureError, KernelLaunchError  # noqa: E402
from tracefuse.runtime.cuda import CudaBackend, CudaError, Driver, size_class  # noqa: E402

CUDA0, CUDA1 = tf.device("cuda:0"), tf.device("cuda:1")
MiB = 1 << 20


@pytest.fixture
def fake():
    return FakeDriver()


def backend_on(fake, virtual=2, capacity=None):
    return CudaBackend(virtual=virtual, capacity=capacity, driver=Driver(fake))


@pytest.fixture
def backend(fake):
    return backend_on(fake)


def address(array):
    return array.__array_interface__["data"][0]


@pytest.mark.skipif(fake_driver._LOADER_ERROR is None, reason="a CUDA driver is installed: calls would run")
def test_the_fake_refuses_arguments_cuda_python_refuses(fake):
    fake.cuCtxSetCurrent(fake.cuDevicePrimaryCtxRetain(fake.cuDeviceGet(0)[1])[1])
    module = fake.cuModuleLoadData(fake_cubin("k"))[1]
    assert fake.cuModuleGetFunction(module, b"k")[0] == fake.CUresult.CUDA_SUCCESS
    with pytest.raises(TypeError, match=re.escape("cuda-python refuses cuModuleGetFunction")):
        fake.cuModuleGetFunction(module, "k")  # the name must be bytes
    assert fake.cuModuleGetFunction(module, b"missing")[0] == fake.CUresult.CUDA_ERROR_NOT_FOUND


# --- the caching allocator ---------------------------------------------------------------------


@pytest.mark.parametrize("nbytes, expected", [
    (0, 512), (1, 512), (512, 512), (513, 1024), (1000, 1024), (MiB, MiB),
    (MiB + 1, MiB + MiB // 4), (MiB + MiB // 4, MiB + MiB // 4), (3 * MiB // 2 + 1, 7 * MiB // 4),
    (2 * MiB - 1, 2 * MiB), (2 * MiB + 1, 5 * MiB // 2), (3 * MiB, 3 * MiB), (7 * MiB + 1, 8 * MiB),
])
def test_size_classes_are_512_byte_steps_up_to_1mib_then_quarter_powers_of_two(nbytes, expected):
    assert size_class(nbytes) == expected


def test_a_freed_block_serves_the_next_request_of_its_class_on_the_same_stream(backend, fake):
    first = backend.empty((250,), np.float32, CUDA0)  # 1000 bytes: the 1024-byte class
    where, allocs = address(first), fake.count("cuMemAlloc")
    del first
    again = backend.empty((16, 16), np.float32, CUDA0)  # 1024 bytes: same class
    assert address(again) == where and fake.count("cuMemAlloc") == allocs
    other = backend.empty((4,), np.float32, CUDA0)  # another class: new memory
    assert address(other) != where and fake.count("cuMemAlloc") == allocs + 1


def test_a_block_freed_on_one_stream_is_not_handed_to_another(backend, fake):
    block = backend.empty((256,), np.float32, CUDA0)
    where = address(block)
    del block
    side = backend.new_stream(CUDA0)
    with backend.using_stream(CUDA0, side):
        assert backend.stream_of(CUDA0) is side
        elsewhere = backend.empty((256,), np.float32, CUDA0)
    assert address(elsewhere) != where
    assert address(backend.empty((256,), np.float32, CUDA0)) == where  # back on the device's stream


def test_each_logical_device_has_its_own_allocator(backend, fake):
    block = backend.empty((256,), np.float32, CUDA0)
    where = address(block)
    del block
    assert address(backend.empty((256,), np.float32, CUDA1)) != where
    assert backend.memory_reserved(CUDA1) == 1024 and backend.memory_allocated(CUDA1) == 0


def test_memory_statistics(backend):
    assert (backend.memory_allocated(CUDA0), backend.memory_reserved(CUDA0)) == (0, 0)
    a = backend.empty((1000,), np.float32, CUDA0)
    b = backend.empty((10,), np.int8, CUDA0)
    assert backend.memory_allocated(CUDA0) == 4010  # what was asked for
    assert backend.memory_reserved(CUDA0) == 4096 + 512  # what the size classes hold
    del a
    assert backend.memory_allocated(CUDA0) == 10 and backend.max_memory_allocated(CUDA0) == 4010
    assert backend.memory_reserved(CUDA0) == 4096 + 512  # cached, not given back
    backend.reset_peak_memory_stats(CUDA0)
    assert backend.max_memory_allocated(CUDA0) == 10
    assert backend.memory_allocated(CUDA1) == 0 and b.size == 10


def test_empty_cache_frees_the_cached_blocks_only(backend, fake):
    kept = backend.empty((1000,), np.float32, CUDA0)
    cached = backend.empty((100,), np.float32, CUDA1)
    where = address(cached)
    del cached
    backend.empty_cache()
    assert fake.freed == [where] and address(kept) in fake.allocations
    assert backend.memory_reserved(CUDA0) == 4096 and backend.memory_reserved(CUDA1) == 0
    assert fake.count("cuCtxSynchronize") >= 1  # pending work may still use the cached blocks


def test_a_full_device_gives_back_its_cache_and_retries(fake):
    fake.memory = 4 * MiB
    backend = backend_on(fake, virtual=1)
    big = backend.empty((3 * MiB,), np.uint8, CUDA0)
    cached = address(big)
    del big
    fitted = backend.empty((2 * MiB,), np.uint8, CUDA0)  # 3 + 2 > 4 MiB: the cached 3 MiB goes first
    assert fake.freed == [cached] and backend.memory_reserved(CUDA0) == 2 * MiB and fitted.nbytes == 2 * MiB


def test_out_of_memory_after_the_retry_raises_pytorchs_error(fake):
    fake.memory = 4 * MiB
    backend = backend_on(fake, virtual=1)
    live = backend.empty((2 * MiB,), np.uint8, CUDA0)
    with pytest.raises(tf.cuda.OutOfMemoryError) as info:
        backend.empty((3 * MiB,), np.uint8, CUDA0)
    assert str(info.value) == ("CUDA out of memory. Tried to allocate 3.00 MiB. GPU 0 has a total capacity of "
                               "4.00 MiB of which 2.00 MiB is free. Of the allocated memory 2.00 MiB is allocated "
                               "by tracefuse.")
    assert fake.count("cuMemAlloc") == 3  # the first, then the failed request and its retry
    assert backend.memory_allocated(CUDA0) == live.nbytes


def test_other_allocation_failures_are_not_out_of_memory(backend, fake):
    fake.fail("cuMemAlloc", "CUDA_ERROR_INVALID_VALUE")
    with pytest.raises(CudaError, match=re.escape("CUDA error: cuMemAlloc failed with CUDA_ERROR_INVALID_VALUE")):
        backend.empty((4,), np.float32, CUDA0)
    assert backend.memory_allocated(CUDA0) == 0


def test_capacity_caps_each_logical_device(fake):
    backend = backend_on(fake, capacity=4096)
    full = backend.empty((1024,), np.float32, CUDA0)
    allocs = fake.count("cuMemAlloc")
    with pytest.raises(tf.cuda.OutOfMemoryError) as info:
        backend.empty((1,), np.int8, CUDA0)
    assert str(info.value) == ("CUDA out of memory. Tried to allocate 1 B. GPU 0 has a total capacity of 4.00 KiB "
                               "of which 0 B is free. Of the allocated memory 4.00 KiB is allocated by tracefuse.")
    assert fake.count("cuMemAlloc") == allocs  # refused before asking the driver
    assert backend.empty((1,), np.int8, CUDA1).size == 1 and full.size == 1024


# --- copies ------------------------------------------------------------------------------------


def _host(dtype, shape, rng):
    values = rng.normal(size=shape) * 100
    if dtype == np.bool_:
        return values > 0
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_,
                                   np.float16, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (7,), (5, 6)])
def test_host_roundtrip(backend, dtype, shape, rng):
    host = _host(dtype, shape, rng)
    on_device = backend.from_host(host, CUDA1)
    assert on_device.shape == host.shape and on_device.dtype == host.dtype
    np.testing.assert_array_equal(np.array(on_device), host)  # the fake's device memory is readable
    back = backend.to_host(on_device, CUDA1)
    assert back.shape == host.shape and back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)


@pytest.mark.parametrize("view", ["strided", "transposed", "reversed"])
def test_non_contiguous_host_arrays_are_copied_in_order(backend, view, rng):
    base = rng.normal(size=(6, 8))
    host = {"strided": base[::2, 1::3], "transposed": base.T, "reversed": base[::-1]}[view]
    on_device = backend.from_host(host, CUDA0)
    assert on_device.flags.c_contiguous
    np.testing.assert_array_equal(backend.to_host(on_device, CUDA0), host)


def test_a_contiguous_device_view_copies_from_its_own_offset(backend):
    on_device = backend.from_host(np.arange(20, dtype=np.int32).reshape(4, 5), CUDA0)
    np.testing.assert_array_equal(backend.to_host(on_device[1:3], CUDA0), np.arange(5, 15).reshape(2, 5))


def test_copies_go_through_the_pinned_buffer_in_chunks(fake, monkeypatch, rng):
    monkeypatch.setattr(cuda_runtime._PinnedStaging, "CHUNK", 64)
    monkeypatch.setattr(cuda_runtime._PinnedStaging, "SMALL", 32)
    backend = backend_on(fake)
    host = rng.normal(size=125)  # 1000 bytes: 15 full chunks and 40 bytes
    on_device = backend.from_host(host, CUDA0)
    uploads = fake.args_of("cuMemcpyHtoDAsync")
    assert [n for _, _, n, _ in uploads] == [64] * 15 + [40]
    assert [int(dst) - address(on_device) for dst, _, _, _ in uploads] == list(range(0, 1000, 64))
    assert {src for _, src, _, _ in uploads} == set(fake.pinned)  # all through the one pinned buffer
    syncs = fake.count("cuStreamSynchronize")
    np.testing.assert_array_equal(backend.to_host(on_device, CUDA0), host)
    assert [n for _, _, n, _ in fake.args_of("cuMemcpyDtoHAsync")] == [64] * 15 + [40]
    assert fake.count("cuStreamSynchronize") == syncs + 16  # each chunk waited for before the buffer is reused
    assert fake.count("cuMemHostAlloc") == 1


def test_copy_between_logical_devices_of_one_gpu(backend, fake, rng):
    host = rng.normal(size=(4, 5))
    source = backend.from_host(host, CUDA0)
    copied = backend.copy_between(source, CUDA0, CUDA1)
    np.testing.assert_array_equal(np.array(copied), host)
    assert fake.count("cuMemcpyDtoDAsync") == 1 and fake.count("cuMemcpyPeerAsync") == 0
    assert backend.memory_allocated(CUDA1) == host.nbytes
    streams = {int(backend.devices[0].stream), int(backend.devices[1].stream)}
    assert {stream for stream, _ in fake.waits} == streams  # each side waits for the other's work


def test_copy_between_two_gpus_is_a_peer_copy(rng):
    fake = FakeDriver(gpus=2)
    backend = backend_on(fake, virtual=None)
    assert backend.device_count() == 2 and fake.peers == {(0x100, 0x101), (0x101, 0x100)}
    host = rng.normal(size=(4, 5))
    copied = backend.copy_between(backend.from_host(host, CUDA0), CUDA0, CUDA1)
    assert fake.count("cuMemcpyPeerAsync") == 1
    assert fake.allocations[address(copied)].gpu == 1
    np.testing.assert_array_equal(backend.to_host(copied, CUDA1), host)


def test_peer_access_already_enabled_is_fine(fake):
    fake = FakeDriver(gpus=2)
    fake.peers.add((0x100, 0x101))
    backend_on(fake, virtual=None)
    assert fake.peers == {(0x100, 0x101), (0x101, 0x100)}


def test_description_and_resident_programs():
    backend = backend_on(FakeDriver(gpus=2), virtual=3)  # cuda:0 and cuda:2 share GPU 0
    assert backend.describe() == "3 logical device(s) on 2 GPU(s) (GPU 0 sm_90, GPU 1 sm_90); 0 B reserved"
    assert [backend.resident_programs(tf.device("cuda", i)) for i in range(3)] == [66, 132, 66]


def test_another_thread_makes_the_context_current_itself(backend, fake):
    on_device = backend.from_host(np.arange(4.0), CUDA1)
    results = []
    worker = threading.Thread(target=lambda: results.append(backend.to_host(backend.copy_between(
        on_device, CUDA1, CUDA0), CUDA0)))
    worker.start()
    worker.join()
    assert len(results) == 1 and results[0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the fake needs a current context


# --- device arrays -----------------------------------------------------------------------------


def test_device_arrays_are_numpy_views_of_device_memory(backend):
    a = backend.empty((4, 6), np.float32, CUDA0)
    assert isinstance(a, np.ndarray) and a.flags.c_contiguous and a.strides == (24, 4)
    assert backend.pointer(a[1]) == backend.pointer(a) + 24 and backend.pointer(a[:, 2]) == backend.pointer(a) + 8
    assert a[1:3, ::2].shape == (2, 3) and a[1:3, ::2].strides == (24, 8)
    assert a.reshape(6, 4).shape == (6, 4) and np.may_share_memory(a.reshape(-1), a)
    assert np.may_share_memory(a[1:], a) and not np.may_share_memory(a[:1], a[1:])
    assert not np.may_share_memory(a, backend.empty((4, 6), np.float32, CUDA0))
    assert backend.empty((), np.int64, CUDA0).shape == ()


def test_memory_returns_to_the_allocator_when_the_last_view_dies(backend):
    a = backend.empty((256,), np.float32, CUDA0)
    where = address(a)
    view = a[10:20].reshape(2, 5)
    del a
    gc.collect()
    assert backend.memory_allocated(CUDA0) == 1024  # the view keeps the whole block
    del view
    assert backend.memory_allocated(CUDA0) == 0
    assert address(backend.empty((256,), np.float32, CUDA0)) == where


# --- errors ------------------------------------------------------------------------------------


def test_a_failing_call_names_itself(backend, fake):
    fake.fail("cuMemcpyHtoDAsync", "CUDA_ERROR_INVALID_VALUE")
    with pytest.raises(CudaError) as info:
        backend.from_host(np.ones(3), CUDA0)
    assert str(info.value) == "CUDA error: cuMemcpyHtoDAsync failed with CUDA_ERROR_INVALID_VALUE"
    assert (info.value.call, info.value.code) == ("cuMemcpyHtoDAsync", "CUDA_ERROR_INVALID_VALUE")


def test_a_non_kernel_error_at_synchronize_stays_a_cuda_error(backend, fake):
    fake.fail("cuCtxSynchronize", "CUDA_ERROR_INVALID_CONTEXT")
    with pytest.raises(CudaError, match="cuCtxSynchronize failed with CUDA_ERROR_INVALID_CONTEXT"):
        backend.synchronize()


def test_construction_needs_a_gpu():
    fake = FakeDriver(gpus=0)
    with pytest.raises(RuntimeError, match="no CUDA-capable device is detected"):
        backend_on(fake)


def test_without_a_driver_the_interpreting_process_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 makes Triton interpret kernels"):
        CudaBackend()


# --- kernel launches, with a stand-in for Triton ---------------------------------------------------

SIGNATURE = {"x_ptr": "*fp32", "n": "i32", "big": "i64", "scale": "fp32"}
PARAMS = [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_uint64, ctypes.c_uint64]


class StandInKernel:
    """What the backend reads of a codegen Kernel: its name, source, file and argument names."""

    name, path = "scale_kernel", Path("scale_kernel_0123456789abcdef.py")
    source = "def scale_kernel(x_ptr, n, big, scale, BLOCK: tl.constexpr):\n    pass\n"
    arg_names = (*SIGNATURE, "BLOCK")
    fn = SimpleNamespace(arg_names=list(arg_names), __name__="scale_kernel")


@pytest.fixture
def triton(monkeypatch, fake, tmp_path):
    """Triton's stand-in, with a cubin cache of the test's own (each test sees its builds)."""
    stand_in = StandInTriton()
    monkeypatch.setattr(aot, "compile_function", stand_in)
    monkeypatch.setenv("TRACEFUSE_CACHE_DIR", str(tmp_path))
    fake.param_types["scale_kernel"] = PARAMS
    return stand_in


KERNEL = StandInKernel()


def _launch(backend, device=CUDA0, grid=(3,), args=None, **kwargs):
    x = backend.empty((64,), np.float32, device)
    backend.launch(KERNEL, grid, args or [backend.pointer(x), 7, 2**40, 1.5], SIGNATURE, {"BLOCK": 128}, device,
                   **kwargs)
    return x


def test_launch_packs_the_arguments_as_the_kernel_declares_them(backend, fake, triton):
    x = _launch(backend, grid=(3,))
    (launch,) = fake.launches
    assert (launch.function, launch.grid, launch.block, launch.shared) == ("scale_kernel", (3, 1, 1), (128, 1, 1), 1024)
    assert launch.params == [address(x), 7, 2**40, 1.5, 0, 0]  # then the scratch pointers: none needed
    assert launch.stream == int(backend.devices[0].stream) and not launch.cooperative
    (build,) = triton.builds
    assert build.arch == 90 and build.signature == SIGNATURE and build.constexprs == {"BLOCK": 128}


def test_grids_of_two_and_three_dimensions(backend, fake, triton):
    _launch(backend, grid=(2, 5))
    _launch(backend, grid=(2, 3, 4))
    assert [launch.grid for launch in fake.launches] == [(2, 5, 1), (2, 3, 4)]


def test_a_kernel_is_compiled_once_and_loaded_once_per_gpu(backend, fake, triton):
    _launch(backend, CUDA0)
    _launch(backend, CUDA0)
    _launch(backend, CUDA1)  # another logical device on the same GPU
    assert len(triton.builds) == 1 and fake.count("cuModuleLoadData") == 1 and len(fake.launches) == 3
    assert [launch.stream for launch in fake.launches] == [int(backend.devices[i].stream) for i in (0, 0, 1)]


def test_each_gpu_loads_the_kernel_into_its_own_context(triton):
    fake = FakeDriver(gpus=2)
    fake.param_types["scale_kernel"] = PARAMS
    backend = backend_on(fake, virtual=None)
    _launch(backend, CUDA0)
    _launch(backend, CUDA1)  # the fake refuses a function of another context
    assert len(triton.builds) == 1 and fake.count("cuModuleLoadData") == 2 and len(fake.launches) == 2


def test_the_module_gets_the_whole_cubin(backend, fake, triton):
    _launch(backend)
    (image,) = [data for _, data in fake.images.values()]
    assert image == fake_cubin("other_kernel", "scale_kernel")  # as StandInTriton builds it


def test_another_alignment_or_type_compiles_again(backend, fake, triton):
    x = backend.empty((64,), np.float32, CUDA0)
    pointer = backend.pointer(x)
    _launch(backend, args=[pointer, 7, 2**40, 1.5])
    _launch(backend, args=[pointer, 9, 2**41, 2.5])  # same hints: no new build
    _launch(backend, args=[pointer, 16, 2**40, 1.5])  # n divisible by 16: specialized
    _launch(backend, args=[pointer + 4, 7, 2**40, 1.5])  # a pointer not 16-byte aligned
    assert [build.attrs for build in triton.builds] == [
        {(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]},
        {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]},
        {(2,): [["tt.divisibility", 16]]},
    ]
    assert [launch.params[1] for launch in fake.launches] == [7, 9, 16, 7]


def test_scratch_memory_is_allocated_aligned_and_returned_after_the_launch(backend, fake, triton):
    triton.meta.update(global_scratch_size=96, global_scratch_align=128)
    x = _launch(backend, grid=(2, 3))
    (launch,) = fake.launches
    scratch, profile = launch.params[4:]
    assert scratch % 128 == 0 and profile == 0
    start = max(a for a in fake.allocations if a <= scratch)
    assert scratch + 6 * 96 <= start + fake.allocations[start].size  # one slice per program
    assert backend.memory_allocated(CUDA0) == x.nbytes  # back in the cache, stream-ordered


def test_large_shared_memory_is_opted_into(backend, fake, triton):
    triton.meta.update(shared=100_000)
    _launch(backend)
    ((function, attribute, value),) = fake.args_of("cuFuncSetAttribute")
    assert attribute == fake.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert value == 227 << 10 and fake.launches[0].shared == 100_000


def test_a_cooperative_kernel_is_launched_cooperatively(backend, fake, triton):
    triton.meta.update(launch_cooperative_grid=True)
    x = _launch(backend)
    assert fake.count("cuLaunchCooperativeKernel") == 1 and fake.launches[0].cooperative
    assert fake.launches[0].params == [address(x), 7, 2**40, 1.5, 0, 0]


def test_thread_block_clusters_are_refused(backend, triton):
    triton.meta.update(num_ctas=2)
    with pytest.raises(NotImplementedError, match="num_ctas=2"):
        _launch(backend)


def test_a_launch_on_another_stream(backend, fake, triton):
    side = backend.new_stream(CUDA0)
    _launch(backend, stream=side)
    with backend.using_stream(CUDA0, side):
        _launch(backend)
    assert [launch.stream for launch in fake.launches] == [int(side)] * 2


def test_a_kernel_fault_at_synchronize_names_the_kernels_launched(backend, fake, triton):
    _launch(backend)
    fake.fail("cuCtxSynchronize", "CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(KernelLaunchError) as info:
        backend.synchronize(CUDA0)
    message = str(info.value)
    assert "cuCtxSynchronize failed with CUDA_ERROR_ILLEGAL_ADDRESS on cuda:0" in message
    assert "scale_kernel (scale_kernel_0123456789abcdef.py)" in message


def test_the_list_of_recent_kernels_restarts_at_each_synchronize(backend, fake, triton):
    _launch(backend)
    backend.synchronize()
    fake.fail("cuStreamSynchronize", "CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(KernelLaunchError, match=re.escape("none recorded")):
        backend.to_host(backend.empty((3,), np.float32, CUDA0), CUDA0)


def test_a_kernel_fault_at_a_copy_to_the_host(backend, fake, triton):
    x = _launch(backend)
    fake.fail("cuStreamSynchronize", "CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(KernelLaunchError, match=r"on cuda:0; kernels launched .*: scale_kernel \(scale_kernel_"):
        backend.to_host(x, CUDA0)


def test_a_launch_the_driver_refuses(backend, fake, triton):
    fake.fail("cuLaunchKernel", "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
    with pytest.raises(KernelLaunchError, match="cuLaunchKernel failed with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"):
        _launch(backend)


def test_a_kernel_fault_on_the_second_device_names_its_kernels(backend, fake, triton):
    _launch(backend, CUDA1)
    fake.fail("cuStreamSynchronize", "CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(KernelLaunchError, match=r"on cuda:1; .*scale_kernel \("):
        backend.stream_synchronize(backend.stream_of(CUDA1))


# --- CUDA graphs -------------------------------------------------------------------------------


def test_capture_records_launches_that_each_replay_runs(backend, fake, triton):
    x = _launch(backend)  # compiled and loaded before the capture, as graphs.py does
    with backend.capture(CUDA0) as graph:
        _launch(backend, args=[backend.pointer(x), 7, 2**40, 1.5])
        assert len(fake.launches) == 1  # recorded, not run
    assert fake.count("cuGraphInstantiate") == 1 and len(fake.launches) == 1
    graph.replay()
    graph.replay()
    assert [launch.replayed for launch in fake.launches] == [False, True, True]
    assert {launch.stream for launch in fake.launches} == {int(backend.devices[0].stream)}


def test_copies_to_the_host_cannot_be_captured(backend):
    on_device = backend.from_host(np.ones(3), CUDA0)
    with pytest.raises(CaptureError, match=re.escape(
            "a copy to host memory cannot be recorded into a CUDA graph (it waits for the device)")):
        with backend.capture(CUDA0):
            backend.to_host(on_device, CUDA0)
    with pytest.raises(CaptureError, match="a copy between devices cannot be recorded"):
        with backend.capture(CUDA0):
            backend.copy_between(on_device, CUDA0, CUDA1)
    np.testing.assert_array_equal(backend.to_host(on_device, CUDA0), np.ones(3))  # no capture left behind


def test_synchronizing_a_device_being_captured_is_refused(backend):
    with pytest.raises(CaptureError, match="cannot be recorded into a CUDA graph"):
        with backend.capture(CUDA0):
            backend.synchronize()


def test_a_copy_into_a_device_being_captured_is_refused(backend):
    on_device = backend.from_host(np.ones(3), CUDA0)
    with pytest.raises(CaptureError, match="a copy between devices cannot be recorded"):
        with backend.capture(CUDA1):
            backend.copy_between(on_device, CUDA0, CUDA1)


def test_a_copy_from_the_host_while_capturing_is_uploaded_once_and_kept_by_the_graph(backend):
    table = np.arange(6, dtype=np.int64)
    with backend.capture(CUDA0) as graph:
        uploaded = backend.from_host(table, CUDA0)
    np.testing.assert_array_equal(np.array(uploaded), table)  # there at once, not at a replay
    where = address(uploaded)
    del uploaded
    assert address(backend.empty((6,), np.int64, CUDA0)) != where  # the graph still reads it
    del graph


def test_a_failed_capture_ends_the_stream_capture_and_destroys_its_graph(backend, fake):
    with pytest.raises(ValueError, match="in the middle"):
        with backend.capture(CUDA0):
            raise ValueError("in the middle")
    assert fake.count("cuStreamEndCapture") == 1 and fake.count("cuGraphDestroy") == 1 and not fake.graphs
    assert backend.to_host(backend.from_host(np.ones(2), CUDA0), CUDA0).tolist() == [1.0, 1.0]


def test_memory_of_a_capture_belongs_to_the_graph_while_it_lives(backend, fake):
    with backend.capture(CUDA0) as graph:
        temporary = backend.empty((256,), np.float32, CUDA0)
        kept = address(temporary)
        del temporary  # freed inside: later recorded work may reuse it
        reused = backend.empty((256,), np.float32, CUDA0)
        assert address(reused) == kept
        result = backend.empty((512,), np.float32, CUDA0)
    del reused, result
    outside = backend.empty((256,), np.float32, CUDA0)
    assert address(outside) != kept  # the graph's replays write there
    del graph
    gc.collect()
    assert fake.count("cuGraphExecDestroy") == 1 and fake.count("cuGraphDestroy") == 1
    assert address(backend.empty((256,), np.float32, CUDA0)) == kept
    del outside
    reserved = backend.memory_reserved(CUDA0)
    backend.empty_cache()
    assert backend.memory_reserved(CUDA0) < reserved  # ordinary cached memory again


def test_memory_of_a_dead_graph_goes_back_to_the_ordinary_bins(backend, fake):
    with backend.capture(CUDA0) as graph:
        result = backend.empty((256,), np.float32, CUDA0)
    kept = address(result)
    del graph
    gc.collect()
    del result  # outlived its graph
    assert address(backend.empty((256,), np.float32, CUDA0)) == kept


def test_memory_allocated_before_a_capture_is_not_used_inside_it(backend):
    before = backend.empty((256,), np.float32, CUDA0)
    where = address(before)
    del before
    with backend.capture(CUDA0) as graph:
        assert address(backend.empty((256,), np.float32, CUDA0)) != where
    del graph


def test_memory_of_a_failed_capture_is_not_lost(backend, fake):
    with pytest.raises(CaptureError):
        with backend.capture(CUDA0):
            on_device = backend.empty((256,), np.float32, CUDA0)
            backend.to_host(on_device, CUDA0)
    del on_device
    gc.collect()
    backend.empty_cache()
    assert backend.memory_reserved(CUDA0) == 0 and backend.memory_allocated(CUDA0) == 0


def test_a_fault_at_replay_is_a_kernel_launch_error(backend, fake, triton):
    _launch(backend)
    with backend.capture(CUDA0) as graph:
        _launch(backend)
    fake.fail("cuGraphLaunch", "CUDA_ERROR_LAUNCH_FAILED")
    with pytest.raises(KernelLaunchError, match="cuGraphLaunch failed with CUDA_ERROR_LAUNCH_FAILED on cuda:0"):
        graph.replay()


# --- tracefuse.cuda's streams and events over the backend ---------------------------------------


@pytest.fixture
def installed(backend, monkeypatch):
    monkeypatch.setattr(devices, "_backend", backend)
    return backend


def test_events_time_the_work_between_them(installed, fake):
    start, end = tf.cuda.Event(enable_timing=True), tf.cuda.Event(enable_timing=True)
    start.record()
    fake.clock += 3 * LAUNCH_MS  # three kernels' worth of device time
    end.record()
    assert start.elapsed_time(end) == pytest.approx(1.5)
    assert fake.count("cuEventSynchronize") == 1  # elapsed_time waits for `end`
    assert fake.events[int(start.handle)].timing


def test_events_without_timing_are_created_so(installed, fake):
    event = tf.cuda.Event()
    event.record()
    assert not fake.events[int(event.handle)].timing


def test_event_query_and_synchronize(installed, fake):
    event = tf.cuda.Event()
    assert event.query()  # never recorded: nothing to wait for
    event.record()
    assert event.query()
    fake.ready = False
    assert not event.query()
    event.synchronize()
    assert fake.args_of("cuEventSynchronize") == [(event.handle,)]


def test_event_query_raises_a_kernel_fault(installed, fake):
    event = tf.cuda.Event()
    event.record()
    fake.fail("cuEventQuery", "CUDA_ERROR_ILLEGAL_ADDRESS")
    with pytest.raises(KernelLaunchError):
        event.query()


def test_stream_wait_event_and_synchronize(installed, fake):
    stream, event = tf.cuda.Stream(), tf.cuda.Event()
    event.record()
    stream.wait_event(event)
    assert fake.waits[-1] == (int(stream.handle), int(event.handle))
    stream.synchronize()
    assert fake.args_of("cuStreamSynchronize")[-1] == (stream.handle,)
    assert int(stream.handle) in fake.streams and stream.handle is not installed.devices[0].stream


def test_event_recorded_on_a_side_stream(installed, fake):
    stream, event = tf.cuda.Stream(device="cuda:1"), tf.cuda.Event()
    stream.record_event(event)
    assert fake.args_of("cuEventRecord")[-1] == (event.handle, stream.handle)
    assert fake.events[int(event.handle)].context == fake.streams[int(stream.handle)].context


def test_current_stream_and_the_stream_context(installed, fake):
    default = tf.cuda.current_stream()
    assert default.handle is installed.devices[0].stream and default == tf.cuda.current_stream(0)
    side = tf.cuda.Stream()
    with tf.cuda.stream(side):
        assert tf.cuda.current_stream() == side and tf.cuda.current_stream("cuda:1") != side
        x = tf.ones(300).to("cuda:0")  # the upload runs on the side stream, the memory belongs to it
        assert x.cpu().tolist() == [1.0] * 300
        assert {args[-1] for args in fake.args_of("cuMemcpyHtoDAsync")} == {side.handle}
        where = address(x._data)
        del x
        assert address(installed.empty((300,), np.float32, CUDA0)) == where
    assert tf.cuda.current_stream() == default
    assert address(installed.empty((300,), np.float32, CUDA0)) != where  # freed on the side stream


def test_tensor_roundtrip_and_statistics_through_tracefuse_cuda(installed, fake):
    tf.cuda.reset_peak_memory_stats()
    x = tf.arange(12, dtype=tf.int32).reshape(3, 4)
    on_1 = x.to("cuda:0").to("cuda:1")
    assert on_1.device == CUDA1 and on_1.cpu().tolist() == x.tolist()
    assert tf.cuda.memory_allocated(1) == 48 and tf.cuda.max_memory_allocated(0) >= 48
    del on_1
    assert tf.cuda.memory_allocated(1) == 0 and tf.cuda.memory_reserved(1) == 512
    tf.cuda.empty_cache()
    assert tf.cuda.memory_reserved(1) == 0
    tf.cuda.synchronize()
    tf.cuda.synchronize(1)


# --- a real kernel compiled for sm_90, launched on the fake driver ---------------------------------

_REAL_LAUNCH = textwrap.dedent('''
    import ctypes, hashlib, json, sys
    import numpy as np
    import triton
    import tracefuse as tf
    from tests.runtime.fake_driver import FakeDriver
    from tracefuse.codegen.triton import kernel as kernels
    from tracefuse.runtime.cuda import CudaBackend, Driver, _parameter

    builds = []
    compile_ = triton.compile
    triton.compile = lambda *a, **k: builds.append(1) or compile_(*a, **k)

    kernel = kernels.build("scale_kernel", """
    @triton.jit
    def scale_kernel(x_ptr, n, big, scale, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask)
        tl.store(x_ptr + offsets, x * scale + big.to(tl.float32), mask=mask)
    """)
    fake = FakeDriver()
    fake.param_types["scale_kernel"] = [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_float,
                                        ctypes.c_uint64, ctypes.c_uint64]
    backend = CudaBackend(virtual=1, driver=Driver(fake))
    device = tf.device("cuda:0")
    x = backend.empty((384,), np.float32, device)
    signature = {"x_ptr": "*fp32", "n": "i32", "big": "i64", "scale": "fp32"}
    for n in (7, 5):
        backend.launch(kernel, (3,), [backend.pointer(x), n, 2**40, 1.5], signature, {"BLOCK": 128}, device)
    ((cubin, meta),) = backend._compiled.values()
    (image,) = [data for _, data in fake.images.values()]
    (function,) = fake.functions.values()
    print(json.dumps({
        "address": backend.pointer(x), "builds": len(builds), "loads": fake.count("cuModuleLoadData"),
        "launches": [dict(grid=l.grid, block=l.block, shared=l.shared, params=l.params) for l in fake.launches],
        "num_warps": meta["num_warps"], "shared": meta["shared"], "name": meta["name"],
        "scratch": [meta.get(k + "_scratch_size") or 0 for k in ("global", "profile")],
        "kernel_parameters": function.parameter_sizes,
        "packed": [ctypes.sizeof(_parameter(t, 0)) for t in signature.values()] + [8, 8],
        "cubin_bytes": len(cubin), "same_image": hashlib.sha256(image).hexdigest() == hashlib.sha256(cubin).hexdigest(),
        "arg_names": list(kernel.arg_names), "jit_arg_names": list(kernel.fn.arg_names),
    }))
''')


def test_a_real_kernel_for_sm90_is_launched_with_tritons_metadata_then_from_the_cubin_cache(tmp_path):
    """Triton compiles only where it does not interpret kernels: in a subprocess. A second process
    with the same caches launches the same cubin with the same metadata without calling Triton."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRACEFUSE_CUDA")}
    root = Path(__file__).resolve().parents[2]
    env.update(PYTHONPATH=str(root), TRACEFUSE_CACHE_DIR=str(tmp_path / "cache"),
               TRITON_CACHE_DIR=str(tmp_path / "triton"))
    reports = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _REAL_LAUNCH], env=env, cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for r in reports:  # the buffer's address is the process's own
        address = r.pop("address")
        for launch in r["launches"]:
            launch["params"][0] -= address
    report, warm = reports
    assert warm["builds"] == 0 and {**warm, "builds": 1} == report, (report, warm)  # all else identical
    assert report["arg_names"] == report["jit_arg_names"] == ["x_ptr", "n", "big", "scale", "BLOCK"], report
    assert report["builds"] == 1 and report["loads"] == 1, report  # the second launch reuses the build
    assert report["name"] == "scale_kernel" and report["cubin_bytes"] > 0 and report["same_image"], report
    assert report["scratch"] == [0, 0], report
    assert report["kernel_parameters"] == report["packed"] == [8, 4, 8, 4, 8, 8], report  # Triton's ABI
    first, second = report["launches"]
    assert first["grid"] == [3, 1, 1] and first["block"] == [32 * report["num_warps"], 1, 1], report
    assert first["shared"] == report["shared"], report
    assert first["params"] == [0, 7, 2**40, 1.5, 0, 0], report  # the buffer's address (less itself), n, ...
    assert second["params"][1] == 5, report


def test_code_generation_does_not_import_triton():
    """Emitters and the CUDA backend need Triton only to compile: a warm start (cubins cached by an
    earlier process) never imports it."""
    code = "import sys, tracefuse.codegen.triton, tracefuse.runtime.cuda; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRACEFUSE_CUDA")}
    done = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(Path(__file__).parents[2])),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# --- tracefuse on the fake GPU: device memory is never read on the host ------------------------------

_WORKLOAD = textwrap.dedent('''
    import tracefuse as tf
    from tracefuse import nn
    from tracefuse.codegen.triton import aot
    from tracefuse.runtime import devices
    from tracefuse.runtime.cuda import CudaBackend, Driver
    from tests.runtime.fake_driver import FakeDriver, StandInTriton

    aot.compile_function = StandInTriton()  # kernels are launched (recorded), never run
    fake = FakeDriver(protect=True)
    devices._backend = CudaBackend(virtual=2, driver=Driver(fake))
    tf.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).cuda()
    opt = tf.optim.Adam(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(tf.randn(5, 6).cuda()), tf.randint(0, 3, (5,)).cuda())
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    print(loss.item(), model[0].weight)
    out, (h, c) = nn.LSTM(4, 8, batch_first=True).cuda()(tf.randn(2, 5, 4).cuda())
    out.sum().backward()
    compiled = tf.compile(model, options={"cuda_graphs": True})
    with tf.no_grad():
        for _ in range(3):
            compiled(tf.randn(5, 6).cuda()).to("cuda:1").cpu()
    parallel = nn.DataParallel(model, device_ids=[0, 1])
    parallel(tf.randn(8, 6).cuda()).sum().backward()
    print("launches", len(fake.launches), "replayed", sum(launch.replayed for launch in fake.launches))
''')


def test_a_workload_never_reads_device_memory_on_the_host(tmp_path):
    """On a GPU, reading device memory on the host crashes the process; the fake maps it
    inaccessible (protect=True), so a host read here is a segfault that faulthandler locates."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRACEFUSE_CUDA")}
    root = Path(__file__).resolve().parents[2]
    env.update(PYTHONPATH=str(root), TRACEFUSE_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _WORKLOAD], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    launches, replayed = re.search(r"launches (\d+) replayed (\d+)", done.stdout).groups()
    assert int(launches) > 50 and int(replayed) > 0, done.stdout[-2000:]


# --- fixes from the review of the first version ---------------------------------------------------


def test_a_graph_replays_on_the_current_stream_after_the_work_queued_there(backend, fake, triton):
    _launch(backend)
    with backend.capture(CUDA0) as graph:
        _launch(backend)
    side = backend.new_stream(CUDA0)
    with backend.using_stream(CUDA0, side):
        _launch(backend)  # a copy of this call's inputs, queued on the current stream
        graph.replay()
    copy_in, replayed = fake.launches[-2], fake.launches[-1]
    assert replayed.stream == copy_in.stream == int(side)


def test_streams_and_events_release_their_handles_when_they_die(installed, fake):
    import gc

    streams, events = len(fake.streams), len(fake.events)
    for _ in range(20):
        tf.cuda.Event(enable_timing=True).record(tf.cuda.Stream())
    gc.collect()
    assert len(fake.streams) == streams and len(fake.events) == events
    assert len(installed._owners) == len(installed.devices)  # only the devices' own streams are left
    assert tf.cuda.current_stream().handle is installed.devices[0].stream  # never released


def test_the_stream_context_makes_the_streams_device_current(installed):
    side = tf.cuda.Stream("cuda:1")
    with tf.cuda.stream(side):
        assert tf.cuda.current_device() == 1 and tf.cuda.current_stream() == side
        assert tf.zeros(0, device="cuda").device == tf.device("cuda:1")  # (no kernel for no elements)
    assert tf.cuda.current_device() == 0


def test_out_of_memory_while_capturing_frees_nothing_and_says_so():
    backend = backend_on(FakeDriver(memory=4 * MiB), virtual=1)
    cached = backend.empty((MiB // 4,), np.float32, CUDA0)
    del cached  # a cached block: freeing it would synchronize, which a capture forbids
    with pytest.raises(tf.cuda.OutOfMemoryError, match="CUDA out of memory"):
        with backend.capture(CUDA0):
            backend.empty((2 * MiB,), np.float32, CUDA0)
    assert backend.memory_reserved(CUDA0) >= MiB  # still cached


def test_a_small_upload_goes_straight_from_its_array_without_waiting_for_the_stream(backend, fake, rng):
    host = rng.normal(size=16)
    syncs = fake.count("cuStreamSynchronize")
    on_device = backend.from_host(host, CUDA0)
    ((dst, src, n, _),) = fake.args_of("cuMemcpyHtoDAsync")
    assert int(dst) == address(on_device) and n == host.nbytes and src not in set(fake.pinned)
    assert fake.count("cuStreamSynchronize") == syncs and fake.count("cuMemHostAlloc") == 0
    np.testing.assert_array_equal(backend.to_host(on_device, CUDA0), host)
