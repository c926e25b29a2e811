"""multi_tensor_sgd and multi_tensor_adam on the interpret backend against the CPU (the NumPy
implementations): every option, every float dtype, 0-dim, empty and odd-sized parameters, 1, 3
and 50 tensors in ONE launch, outputs written into their inputs' memory, and the optimizers
stepping parameters that live on the device."""
import itertools

import numpy as np
import pytest

import tracefuse as tf
from conftest import assert_device_matches
from tracefuse.codegen.triton import recording
from tracefuse.codegen.triton.launch import placement
from tracefuse.dispatch import dispatch

pytestmark = pytest.mark.usefixtures("interpret")

FLOATS = [tf.float64, tf.float32, tf.float16, tf.bfloat16]
SHAPES = [(3, 5), (7,), (), (0,), (1030,)]  # a 0-dim, an empty and a two-block parameter


def _tol(dtype):
    """The kernels repeat the CPU's roundings op by op: about one ulp apart at most."""
    return {tf.float64: dict(rtol=1e-15, atol=1e-15), tf.float32: dict(rtol=2.4e-7, atol=0),
            tf.float16: dict(rtol=1e-3, atol=0), tf.bfloat16: dict(rtol=8e-3, atol=0)}[dtype]


def _random(rng, shape, dtype, scale=1.0, positive=False):
    values = rng.standard_normal(shape) * scale
    return tf.tensor(np.abs(values) if positive else values).to(dtype)


def sgd(**attrs):
    return lambda *ts: dispatch("multi_tensor_sgd", *ts, **attrs)


def adam(**attrs):
    return lambda *ts: dispatch("multi_tensor_adam", *ts, **attrs)


def _sgd_inputs(rng, shapes, dtypes, has_buffers):
    params = [_random(rng, s, dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]
    grads = [_random(rng, p.shape, p.dtype, 2.0) for p in params]
    buffers = [_random(rng, p.shape, p.dtype) for p in params] if has_buffers else []
    return params + grads + buffers


def _adam_inputs(rng, shapes, dtypes, amsgrad, step_dtype=tf.float32):
    params = [_random(rng, s, dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]
    state = [[_random(rng, p.shape, p.dtype, 2.0) for p in params],  # grads
             [_random(rng, p.shape, p.dtype, 0.1) for p in params]]  # exp_avgs
    state += [[_random(rng, p.shape, p.dtype, 0.1, positive=True) for p in params]
              for _ in range(2 if amsgrad else 1)]  # exp_avg_sqs (and their maxima)
    steps = [tf.tensor(float(k % 7 * 13), dtype=step_dtype) for k in range(len(params))]
    return params + [t for group in state for t in group] + steps


def _launches(fn, *tensors):
    on_device = [t.cuda() for t in tensors]
    with recording() as records:
        fn(*on_device)
    return [r.kernel.name for r in records]


# --- SGD ----------------------------------------------------------------------------------------------------

SGD_OPTIONS = [dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
               for m, d, n, w, x in itertools.product([0, 0.9], [0, 0.3], [False, True], [0, 0.1], [False, True])
               if not n or (m > 0 and d == 0)]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sgd_options_match_the_cpu(rng, options):
    for dtype, has_buffers in [(tf.float64, True), (tf.float32, False)]:
        has_buffers = has_buffers and options["momentum"] != 0
        inputs = _sgd_inputs(rng, SHAPES, [dtype], has_buffers)
        fn = sgd(n=len(SHAPES), lr=0.1, has_buffers=has_buffers, **options)
        assert_device_matches(fn, *inputs, **_tol(dtype))
        assert _launches(fn, *inputs) == ["multi_tensor_sgd_kernel"]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_sgd_in_every_float_dtype(rng, dtype):
    options = dict(momentum=0.9, dampening=0.2, nesterov=False, weight_decay=1e-2, maximize=True)
    for has_buffers in (True, False):
        inputs = _sgd_inputs(rng, SHAPES, [dtype], has_buffers)
        assert_device_matches(sgd(n=len(SHAPES), lr=0.3, has_buffers=has_buffers, **options), *inputs, **_tol(dtype))
    nesterov = dict(options, dampening=0, nesterov=True, maximize=False)
    inputs = _sgd_inputs(rng, SHAPES, [dtype], True)
    assert_device_matches(sgd(n=len(SHAPES), lr=1, has_buffers=True, **nesterov), *inputs, **_tol(dtype))


# --- Adam ---------------------------------------------------------------------------------------------------

ADAM_OPTIONS = [dict(amsgrad=a, weight_decay=w, maximize=x, decoupled_weight_decay=d)
                for a, w, x, d in itertools.product([False, True], [0, 0.1], [False, True], [False, True])
                if w or not d]
HYPER = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_adam_options_match_the_cpu(rng, options):
    for dtype in (tf.float64, tf.float32):
        inputs = _adam_inputs(rng, SHAPES, [dtype], options["amsgrad"])
        fn = adam(n=len(SHAPES), **HYPER, **options)
        assert_device_matches(fn, *inputs, **_tol(dtype))
        assert _launches(fn, *inputs) == ["multi_tensor_adam_kernel"]


@pytest.mark.parametrize("step_dtype", [tf.float32, tf.float64], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_adam_in_every_float_dtype(rng, dtype, step_dtype):
    """0-dim parameters take float64 arithmetic (rounded once), the others their compute type."""
    for options in (dict(amsgrad=True, weight_decay=0.1, maximize=True, decoupled_weight_decay=False),
                    dict(amsgrad=False, weight_decay=0.5, maximize=False, decoupled_weight_decay=True)):
        inputs = _adam_inputs(rng, SHAPES, [dtype], options["amsgrad"], step_dtype)
        hyper = dict(lr=0.3, beta1=0.2, beta2=0.5, eps=1e-3)  # lerp's other branch (weight >= 0.5)
        assert_device_matches(adam(n=len(SHAPES), **hyper, **options), *inputs, **_tol(dtype))


def test_adam_bias_corrections_over_many_steps(rng):
    """The step counters run through (1 - beta ** step) in float64 up to large counts."""
    shapes = [(5,)] * 6
    params = [_random(rng, s, tf.float64) for s in shapes]
    inputs = params + [_random(rng, s, tf.float64, 0.1, positive=True) for s in shapes * 3]
    steps = [tf.tensor(float(k), dtype=tf.float64) for k in (0, 1, 2, 99, 4095, 1_000_000)]
    assert_device_matches(adam(n=6, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0, amsgrad=False,
                               maximize=False, decoupled_weight_decay=False), *inputs, *steps, rtol=1e-15, atol=1e-15)


# --- many tensors, one launch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 50])
def test_any_number_of_tensors_is_one_launch(rng, count):
    shapes = [(int(n),) if k % 3 else (int(n), 3) for k, n in enumerate(rng.integers(1, 40, size=count))]
    inputs = _sgd_inputs(rng, shapes, [tf.float32], True)
    fn = sgd(n=count, lr=0.1, momentum=0.9, dampening=0, nesterov=True, weight_decay=0.1, maximize=False,
             has_buffers=True)
    assert_device_matches(fn, *inputs, **_tol(tf.float32))
    assert _launches(fn, *inputs) == ["multi_tensor_sgd_kernel"]
    inputs = _adam_inputs(rng, shapes, [tf.float32], True)
    fn = adam(n=count, **HYPER, amsgrad=True, weight_decay=0.1, maximize=False, decoupled_weight_decay=True)
    assert_device_matches(fn, *inputs, **_tol(tf.float32))
    assert _launches(fn, *inputs) == ["multi_tensor_adam_kernel"]


def test_mixed_dtypes_are_one_launch_per_dtype(rng):
    dtypes = [tf.float32, tf.float16, tf.float64, tf.bfloat16]
    inputs = _sgd_inputs(rng, SHAPES * 2, dtypes, True)
    fn = sgd(n=10, lr=0.1, momentum=0.5, dampening=0.1, nesterov=False, weight_decay=0, maximize=False,
             has_buffers=True)
    assert_device_matches(fn, *inputs, rtol=1e-3, atol=0)
    assert _launches(fn, *inputs) == ["multi_tensor_sgd_kernel"] * 4
    inputs = _adam_inputs(rng, SHAPES * 2, dtypes, False)
    fn = adam(n=10, **HYPER, amsgrad=False, weight_decay=0, maximize=False, decoupled_weight_decay=False)
    assert_device_matches(fn, *inputs, rtol=8e-3, atol=0)
    assert _launches(fn, *inputs) == ["multi_tensor_adam_kernel"] * 4


def test_non_contiguous_inputs(rng):
    params = [_random(rng, (4, 6), tf.float64).t(), _random(rng, (5,), tf.float64)]
    grads = [_random(rng, (6, 4), tf.float64), _random(rng, (10,), tf.float64)[::2]]
    fn = sgd(n=2, lr=0.1, momentum=0, dampening=0, nesterov=False, weight_decay=0.1, maximize=False,
             has_buffers=False)
    assert_device_matches(fn, *params, *grads, rtol=1e-15, atol=1e-15)


# --- in place: outputs written into the inputs' memory ----------------------------------------------------------


def test_updates_written_into_the_inputs_memory_spanning_several_programs(rng):
    """What the graph executor asks for: output j in the memory of the input it updates. A tensor
    of several chunks still increments its step once (the last of its programs writes it)."""
    shapes = [(3000,), (), (0,), (17, 3)]
    n = len(shapes)
    inputs = _adam_inputs(rng, shapes, [tf.float32], True)
    options = dict(n=n, **HYPER, amsgrad=True, weight_decay=0.1, maximize=False, decoupled_weight_decay=False)
    expected = dispatch("multi_tensor_adam", *inputs, **options)
    device = [t.cuda() for t in inputs]
    updated = device[:n] + device[2 * n:]  # every input but the gradients
    with placement({j: t._data for j, t in enumerate(updated)}) as placed, recording() as records:
        outs = dispatch("multi_tensor_adam", *device, **options)
    assert placed == set(range(len(updated))) and len(records) == 1
    for out, target, want in zip(outs, updated, expected):
        assert out._data is target._data
        np.testing.assert_allclose(out.cpu().float().numpy(), want.float().numpy(), **_tol(tf.float32))
    assert [s.item() for s in device[-n:]] == [s.item() + 1 for s in inputs[-n:]]

    inputs = _sgd_inputs(rng, shapes, [tf.bfloat16], True)
    options = dict(n=n, lr=0.1, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.1, maximize=True,
                   has_buffers=True)
    expected = dispatch("multi_tensor_sgd", *inputs, **options)
    device = [t.cuda() for t in inputs]
    updated = device[:n] + device[2 * n:]
    with placement({j: t._data for j, t in enumerate(updated)}) as placed:
        outs = dispatch("multi_tensor_sgd", *device, **options)
    assert placed == set(range(2 * n))
    for out, target, want in zip(outs, updated, expected):
        assert out._data is target._data
        np.testing.assert_allclose(out.cpu().float().numpy(), want.float().numpy(), **_tol(tf.bfloat16))


def test_a_step_counter_on_the_cpu_is_refused_clearly(rng):
    inputs = [t.cuda() for t in _adam_inputs(rng, [(3,)], [tf.float32], False)]
    inputs[-1] = inputs[-1].cpu()
    with pytest.raises(RuntimeError, match="needs every tensor on the device"):
        dispatch("multi_tensor_adam", *inputs, n=1, **HYPER, amsgrad=False, weight_decay=0, maximize=False,
                 decoupled_weight_decay=False)


# --- the optimizers on device parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda ps: tf.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: tf.optim.Adam(ps, lr=0.05, amsgrad=True),
    lambda ps: tf.optim.AdamW(ps, lr=0.05, maximize=True),
], ids=["sgd", "adam", "adamw"])
def test_optimizers_step_device_parameters_with_one_update_launch(rng, make):
    """The first step runs on the CPU (state creation), then the state moves to the device with
    load_state_dict (step counters included), and the next steps match the CPU's."""
    shapes = [(4, 3), (3,), (), (40,)]
    cpu = [_random(rng, s, tf.float64).requires_grad_() for s in shapes]
    cpu_opt = make(cpu)
    for p in cpu:
        p.grad = _random(rng, p.shape, p.dtype)
    cpu_opt.step()
    device = [p.detach().cuda().requires_grad_() for p in cpu]
    device_opt = make(device)
    device_opt.load_state_dict(cpu_opt.state_dict())
    for state in device_opt.state.values():
        assert all(v.device == tf.device("cuda:0") for v in state.values() if isinstance(v, tf.Tensor))
    kernel = "multi_tensor_sgd_kernel" if isinstance(cpu_opt, tf.optim.SGD) else "multi_tensor_adam_kernel"
    for _ in range(3):
        for p, q in zip(cpu, device):
            p.grad = _random(rng, p.shape, p.dtype)
            q.grad = p.grad.cuda()
        cpu_opt.step()
        with recording() as records:
            device_opt.step()
        assert [r.kernel.name for r in records].count(kernel) == 1
        for p, q in zip(cpu, device):
            np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-15, atol=1e-15)
    for p, q in zip(cpu, device):
        for name, value in cpu_opt.state[p].items():
            np.testing.assert_allclose(device_opt.state[q][name].cpu().numpy(), value.numpy(), rtol=1e-15, atol=1e-15)


# --- the kernels build for real GPUs --------------------------------------------------------------------------------


def test_kernels_build_for_sm80_and_sm90_without_spills(rng, tmp_path, monkeypatch):
    """Compiled to cubin with no GPU present (in a subprocess: this one interprets)."""
    from tracefuse.codegen.triton import aot

    monkeypatch.setenv("TRACEFUSE_CACHE_DIR", str(tmp_path))
    with recording() as records:
        inputs = [t.cuda() for t in _sgd_inputs(rng, SHAPES, [tf.bfloat16], True)]
        sgd(n=len(SHAPES), lr=0.1, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.1, maximize=True,
            has_buffers=True)(*inputs)
        inputs = [t.cuda() for t in _adam_inputs(rng, SHAPES, [tf.float32], True)]
        adam(n=len(SHAPES), **HYPER, amsgrad=True, weight_decay=0.1, maximize=True,
             decoupled_weight_decay=False)(*inputs)
    rows = aot.build_report(records, archs=(80, 90))
    assert len(rows) == 4
    for row in rows:
        assert row.error is None and row.spills == 0, (row, row.error)


@pytest.mark.parametrize("make", [
    lambda ps: tf.optim.Adam(ps, lr=0.01, weight_decay=0.01, amsgrad=True),
    lambda ps: tf.optim.AdamW(ps, lr=0.02, betas=(0.8, 0.99)),
    lambda ps: tf.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
], ids=["Adam-amsgrad", "AdamW", "SGD-nesterov"])
def test_twenty_float64_steps_stay_with_the_cpu(rng, make):
    """Long enough for beta ** step to hit the steps where NumPy's pow is one ulp off the
    kernel's correctly rounded one (step 7 for beta2 = 0.999): the runs agree to ~1e-15."""
    cpu = [tf.tensor(rng.standard_normal(s)).requires_grad_() for s in [(64,), (), (3, 5)]]
    device = [p.detach().cuda().requires_grad_() for p in cpu]
    opt_cpu, opt_device = make(cpu), make(device)
    for _ in range(20):
        for a, b in zip(cpu, device):
            g = tf.tensor(rng.standard_normal(a.shape))
            a.grad, b.grad = g, g.cuda()
        opt_cpu.step()
        opt_device.step()
    for a, b in zip(cpu, device):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().numpy(), rtol=1e-14, atol=1e-15)
