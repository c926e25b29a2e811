"""`Optimizer`: parameter groups, per-parameter state and the state-dict format of torch.optim.

A state dict is `{'state': {index: {name: value}}, 'param_groups': [{option: value, ...,
'params': [index, ...]}]}`, with parameters numbered in group order, so it can be saved with
`tracefuse.save` and loaded into an optimizer built over the same parameters.
"""
from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from itertools import chain

from .. import autograd, dtypes
from ..tensor import Tensor
from ..tracer import context as _trace_context

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a default that every parameter group must set itself."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _typename(obj):
    if isinstance(obj, Tensor):
        return obj.type()
    cls = type(obj)
    module = "" if cls.__module__ in ("builtins", "__builtin__") else cls.__module__ + "."
    return module + cls.__qualname__


def _scalar_dtype():
    """The dtype of the `step` counters, as torch.optim: float64 only under a float64 default."""
    return dtypes.float64 if dtypes.get_default_dtype() is dtypes.float64 else dtypes.float32


class Optimizer:
    """Base class of all optimizers: holds `param_groups` (dicts of params and options) and `state`."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got " + _typename(params))
        self.state = defaultdict(dict)
        self.param_groups = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"

    def step(self, closure=None):
        """One update of every parameter that has a gradient; `closure` re-evaluates the loss first.

        Updates never record autograd; subclasses implement `_update_group(group)`, one group at
        a time, as one multi-tensor op (multi_tensor_sgd, multi_tensor_adam) whose results are
        written into the parameters and the state in place.
        """
        loss = None
        if closure is not None:
            with autograd.enable_grad():
                loss = closure()
        self._check_trace()
        with autograd.no_grad():
            for group in self.param_groups:
                self._update_group(group)
        return loss

    def _check_trace(self):
        """Inside a compiled training step: the hyperparameters become guards (a changed learning
        rate retraces), and a first step, which creates the state, runs eagerly (WarmupRequired)."""
        trace = _trace_context.current()
        if trace is None:
            return
        trace.guard(f"{type(self).__name__}.param_groups", lambda: [
            {k: (v if k != "params" else [id(p) for p in v]) for k, v in g.items()} for g in self.param_groups])
        # The graph updates the state tensors it traced in place: a reloaded or cleared state
        # (load_state_dict, state.clear()) must retrace.
        trace.guard(f"{type(self).__name__}.state", lambda: [
            sorted((k, id(v) if isinstance(v, Tensor) else v) for k, v in self.state.get(p, {}).items())
            for g in self.param_groups for p in g["params"]])
        for group in self.param_groups:
            if self._creates_state(group) and any(p.grad is not None and not self.state[p] for p in group["params"]):
                raise _trace_context.WarmupRequired(f"{type(self).__name__}: first step creates optimizer state")

    def _creates_state(self, group) -> bool:
        """Whether a parameter's first update creates per-parameter state (momentum, moments)."""
        return False

    def _update_group(self, group):
        raise NotImplementedError

    def zero_grad(self, set_to_none=True):
        """Reset the gradients of all optimized tensors (to None by default, else to zeros)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None  # also when already None: a compiled step then knows it is None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def add_param_group(self, param_group):
        """Add a group of parameters with its own options (the defaults fill the rest)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering of "
                            "tensors in sets will change between runs. Please use a list instead.")
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        param_group["params"] = params
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")
            param_group["param_names"] = names

        for param in params:
            if not isinstance(param, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is " + _typename(param))
            if not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            param_group.setdefault(name, default)

        if len(params) != len(set(params)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will cause "
                          "an error; see github.com/pytorch/pytorch/issues/40967 for more information", stacklevel=3)
        param_set = set()
        for group in self.param_groups:
            param_set.update(group["params"])
            if ("param_names" in param_group) != ("param_names" in group):
                current = "with names" if "param_names" in param_group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {current} to the optimizer")
        if not param_set.isdisjoint(params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    # --- state dicts ---------------------------------------------------------------------------
    def state_dict(self):
        """The optimizer's state with parameters replaced by their index (state tensors are not copied)."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {(index[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a `state_dict()`: groups must match in number and size; state tensors take each
        parameter's dtype (except the `step` counters) and device."""
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))
        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                state[id_map[k]] = _cast(id_map[k], v)
            else:
                state[k] = v
        for group, saved in zip(groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.__setstate__({"state": state, "param_groups": saved_groups})

    def __setstate__(self, state):
        self.__dict__.update(state)


def _number(value):
    """A hyperparameter as a Python number (a 0-dim tensor's value: the update ops take numbers)."""
    return value.item() if isinstance(value, Tensor) else value


def _batches(params, key):
    """`params` split by `key(p)` (a device, ...), in order: [(key, [p, ...]), ...]; one
    multi-tensor update op runs per batch."""
    batches: dict = {}
    for p in params:
        batches.setdefault(key(p), []).append(p)
    return list(batches.items())


def _cast(param, value, key=None):
    """`value` with its tensors moved to `param`'s device and, when floating, its dtype; the `step`
    counters keep their dtype (float32/float64 scalars, as in torch.optim) and join the parameter's
    device, where the multi-tensor update reads and increments them."""
    if isinstance(value, Tensor):
        if key == "step":
            return value.to(device=param.device)
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)
    if isinstance(value, dict):
        return {k: _cast(param, v, key=k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(param, v) for v in value)
    return value
