"""Movement ops that copy: clone/contiguous, reshape of non-viewable strides, concatenation,
gathers and scatters. (Pure views launch nothing: codegen/triton/views.py.)"""
from __future__ import annotations

from .launch import emitter
from .pointwise import Pointwise


@emitter("clone")
def clone(call):
    (x,) = call.inputs
    out = call.empty(x.shape, x.dtype)
    kernel = Pointwise("clone_kernel", x.shape)
    kernel.store("out", kernel.load("x", x), out)
    kernel.launch(call)
    return out
