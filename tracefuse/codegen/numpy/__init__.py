"""NumPy implementations of the op table: the CPU backend and the reference semantics.

Importing this package registers every implementation with `ir.ops`.
"""
from . import creation, elementwise, reduce, movement, nn, rnn, multi_tensor, optim  # noqa: F401
