"""Helpers for IR tests: build graphs by hand and evaluate them with the NumPy interpreter."""
from __future__ import annotations

from collections import Counter

import numpy as np

import tracefuse
from tracefuse.codegen.numpy import interpreter
from tracefuse.ir import ops
from tracefuse.ir.graph import Ref
from tracefuse.ir.rewrite import infer_outputs


def add(graph, op, *inputs, **attrs):
    """Append `op(*inputs, **attrs)` (output metadata found by running it); its Ref, or a tuple of
    Refs for multi-output ops."""
    node = graph.add_node(op, inputs, attrs, {"outputs": infer_outputs(graph, op, inputs, attrs)})
    if ops.get(op).n_outputs == 1:
        return Ref(node.name)
    return tuple(Ref(node.name, i) for i in range(len(node.meta["outputs"])))


def evaluate(graph, inputs):
    """The graph's outputs on `inputs` (placeholder name -> Tensor; consts read meta['value'])."""
    return interpreter.run(graph, inputs)


def random_inputs(graph, seed=0):
    """Standard-normal values for every non-const placeholder, in its dtype."""
    rng = np.random.default_rng(seed)
    return {n.name: tracefuse.tensor(rng.standard_normal(n.meta["outputs"][0][0]), dtype=n.meta["outputs"][0][1])
            for n in graph.inputs() if n.attrs["kind"] != "const"}


def assert_same_results(before, after, seed=0, atol=1e-12):
    """Both graphs give the same outputs (shape, dtype, values within atol) on the same random inputs."""
    inputs = random_inputs(before, seed)
    expected, got = evaluate(before, inputs), evaluate(after, inputs)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape and e.dtype is g.dtype
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=0, atol=atol)


def op_counts(graph):
    return Counter(n.op for n in graph.nodes)
