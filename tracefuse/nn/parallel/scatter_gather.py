"""Scatter a structure of inputs over devices and gather a structure of outputs back, as
torch.nn.parallel.scatter_gather.

Tensors are split along `dim` into one chunk per device (fewer when the batch is smaller than the
device count); tuples, lists, dicts and namedtuples are walked; any other object is shared by
every device. Gathering concatenates each output tensor's pieces on the target device, walking
the same containers. Both are differentiable: a gradient of a scattered chunk flows back to the
input, and a gradient of a gathered output flows back to each replica's piece.
"""
from __future__ import annotations

import warnings

from ...tensor import Tensor
from . import comm
from ._utils import get_device_index

__all__ = ["scatter", "scatter_kwargs", "gather"]


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_asdict") and hasattr(obj, "_fields")


def _scatter_tensor(target_gpus, chunk_sizes, dim, tensor):
    """torch's Scatter function: chunks of `tensor` on `target_gpus`."""
    target_gpus = [get_device_index(x, True) for x in target_gpus]
    return comm.scatter(tensor, target_gpus, chunk_sizes, dim)


def scatter(inputs, target_gpus, dim=0):
    """Slice tensors into approximately equal chunks and distribute them across `target_gpus`;
    references to objects that are not tensors are duplicated. A tensor gives a tuple of chunks;
    a container gives a list with one container per device."""

    def scatter_map(obj):
        if isinstance(obj, Tensor):
            return _scatter_tensor(target_gpus, None, dim, obj)
        if _is_namedtuple(obj):
            return [type(obj)(*args) for args in zip(*map(scatter_map, obj))]
        if isinstance(obj, tuple) and len(obj) > 0:
            return list(zip(*map(scatter_map, obj)))
        if isinstance(obj, list) and len(obj) > 0:
            return [list(i) for i in zip(*map(scatter_map, obj))]
        if isinstance(obj, dict) and len(obj) > 0:
            return [type(obj)(i) for i in zip(*map(scatter_map, obj.items()))]
        return [obj for _ in target_gpus]

    # scatter_map refers to itself through its closure; clearing it breaks the reference cycle.
    try:
        res = scatter_map(inputs)
    finally:
        scatter_map = None
    return res


def scatter_kwargs(inputs, kwargs, target_gpus, dim=0):
    """`scatter` of the positional inputs and of the keyword inputs: (a tuple of argument tuples, a
    tuple of keyword dicts), padded with empty ones to the same length."""
    scattered_inputs = scatter(inputs, target_gpus, dim) if inputs else []
    scattered_kwargs = scatter(kwargs, target_gpus, dim) if kwargs else []
    if len(scattered_inputs) < len(scattered_kwargs):
        scattered_inputs.extend(() for _ in range(len(scattered_kwargs) - len(scattered_inputs)))
    elif len(scattered_kwargs) < len(inputs):  # PyTorch compares with len(inputs) here
        scattered_kwargs.extend({} for _ in range(len(scattered_inputs) - len(scattered_kwargs)))
    return tuple(scattered_inputs), tuple(scattered_kwargs)


def _gather_tensors(target_device, dim, *inputs):
    """torch's Gather function: `inputs` (on GPUs) concatenated along `dim` on `target_device`."""
    if not all(i.device.type != "cpu" for i in inputs):
        raise AssertionError("Gather function not implemented for CPU tensors")
    if not (isinstance(target_device, str) and target_device == "cpu"):  # as PyTorch: only the string 'cpu'
        target_device = get_device_index(target_device, True)
    if all(t.ndim == 0 for t in inputs) and dim == 0:
        inputs = tuple(t.reshape(1) for t in inputs)
        warnings.warn("Was asked to gather along dimension 0, but all input tensors were scalars; will instead "
                      "unsqueeze and return a vector.", stacklevel=3)
    return comm.gather(inputs, dim, target_device)


def gather(outputs, target_device, dim=0):
    """The per-device `outputs` combined into one on `target_device`: tensors concatenated along
    `dim`, dicts, namedtuples, tuples and lists walked, None kept."""

    def gather_map(outputs):
        out = outputs[0]
        if isinstance(out, Tensor):
            return _gather_tensors(target_device, dim, *outputs)
        if out is None:
            return None
        if isinstance(out, dict):
            if not all(len(out) == len(d) for d in outputs):
                raise ValueError("All dicts must have the same number of keys")
            return type(out)((k, gather_map([d[k] for d in outputs])) for k in out)
        if _is_namedtuple(out):
            return type(out)._make(map(gather_map, zip(*outputs, strict=True)))
        return type(out)(map(gather_map, zip(*outputs, strict=True)))

    try:
        res = gather_map(outputs)
    finally:
        gather_map = None
    return res
