"""Adam and AdamW (torch.optim.Adam / AdamW), with amsgrad, maximize and (decoupled) weight decay."""
from __future__ import annotations

from ..creation import zeros, zeros_like
from ..dispatch import dispatch
from ..tensor import Tensor
from ..tracer import context as _trace_context
from .optimizer import Optimizer, _batches, _number, _scalar_dtype

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
            raise ValueError("betas must be either both floats or both Tensors")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _creates_state(self, group):
        return True

    def _update_group(self, group):
        """One `multi_tensor_adam` op for the group's parameters that have a gradient (one per
        device): the same arithmetic, bit for bit, as torch.optim's single-tensor Adam loop. The
        bias corrections are float64 arithmetic on the step counters inside the op (torch computes
        the same in Python floats), so a compiled training step reads no Python value from a tensor.
        The step counters live on the parameters' device, as with torch's fused Adam, so that a
        step on a GPU is one kernel."""
        amsgrad = group["amsgrad"]
        beta1, beta2 = group["betas"]
        options = dict(lr=_number(group["lr"]), beta1=_number(beta1), beta2=_number(beta2), eps=_number(group["eps"]),
                       weight_decay=_number(group["weight_decay"]), amsgrad=bool(amsgrad),
                       maximize=bool(group["maximize"]), decoupled_weight_decay=bool(group["decoupled_weight_decay"]))
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = zeros((), dtype=_scalar_dtype(), device=p.device)
                state["exp_avg"] = zeros_like(p)
                state["exp_avg_sq"] = zeros_like(p)
                if amsgrad:
                    state["max_exp_avg_sq"] = zeros_like(p)
            elif state["step"].device != p.device:
                _move_step(state, p.device)
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else []) + ["step"]
        for _, batch in _batches(params, lambda p: p.device):
            n, states = len(batch), [self.state[p] for p in batch]
            new = dispatch("multi_tensor_adam", *batch, *[p.grad for p in batch],
                           *[state[name] for name in names for state in states], n=n, **options)
            for p, value in zip(batch, new[:n]):
                p._assign(value)
            for k, name in enumerate(names, start=1):
                for state, value in zip(states, new[k * n:(k + 1) * n]):
                    state[name]._assign(value)


def _move_step(state, device):
    """A step counter kept elsewhere (set by hand) joins its parameter's device: eagerly only,
    since the compiled step updates the counters it traced."""
    if _trace_context.current() is not None:
        raise _trace_context.WarmupRequired("Adam: a step counter moves to its parameter's device")
    state["step"] = state["step"].to(device)


class AdamW(Adam):
    """Adam with decoupled weight decay: the decay shrinks the parameters, not the gradients."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

