"""Movement ops that only re-describe memory. On a device they change shape and strides and
launch nothing, as on a GPU; every other movement op is a kernel (codegen/triton/movement.py)."""
from __future__ import annotations

import numpy as np

from ...ir import ops


def as_view(name, inputs, attrs):
    """The view `name` makes of `inputs[0]` (a device array), or None when it needs a copy."""
    x = inputs[0]
    if name in ("permute", "expand"):
        return ops.get(name).impl(x, **attrs)
    if name == "reshape":
        try:
            return np.reshape(x, attrs["shape"], copy=False)
        except ValueError:  # incompatible strides: reshape copies
            return None
    if name == "getitem" and len(inputs) == 1:
        index = attrs["index"]
        if not _basic(index):
            return None
        keys = index if isinstance(index, tuple) else (index,)
        # An Ellipsis keeps NumPy from reading the element when every key is an int: a 0-dim view.
        return x[keys if Ellipsis in keys else keys + (Ellipsis,)]
    return None


def _basic(index) -> bool:
    """Only ints, slices, None and Ellipsis: NumPy returns a view (a bool/list index copies)."""
    keys = index if isinstance(index, tuple) else (index,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) and not isinstance(k, bool)
               for k in keys)
