"""tracefuse.cuda on the interpret backend (and without any backend)."""
import re

import pytest

import tracefuse as tf
from tracefuse.runtime import devices
from tracefuse.runtime.interpret import InterpretBackend
from tests.conftest import ON_GPU, device_backend


def test_without_a_backend_nothing_is_available(monkeypatch):
    monkeypatch.setattr(devices, "_backend", None)
    monkeypatch.delenv("TRACEFUSE_CUDA", raising=False)
    assert not tf.cuda.is_available() and tf.cuda.device_count() == 0
    with pytest.raises(RuntimeError, match="no CUDA backend is available"):
        tf.cuda.synchronize()


def test_devices_and_current_device(interpret):
    assert tf.cuda.is_available() and tf.cuda.device_count() == 2
    assert tf.cuda.current_device() == 0 and tf.zeros(2, device="cuda").device == tf.device("cuda:0")
    tf.cuda.set_device(1)
    try:
        assert tf.cuda.current_device() == 1
        assert tf.ones(2).cuda().device == tf.device("cuda:1")
        assert tf.ones(2).to("cuda").device == tf.device("cuda:1")
    finally:
        tf.cuda.set_device(0)
    with pytest.raises(RuntimeError, match=re.escape("CUDA error: invalid device ordinal")):
        tf.cuda.set_device(2)
    with pytest.raises(RuntimeError, match=re.escape("CUDA error: invalid device ordinal")):
        tf.ones(2).to("cuda:5")


def test_memory_statistics_follow_live_tensors(interpret):
    tf.cuda.reset_peak_memory_stats()
    before, other = tf.cuda.memory_allocated(), tf.cuda.memory_allocated("cuda:1")
    x = tf.zeros(1000, dtype=tf.float64, device="cuda:0")
    assert tf.cuda.memory_allocated(0) == before + 8000
    assert tf.cuda.memory_allocated("cuda:1") == other  # per device
    del x
    assert tf.cuda.memory_allocated() == before
    assert tf.cuda.max_memory_allocated() >= before + 8000
    tf.cuda.empty_cache()


def test_events_time_stream_work(interpret):
    start, end = tf.cuda.Event(enable_timing=True), tf.cuda.Event(enable_timing=True)
    start.record()
    (tf.ones(10, device="cuda") * 2).cpu()
    end.record()
    tf.cuda.synchronize()
    assert start.elapsed_time(end) >= 0.0
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        tf.cuda.Event().elapsed_time(end)
    stream = tf.cuda.Stream()
    stream.wait_event(end)
    stream.synchronize()


def test_cross_device_ops_raise_pytorchs_error(interpret):
    a, b = tf.ones(2, device="cuda:0"), tf.ones(2, device="cuda:1")
    with pytest.raises(RuntimeError, match=re.escape(
            "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cuda:1!")):
        a + b
    assert (a + b.to("cuda:0")).cpu().tolist() == [2.0, 2.0]
    assert (a + tf.tensor(1.0)).cpu().tolist() == [2.0, 2.0]  # a 0-dim CPU tensor joins a device op


@pytest.mark.skipif(ON_GPU, reason="the interpreter cannot start in a process whose Triton compiles for the GPU")
def test_interpret_backend_from_the_environment(monkeypatch):
    monkeypatch.setattr(devices, "_backend", None)
    monkeypatch.setenv("TRACEFUSE_CUDA", "interpret:3")
    assert tf.cuda.device_count() == 3 and isinstance(devices.active_backend(), InterpretBackend)
    monkeypatch.setattr(devices, "_backend", None)
    monkeypatch.setenv("TRACEFUSE_CUDA", "magic")
    with pytest.raises(RuntimeError, match=re.escape("TRACEFUSE_CUDA='magic' is not understood")):
        tf.cuda.device_count()


def test_out_of_memory_names_the_request_and_what_is_allocated(monkeypatch):
    monkeypatch.setattr(devices, "_backend", device_backend(2, capacity=4096))
    kept = tf.ones(256, dtype=tf.float64, device="cuda:0")  # 2 KiB
    with pytest.raises(tf.cuda.OutOfMemoryError, match=re.escape(
            "CUDA out of memory. Tried to allocate 4.00 KiB. GPU 0 has a total capacity of 4.00 KiB of which "
            "2.00 KiB is free. Of the allocated memory 2.00 KiB is allocated by tracefuse.")):
        tf.zeros(512, dtype=tf.float64, device="cuda:0")
    assert tf.cuda.memory_allocated(0) == 2048 and kept.cpu().sum().item() == 256  # nothing lost
    assert tf.zeros(512, dtype=tf.float64, device="cuda:1").device == tf.device("cuda:1")  # per device


def test_a_failing_kernel_is_named_with_what_it_computes(interpret):
    from tracefuse.codegen.triton.launch import OpCall
    from tracefuse.ir import ops
    from tracefuse.runtime.backend import KernelLaunchError

    call = OpCall(ops.get("clone"), [], {}, None, tf.device("cuda:0"), provenance="IR:\n    %clone_1 = clone(%x)  # model.py:3")
    broken = call.kernel("broken_kernel", "@triton.jit\ndef broken_kernel(x_ptr):\n    tl.static_assert(False, 'boom')\n")
    with pytest.raises(KernelLaunchError, match=r"kernel broken_kernel \(broken_kernel_\w+\.py\) failed on cuda:0: "
                                                 r"(.|\n)*boom(.|\n)*%clone_1 = clone\(%x\)  # model.py:3"):
        call.launch(broken, (1,), call.empty((1,), tf.float32))
