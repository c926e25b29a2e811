"""multi_tensor_sgd / multi_tensor_adam (the NumPy implementations) against the per-parameter
sequence of tensor ops that tracefuse.optim ran before them: equal bit for bit, for every float
dtype, 0-dim, empty and odd-sized parameters, every option, several steps; and the optimizers
dispatch one op per parameter group."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import tracefuse
from tracefuse import no_grad
from tracefuse.dispatch import dispatch
from tracefuse.tracer.api import compiled_callable

FLOATS = [tracefuse.float64, tracefuse.float32, tracefuse.float16, tracefuse.bfloat16]
SHAPES = [(3, 4), (5,), (), (0,), (7, 1)]


# --- the reference: the optimizers' former loop bodies, tensor op by tensor op --------------------------


def reference_sgd(params, grads, buffers, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """Updates params (and buffers, created where None) in place; returns the buffers."""
    new_buffers = []
    for p, grad, buf in zip(params, grads, buffers):
        grad = -grad if maximize else grad
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        if momentum != 0:
            if buf is None:
                buf = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        p.add_(grad, alpha=-lr)
        new_buffers.append(buf)
    return new_buffers


def _lerp_(x, end, weight):
    diff = end - x
    if abs(weight) < 0.5:
        return x.add_(diff.mul_(weight))
    return x.copy_(end - diff.mul_(1 - weight))


def reference_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                   weight_decay, amsgrad, maximize, decoupled_weight_decay):
    """Updates everything in place."""
    for i, p in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        step = steps[i].add_(1).double()
        if weight_decay != 0:
            if decoupled_weight_decay:
                p.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(p, alpha=weight_decay)
        _lerp_(exp_avg, grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).add_(grad.mul(1 - beta2).mul_(grad))
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        if amsgrad:
            second_moment = max_exp_avg_sqs[i]
            second_moment.copy_(second_moment.maximum(exp_avg_sq))
        else:
            second_moment = exp_avg_sq
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        p.add_(exp_avg.mul(-step_size).div_(denom))


# --- helpers ---------------------------------------------------------------------------------------------


def _random(rng, shape, dtype, scale=1.0, positive=False):
    values = rng.standard_normal(shape) * scale
    return tracefuse.tensor(np.abs(values) if positive else values).to(dtype)


def _clones(ts):
    return [t.clone() for t in ts]


def assert_bitwise(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype is b.dtype and tuple(a.shape) == tuple(b.shape), (a.dtype, b.dtype, a.shape, b.shape)
        x, y = a.detach().numpy(), b.detach().numpy()
        assert x.tobytes() == y.tobytes(), (x, y)


SGD_OPTIONS = [dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
               for m, d, n, w, x in itertools.product([0, 0.9, 1], [0, 0.3], [False, True], [0, 0.1, 1], [False, True])
               if not n or (m > 0 and d == 0)]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_multi_tensor_sgd_equals_the_per_parameter_ops_bitwise(rng, dtype, options):
    params = [_random(rng, s, dtype) for s in SHAPES]
    ours, theirs_params = _clones(params), _clones(params)
    buffers, theirs_buffers = None, [None] * len(params)
    n = len(params)
    with no_grad():
        for step in range(3):
            grads = [_random(rng, s, dtype, scale=3.0) for s in SHAPES]
            lr = [0.1, 0.37, 2.0][step]
            theirs_buffers = reference_sgd(theirs_params, grads, theirs_buffers, lr=lr, **options)
            has_buffers = buffers is not None
            outs = dispatch("multi_tensor_sgd", *ours, *grads, *(buffers or []), n=n, lr=lr,
                            has_buffers=has_buffers, **options)
            assert len(outs) == (2 * n if options["momentum"] else n)
            ours = list(outs[:n])
            buffers = list(outs[n:]) or None
            assert_bitwise(ours, theirs_params)
            if options["momentum"]:
                assert_bitwise(buffers, theirs_buffers)
                for b, g in zip(buffers, grads):
                    assert not np.shares_memory(b.numpy(), g.numpy())


ADAM_OPTIONS = [dict(amsgrad=a, weight_decay=w, maximize=x, decoupled_weight_decay=d)
                for a, w, x, d in itertools.product([False, True], [0, 0.1, 1], [False, True], [False, True])
                if w or not d]


@pytest.mark.parametrize("step_dtype", [tracefuse.float32, tracefuse.float64], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_multi_tensor_adam_equals_the_per_parameter_ops_bitwise(rng, dtype, step_dtype, options):
    n = len(SHAPES)
    params = [_random(rng, s, dtype) for s in SHAPES]
    exp_avgs = [_random(rng, s, dtype, 0.1) for s in SHAPES]
    exp_avg_sqs = [_random(rng, s, dtype, 0.1, positive=True) for s in SHAPES]
    maxes = [v * 1.5 for v in exp_avg_sqs] if options["amsgrad"] else []
    steps = [tracefuse.tensor(float(k), dtype=step_dtype) for k in (0, 1, 7, 999, 12345)]
    mine = [params, exp_avgs, exp_avg_sqs] + ([maxes] if maxes else []) + [steps]
    theirs = [_clones(group) for group in mine]
    mine = [_clones(group) for group in mine]
    with no_grad():
        for step in range(3):
            grads = [_random(rng, s, dtype, scale=2.0) for s in SHAPES]
            hyper = dict(lr=[1e-3, 0.05, 0.3][step], beta1=[0.9, 0.3, 0.8][step], beta2=[0.999, 0.95, 0.5][step],
                         eps=[1e-8, 1e-6, 1e-3][step])
            reference_adam(theirs[0], grads, theirs[1], theirs[2], theirs[3] if maxes else None, theirs[-1],
                           **hyper, **options)
            outs = dispatch("multi_tensor_adam", *mine[0], *grads, *[t for group in mine[1:] for t in group],
                            n=n, **hyper, **options)
            assert len(outs) == n * len(mine)
            mine = [list(outs[k * n:(k + 1) * n]) for k in range(len(mine))]
            for ours_group, theirs_group in zip(mine, theirs):
                assert_bitwise(ours_group, theirs_group)


def test_adam_on_a_float16_step_counter_and_non_finite_values(rng):
    """Odd inputs follow the same arithmetic: inf/nan gradients, a float16 step counter."""
    with no_grad():
        for dtype in FLOATS:
            shapes = [(4,), ()]
            grads = [tracefuse.tensor([1.0, float("inf"), float("nan"), -2.0]).to(dtype),
                     tracefuse.tensor(-0.0).to(dtype)]
            state = [[_random(rng, s, dtype) for s in shapes], [_random(rng, s, dtype) for s in shapes],
                     [_random(rng, s, dtype, positive=True) for s in shapes],
                     [_random(rng, s, dtype, positive=True) for s in shapes],
                     [tracefuse.tensor(3.0, dtype=tracefuse.float16) for _ in shapes]]
            theirs = [_clones(g) for g in state]
            options = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, amsgrad=True, maximize=False,
                           decoupled_weight_decay=False)
            reference_adam(theirs[0], grads, *theirs[1:], **options)
            outs = dispatch("multi_tensor_adam", *state[0], *grads, *[t for g in state[1:] for t in g], n=2, **options)
            for k, group in enumerate(theirs):
                assert_bitwise(list(outs[2 * k:2 * k + 2]), group)


# --- the optimizers run one op per parameter group ----------------------------------------------------------


@pytest.mark.parametrize("make", [lambda ps: tracefuse.optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: tracefuse.optim.SGD(ps, lr=0.1),
                                  lambda ps: tracefuse.optim.Adam(ps, lr=0.1, amsgrad=True),
                                  lambda ps: tracefuse.optim.AdamW(ps, lr=0.1)],
                         ids=["sgd-momentum", "sgd", "adam", "adamw"])
def test_a_compiled_optimizer_step_is_one_op_per_parameter_group(rng, make):
    params = [tracefuse.zeros(k % 4 + 1, requires_grad=True) for k in range(20)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = make([{"params": params[:15]}, {"params": params[15:], "lr": 0.01}])
    twin_opt = make([{"params": twins[:15]}, {"params": twins[15:], "lr": 0.01}])
    compiled = tracefuse.compile(lambda: opt.step())
    for _ in range(3):  # the first step creates the state (eagerly)
        for p, q in zip(params, twins):
            p.grad = _random(rng, p.shape, p.dtype)
            q.grad = p.grad.clone()
        compiled()
        twin_opt.step()
        assert_bitwise(params, twins)
    forward = compiled_callable(compiled).entries[0].captured.forward
    ops = [n.op for n in forward.nodes if n.op != "input"]
    assert len(ops) == 2 and ops[0] == ops[1] and ops[0] in ("multi_tensor_sgd", "multi_tensor_adam"), ops


def test_parameters_without_gradients_are_skipped_and_state_is_created_on_first_use(rng):
    params = [tracefuse.zeros(3, requires_grad=True) for _ in range(3)]
    opt = tracefuse.optim.SGD(params, lr=0.1, momentum=0.9)
    params[1].grad = tracefuse.ones(3)
    opt.step()
    assert list(opt.state) == [params[1]] and params[0].abs().sum().item() == 0
    for p in params:
        p.grad = tracefuse.ones(3)
    opt.step()  # one op for the parameter with a buffer, one for those whose buffer is created
    assert [len(opt.state[p]) for p in params] == [1, 1, 1]
    np.testing.assert_allclose(params[1].detach().numpy(), -0.1 - 0.19, rtol=1e-6)
    np.testing.assert_allclose(params[0].detach().numpy(), -0.1, rtol=1e-6)
    adam = tracefuse.optim.Adam(params, lr=0.1)
    params[2].grad = None
    adam.step()
    assert len(adam.state) == 2 and adam.state[params[0]]["step"].item() == 1.0
