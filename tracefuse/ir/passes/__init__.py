"""The graph passes, one per module. Each is `pass(graph, log=None) -> graph`: it rewrites the graph
in place, returns it for chaining and records the rules that fired in `log` (a PassLog)."""
from .clip_norm_fusion import clip_norm_fusion
from .constant_fold import constant_fold
from .copy_elision import copy_elision
from .cse import cse
from .dead_code import dead_code
from .elementwise_fusion import elementwise_fusion, groups, kernel_count
from .gate_fusion import gate_fusion
from .memory_plan import memory_plan
from .rnn_loop_rolling import rnn_loop_rolling

__all__ = ["clip_norm_fusion", "constant_fold", "copy_elision", "cse", "dead_code", "elementwise_fusion", "gate_fusion", "groups",
           "kernel_count", "memory_plan", "rnn_loop_rolling"]
