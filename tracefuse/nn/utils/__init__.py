"""tracefuse.nn.utils: gradient clipping and packed sequences."""
from . import rnn  # noqa: F401
from .clip_grad import *  # noqa: F401,F403
