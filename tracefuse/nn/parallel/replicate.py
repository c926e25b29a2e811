"""`replicate(module, devices)`: a copy of a module on each device, as torch.nn.parallel.replicate.

Each replica is a shallow copy of every module in the tree (same class, same attributes and
hooks) whose parameters are copies of the original's on the replica's device. In grad mode the
copies are `to(device)` results, which autograd records, so the gradients of every replica flow
back and sum into the original parameters (what PyTorch's Broadcast function does); the copy on
the parameters' own device is the parameter itself. Buffers that do not require grad are copied
detached, the first replica sharing the original's buffers, so in-place updates made on
`devices[0]` (BatchNorm's running statistics) reach the original module. A replica's parameters
are plain tensor attributes: `replica.parameters()` is empty, as in PyTorch.

A module may make its own replica with `_replicate_for_data_parallel()`: a compiled module does, so
that its replicas share its compiled graphs (tracefuse/tracer/api.py).
"""
from __future__ import annotations

from ..modules.module import Module
from . import comm
from ._utils import cuda_device, get_device_index

__all__ = ["replicate"]


def _broadcast_coalesced_reshape(tensors, devices, detach=False):
    """copies[j][k]: tensor k on devices[j]."""
    if len(tensors) == 0:
        return []
    if detach:
        return comm.broadcast_coalesced(tensors, devices)
    if not all(t.device.type != "cpu" for t in tensors):
        raise AssertionError("Broadcast function not implemented for CPU tensors")
    return [[t.to(cuda_device(d)) for t in tensors] for d in devices]


def _replicate_module(module: Module) -> Module:
    own = getattr(module, "_replicate_for_data_parallel", None)
    return own() if own is not None else shallow_replica(module)


def shallow_replica(module: Module) -> Module:
    """A shallow copy of `module` that holds no parameters of its own (torch's
    Module._replicate_for_data_parallel); `replicate` then gives it its copies and children."""
    replica = module.__new__(type(module))
    replica.__dict__ = module.__dict__.copy()
    replica._parameters = {}
    replica._buffers = replica._buffers.copy()
    replica._modules = replica._modules.copy()
    replica._is_replica = True
    return replica


def replicate(network, devices, detach=False):
    """A list with one replica of `network` per device in `devices`; `detach` copies parameters
    without recording them for autograd (what DataParallel does outside grad mode)."""
    if not devices:
        return []
    devices = [get_device_index(x, True) for x in devices]
    num_replicas = len(devices)

    params = list(network.parameters())
    param_indices = {id(param): idx for idx, param in enumerate(params)}
    param_copies = _broadcast_coalesced_reshape(params, devices, detach)

    buffers = list(network.buffers())
    buffers_rg, buffers_not_rg = [], []
    for buf in buffers:
        (buffers_rg if buf.requires_grad and not detach else buffers_not_rg).append(buf)
    buffer_indices_rg = {id(buf): idx for idx, buf in enumerate(buffers_rg)}
    buffer_indices_not_rg = {id(buf): idx for idx, buf in enumerate(buffers_not_rg)}
    buffer_copies_rg = _broadcast_coalesced_reshape(buffers_rg, devices, detach=detach)
    buffer_copies_not_rg = _broadcast_coalesced_reshape(buffers_not_rg, devices, detach=True)

    modules = list(network.modules())
    module_copies = [[] for _ in devices]
    module_indices = {}
    for i, module in enumerate(modules):
        module_indices[module] = i
        for j in range(num_replicas):
            replica = _replicate_module(module)
            # PyTorch keeps the copies here too, for DistributedDataParallel.
            object.__setattr__(replica, "_former_parameters", {})
            module_copies[j].append(replica)

    for i, module in enumerate(modules):
        for key, child in module._modules.items():
            for j in range(num_replicas):
                module_copies[j][i]._modules[key] = None if child is None else module_copies[j][module_indices[child]]
        for key, param in module._parameters.items():
            for j in range(num_replicas):
                replica = module_copies[j][i]
                if param is None:
                    replica._parameters[key] = None
                    continue
                param_copy = param_copies[j][param_indices[id(param)]]
                # Copies are no leaves: they are plain attributes, not registered parameters.
                object.__setattr__(replica, key, param_copy)
                replica._former_parameters[key] = param_copy
        for key, buf in module._buffers.items():
            for j in range(num_replicas):
                replica = module_copies[j][i]
                if buf is None:
                    replica._buffers[key] = None
                elif buf.requires_grad and not detach:
                    replica._buffers[key] = buffer_copies_rg[j][buffer_indices_rg[id(buf)]]
                else:
                    replica._buffers[key] = buffer_copies_not_rg[j][buffer_indices_not_rg[id(buf)]]

    return [module_copies[j][0] for j in range(num_replicas)]
