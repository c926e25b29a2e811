"""`DataParallel`: split a batch across GPUs, run a replica of the module on each, gather the outputs.

As in PyTorch, with no GPU visible it is a transparent wrapper: `forward` calls the module, and
the module stays registered as `module` (state-dict keys gain the `module.` prefix).
"""
from __future__ import annotations

from itertools import chain

from ...device import as_device, device as _device
from ...runtime import devices
from ..modules.module import Module

__all__ = ["DataParallel"]


class DataParallel(Module):
    def __init__(self, module, device_ids=None, output_device=None, dim=0):
        super().__init__()
        count = devices.cuda_device_count()
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
        self.device_ids = [_device_index(d) for d in device_ids]
        self.output_device = _device_index(output_device)
        self.src_device_obj = _device("cuda", self.device_ids[0])
        if len(self.device_ids) == 1:
            self.module.to(self.src_device_obj)

    def forward(self, *inputs, **kwargs):
        if not self.device_ids:
            return self.module(*inputs, **kwargs)
        for t in chain(self.module.parameters(), self.module.buffers()):
            if t.device != self.src_device_obj:
                raise RuntimeError(
                    "module must have its parameters and buffers "
                    f"on device {self.src_device_obj} (device_ids[0]) but found one of "
                    f"them on device: {t.device}"
                )
        # Only reachable once a CUDA backend can hold the module's parameters.
        raise RuntimeError("tracefuse.nn.DataParallel: scattering a batch over CUDA devices needs the "
                           "multi-device runtime, which this build of tracefuse does not have")


def _device_index(d):
    """The CUDA ordinal of an int, a device or a device string ('cuda:1' -> 1, 'cuda' -> 0)."""
    return as_device(d).index
