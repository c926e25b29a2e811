"""`Parameter`: a tensor that a Module registers as one of its learnable weights when assigned."""
from __future__ import annotations

from ..creation import empty
from ..tensor import Tensor

__all__ = ["Parameter", "Buffer"]


class Parameter(Tensor):
    """A leaf tensor sharing `data`'s storage; assigning one to a Module attribute registers it.

    Plain tensors assigned to a Module stay ordinary attributes (cached state such as an RNN's
    last hidden state), which is why the registration rule keys on this type.
    """

    __module__ = "tracefuse.nn.parameter"

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = empty(0)
        if requires_grad and not data.dtype.is_floating_point:
            raise RuntimeError("Only Tensors of floating point and complex dtype can require gradients")
        param = cls._wrap(data._data, data._dtype, data._device, bool(requires_grad))
        param._version = data._version  # same storage, so in-place writes are seen through both
        return param

    def __init__(self, data=None, requires_grad=True):
        """Everything happens in `__new__` (Tensor's own constructor refuses direct calls)."""

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = type(self)(self.data.clone(), self.requires_grad)
        return memo[id(self)]


class _BufferMeta(type):
    """`isinstance(t, Buffer)` holds for the tensors `Buffer(...)` returned (they stay plain Tensors)."""

    def __instancecheck__(cls, instance):
        return isinstance(instance, Tensor) and getattr(instance, "_is_buffer", False)


class Buffer(Tensor, metaclass=_BufferMeta):
    """Marks a tensor as module state that is not a parameter: assigning it to a Module attribute
    registers it as a buffer (`persistent=False` keeps it out of state_dict)."""

    __module__ = "tracefuse.nn.parameter"

    def __new__(cls, data=None, *, persistent=True):
        if data is None:
            data = empty(0)
        t = data.detach().requires_grad_(data.requires_grad)
        t.persistent = persistent
        t._is_buffer = True
        return t
