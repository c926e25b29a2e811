"""Compiled graphs on a CUDA device (the interpret backend): values, fused kernels, in-place
results without copies, explain/dump of the generated kernels, and the backend's errors."""
import re

import numpy as np
import pytest

import tracefuse as tf
from tracefuse.codegen import triton as tt
from tracefuse.tracer.context import TracingError

pytestmark = pytest.mark.usefixtures("interpret")


def _pointwise(x, y):
    return (x * y + 1.0).sigmoid() * x - y.exp()


def test_elementwise_chain_is_one_kernel_with_provenance():
    x, y = tf.randn(5, 7, dtype=tf.float64), tf.randn(7, dtype=tf.float64)
    compiled = tf.compile(_pointwise)
    out = compiled(x.cuda(), y.cuda())
    assert out.device == tf.device("cuda:0")
    np.testing.assert_allclose(out.cpu().numpy(), _pointwise(x, y).numpy(), rtol=1e-13)
    report = tf.explain(compiled, x.cuda(), y.cuda())
    assert report.kernel_count == 1 and list(report.kernels) == ["fused_1_kernel"]
    source = report.kernels["fused_1_kernel"]
    assert "%sigmoid_1 : f64[5,7] = sigmoid(%add_1)" in source and "test_compiled_triton.py:" in source
    assert re.search(r"sigmoid_1 = 1.0 / \(1.0 \+ tl.exp\(-add_1\)\)", source)
    assert "generated Triton kernels" in str(report)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16])
def test_fused_kernel_rounds_each_node_like_eager(dtype):
    x, y = tf.randn(9, 4).to(dtype), tf.randn(4).to(dtype)
    out = tf.compile(_pointwise)(x.cuda(), y.cuda()).cpu()
    assert out.dtype is dtype
    assert out.float().equal(_pointwise(x, y).float())


def test_in_place_update_is_written_into_the_input_without_a_copy():
    def step(x, y):
        x.mul_(2)
        x.add_(y)
        return x * y

    compiled = tf.compile(step)
    x, y = tf.randn(5, 7, dtype=tf.float64), tf.randn(7, dtype=tf.float64)
    xd, yd = x.cuda(), y.cuda()
    for _ in range(3):
        out = compiled(xd, yd)
        expected = step(x, y)
        assert out.cpu().equal(expected) and xd.cpu().equal(x)
    assert tf.explain(compiled, xd, yd).kernel_count == 1


def test_in_place_update_read_transposed_is_copied_back():
    def step(x):
        x.copy_(x.t() + 1)
        return x

    compiled = tf.compile(step)
    x = tf.randn(4, 4, dtype=tf.float64)
    xd = x.cuda()
    compiled(xd)
    compiled(xd)
    step(x)
    step(x)
    assert xd.cpu().equal(x)
    assert tf.explain(compiled, xd).kernel_count == 2  # the kernel and the write-back copy


def test_graph_inputs_on_cuda_pick_the_triton_backend_and_the_wrong_backend_is_an_error():
    x = tf.randn(3)
    with pytest.raises(ValueError, match=re.escape(
            "backend='triton' runs on CUDA devices, but this call has CPU tensors; move the model and its "
            "inputs with .to(device), or use backend='auto'")):
        tf.compile(lambda t: t * 2, backend="triton")(x)
    with pytest.raises(ValueError, match=re.escape(
            "backend='numpy' runs on the CPU, but this call has CUDA tensors (cuda:0)")):
        tf.compile(lambda t: t * 2, backend="numpy")(x.cuda())
    assert tf.compile(lambda t: t * 2, backend="triton")(x.cuda()).cpu().equal(x * 2)


def test_an_op_without_emitter_is_a_compile_error_naming_it(monkeypatch):
    monkeypatch.delitem(tt.EMITTERS, "exp")

    def f(x):
        return (x * 2).exp()

    with pytest.raises(TracingError, match=r"op 'exp' has no Triton emitter, so it cannot run on cuda:0 "
                                           r"\(at .*test_compiled_triton.py:\d+\)"):
        tf.compile(f)(tf.randn(3).cuda())


def test_dump_writes_the_generated_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEFUSE_DUMP", "kernels")
    monkeypatch.setenv("TRACEFUSE_DUMP_DIR", str(tmp_path))
    compiled = tf.compile(_pointwise)
    x, y = tf.randn(2, 3).cuda(), tf.randn(3).cuda()
    compiled(x, y)
    (folder,) = tmp_path.iterdir()
    text = (folder / "kernels.txt").read_text()
    assert text.startswith("# --- fused_1_kernel\n") and "@triton.jit\ndef fused_1_kernel(" in text
    assert (folder / "fused_1_kernel.py").read_text() == tf.explain(compiled, x, y).kernels["fused_1_kernel"]
