"""The CPU random generator behind rand/randn/dropout; `tracefuse.manual_seed` reseeds it."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)
_seed = 0


def manual_seed(seed: int) -> None:
    global _generator, _seed
    _seed = int(seed)
    _generator = np.random.default_rng(_seed)


def initial_seed() -> int:
    return _seed


def generator() -> np.random.Generator:
    return _generator


def get_state():
    return _generator.bit_generator.state


def set_state(state) -> None:
    _generator.bit_generator.state = state
