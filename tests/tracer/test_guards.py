"""Recompilation happens exactly when a guard changes, and explain() says which guard, with its
old and new values.

Each case calls a compiled object twice in one state, changes one thing (an argument's shape,
dtype or requires_grad, grad mode, a submodule's training flag or attribute, a non-tensor
argument, a replaced Parameter, a hook, an optimizer's learning rate, packed lengths, a replaced
.grad) and calls again: exactly one new graph is traced, the recompile reason names the guard,
and going back and forth afterwards reuses the two graphs. Calls that differ only in tensor
values never retrace. Past the recompile limit a call errors or, with fallback='eager', runs
eagerly.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import tracefuse as tf
from tracefuse import nn
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable
from tracefuse.tracer.context import TracingError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, scale=1.0):
        return self.drop(self.lin(x)) * scale


def x64(*shape, requires_grad=False):
    return tf.randn(*shape, dtype=tf.float64, requires_grad=requires_grad)


def stateful(apply, call):
    """Calls that first put the state in place: (call in state 'before', call in state 'after')."""
    return (lambda: (apply(False), call())[1]), (lambda: (apply(True), call())[1])


# Each case: () -> (compiled object, call before the change, call after it, expected reason).

def shape_case():
    f = tf.compile(lambda x: x.exp())
    return f, lambda: f(x64(3, 4)), lambda: f(x64(5, 4)), "guard failed: L['x'].shape: (3, 4) -> (5, 4)"


def dtype_case():
    f = tf.compile(lambda x: x.exp())
    return f, lambda: f(x64(3)), lambda: f(tf.randn(3)), \
        "guard failed: L['x'].dtype: tracefuse.float64 -> tracefuse.float32"


def requires_grad_case():
    f = tf.compile(lambda x: x.exp())
    return f, lambda: f(x64(3)), lambda: f(x64(3, requires_grad=True)), \
        "guard failed: L['x'].requires_grad: False -> True"


def grad_mode_case():
    c = tf.compile(Net().double())

    def no_grad_call():
        with tf.no_grad():
            return c(x64(2, 4))
    return c, lambda: c(x64(2, 4)), no_grad_call, "guard failed: grad_mode: True -> False"


def submodule_training_case():
    net = Net().double()
    c = tf.compile(net)
    return (c, *stateful(lambda after: net.drop.train(not after), lambda: c(x64(2, 4))),
            "guard failed: drop.training: True -> False")


def submodule_attribute_case():
    net = Net().double()
    c = tf.compile(net)
    return (c, *stateful(lambda after: setattr(net.drop, "p", 0.2 if after else 0.5), lambda: c(x64(2, 4))),
            "guard failed: drop.p: 0.5 -> 0.2")


def typed_attribute_case():
    """1.0 and 1 compare equal, yet `x * 1` keeps an integer tensor's dtype where `x * 1.0` does not."""
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.factor = 1.0

        def forward(self, x):
            return x * self.factor

    scale = Scale()
    c = tf.compile(scale)
    before, after = stateful(lambda after: setattr(scale, "factor", 1 if after else 1.0),
                             lambda: c(tf.tensor([1, 2])))

    def after_checked():
        assert after().dtype is tf.int64
    return c, before, after_checked, "guard failed: self.factor: 1.0 -> 1"


def non_tensor_argument_case():
    c = tf.compile(Net().double().eval())
    return c, lambda: c(x64(2, 4), scale=2.0), lambda: c(x64(2, 4), scale=3.0), \
        "guard failed: arguments: (<class 'dict'>, (('x', '<tensor>'), ('scale', ('const', 2.0)))) -> " \
        "(<class 'dict'>, (('x', '<tensor>'), ('scale', ('const', 3.0))))"


def replaced_parameter_case():
    net = Net().double().eval()
    c = tf.compile(net)
    old, new = net.lin.weight, nn.Parameter(tf.zeros(3, 4, dtype=tf.float64))
    return (c, *stateful(lambda after: setattr(net.lin, "weight", new if after else old), lambda: c(x64(2, 4))),
            re.compile(r"guard failed: self\.lin\.weight: \(\d+, \(3, 4\), tracefuse\.float64, 'cpu', True\) -> "
                       r"\(\d+, \(3, 4\), tracefuse\.float64, 'cpu', True\)"))


def replaced_parameter_of_module_called_by_function_case():
    lin = nn.Linear(4, 3).double()
    f = tf.compile(lambda x: lin(x))
    old, new = lin.weight, nn.Parameter(tf.zeros(3, 4, dtype=tf.float64))
    return (f, *stateful(lambda after: setattr(lin, "weight", new if after else old), lambda: f(x64(2, 4))),
            re.compile(r"guard failed: Linear\.weight: '<tensor at 0x[0-9a-f]+>' -> '<tensor at 0x[0-9a-f]+>'"))


def eval_of_submodule_called_by_function_case():
    net = Net().double()
    f = tf.compile(lambda x: net(x))
    return (f, *stateful(lambda after: net.drop.train(not after), lambda: f(x64(2, 4))),
            "guard failed: Net.drop.training: True -> False")


def hook_case():
    net = Net().double().eval()
    c = tf.compile(net)
    handles = []

    def apply(after):
        while handles:
            handles.pop().remove()
        if after:
            handles.append(net.lin.register_forward_hook(lambda module, args, out: out * 0))
    before, after = stateful(apply, lambda: c(x64(2, 4)))

    def after_checked():
        assert not after().detach().numpy().any()  # the new hook runs in the new graph
    return (c, before, after_checked,
            re.compile(r"guard failed: lin\.hooks: \(\(\), \(\), \(\), \(\)\) -> \(\(\), \(\d+,\), \(\), \(\)\)"))


def learning_rate_case():
    model = nn.Linear(3, 1).double()
    opt = tf.optim.SGD(model.parameters(), lr=0.1)

    @tf.compile
    def step(x, y):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()

    return (step, *stateful(lambda after: opt.param_groups[0].update(lr=0.01 if after else 0.1),
                            lambda: step(x64(2, 3), x64(2, 1))),
            re.compile(r"guard failed: SGD\.param_groups: \[\{'params': \[\d+, \d+\], 'lr': 0\.1, .*\}\] -> "
                       r"\[\{'params': \[\d+, \d+\], 'lr': 0\.01, .*\}\]"))


def packed_lengths_case():
    """Same shapes (8 packed steps, 3 batch sizes), different lengths: the batch sizes steer the
    graph, so their values are a guard."""
    c = tf.compile(nn.LSTM(2, 3).double())

    def call(lengths):
        return c(nn.utils.rnn.pack_padded_sequence(x64(3, 4, 2), lengths))
    return c, lambda: call([3, 3, 1, 1]), lambda: call([3, 2, 2, 1]), \
        "guard failed: values of input_batch_sizes: [4, 2, 2] -> [4, 3, 1]"


def replaced_grad_case():
    """A step traced while the gradients exist updates them in place (zero_grad(set_to_none=False)
    and accumulation); once a .grad is reset to None it must retrace, not write to the old tensor."""
    model = nn.Linear(3, 1).double()
    opt = tf.optim.Adam(model.parameters(), lr=0.1)

    @tf.compile
    def step(x, y):
        opt.zero_grad(set_to_none=False)
        F.mse_loss(model(x), y).backward()
        opt.step()

    def call():
        step(x64(2, 3), x64(2, 1))
        assert model.weight.grad is not None and model.weight.grad.abs().sum().item() > 0

    step(x64(2, 3), x64(2, 1))  # Adam's warm-up step runs eagerly and creates the gradients
    return (step, *stateful(lambda after: after and setattr(model.weight, "grad", None), call),
            re.compile(r"guard failed: lifted_\d+\.grad is None: False -> True"))


CASES = [shape_case, dtype_case, requires_grad_case, grad_mode_case, submodule_training_case,
         submodule_attribute_case, typed_attribute_case, non_tensor_argument_case, replaced_parameter_case,
         replaced_parameter_of_module_called_by_function_case, eval_of_submodule_called_by_function_case, hook_case,
         learning_rate_case, packed_lengths_case, replaced_grad_case]


def assert_reason(recompile, expected):
    text = str(recompile)
    assert expected.fullmatch(text) if isinstance(expected, re.Pattern) else text == expected, text


@pytest.mark.filterwarnings("ignore:tracefuse.compile. the forward hooks")  # asserted in test_compile.py
@pytest.mark.parametrize("make", CASES, ids=[c.__name__[:-5] for c in CASES])
def test_recompiles_exactly_when_one_guard_changes(make):
    target, before, after, reason = make()
    before()
    before()
    cache = compiled_callable(target)
    assert len(cache.entries) == 1 and cache.recompiles == [], cache.recompiles
    after()
    assert len(cache.entries) == 2 and len(cache.recompiles) == 1
    assert_reason(cache.recompiles[0], reason)
    for call in (after, before, after):
        call()
    # A hook added again is a new object, so each re-adding traces again (for the same reason). (A
    # .grad made again by the second graph is fine: that graph, traced without it, assigns a new one.)
    expected = 4 if make is hook_case else 2
    assert len(cache.entries) == expected and len(cache.recompiles) == expected - 1, cache.recompiles
    assert len({str(r).split(":")[1] for r in cache.recompiles}) == 1, cache.recompiles


def test_explain_names_the_failed_guard_with_old_and_new_values():
    net = Net().double()
    compiled = tf.compile(net)
    x = x64(2, 4)
    compiled(x)
    net.drop.eval()
    report = tf.explain(compiled, x)
    assert [str(r) for r in report.recompiles] == ["guard failed: drop.training: True -> False"]
    text = str(report)
    assert "== recompiles ==\nguard failed: drop.training: True -> False" in text
    assert report.guards["drop.training"] is False and report.guards["L['x'].shape"] == (2, 4)
    assert "dropout" not in {n.op for n in report.optimized.nodes}  # the eval graph, not the training one
    net.drop.p = 0.25
    net.drop.train()
    report = tf.explain(compiled, x)
    assert str(report.recompiles[-1]) == "guard failed: drop.p: 0.5 -> 0.25"  # the closest graph's guard


def test_recompile_reason_is_taken_from_the_closest_cached_graph():
    net = Net().double()
    compiled = tf.compile(net)
    compiled(x64(2, 4))
    net.drop.eval()
    compiled(x64(2, 4))
    compiled(x64(2, 4), scale=2.0)
    net.drop.p = 0.2  # only the second graph (eval, no scale) differs in nothing else
    compiled(x64(2, 4))
    assert str(compiled_callable(compiled).recompiles[-1]) == "guard failed: drop.p: 0.5 -> 0.2"


# --- no recompile when only tensor values change -------------------------------------------------

def test_tensor_values_never_retrace():
    tf.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 3, batch_first=True)).double().eval()
    bn = nn.BatchNorm1d(3).double().eval()
    compiled, compiled_bn = tf.compile(model), tf.compile(bn)
    rng = np.random.default_rng(0)
    for step in range(4):
        tokens = tf.tensor(rng.integers(0, 10, (2, 5)))  # integer arguments the trace never read
        out, (h, c) = compiled(tokens)
        expected, (eh, ec) = model(tokens)
        np.testing.assert_array_equal(out.detach().numpy(), expected.detach().numpy())
        with tf.no_grad():  # parameters and buffers changed in place are read as inputs
            model[0].weight.mul_(1.5)
            bn.running_mean.add_(1.0)
        x = x64(4, 3)
        np.testing.assert_array_equal(compiled_bn(x).detach().numpy(), bn(x).detach().numpy())
    model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
    tokens = tf.tensor(rng.integers(0, 10, (2, 5)))
    np.testing.assert_array_equal(compiled(tokens)[0].detach().numpy(), model(tokens)[0].detach().numpy())
    for c in (compiled, compiled_bn):
        assert len(compiled_callable(c).entries) == 1 and compiled_callable(c).recompiles == []


def test_packed_sequences_with_the_same_batch_sizes_share_a_graph():
    lstm = nn.LSTM(2, 3, bidirectional=True).double()
    compiled = tf.compile(lstm)
    for lengths in ([4, 2, 3], [2, 3, 4], [3, 4, 2]):  # batch sizes [3, 3, 2, 1] every time
        packed = nn.utils.rnn.pack_padded_sequence(x64(4, 3, 2), lengths, enforce_sorted=False)
        (out, (h, c)), (eout, (eh, ec)) = compiled(packed), lstm(packed)
        for a, b in ((out.data, eout.data), (h, eh), (c, ec), (out.unsorted_indices, eout.unsorted_indices)):
            np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    assert len(compiled_callable(compiled).entries) == 1


# --- the recompile limit -----------------------------------------------------------------------------

def test_default_recompile_limit_is_eight_then_an_error_naming_the_last_guard():
    @tf.compile
    def f(x):
        return x * 2

    for n in range(1, 9):
        f(tf.zeros(n))
    assert len(compiled_callable(f).entries) == 8
    with pytest.raises(TracingError, match=re.escape(
            f"tracefuse.compile: recompile limit (8) reached for {f.__qualname__}; last guard failed: "
            "L['x'].shape: (8,) -> (9,) (compile with dynamic=True to serve every size from one graph)")):
        f(tf.zeros(9))
    assert f(tf.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # the cached graphs keep working


def test_fallback_eager_past_the_limit_runs_eagerly_and_warns_once():
    f = tf.compile(lambda x: x.exp(), fallback="eager", options={"recompile_limit": 2})
    f(x64(1))
    f(x64(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (3, 4, 3):
            x = x64(n)
            np.testing.assert_array_equal(f(x).numpy(), x.exp().numpy())
    messages = [str(w.message) for w in caught if "fallback='eager'" in str(w.message)]
    assert len(messages) == 1 and "recompile limit (2) reached" in messages[0]
    cache = compiled_callable(f)
    assert len(cache.fallbacks) == 2  # shapes 3 and 4; the second call of shape 3 reuses its eager entry
    assert [e.captured is None for e in cache.entries] == [False, False, True, True]
    with pytest.raises(RuntimeError, match=r"tracefuse\.explain: this call ran eagerly: .*recompile limit \(2\)"):
        tf.explain(f, x64(3))
    assert tf.explain(f, x64(2)).optimized is not None  # a compiled shape still explains its graph


def test_argument_aliasing_is_every_overlapping_pair_in_order():
    """The n log n sweep finds exactly the pairs the quadratic check would (views, the same array
    twice, strided slices that interleave without sharing, empty arrays)."""
    import numpy as np

    from tracefuse.tracer.api import _aliasing

    base, other = np.zeros(100), np.zeros(10)
    arrays = [base[:10], other, base[5:20], base[50:], base[::2], base[1::2], base[:0], other, base[95:], base]
    expected = tuple((i, j) for i in range(len(arrays)) for j in range(i)
                     if np.may_share_memory(arrays[i], arrays[j]))
    assert _aliasing(arrays) == expected and (7, 1) in expected and (9, 0) in expected
