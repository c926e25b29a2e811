"""Optimizer steps as multi-tensor ops: `multi_tensor_sgd` and `multi_tensor_adam` (ir/ops.py).

Each parameter is updated on its own, by the same operations, in the same order and with the same
roundings as torch.optim's single-tensor loop written with tensor ops (what tracefuse/optim did
op by op before these ops existed), so the results are equal bit for bit:

  * every op computes in its result's compute type and rounds to the result's dtype: float16 and
    bfloat16 compute in float32 and round after each op;
  * a Python scalar operand is first converted to the compute type (`np.array(x).astype(ct)`);
  * `x.add(y, alpha=a)` is `x + y * a`, with no multiplication when a == 1;
  * Adam's bias corrections are float64 0-dim values derived from the step counter; combined
    with a parameter-sized tensor they are converted to its compute type first, but combined
    with a 0-dim parameter they promote the arithmetic to float64 (0-dim operands of one tier
    promote), which then rounds once, when the parameter is written.

The implementations receive the stored arrays (the dtype rule is `custom`) and return new arrays.
"""
from __future__ import annotations

import numpy as np

from ... import dtypes
from ...ir.ops import register_impl

_FLOAT64 = np.dtype(np.float64)


class _Arithmetic:
    """Ops whose result has dtype `dtype`, the dispatcher's way: operands (arrays or Python
    scalars) converted to the compute type, the result rounded to `dtype`."""

    def __init__(self, np_dtype):
        self.dtype = np.dtype(np_dtype)
        self.compute = dtypes.compute_type(dtypes.from_numpy_dtype(self.dtype))

    def __call__(self, ufunc, *operands):
        converted = [np.asarray(x).astype(self.compute, copy=False) for x in operands]
        return np.asarray(ufunc(*converted)).astype(self.dtype, copy=False)

    def scaled(self, x, alpha):
        """`y.add(x, alpha=alpha)`'s second operand: x * alpha, or x itself when alpha == 1."""
        return x if alpha == 1 else self(np.multiply, x, alpha)


def _check_floating(op_name, arrays):
    for a in arrays:
        if not dtypes.from_numpy_dtype(a.dtype).is_floating_point:
            raise TypeError(f"{op_name} updates floating-point tensors only, got {a.dtype.name}")


def _groups(tensors, n, count):
    assert len(tensors) == n * count, (len(tensors), n, count)
    return [list(tensors[k * n:(k + 1) * n]) for k in range(count)]


# --- SGD ---------------------------------------------------------------------------------------------


def sgd_update(param, grad, buffer, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """(new param, new momentum buffer or None) for one parameter: torch.optim.SGD's loop body."""
    op = _Arithmetic(param.dtype)
    if maximize:
        grad = op(np.negative, grad)
    if weight_decay != 0:
        grad = op(np.add, grad, op.scaled(param, weight_decay))
    if momentum != 0:
        if buffer is None:
            buffer = np.array(grad, copy=True)  # grad.detach().clone()
        else:
            buffer = op(np.multiply, buffer, momentum)
            buffer = op(np.add, buffer, op.scaled(grad, 1 - dampening))
        grad = op(np.add, grad, op.scaled(buffer, momentum)) if nesterov else buffer
    else:
        buffer = None
    return op(np.add, param, op.scaled(grad, -lr)), buffer


@register_impl("multi_tensor_sgd")
def multi_tensor_sgd(*tensors, n, lr, momentum, dampening, weight_decay, nesterov, maximize, has_buffers):
    groups = _groups(tensors, n, 3 if has_buffers else 2)
    params, grads = groups[0], groups[1]
    _check_floating("multi_tensor_sgd", params)
    buffers = groups[2] if has_buffers else [None] * n
    new_params, new_buffers = [], []
    for p, g, b in zip(params, grads, buffers):
        p, b = sgd_update(p, g, b, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                          nesterov=nesterov, maximize=maximize)
        new_params.append(p)
        new_buffers.append(b)
    return tuple(new_params) + (tuple(new_buffers) if momentum != 0 else ())


# --- Adam --------------------------------------------------------------------------------------------


def adam_bias_corrections(step, beta1, beta2, lr):
    """(step_size, bias_correction2_sqrt) as float64 0-dim values, from the (incremented) step:
    lr / (1 - beta1 ** step) and (1 - beta2 ** step) ** 0.5."""
    f64 = _Arithmetic(_FLOAT64)
    step = np.asarray(step).astype(_FLOAT64)  # step.double()
    bias_correction1 = f64(np.subtract, 1, f64(np.power, beta1, step))
    bias_correction2_sqrt = f64(np.power, f64(np.subtract, 1, f64(np.power, beta2, step)), 0.5)
    return f64(np.divide, lr, bias_correction1), bias_correction2_sqrt


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay,
                amsgrad, maximize, decoupled_weight_decay):
    """(param, exp_avg, exp_avg_sq, max_exp_avg_sq or None, step), all new, for one parameter:
    torch.optim.Adam's single-tensor loop body, as tracefuse/optim wrote it with tensor ops."""
    op = _Arithmetic(param.dtype)
    if maximize:
        grad = op(np.negative, grad)
    step = _Arithmetic(step.dtype)(np.add, step, 1)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param = op(np.multiply, param, 1 - lr * weight_decay)
        else:
            grad = op(np.add, grad, op.scaled(param, weight_decay))
    # exp_avg.lerp_(grad, 1 - beta1), PyTorch's formula (exact at both ends of the weight range)
    weight = 1 - beta1
    diff = op(np.subtract, grad, exp_avg)
    if abs(weight) < 0.5:
        exp_avg = op(np.add, exp_avg, op(np.multiply, diff, weight))
    else:
        exp_avg = op(np.subtract, grad, op(np.multiply, diff, 1 - weight))
    # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq = op(np.add, op(np.multiply, exp_avg_sq, beta2), op(np.multiply, op(np.multiply, grad, 1 - beta2), grad))

    step_size, bias_correction2_sqrt = adam_bias_corrections(step, beta1, beta2, lr)
    if amsgrad:
        max_exp_avg_sq = op(np.maximum, max_exp_avg_sq, exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        max_exp_avg_sq = None
        second_moment = exp_avg_sq
    root = op(np.sqrt, second_moment)
    # With a 0-dim parameter the float64 0-dim corrections promote the rest to float64.
    wide = _Arithmetic(_FLOAT64) if param.ndim == 0 else op
    denom = wide(np.add, wide(np.divide, root, bias_correction2_sqrt), eps)
    update = wide(np.divide, wide(np.multiply, exp_avg, _Arithmetic(_FLOAT64)(np.negative, step_size)), denom)
    param = wide(np.add, param, update).astype(param.dtype, copy=False)  # written into the parameter
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq, step


@register_impl("multi_tensor_adam")
def multi_tensor_adam(*tensors, n, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    groups = _groups(tensors, n, 6 if amsgrad else 5)
    params, grads, exp_avgs, exp_avg_sqs = groups[:4]
    max_exp_avg_sqs = groups[4] if amsgrad else [None] * n
    steps = groups[-1]
    _check_floating("multi_tensor_adam", params + steps)
    outputs = [[] for _ in range(5)]
    for args in zip(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps):
        new = adam_update(*args, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                          amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        for out, value in zip(outputs, new):
            out.append(value)
    if not amsgrad:
        del outputs[3]
    return tuple(a for out in outputs for a in out)
