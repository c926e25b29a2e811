"""The NumPy interpreter (codegen/numpy/interpreter.py) on hand-built and traced graphs.

An op that fails is re-raised as GraphExecutionError naming the IR node (its printed line) and
the user's module scope and source line, with the original exception chained. Values are freed
after the node the memory plan names (checked with weak references: a freed tensor is gone,
a live one is not). A graph gives the same results before and after the pass pipeline.
"""
from __future__ import annotations

import gc
import re
import weakref

import numpy as np
import pytest

import tracefuse as tf
from tracefuse import nn
from tracefuse.codegen.numpy import interpreter
from tracefuse.codegen.numpy.interpreter import GraphExecutionError
from tracefuse.ir import pipeline
from tracefuse.ir.graph import Graph, Ref
from tracefuse.ir.passes import memory_plan
from tracefuse.nn import functional as F
from tracefuse.tracer import pytree
from tracefuse.tracer.api import compiled_callable
from tests.ir.ir_testing import add

F64 = tf.float64


# --- errors --------------------------------------------------------------------------------------

def test_failing_node_is_named_with_its_scope_and_source_line():
    g = Graph()
    x, w = g.add_input("x", (2, 3), F64), g.add_input("w", (4, 5), F64)
    y = add(g, "exp", x)
    bad = g.add_node("matmul", (y, w), {}, {"outputs": [((2, 5), F64)], "scope": "encoder.lstm",
                                          "source": "model.py:12"})
    g.outputs = [Ref(bad.name)]
    with pytest.raises(GraphExecutionError) as caught:
        interpreter.run(g, {"x": tf.zeros(2, 3, dtype=F64), "w": tf.zeros(4, 5, dtype=F64)})
    message = str(caught.value)
    assert message.startswith("While executing %matmul_1 : f64[2,5] = matmul(%exp_1, %w)  # encoder.lstm model.py:12\n"
                              "  at encoder.lstm model.py:12: ValueError: matmul: ")
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value.__cause__, ValueError)


def test_failing_node_without_source_says_so():
    g = Graph()
    x = g.add_input("x", (3,), tf.int64)
    y = g.add_node("gather", (x, 0, x), {}, {"outputs": [((3,), tf.int64)]})
    g.outputs = [Ref(y.name)]
    with pytest.raises(GraphExecutionError, match=r"^While executing %gather_1 : i64\[3\] = gather\(%x, 0, %x\)\n"
                                                  r"  at <unknown source>: "):
        interpreter.run(g, {"x": tf.tensor([0, 1, 2])})


def test_error_in_a_compiled_call_names_the_users_line_and_module_scope():
    tf.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 2)
            self.head = nn.Linear(2, 3)

        def forward(self, tokens):
            return self.head(self.embed(tokens))  # the traced line the error points at

    compiled = tf.compile(Tagger())
    compiled(tf.tensor([1, 2]))  # traced: the index values are not part of the graph
    with pytest.raises(IndexError, match="index out of range in self"):
        compiled.embed(tf.tensor([1, 7]))  # eager
    with pytest.raises(GraphExecutionError, match=re.escape(
            "= embedding(%embed.weight, %tokens) {padding_idx=None}  # embed test_interpreter.py:")) as caught:
        compiled(tf.tensor([1, 7]))
    line = next(i for i, text in enumerate(open(__file__), 1) if "the traced line the error points at" in text)
    assert f"\n  at embed test_interpreter.py:{line}: IndexError: index out of range in self" in str(caught.value)
    assert isinstance(caught.value.__cause__, IndexError)


# --- freeing values ------------------------------------------------------------------------------

def _chain():
    """x -> exp -> sin -> (max_dim: two outputs, one value) -> mul -> cos, plus an unused neg."""
    g = Graph()
    x = g.add_input("x", (3,), F64)
    a = add(g, "exp", x)
    b = add(g, "sin", a)
    m = add(g, "max_dim", b, dim=0, keepdim=False)
    c = add(g, "mul", a, m[0])
    add(g, "neg", c)
    d = add(g, "cos", c)
    g.outputs = [d, b]
    return g


def _alive_during_run(graph, inputs, monkeypatch):
    """Run `graph`, recording before each node which earlier node values are still alive."""
    made, alive = {}, {}
    real = interpreter.dispatch
    names = iter([n.name for n in graph.nodes if n.op != "input"])

    def spy(op, *args, **attrs):
        gc.collect()
        name = next(names)
        alive[name] = {k for k, refs in made.items() if any(r() is not None for r in refs)}
        out = real(op, *args, **attrs)
        made[name] = [weakref.ref(t) for t in (out if isinstance(out, tuple) else (out,))]
        return out

    monkeypatch.setattr(interpreter, "dispatch", spy)
    outputs = interpreter.run(graph, inputs)
    gc.collect()
    alive["<end>"] = {k for k, refs in made.items() if any(r() is not None for r in refs)}
    return outputs, alive


def test_values_are_freed_after_their_last_reader(monkeypatch):
    planned = memory_plan(_chain())
    x = tf.tensor([0.5, -1.0, 2.0], dtype=F64)
    outputs, alive = _alive_during_run(planned, {"x": x}, monkeypatch)
    assert alive == {
        "exp_1": set(),
        "sin_1": {"exp_1"},
        "max_dim_1": {"exp_1", "sin_1"},
        "mul_1": {"exp_1", "sin_1", "max_dim_1"},
        "neg_1": {"sin_1", "mul_1"},  # mul_1 read exp_1 and max_dim_1 last: both gone
        "cos_1": {"sin_1", "mul_1"},  # neg_1 is read by no one: freed as soon as it is made
        "<end>": {"sin_1", "cos_1"},  # the graph's outputs are the caller's
    }
    a = np.exp(x.numpy())
    np.testing.assert_allclose(outputs[0].numpy(), np.cos(a * np.sin(a).max()), rtol=1e-15)
    assert x.tolist() == [0.5, -1.0, 2.0]  # inputs are never freed (nor written)


def test_without_a_memory_plan_nothing_is_freed_before_the_end(monkeypatch):
    _, alive = _alive_during_run(_chain(), {"x": tf.ones(3, dtype=F64)}, monkeypatch)
    assert alive["cos_1"] == {"exp_1", "sin_1", "max_dim_1", "mul_1", "neg_1"}


def test_compiled_graphs_carry_a_memory_plan():
    tf.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    report = tf.explain(model, tf.randn(5, 3, dtype=F64, requires_grad=True))
    for graph in (report.optimized, report.backward):
        freed = [v for n in graph.nodes for v in n.meta["free_after"]]
        assert freed and len(freed) == len(set(freed))
        returned = {r.node for r in graph.outputs if isinstance(r, Ref)}
        assert not returned & set(freed) and not {n.name for n in graph.inputs()} & set(freed)


# --- the same results before and after the pipeline ----------------------------------------------

class LoopLM(nn.Module):
    """An embedding, a hand-written LSTM step in a Python loop, a duplicated projection and a loss."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.w_ih, self.w_hh = nn.Parameter(tf.randn(12, 3) * 0.3), nn.Parameter(tf.randn(12, 3) * 0.3)
        self.b = nn.Parameter(tf.randn(12) * 0.1)
        self.head = nn.Linear(3, 7)

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        h = c = tf.zeros(tokens.shape[1], 3, dtype=x.dtype)
        outs = []
        for x_t in x.unbind(0):
            i, f, g, o = (x_t @ self.w_ih.t() + self.b + h @ self.w_hh.t()).chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        y = tf.stack(outs)
        logits = self.head(y) + 0.0 * self.head(y)
        return F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), label_smoothing=0.1)


def _training_step():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    opt = tf.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        return loss
    return step, lambda rng: (tf.tensor(rng.standard_normal((4, 3))), tf.tensor(rng.standard_normal((4, 2))))


def _tokens(rng):
    return tf.tensor(rng.integers(0, 7, (4, 2))), tf.tensor(rng.integers(0, 7, (4, 2)))


def _packed(rng):
    return (nn.utils.rnn.pack_padded_sequence(tf.tensor(rng.standard_normal((4, 3, 3))), [2, 4, 3],
                                              enforce_sorted=False),)


MODELS = {  # name -> () -> (compiled object, batch maker)
    "loop-lm": lambda: (tf.compile(LoopLM().double()), _tokens),
    "loop-lm-inference": lambda: (tf.compile(LoopLM().double()), _tokens),
    "packed-lstm": lambda: (tf.compile(nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()), _packed),
    "training-step": lambda: (lambda step, batch: (tf.compile(step), batch))(*_training_step()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_traced_and_optimized_graphs_give_the_same_results(name):
    tf.manual_seed(2)
    compiled, make_args = MODELS[name]()
    rng = np.random.default_rng(0)
    if name == "training-step":
        compiled(*make_args(rng))  # the optimizer's warm-up step runs eagerly
    with tf.set_grad_enabled(name != "loop-lm-inference"):
        compiled(*make_args(rng))
    captured = compiled_callable(compiled).entries[0].captured
    leaves, _, _ = pytree.flatten(dict(zip(("a", "b"), make_args(rng))))
    inputs = dict(captured.live_inputs, **dict(zip(captured.arg_names, leaves)))
    state = {k: v.detach().numpy().copy() for k, v in inputs.items()}
    traced = captured.traced
    for graph in (traced, captured.forward, pipeline.optimize(traced, verify=True)):
        outputs = interpreter.run(graph, inputs)[:len(traced.outputs)]  # the forward adds saved activations
        if graph is traced:
            expected = outputs
            continue
        assert len(outputs) == len(expected)
        for k, (a, b) in enumerate(zip(outputs, expected)):
            assert a.shape == b.shape and a.dtype is b.dtype, k
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-13, err_msg=f"output {k}")
    assert all(np.array_equal(v.detach().numpy(), state[k]) for k, v in inputs.items())  # inputs are not written
    forward = [n.op for n in captured.forward.nodes]
    if name == "loop-lm-inference":  # the hand-written steps became cells, then one scan
        assert forward.count("lstm_layer") == 1 and "sigmoid" not in forward and "lstm_cell" not in forward
    if name == "packed-lstm":
        assert forward.count("lstm_layer") == 4
    if name == "training-step":
        assert forward.count("multi_tensor_norm") == 1 and forward.count("multi_tensor_scale") == 1
