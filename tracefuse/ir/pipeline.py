"""The optimization pipeline: the ordered list of passes a traced graph goes through.

Read top to bottom: clean up (dead code, duplicates, constants), recognise the high-level
patterns (hand-written gate math -> cells, cell loops -> layer scans, clipping -> two
multi-tensor nodes), clean up what they left and drop needless copies, then decide kernels
(elementwise groups) and memory (where values die).
"""
from __future__ import annotations

import os

from .graph import Graph
from .passes import (clip_norm_fusion, constant_fold, copy_elision, cse, dead_code, elementwise_fusion,
                     gate_fusion, memory_plan, rnn_loop_rolling)
from .passes.elementwise_fusion import groups, kernel_count, schedule  # noqa: F401  (the stage's public API)
from .rewrite import PassLog

PASSES = [
    dead_code,
    cse,
    constant_fold,
    gate_fusion,
    rnn_loop_rolling,
    clip_norm_fusion,
    dead_code,
    copy_elision,
    elementwise_fusion,
    memory_plan,
]


def _verify_by_default() -> bool:
    return os.environ.get("TRACEFUSE_VERIFY", "") == "1"


def optimize(graph: Graph, log: PassLog | None = None, verify: bool | None = None, passes=None) -> Graph:
    """Run `passes` (default PASSES) on a copy of `graph`, which stays as traced; returns the copy.

    With `verify` (default: env TRACEFUSE_VERIFY=1) the graph is verified before the first pass
    and after each, and a malformed graph raises ValueError naming the pass that broke it."""
    verify = _verify_by_default() if verify is None else verify
    log = log if log is not None else PassLog()
    graph = graph.copy()
    if verify:
        _check(graph, "before optimization")
    for run in PASSES if passes is None else passes:
        graph = run(graph, log)
        if verify:
            _check(graph, f"after pass {run.__name__}")
    return graph


def _check(graph, when):
    try:
        graph.verify()
    except ValueError as exc:
        raise ValueError(f"{when}: {exc}") from exc
