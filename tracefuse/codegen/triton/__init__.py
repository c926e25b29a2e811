"""Triton codegen: one emitter per op (registered by op name, like the NumPy implementations),
the pointwise kernel builder, fused groups, and the launch records that explain() shows.

Importing this package registers every emitter.
"""
from ...runtime import devices as _devices

_devices.active_backend()  # TRACEFUSE_CUDA=interpret turns Triton's interpreter on: before Triton loads

from . import creation, elementwise, matmul, movement, multi_tensor, nn, optim, reduce, rnn  # noqa: F401
from .launch import EMITTERS, NoEmitterError, recording, run_op  # noqa: F401


def copy_into(device, dst, src):
    """dst[...] = src on `device` (broadcast, cast): how in-place writes reach device memory."""
    from ...ir import ops
    from .elementwise import copy_into as _copy
    from .launch import OpCall

    _copy(OpCall(ops.get("clone"), [src], {}, None, device), dst, src)
