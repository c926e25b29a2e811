"""Compiled graphs on a CUDA device (the interpret backend): values, fused kernels, in-place
results without copies, explain/dump of the generated kernels, and the backend's errors."""
import re

import numpy as np
import pytest

import tracefuse as tf
from tracefuse.codegen import triton as tt
from tracefuse.tracer.context import TracingError
from tests.conftest import ON_GPU

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
    if ON_GPU:  # a GPU's exp is within 2 float32 ulp of the CPU's: a rounding may land one half-ulp away
        ulp = 2.0 ** (-7 if dtype is tf.bfloat16 else -10)
        np.testing.assert_allclose(out.float().numpy(), _pointwise(x, y).float().numpy(), rtol=ulp, atol=ulp)
        return
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


# --- whole models on cuda:0 against eager CPU twins ------------------------------------------------

import copy  # noqa: E402

from tracefuse import nn  # noqa: E402
from tracefuse.nn import functional as F  # noqa: E402
from tests.tracer.test_compiled_training import (  # noqa: E402
    LanguageModel, PackedTagger, make_step, sequence_ce, tagger_batch, token_batch)

TIGHT = dict(rtol=1e-9, atol=1e-11)


def _cpu(t):
    return t.detach().cpu().numpy() if isinstance(t, tf.Tensor) else t


def _to(device, values):
    return [v.to(device) if isinstance(v, tf.Tensor) else v for v in values]


def test_two_layer_lstm_forward_is_at_most_two_launches_per_layer():
    tf.manual_seed(0)
    model = nn.LSTM(6, 8, num_layers=2).double()
    twin = copy.deepcopy(model)
    model.cuda()
    x = tf.randn(5, 3, 6, dtype=tf.float64)
    compiled = tf.compile(model)
    (out, (h, c)), (e_out, (e_h, e_c)) = compiled(x.cuda()), twin(x)
    for ours, theirs in [(out, e_out), (h, e_h), (c, e_c)]:
        assert ours.device == tf.device("cuda:0")
        np.testing.assert_allclose(_cpu(ours), theirs.detach().numpy(), **TIGHT)
    report = tf.explain(compiled, x.cuda())
    assert report.kernel_count <= 4, list(report.kernels)


def test_packed_bidirectional_gru_forward_and_backward_match_cpu():
    tf.manual_seed(1)
    model = PackedTagger().double()
    twin = copy.deepcopy(model)
    model.cuda()
    rng = np.random.default_rng(0)
    x, lengths, _ = tagger_batch(rng)
    compiled = tf.compile(model)
    out, expected = compiled(x.cuda(), lengths), twin(x, lengths)
    np.testing.assert_allclose(_cpu(out), expected.detach().numpy(), **TIGHT)
    out.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad.device == tf.device("cuda:0"), name
        np.testing.assert_allclose(_cpu(p.grad), q.grad.numpy(), err_msg=name, **TIGHT)


def train_lm_on_device_like_cpu(steps, options=None):
    """A compiled LM training step on cuda:0 (compile `options`) against its eager CPU twin for
    `steps` steps: losses, gradient norms and parameters agree; returns the compiled step."""
    tf.manual_seed(2)
    model = LanguageModel().double()
    twin = copy.deepcopy(model)
    model.cuda()
    opt, twin_opt = tf.optim.Adam(model.parameters(), lr=0.01), tf.optim.Adam(twin.parameters(), lr=0.01)
    compiled = tf.compile(make_step(model, opt, sequence_ce, 2.0), options=options)
    eager = make_step(twin, twin_opt, sequence_ce, 2.0)
    for s in range(steps):
        batch = token_batch(np.random.default_rng(s))
        (loss, total), (e_loss, e_total) = compiled(*_to("cuda:0", batch)), eager(*batch)
        np.testing.assert_allclose(loss.item(), e_loss.item(), err_msg=f"step {s}", **TIGHT)
        np.testing.assert_allclose(total.item(), e_total.item(), err_msg=f"step {s}", **TIGHT)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(_cpu(p), q.detach().numpy(), err_msg=f"step {s} {name}", **TIGHT)
    return compiled


def test_language_model_training_step_on_device_matches_cpu():
    compiled = train_lm_on_device_like_cpu(3)
    step = tf.explain(compiled, *_to("cuda:0", token_batch(np.random.default_rng(9))))
    assert step.backend == "triton" and step.kernel_count > 0


def test_clip_grad_norm_over_200_parameters_is_two_launches():
    params = [tf.randn(1 + k % 5, dtype=tf.float64) for k in range(200)]
    grads = [tf.randn(*p.shape, dtype=tf.float64) for p in params]
    on_device = [p.cuda().requires_grad_() for p in params]
    for p, g in zip(on_device, grads):
        p.grad = g.cuda()

    compiled = tf.compile(lambda ps: nn.utils.clip_grad_norm_(ps, max_norm=0.5))
    total = compiled(on_device)
    cpu = [p.clone().requires_grad_() for p in params]
    for p, g in zip(cpu, grads):
        p.grad = g.clone()
    expected = nn.utils.clip_grad_norm_(cpu, max_norm=0.5)
    np.testing.assert_allclose(total.item(), expected.item(), rtol=1e-13)
    for p, q in zip(on_device, cpu):
        np.testing.assert_allclose(_cpu(p.grad), q.grad.numpy(), rtol=1e-13)
    assert tf.explain(compiled, on_device).kernel_count == 2


def test_cross_entropy_head_on_device():
    logits, target = tf.randn(7, 5, dtype=tf.float64), tf.tensor([0, 4, 1, 1, 3, 2, 0])
    compiled = tf.compile(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1))
    np.testing.assert_allclose(compiled(logits.cuda(), target.cuda()).item(),
                               F.cross_entropy(logits, target, label_smoothing=0.1).item(), rtol=1e-13)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_linear_layers_run_as_one_matmul_kernel_each(activation):
    tf.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), activation(), nn.Linear(7, 3)).double()
    twin = copy.deepcopy(model)
    model.cuda()
    x = tf.randn(4, 5, dtype=tf.float64)
    compiled = tf.compile(model)
    out, expected = compiled(x.cuda()), twin(x)
    np.testing.assert_allclose(_cpu(out), expected.detach().numpy(), rtol=1e-13)
    out.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        np.testing.assert_allclose(_cpu(p.grad), q.grad.numpy(), rtol=1e-13, err_msg=name)
    report = tf.explain(compiled, x.cuda())
    assert report.kernel_count == 2 and all(k.startswith("matmul_epilogue_kernel") for k in report.kernels)
    assert f"= {activation.__name__.lower()}(%add_1)" in report.kernels["matmul_epilogue_kernel"]


def test_linear_on_a_sequence_fuses_through_the_reshape():
    tf.manual_seed(4)
    head = nn.Linear(6, 4).double()
    twin = copy.deepcopy(head)
    head.cuda()
    x = tf.randn(5, 3, 6, dtype=tf.float64)
    compiled = tf.compile(lambda t: head(t).tanh())
    np.testing.assert_allclose(_cpu(compiled(x.cuda())), twin(x).tanh().detach().numpy(), rtol=1e-13)
    report = tf.explain(compiled, x.cuda())
    assert report.kernel_count == 1 and list(report.kernels) == ["matmul_epilogue_kernel"]


def test_an_input_read_through_a_view_is_updated_in_place_after_its_last_reader():
    def step(w, g):
        y = w.t().matmul(g)  # reads w through a transpose view, before the update
        w.sub_(g * 0.5)
        return y

    compiled = tf.compile(step)
    w, g = tf.randn(3, 3, dtype=tf.float64), tf.randn(3, 3, dtype=tf.float64)
    wd, gd = w.cuda(), g.cuda()
    for _ in range(2):
        out, expected = compiled(wd, gd), step(w, g)
        np.testing.assert_allclose(_cpu(out), expected.numpy(), rtol=1e-13)
        np.testing.assert_allclose(_cpu(wd), w.numpy(), rtol=1e-13)
    assert tf.explain(compiled, wd, gd).kernel_count == 2  # the matmul and the update: no copy back
