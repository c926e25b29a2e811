"""Gradient rules of the op table, written with tensor ops so that backward graphs are themselves
differentiable (double backward) and traceable. Importing this package registers them all.

A rule receives the op's autograd node as `ctx` (attrs, input metadata, saved tensors) and the
gradients of the op's outputs, and returns one gradient (or None) per input.
"""
from . import core, nn, rnn  # noqa: F401
