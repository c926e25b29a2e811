"""Module hooks against torch: forward pre-hooks, forward hooks, full backward hooks, handles."""
import numpy as np
import pytest
import torch

import tracefuse
from tests.conftest import assert_same, same_error


def classes(lib):
    nn = lib.nn

    class Scale(nn.Module):
        """y = x * w (w a Parameter): gradients are easy to read."""

        def __init__(self, values):
            super().__init__()
            self.w = nn.Parameter(lib.tensor(values, dtype=lib.float64))

        def forward(self, x):
            return x * self.w

    class Pair(nn.Module):
        """Two tensor inputs, a non-tensor one, and a tuple of two outputs."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(lib.tensor([1.5, -2.0, 0.5], dtype=lib.float64))

        def forward(self, a, b, k):
            return a * self.w * k, (a + b).sin()

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = Scale([2.0, 3.0, -1.0])
            self.second = Scale([0.5, -4.0, 1.0])

        def forward(self, x):
            return self.second(self.first(x))

    return Scale, Pair, Chain


def inputs(lib, requires_grad=(True, True)):
    a = lib.tensor([0.3, -1.2, 2.0], dtype=lib.float64, requires_grad=requires_grad[0])
    b = lib.tensor([1.0, 0.25, -0.5], dtype=lib.float64, requires_grad=requires_grad[1])
    return a, b


# --- forward hooks ----------------------------------------------------------------------------

def test_forward_hooks_fire_in_order_and_can_replace():
    def run(lib):
        events = []
        chain = classes(lib)[2]()
        for name, m in chain.named_modules():
            m.register_forward_pre_hook(lambda mod, args, name=name: events.append(("pre", name, len(args))))
            m.register_forward_hook(lambda mod, args, out, name=name: events.append(("post", name, out.tolist())))
        # Pre-hook replacing the input (one value is wrapped into a 1-tuple), hook replacing the output.
        chain.first.register_forward_pre_hook(lambda mod, args: args[0] + 1)
        chain.second.register_forward_hook(lambda mod, args, out: out * 10)
        out = chain(lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64))
        return events, out.tolist()

    ours = run(tracefuse)
    assert ours == run(torch)
    assert [e[:2] for e in ours[0]] == [("pre", ""), ("pre", "first"), ("post", "first"), ("pre", "second"),
                                        ("post", "second"), ("post", "")]
    assert ours[1] == [20.0, -360.0, -40.0]


def test_forward_pre_hook_tuple_result_replaces_all_args():
    def run(lib):
        pair = classes(lib)[1]()
        pair.register_forward_pre_hook(lambda mod, args: (args[1], args[0], 2.0))
        a, b = inputs(lib)
        first, second = pair(a, b, 1.0)
        return first.tolist(), second.tolist()

    assert run(tracefuse) == run(torch)


def test_hooks_with_kwargs_and_prepend():
    def run(lib):
        events = []
        m = classes(lib)[0]([1.0, 2.0, 3.0])
        m.register_forward_hook(lambda mod, args, out: events.append("h1"))
        m.register_forward_hook(lambda mod, args, out: events.append("h0"), prepend=True)

        def pre(mod, args, kwargs):
            events.append(("pre_kw", sorted(kwargs)))
            return args, {"x": kwargs["x"] * 2}

        def post(mod, args, kwargs, out):
            events.append(("post_kw", sorted(kwargs)))
            return out + 1

        m.register_forward_pre_hook(pre, with_kwargs=True)
        m.register_forward_hook(post, with_kwargs=True)
        out = m(x=lib.tensor([1.0, 1.0, 1.0], dtype=lib.float64))
        return events, out.tolist()

    assert run(tracefuse) == run(torch)


def test_bad_pre_hook_result_with_kwargs():
    def run(lib):
        m = classes(lib)[0]([1.0])
        m.register_forward_pre_hook(lambda mod, args, kwargs: 3, with_kwargs=True)
        m(lib.ones(1, dtype=lib.float64))

    assert same_error(run) == ("RuntimeError", "forward pre-hook must return None or a tuple of "
                                               "(new_args, new_kwargs), but got 3.")


def test_handle_remove_and_context_manager():
    def run(lib):
        calls = []
        m = classes(lib)[0]([1.0])
        h1 = m.register_forward_hook(lambda *a: calls.append("fwd"))
        h2 = m.register_forward_pre_hook(lambda *a: calls.append("pre"))
        h3 = m.register_full_backward_hook(lambda *a: calls.append("bwd"))
        x = lib.ones(1, dtype=lib.float64, requires_grad=True)
        m(x).sum().backward()
        for h in (h1, h2, h3):
            h.remove()
            h.remove()  # a second remove is harmless
        m(x).sum().backward()
        with m.register_forward_hook(lambda *a: calls.append("scoped")):
            m(x)
        m(x)
        return calls

    ours = run(tracefuse)
    assert ours == run(torch) == ["pre", "fwd", "bwd", "scoped"]


# --- backward hooks ---------------------------------------------------------------------------

def _grads(values):
    return [None if g is None else g.detach() for g in values]


@pytest.mark.parametrize("requires_grad", [(True, True), (True, False), (False, True)])
def test_full_backward_hook_sees_torch_gradients(requires_grad):
    def run(lib):
        seen = []
        pair = classes(lib)[1]()
        pair.register_full_backward_hook(lambda mod, gi, go: seen.append((mod is pair, _grads(gi), _grads(go))))
        a, b = inputs(lib, requires_grad)
        first, second = pair(a, b, 3.0)
        (first * first + second * 2).sum().backward()
        return seen, [t.grad for t in (a, b, pair.w)]

    (ours, our_grads), (theirs, their_grads) = run(tracefuse), run(torch)
    assert len(ours) == len(theirs) == 1
    assert ours[0][0] and theirs[0][0]
    for got, expected in zip(ours[0][1:], theirs[0][1:]):
        assert len(got) == len(expected)
        assert_same(got, expected, rtol=1e-12, atol=1e-12)
    assert_same(our_grads, their_grads, rtol=1e-12, atol=1e-12)


def test_backward_hook_for_unused_output_gets_none():
    def run(lib):
        seen = []
        pair = classes(lib)[1]()
        pair.register_full_backward_hook(lambda mod, gi, go: seen.append((_grads(gi), _grads(go))))
        a, b = inputs(lib)
        first, _ = pair(a, b, 1.0)
        first.sum().backward()
        return seen

    (ours,), (theirs,) = run(tracefuse), run(torch)
    assert ours[1][1] is None and theirs[1][1] is None
    assert_same(list(ours[0]) + [ours[1][0]], list(theirs[0]) + [theirs[1][0]], rtol=1e-12, atol=1e-12)


def test_backward_hook_replaces_grad_input():
    def run(lib):
        pair = classes(lib)[1]()
        pair.register_full_backward_hook(lambda mod, gi, go: (gi[0] * 10, None, None))
        a, b = inputs(lib)
        first, second = pair(a, b, 2.0)
        (first + second).sum().backward()
        return [a.grad, b.grad, pair.w.grad]

    ours, theirs = run(tracefuse), run(torch)
    assert ours[1] is None and theirs[1] is None
    assert_same(ours, theirs, rtol=1e-12, atol=1e-12)


def test_backward_hooks_fire_outer_first_and_chain_replacements():
    def run(lib):
        events = []
        chain = classes(lib)[2]()
        for name, m in chain.named_modules():
            m.register_full_backward_hook(
                lambda mod, gi, go, name=name: events.append((name, gi[0].tolist(), go[0].tolist())))
        chain.second.register_full_backward_hook(lambda mod, gi, go: (gi[0] + 1,))
        x = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
        chain(x).sum().backward()
        return events, x.grad.tolist()

    ours = run(tracefuse)
    assert ours == run(torch)
    # The outer module's inputs are reached last: its hook fires after its children's.
    assert [e[0] for e in ours[0]] == ["second", "first", ""]
    assert ours[1] == [3.0, -9.0, -2.0]  # the second module's +1 reached the input


def test_module_called_twice_fires_per_call():
    def run(lib):
        events = []
        m = classes(lib)[0]([2.0, -1.0])
        m.register_full_backward_hook(lambda mod, gi, go: events.append((gi[0].tolist(), go[0].tolist())))
        x = lib.tensor([1.0, 3.0], dtype=lib.float64, requires_grad=True)
        (m(m(x)) * lib.tensor([1.0, 10.0], dtype=lib.float64)).sum().backward()
        return events, x.grad.tolist()

    assert run(tracefuse) == run(torch)


def test_backward_hook_when_no_input_requires_grad():
    def run(lib, result):
        seen = []

        def hook(mod, gi, go):
            seen.append((gi, _grads(go)))
            return result

        m = classes(lib)[0]([2.0, -1.0])
        m.register_full_backward_hook(hook)
        m(lib.tensor([1.0, 3.0], dtype=lib.float64)).sum().backward()
        return seen, m.w.grad.tolist()

    with pytest.warns(UserWarning, match="Full backward hook is firing when gradients are computed with respect "
                                         "to module outputs since no inputs require gradients"):
        ours, w_ours = run(tracefuse, None)
    with pytest.warns(UserWarning):
        theirs, w_theirs = run(torch, None)
    assert ours[0][0] == theirs[0][0] == (None,) and w_ours == w_theirs
    assert_same(ours[0][1], theirs[0][1])
    with pytest.warns(UserWarning):
        error = same_error(lambda lib: run(lib, (lib.ones(2),)))
    assert error == (
        "RuntimeError", "Backward hook for Modules where no input requires gradient should always return None "
                        "or None for all gradients.")


def test_backward_hook_wrong_number_of_grads():
    def run(lib):
        m = classes(lib)[0]([2.0])
        m.register_full_backward_hook(lambda mod, gi, go: (gi[0], gi[0]))
        m(lib.ones(1, dtype=lib.float64, requires_grad=True)).sum().backward()

    assert same_error(run) == ("RuntimeError", "Backward hook returned an invalid number of grad_input, got 2, "
                                               "but expected 1")


@pytest.mark.filterwarnings("ignore:Using a non-full backward hook:FutureWarning")
def test_legacy_backward_hook_runs_and_cannot_mix():
    def run(lib):
        m = classes(lib)[0]([2.0, -1.0])
        seen = []
        m.register_backward_hook(lambda mod, gi, go: seen.append((gi[0].tolist(), go[0].tolist())))
        x = lib.tensor([1.0, 3.0], dtype=lib.float64, requires_grad=True)
        m(x).sum().backward()
        return seen, x.grad.tolist()

    # For a one-op forward the legacy hook's gradients are the full hook's.
    assert run(tracefuse) == run(torch) == ([([2.0, -1.0], [1.0, 1.0])], [2.0, -1.0])

    def mixed(lib, first, second):
        m = lib.nn.Module()
        getattr(m, first)(lambda *a: None)
        getattr(m, second)(lambda *a: None)

    for order in (("register_backward_hook", "register_full_backward_hook"),
                  ("register_full_backward_hook", "register_backward_hook")):
        assert same_error(lambda lib: mixed(lib, *order)) == (
            "RuntimeError", "Cannot use both regular backward hooks and full backward hooks on a single Module. "
                            "Please use only one of them.")


def test_backward_pre_hook_replaces_grad_output():
    def run(lib):
        events = []
        chain = classes(lib)[2]()
        chain.second.register_full_backward_pre_hook(lambda mod, go: events.append(go[0].tolist()))
        chain.second.register_full_backward_pre_hook(lambda mod, go: (go[0] * 3,))
        chain.first.register_full_backward_hook(lambda mod, gi, go: events.append(go[0].tolist()))
        x = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
        chain(x).sum().backward()
        return events, x.grad.tolist()

    ours = run(tracefuse)
    assert ours == run(torch)
    assert ours[1] == [3.0, -36.0, -3.0]

    def bad(lib):
        m = classes(lib)[0]([1.0])
        m.register_full_backward_pre_hook(lambda mod, go: (go[0], go[0]))
        m(lib.ones(1, dtype=lib.float64, requires_grad=True)).sum().backward()

    assert same_error(bad) == ("RuntimeError", "Backward pre hook returned an invalid number of grad_output, got 2, "
                                               "but expected 1")


def test_no_backward_hook_call_under_no_grad():
    calls = []
    m = classes(tracefuse)[0]([2.0])
    m.register_full_backward_hook(lambda *a: calls.append(1))
    x = tracefuse.ones(1, dtype=tracefuse.float64, requires_grad=True)
    with tracefuse.no_grad():
        out = m(x)
    assert not out.requires_grad and calls == []
    np.testing.assert_array_equal(out.numpy(), [2.0])
