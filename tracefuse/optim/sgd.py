"""SGD with momentum, dampening, Nesterov momentum, weight decay and maximize (torch.optim.SGD)."""
from __future__ import annotations

from ..dispatch import dispatch
from .optimizer import Optimizer, _batches, _number

__all__ = ["SGD"]


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _creates_state(self, group):
        return group["momentum"] != 0

    def _update_group(self, group):
        """One `multi_tensor_sgd` op for the group's parameters that have a gradient (one per
        device; apart for the parameters whose momentum buffer this step creates): the same
        arithmetic, bit for bit, as torch.optim's single-tensor SGD loop."""
        momentum = _number(group["momentum"])
        options = dict(lr=_number(group["lr"]), momentum=momentum, dampening=_number(group["dampening"]),
                       weight_decay=_number(group["weight_decay"]), nesterov=bool(group["nesterov"]),
                       maximize=bool(group["maximize"]))

        def has_buffer(p):
            return momentum != 0 and self.state[p].get("momentum_buffer") is not None

        params = [p for p in group["params"] if p.grad is not None]
        for (_, has_buffers), batch in _batches(params, lambda p: (p.device, has_buffer(p))):
            n = len(batch)
            buffers = [self.state[p]["momentum_buffer"] for p in batch] if has_buffers else []
            new = dispatch("multi_tensor_sgd", *batch, *[p.grad for p in batch], *buffers, n=n,
                           has_buffers=has_buffers, **options)
            for p, value in zip(batch, new[:n]):
                p._assign(value)
            for p, value in zip(batch, new[n:]):
                if has_buffers:
                    self.state[p]["momentum_buffer"]._assign(value)
                else:
                    self.state[p]["momentum_buffer"] = value  # the first step's buffer: a new tensor
