"""tracefuse: the torch.nn programming model on NumPy, compiled to fused Triton kernels.

This module is the public API only: tensors and their factories, dtypes, devices and grad mode.
"""
from . import dtypes as _dtypes
from .tensor import Size, Tensor, broadcast_shapes  # first: tensor and dispatch import each other
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .codegen.numpy.random import initial_seed, manual_seed
from .creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full, full_like, linspace, ones,
                       ones_like, rand, rand_like, randint, randn, randn_like, randperm, tensor, zeros,
                       zeros_like)
from .device import device
from .dtypes import get_default_dtype, set_default_dtype, promote_types
from .functions import METHOD_ALIASES as _METHOD_ALIASES, _method, cat, concat, concatenate, stack, where
from . import autograd

dtype = _dtypes.dtype
float16 = half = _dtypes.float16
bfloat16 = _dtypes.bfloat16
float32 = float = _dtypes.float32
float64 = double = _dtypes.float64
uint8 = _dtypes.uint8
int8 = _dtypes.int8
int16 = short = _dtypes.int16
int32 = int = _dtypes.int32
int64 = long = _dtypes.int64
bool = _dtypes.bool_

for _name in _METHOD_ALIASES:
    globals().setdefault(_name, _method(_name))
del _name

__version__ = "0.1.0"

from . import derivatives  # noqa: E402,F401  (registers the gradient rules)
from . import cuda, nn, optim  # noqa: E402,F401
from .serialization import load, save  # noqa: E402
from .tracer.api import compile  # noqa: E402
from .tracer.dump import explain  # noqa: E402
