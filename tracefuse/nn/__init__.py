"""tracefuse.nn: torch.nn's programming model (Parameter, Module, layers, functional, init, utils)."""
from .parameter import *  # noqa: F401,F403
from .modules import *  # noqa: F401,F403
from .parallel import DataParallel  # noqa: F401
from . import functional, init, utils, parallel  # noqa: F401
