"""`DataParallel`: split a batch across GPUs, run a replica of the module on each, gather the outputs.

`forward` scatters the inputs along `dim` over `device_ids` (fewer devices when the batch is
smaller), replicates the module on the devices used, runs the replicas in parallel (one thread
per device) and gathers their outputs on `output_device`. The replicas' parameters are
differentiable copies of the module's, so on backward the gradients of all replicas sum into the
module's parameters. With one device the inputs are moved there and the module called.
The replicas of a compiled module share its compiled graphs: a guard set is traced once per
device, on the first call that needs it (tracefuse/tracer/api.py).

As in PyTorch, with no GPU visible it is a transparent wrapper: `forward` calls the module, and
the module stays registered as `module` (state-dict keys gain the `module.` prefix).
"""
from __future__ import annotations

from itertools import chain

from ... import autograd
from ...device import device as _device
from ..modules.module import Module
from ._utils import available_device_count, get_device_index
from .parallel_apply import parallel_apply
from .replicate import replicate
from .scatter_gather import gather, scatter_kwargs

__all__ = ["DataParallel", "data_parallel"]


class DataParallel(Module):
    def __init__(self, module, device_ids=None, output_device=None, dim=0):
        super().__init__()
        count = available_device_count()
        if count == 0:
            # PyTorch sets only these two attributes when no accelerator is present.
            self.module = module
            self.device_ids = []
            return
        if device_ids is None:
            device_ids = list(range(count))
        if output_device is None:
            output_device = device_ids[0]
        self.dim = dim
        self.module = module
        self.device_ids = [get_device_index(x, True) for x in device_ids]
        self.output_device = get_device_index(output_device, True)
        self.src_device_obj = _device("cuda", self.device_ids[0])
        if len(self.device_ids) == 1:
            self.module.to(self.src_device_obj)

    def forward(self, *inputs, **kwargs):
        if not self.device_ids:
            return self.module(*inputs, **kwargs)
        _check_on_source(self.module, self.src_device_obj)
        inputs, module_kwargs = self.scatter(inputs, kwargs, self.device_ids)
        # A forward without inputs still runs once, on device_ids[0].
        if not inputs and not module_kwargs:
            inputs = ((),)
            module_kwargs = ({},)
        if len(self.device_ids) == 1:
            return self.module(*inputs[0], **module_kwargs[0])
        replicas = self.replicate(self.module, self.device_ids[:len(inputs)])
        outputs = self.parallel_apply(replicas, inputs, module_kwargs)
        return self.gather(outputs, self.output_device)

    def replicate(self, module, device_ids):
        return replicate(module, device_ids, not autograd.is_grad_enabled())

    def scatter(self, inputs, kwargs, device_ids):
        return scatter_kwargs(inputs, kwargs, device_ids, dim=self.dim)

    def parallel_apply(self, replicas, inputs, kwargs):
        return parallel_apply(replicas, inputs, kwargs, self.device_ids[:len(replicas)])

    def gather(self, outputs, output_device):
        return gather(outputs, output_device, dim=self.dim)


def _check_on_source(module, src_device_obj):
    for t in chain(module.parameters(), module.buffers()):
        if t.device != src_device_obj:
            raise RuntimeError(
                "module must have its parameters and buffers "
                f"on device {src_device_obj} (device_ids[0]) but found one of "
                f"them on device: {t.device}"
            )


def data_parallel(module, inputs, device_ids=None, output_device=None, dim=0, module_kwargs=None):
    """`module(*inputs)` evaluated in parallel over `device_ids`, the functional DataParallel;
    the result lies on `output_device` (default: device_ids[0])."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,) if inputs is not None else ()
    count = available_device_count()
    if count == 0:
        raise RuntimeError("device type could not be determined")
    if device_ids is None:
        device_ids = list(range(count))
    if output_device is None:
        output_device = device_ids[0]
    device_ids = [get_device_index(x, True) for x in device_ids]
    output_device = get_device_index(output_device, True)
    src_device_obj = _device("cuda", device_ids[0])
    _check_on_source(module, src_device_obj)
    inputs, module_kwargs = scatter_kwargs(inputs, module_kwargs, device_ids, dim)
    if not inputs and not module_kwargs:
        inputs = ((),)
        module_kwargs = ({},)
    if len(device_ids) == 1:
        return module(*inputs[0], **module_kwargs[0])
    used_device_ids = device_ids[:len(inputs)]
    replicas = replicate(module, used_device_ids)
    outputs = parallel_apply(replicas, inputs, module_kwargs, used_device_ids)
    return gather(outputs, output_device, dim)
