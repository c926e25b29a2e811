"""Data parallelism across devices (as torch.nn.parallel): DataParallel, and the primitives it is
made of (scatter, replicate, parallel_apply, gather; broadcast and reduce_add in `comm`)."""
from . import comm  # noqa: F401
from .comm import broadcast, broadcast_coalesced, reduce_add, reduce_add_coalesced  # noqa: F401
from .data_parallel import DataParallel, data_parallel  # noqa: F401
from .parallel_apply import parallel_apply  # noqa: F401
from .replicate import replicate  # noqa: F401
from .scatter_gather import gather, scatter  # noqa: F401

__all__ = ["replicate", "scatter", "parallel_apply", "gather", "data_parallel", "DataParallel", "broadcast",
           "broadcast_coalesced", "reduce_add", "reduce_add_coalesced", "comm"]
