"""Block-size heuristics of the generated kernels, in one place: the hook an autotuner replaces.

Sizes are powers of two (Triton's blocks must be), clamped per kernel family: tl.dot needs every
block dim >= 16; register-hungry tiles stay small.
"""
from __future__ import annotations

# A multi-tensor launch past about this many programs gives each program several blocks.
TARGET_PROGRAMS = 4096


def block_size(n, low=16, high=1024) -> int:
    """The next power of two covering `n`, clamped to [low, high]."""
    return max(low, min(high, 1 << (max(int(n), 1) - 1).bit_length()))


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints (Triton's helper; codegen does not import Triton: a warm
    start launches cached cubins without it)."""
    return -(-a // b)


def multi_tensor_blocks(sizes, max_blocks_per_chunk) -> tuple[int, int]:
    """(BLOCK, CHUNK) of a multi-tensor kernel: BLOCK fits the largest tensor (32..1024 elements);
    each program handles CHUNK elements of one tensor (up to `max_blocks_per_chunk` blocks), so
    that big launches stay at a few thousand programs."""
    block = block_size(max(sizes, default=1), 32, 1024)
    blocks_per_chunk = block_size(-(-sum(sizes) // (block * TARGET_PROGRAMS)), 1, max_blocks_per_chunk)
    return block, block * blocks_per_chunk
