"""Shape arithmetic shared by op implementations and the layers that check their arguments."""
from __future__ import annotations


def window_output_size(size, kernel, stride, padding, dilation, ceil_mode=False):
    """Output length of one spatial dim of a convolution or pooling window (PyTorch's
    pooling_output_shape; convolutions use ceil_mode=False)."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out
