"""Data parallelism across devices (as torch.nn.parallel)."""
from .data_parallel import DataParallel  # noqa: F401
