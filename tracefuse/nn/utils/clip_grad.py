"""Gradient clipping, as torch.nn.utils.clip_grad.

The total norm is ONE `multi_tensor_norm` op and the rescaling ONE `multi_tensor_scale` op,
whatever the number of parameters: the compiler fuses them into a single reduction kernel and a
single scaling kernel (DESIGN.md, principle 3). The clip coefficient stays a 0-dim tensor, so
nothing waits for the device to decide whether to clip. `foreach` is accepted for PyTorch
compatibility: every device takes the multi-tensor path.
"""
from __future__ import annotations

import types
import warnings

from ... import autograd
from ...creation import tensor
from ...dispatch import dispatch
from ...tensor import Tensor

__all__ = ["clip_grad_norm", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]


def _as_list(tensors):
    return [tensors] if isinstance(tensors, Tensor) else list(tensors)


def _grads(parameters):
    return [p.grad for p in _as_list(parameters) if p.grad is not None]


@autograd.no_grad()
def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The norm of `tensors` as if the norms of each were concatenated into a single vector."""
    tensors = _as_list(tensors)
    norm_type = float(norm_type)
    if not tensors:
        return tensor(0.0)
    total_norm = dispatch("multi_tensor_norm", *tensors, p=norm_type)
    if error_if_nonfinite and not total_norm.isfinite().item():
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )
    return total_norm


@autograd.no_grad()
def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """Scale the gradients in place by min(max_norm / (total_norm + 1e-6), 1)."""
    grads = _grads(parameters)
    if not grads:
        return
    # The op computes min(max_norm / (total_norm + 1e-6), 1) itself and multiplies by it, clamped to
    # 1 rather than skipped, which would need a host-side `if` waiting for the device.
    scaled = dispatch("multi_tensor_scale", total_norm, *grads, max_norm=float(max_norm))
    for g, s in zip(grads, scaled):
        g._assign(s)


@autograd.no_grad()
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Clip the gradient norm of `parameters` (viewed as one vector) in place; returns the total norm."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)  # a generator is read once, for both passes
        if is_generator and not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    total_norm = get_total_norm(_grads(parameters), norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Deprecated alias of `clip_grad_norm_`."""
    warnings.warn(
        "`tracefuse.nn.utils.clip_grad_norm` is now deprecated in favor of `tracefuse.nn.utils.clip_grad_norm_`.",
        FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


@autograd.no_grad()
def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient into [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        g.clamp_(min=-clip_value, max=clip_value)
