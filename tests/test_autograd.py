"""The autograd engine: gradients by central differences for every differentiable elementwise,
reduction, matmul and movement op of the op table; double backward against PyTorch; graph
retention, accumulation, autograd.grad, hooks, retain_grad, custom Functions, in-place errors,
version counters and grad modes."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import tracefuse
from tracefuse.dispatch import dispatch
from tracefuse.ir import ops
from conftest import assert_same

F64 = tracefuse.float64


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-5, atol=1e-6, seed=0):
    """Compare autograd's gradients of sum(fn(*inputs) * w) (w a fixed random cotangent per
    output) with central differences, for every float input."""
    rng = np.random.default_rng(seed)
    leaves = [tracefuse.tensor(a, dtype=F64, requires_grad=True) if np.asarray(a).dtype.kind == "f"
              else tracefuse.tensor(a) for a in inputs]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    outs = [o for o in outs if o.dtype.is_floating_point]
    weights = [rng.standard_normal(tuple(o.shape)) for o in outs]

    def objective(*xs):
        with tracefuse.no_grad():
            values = fn(*xs)
        values = list(values) if isinstance(values, (tuple, list)) else [values]
        values = [v for v in values if v.dtype.is_floating_point]
        return sum(float((v.detach().numpy().astype(np.float64) * w).sum()) for v, w in zip(values, weights))

    loss = sum((o * tracefuse.tensor(w, dtype=o.dtype)).sum() for o, w in zip(outs, weights))
    differentiable = [x for x in leaves if x.requires_grad]
    grads = tracefuse.autograd.grad(loss, differentiable, allow_unused=True)
    for x, g in zip(differentiable, grads):
        numeric = np.zeros(tuple(x.shape))
        base = x.detach().numpy()
        for idx in np.ndindex(*base.shape):
            values = []
            for step in (eps, -eps):
                shifted = base.copy()
                shifted[idx] += step
                args = [tracefuse.tensor(shifted) if y is x else y.detach() for y in leaves]
                values.append(objective(*args))
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
        analytic = np.zeros(numeric.shape) if g is None else g.numpy()
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def _u(shape, low=-2.0, high=2.0, seed=0):
    """Uniform values kept away from the kinks at 0 and at integers (where rounding ops jump)."""
    a = np.random.default_rng(seed).uniform(low, high, shape)
    return a + np.where(np.abs(a - np.round(a)) < 0.05, 0.1, 0.0)


# One or more gradchecks per differentiable op: name -> (fn, inputs).
GRADCHECKS = {
    "neg": [(lambda x: -x, [_u((2, 3))])],
    "abs": [(lambda x: x.abs(), [_u((2, 3))])],
    "relu": [(lambda x: x.relu(), [_u((2, 3))])],
    "sign": [(lambda x: x.sign() * x, [_u((4,))])],
    "floor": [(lambda x: x.floor() + x, [_u((4,))])],
    "ceil": [(lambda x: x.ceil() * x, [_u((4,))])],
    "round": [(lambda x: x.round() + x * x, [_u((4,))])],
    "trunc": [(lambda x: x.trunc() - x, [_u((4,))])],
    "exp": [(lambda x: x.exp(), [_u((2, 3))])],
    "expm1": [(lambda x: x.expm1(), [_u((2, 3))])],
    "log": [(lambda x: x.log(), [_u((2, 3), 0.2, 3)])],
    "log1p": [(lambda x: x.log1p(), [_u((2, 3), -0.5, 3)])],
    "log2": [(lambda x: x.log2(), [_u((2, 3), 0.2, 3)])],
    "sqrt": [(lambda x: x.sqrt(), [_u((2, 3), 0.2, 3)])],
    "rsqrt": [(lambda x: x.rsqrt(), [_u((2, 3), 0.2, 3)])],
    "sin": [(lambda x: x.sin(), [_u((2, 3))])],
    "cos": [(lambda x: x.cos(), [_u((2, 3))])],
    "sigmoid": [(lambda x: x.sigmoid(), [_u((2, 3), -4, 4)])],
    "tanh": [(lambda x: x.tanh(), [_u((2, 3))])],
    "erf": [(lambda x: x.erf(), [_u((2, 3))])],
    "reciprocal": [(lambda x: x.reciprocal(), [_u((2, 3), 0.3, 2)])],
    "gelu": [(lambda x: dispatch("gelu", x, approximate="none"), [_u((5,))]),
             (lambda x: dispatch("gelu", x, approximate="tanh"), [_u((5,))])],
    "leaky_relu": [(lambda x: dispatch("leaky_relu", x, negative_slope=0.1), [_u((5,))])],
    "elu": [(lambda x: dispatch("elu", x, alpha=1.3), [_u((5,))])],
    "softplus": [(lambda x: dispatch("softplus", x, beta=2.0, threshold=3.0), [_u((5,))])],
    "cast": [(lambda x: x.float() * 2, [_u((3,))], dict(eps=1e-2, rtol=1e-6))],  # linear: big steps are exact
    "add": [(lambda x, y: x + y, [_u((2, 3)), _u((3,), seed=1)]), (lambda x: 2.5 + x, [_u((2,))])],
    "sub": [(lambda x, y: x - y, [_u((2, 1)), _u((3,), seed=1)]), (lambda x: 1 - x, [_u((2,))])],
    "mul": [(lambda x, y: x * y, [_u((2, 3)), _u((2, 1), seed=1)]), (lambda x: x * 3, [_u((2,))])],
    "div": [(lambda x, y: x / y, [_u((2, 3)), _u((3,), 0.5, 2, seed=1)]), (lambda x: 2 / x, [_u((2,), 0.5, 2)])],
    "div_mode": [(lambda x, y: x.div(y, rounding_mode="floor") + x * y, [_u((3,)), _u((3,), 0.5, 2, seed=1)])],
    "pow": [(lambda x, y: x ** y, [_u((2, 3), 0.5, 2), _u((3,), seed=1)]), (lambda x: x ** 3, [_u((3,))]),
            (lambda x: 1.7 ** x, [_u((3,))]), (lambda x: x ** 0, [_u((3,))])],
    "maximum": [(lambda x, y: x.maximum(y), [_u((2, 3)), _u((3,), seed=1)])],
    "minimum": [(lambda x, y: x.minimum(y), [_u((2, 3)), _u((2, 1), seed=1)])],
    "remainder": [(lambda x, y: x % y, [_u((4,), 0.1, 0.9), _u((4,), 1.2, 2, seed=1)])],
    "atan2": [(lambda x, y: x.atan2(y), [_u((2, 3)), _u((2, 3), seed=1)])],
    "where": [(lambda x, y: tracefuse.where(x > 0, x, y), [_u((2, 3)), _u((3,), seed=1)])],
    "clamp": [(lambda x: x.clamp(-1, 1), [_u((2, 3))]), (lambda x: x.clamp(min=0.5), [_u((4,))])],
    "masked_fill": [(lambda x: x.masked_fill(x < 0, 2.0), [_u((2, 3))])],
    "dropout": [(lambda x: (tracefuse.manual_seed(3), dispatch("dropout", x, p=0.4))[1][0], [_u((4, 5))])],
    "sum": [(lambda x: x.sum(), [_u((2, 3))]), (lambda x: x.sum((0, 2), keepdim=True), [_u((2, 3, 2))])],
    "prod": [(lambda x: x.prod(), [_u((2, 3))]), (lambda x: x.prod(1), [_u((2, 3))])],
    "mean": [(lambda x: x.mean(), [_u((2, 3))]), (lambda x: x.mean(-1, keepdim=True), [_u((2, 3))])],
    "amax": [(lambda x: x.amax(1), [_u((2, 3))]), (lambda x: x.max(), [_u((2, 3))])],
    "amin": [(lambda x: x.amin((0, 1)), [_u((2, 3))]), (lambda x: x.min(), [_u((4,))])],
    "max_dim": [(lambda x: x.max(0), [_u((2, 3))]), (lambda x: x.max(1, keepdim=True)[0], [_u((2, 3))])],
    "min_dim": [(lambda x: x.min(-1), [_u((2, 3))])],
    "var": [(lambda x: x.var(), [_u((2, 3))]), (lambda x: x.std(1, correction=0), [_u((2, 3))])],
    "norm": [(lambda x: x.norm(), [_u((2, 3))]), (lambda x: x.norm(1, 0), [_u((2, 3))]),
             (lambda x: x.norm(3, 1, keepdim=True), [_u((2, 3))]), (lambda x: x.norm(float("inf")), [_u((2, 3))])],
    "logsumexp": [(lambda x: x.logsumexp(1), [_u((2, 3))])],
    "cumsum": [(lambda x: x.cumsum(1), [_u((2, 3))])],
    "matmul": [(lambda a, b: a @ b, [_u(sa), _u(sb, seed=1)])
               for sa, sb in [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)), ((2, 3), (3, 2)), ((2, 2, 3), (3, 2)),
                              ((2, 1, 2, 3), (2, 3, 1))]],
    "reshape": [(lambda x: x.reshape(3, 2), [_u((2, 3))]), (lambda x: x.t().reshape(-1), [_u((2, 3))])],
    "permute": [(lambda x: x.permute(2, 0, 1), [_u((2, 3, 2))])],
    "expand": [(lambda x: x.expand(2, 3, 3), [_u((3, 1))])],
    "flip": [(lambda x: x.flip(0, 1), [_u((2, 3))])],
    "repeat": [(lambda x: x.repeat(2, 1, 3), [_u((2, 3))])],
    "clone": [(lambda x: x.clone() * x, [_u((2, 3))])],
    "to_device": [(lambda x: dispatch("to_device", x, device=x.device, source=x.device) * x, [_u((2, 3))])],
    "getitem": [(lambda x: x[1, ::2], [_u((2, 3))]), (lambda x: x[[0, 1, 1], [2, 0, 2]], [_u((2, 3))]),
                (lambda x: x[x > 0], [_u((2, 3))])],
    "index_put": [(lambda x, v: _put(x, v), [_u((3, 3)), _u((2,), seed=1)])],
    "cat": [(lambda x, y: tracefuse.cat([x, y, x], 1), [_u((2, 3)), _u((2, 1), seed=1)]),
            (lambda x, y: tracefuse.stack([x, y]), [_u((2,)), _u((2,), seed=1)])],
    "gather": [(lambda x: x.gather(1, tracefuse.tensor([[0, 0, 2], [1, 2, 2]])), [_u((2, 3))])],
    "scatter": [(lambda x, s: x.scatter(1, tracefuse.tensor([[2, 0], [1, 2]]), s), [_u((2, 3)), _u((2, 2), seed=1)]),
                (lambda x, s: x.scatter_add(0, tracefuse.tensor([[1, 1, 0]]), s), [_u((2, 3)), _u((1, 3), seed=1)])],
    "index_select": [(lambda x: x.index_select(1, tracefuse.tensor([2, 0, 2])), [_u((2, 3))])],
    "pad": [(lambda x: dispatch("pad", x, pad=(1, 2, 0, 1), value=0.5), [_u((2, 3))]),
            (lambda x: dispatch("pad", x, pad=(-1, 1), value=0.0), [_u((2, 3))])],
    "tril": [(lambda x: x.tril(), [_u((3, 3))])],
    "triu": [(lambda x: x.triu(-1), [_u((3, 4))])],
}


def _put(x, v):
    y = x * 1
    y[[0, 2], [1, 1]] = v
    return y


def test_every_differentiable_primitive_op_is_gradchecked():
    primitive = {name for name, op in ops.OPS.items()
                 if op.differentiable and op.kind in ("elementwise", "reduce", "matmul", "movement")}
    assert primitive == set(GRADCHECKS)


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    for fn, inputs, *options in GRADCHECKS[name]:
        gradcheck(fn, inputs, **(options[0] if options else {}))


# --- double backward -----------------------------------------------------------------------------

DOUBLE = {
    "exp": lambda m, x, y: x.exp(), "log": lambda m, x, y: (x * x + 1).log(), "sqrt": lambda m, x, y: (x * x + 1).sqrt(),
    "rsqrt": lambda m, x, y: (x * x + 1).rsqrt(), "sigmoid": lambda m, x, y: x.sigmoid(),
    "tanh": lambda m, x, y: x.tanh(), "sin": lambda m, x, y: x.sin(), "cos": lambda m, x, y: x.cos(),
    "erf": lambda m, x, y: x.erf(), "expm1": lambda m, x, y: x.expm1(), "log1p": lambda m, x, y: (x * x).log1p(),
    "reciprocal": lambda m, x, y: (x * x + 1).reciprocal(), "abs": lambda m, x, y: x.abs() * x,
    "relu": lambda m, x, y: x.relu() * x, "mul": lambda m, x, y: x * y * x, "div": lambda m, x, y: x / (y * y + 1),
    "pow": lambda m, x, y: (x * x + 1) ** y, "pow_scalar": lambda m, x, y: x ** 3,
    "rpow": lambda m, x, y: 2.0 ** x, "clamp": lambda m, x, y: x.clamp(-0.5, 0.5) * x,
    "where": lambda m, x, y: m.where(x > y, x * x, y * x), "maximum": lambda m, x, y: x.maximum(y) * x,
    "atan2": lambda m, x, y: x.atan2(y), "sum_mean": lambda m, x, y: (x * x).sum(1) * (x * y).mean(),
    "prod": lambda m, x, y: x.prod(1), "norm": lambda m, x, y: x.norm(dim=1), "var": lambda m, x, y: x.var(1),
    "logsumexp": lambda m, x, y: x.logsumexp(1), "matmul": lambda m, x, y: (x @ y.t()) * x.sum(),
    "movement": lambda m, x, y: x.t().reshape(-1).flip(0)[1:] * y.permute(1, 0).flatten()[:-1],
    "amax": lambda m, x, y: x.amax(1) * x.sum(), "softplus_like": lambda m, x, y: (x.exp() + 1).log(),
}


@pytest.mark.parametrize("name", sorted(DOUBLE))
def test_double_backward(name):
    fn = DOUBLE[name]
    rng = np.random.default_rng(0)
    x0, y0, w0 = rng.uniform(-1.5, 1.5, (2, 3)), rng.uniform(0.5, 1.5, (2, 3)), rng.standard_normal((2, 3))
    results = []
    for m in (tracefuse, torch):
        x = m.tensor(x0, dtype=m.float64, requires_grad=True)
        y = m.tensor(y0, dtype=m.float64, requires_grad=True)
        out = fn(m, x, y)
        gx, gy = m.autograd.grad((out * out).sum(), (x, y), create_graph=True, allow_unused=True)
        w = m.tensor(w0, dtype=m.float64)
        terms = [(g * w).sum() for g in (gx, gy) if g is not None]
        second = m.autograd.grad(sum(terms), (x, y), allow_unused=True)
        results.append((gx, gy) + tuple(second))
    for ours, theirs in zip(*results):
        if theirs is None:  # an unused input may come back as zeros or None
            assert ours is None or not ours.detach().numpy().any()
        else:
            assert_same(ours.detach(), theirs.detach(), rtol=1e-7, atol=1e-7)


def test_create_graph_records_the_backward_pass():
    x = tracefuse.tensor([1.0, 2.0], requires_grad=True)
    (g,) = tracefuse.autograd.grad((x ** 3).sum(), x, create_graph=True)
    assert g.requires_grad and g.grad_fn is not None
    g.sum().backward()
    assert x.grad.tolist() == [6.0, 12.0]
    (h,) = tracefuse.autograd.grad((x ** 3).sum(), x)
    assert not h.requires_grad and h.grad_fn is None


# --- graph retention and accumulation ----------------------------------------------------------------

FREED = ("Trying to backward through the graph a second time (or directly access saved tensors after they have "
         "already been freed). Saved intermediate values of the graph are freed when you call .backward() or "
         "autograd.grad(). Specify retain_graph=True if you need to backward through the graph a second time or "
         "if you need to access saved tensors after calling backward.")


def test_backward_twice_needs_retain_graph():
    for m in (tracefuse, torch):
        x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = (x.exp() * x).sum()
        y.backward(retain_graph=True)
        y.backward()
        assert x.grad.tolist() == pytest.approx((2 * (np.exp([1.0, 2.0, 3.0]) * [2.0, 3.0, 4.0])).tolist())
        with pytest.raises(RuntimeError, match=re.escape(FREED)):
            y.backward()
        z = x.sigmoid().sum()
        m.autograd.grad(z, x)
        with pytest.raises(RuntimeError, match=re.escape(FREED)):
            m.autograd.grad(z, x)


@pytest.mark.parametrize("fn,replays", [
    (lambda x: (x + 1).sum(), True), (lambda x: x.view(2, 1).t().sum(), True), (lambda x: x[0] + x[1], True),
    (lambda x: (x - x.detach()).mean(), True), (lambda x: (x * 2).sum(), False), (lambda x: x.exp().sum(), False),
    (lambda x: (x * x.detach()).sum(), False),
])
def test_replaying_a_freed_graph(fn, replays):
    """As in PyTorch, only a node that needs a freed saved value fails on a second backward."""
    for m in (tracefuse, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = fn(x)
        y.backward()
        if replays:
            y.backward()
        else:
            with pytest.raises(RuntimeError, match=re.escape(FREED)):
                y.backward()


def test_gradient_accumulates_on_leaves():
    for m in (tracefuse, torch):
        x = m.tensor([1.0, -2.0], requires_grad=True)
        w = m.tensor([0.5, 3.0], requires_grad=True)
        for _ in range(3):
            (x * w).sum().backward()
        (x * x).sum().backward()
        got = (x.grad.tolist(), w.grad.tolist())
        x.grad = None
        (x * 3).sum().backward()
        got += (x.grad.tolist(),)
        x.grad.zero_()
        x.sum().backward()
        x.sum().backward()
        got += (x.grad.tolist(),)
        if m is torch:
            assert got == ours
        else:
            ours = got


def test_shared_subgraph_and_multiple_roots():
    for m in (tracefuse, torch):
        x = m.tensor([0.5, 1.5, -1.0], requires_grad=True)
        h = x.tanh()
        a, b = h * 2, h.exp()
        m.autograd.backward([a.sum(), b], [None, m.tensor([1.0, 0.0, 2.0])])
        got = x.grad.tolist()
        if m is torch:
            assert got == pytest.approx(ours, rel=1e-6)
        else:
            ours = got


# --- autograd.grad ---------------------------------------------------------------------------------

def test_autograd_grad():
    for m in (tracefuse, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        z = m.tensor([3.0], requires_grad=True)
        y = x * x
        gx, = m.autograd.grad(y.sum(), x, retain_graph=True)
        assert x.grad is None and gx.tolist() == [2.0, 4.0]
        gx, gz = m.autograd.grad(y, [x, z], grad_outputs=m.tensor([1.0, -1.0]), allow_unused=True, retain_graph=True)
        assert gx.tolist() == [2.0, -4.0] and gz is None
        (gy,) = m.autograd.grad(y.sum(), y)  # gradient with respect to a non-leaf
        assert gy.tolist() == [1.0, 1.0]
        message = "The differentiated Tensor at index 1 appears to not have been used in the graph. Set allow_unused=True if this is the desired behavior."
        with pytest.raises(RuntimeError, match=re.escape(message)):
            m.autograd.grad((x * 2).sum(), [x, z])
        with pytest.raises(RuntimeError, match=re.escape("One of the differentiated Tensors does not require grad")):
            m.autograd.grad((x * 2).sum(), [x, m.ones(1)])
        with pytest.raises(RuntimeError, match=re.escape("grad can be implicitly created only for scalar outputs")):
            m.autograd.grad(x * 2, x)
        with pytest.raises(RuntimeError, match="element 0 of tensors does not require grad and does not have a grad_fn"):
            m.autograd.grad(m.ones(2).sum(), x)


# --- hooks and retain_grad ---------------------------------------------------------------------------

def _hook_run(m):
    log = []
    x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
    hx = x.register_hook(lambda g: log.append(("x", g.tolist())) or g * 10)
    y = x * 2
    y.register_hook(lambda g: log.append(("y", g.tolist())))
    y.register_hook(lambda g: g + 1)
    y.retain_grad()
    y.register_hook(lambda g: g * 2)  # retain_grad sees the gradient after every hook
    (y * y).sum().backward()
    got = [x.grad.tolist(), y.grad.tolist(), y.retains_grad, x.retains_grad]
    hx.remove()
    x.grad = None
    (x * 3).sum().backward()
    got.append(x.grad.tolist())
    return got, log


def test_tensor_hooks():
    assert _hook_run(tracefuse) == _hook_run(torch)


def test_hook_errors_and_retain_grad():
    for m in (tracefuse, torch):
        with pytest.raises(RuntimeError, match="cannot register a hook on a tensor that doesn't require gradient"):
            m.ones(2).register_hook(lambda g: g)
        x = m.tensor([1.0, 2.0], requires_grad=True)
        x.retain_grad()  # a no-op on leaves
        y = x.exp()
        with pytest.warns(UserWarning, match="is not a leaf Tensor is being accessed"):
            assert y.grad is None
        y.retain_grad()
        y.sum().backward(retain_graph=True)
        y.sum().backward()
        assert y.grad.tolist() == [2.0, 2.0]


# --- custom Function --------------------------------------------------------------------------------

def _custom_function(m):
    class MulExp(m.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, scale):
            y = (x * w).exp() * scale
            ctx.save_for_backward(x, w, y)
            ctx.scale = scale
            return y

        @staticmethod
        def backward(ctx, grad):
            x, w, y = ctx.saved_tensors
            assert ctx.needs_input_grad == (True, False, False)
            return grad * y * w, None, None

    class Split(m.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_non_differentiable()
            return x * 2, x.sum()

        @staticmethod
        def backward(ctx, ga, gb):
            return ga * 2 + gb

    x = m.tensor([0.5, -1.0, 2.0], requires_grad=True)
    w = m.tensor([1.5, 0.5, -0.25])
    y = MulExp.apply(x, w, 2.0)
    a, b = Split.apply(y)
    (a.sum() * 3 + b).backward()
    assert y.grad_fn.name() == "MulExpBackward" and not y.is_leaf
    with m.no_grad():
        free = MulExp.apply(x, w, 2.0)
    return y.tolist(), x.grad.tolist(), a.tolist(), b.tolist(), free.requires_grad


def test_custom_function():
    ours, theirs = _custom_function(tracefuse), _custom_function(torch)
    np.testing.assert_allclose(np.concatenate([np.ravel(v) for v in ours[:4]]),
                               np.concatenate([np.ravel(v) for v in theirs[:4]]), rtol=1e-6)
    assert ours[4] is theirs[4] is False


def test_custom_function_saved_tensor_checks():
    class Square(tracefuse.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    x = tracefuse.tensor([1.0, 2.0], requires_grad=True)
    h = x * 1
    y = Square.apply(h)
    h.add_(1)
    with pytest.raises(RuntimeError, match=re.escape(
            "one of the variables needed for gradient computation has been modified by an inplace operation: "
            "[tracefuse.FloatTensor [2]], which is output 0 of Add, is at version 1; expected version 0 instead.")):
        y.sum().backward()
    y = Square.apply(x)
    y.sum().backward()
    with pytest.raises(RuntimeError, match=re.escape(FREED)):
        y.sum().backward()


# --- in-place errors and version counters -------------------------------------------------------------

LEAF = "a leaf Variable that requires grad is being used in an in-place operation."
VIEW_OF_LEAF = "a view of a leaf Variable that requires grad is being used in an in-place operation."


@pytest.mark.parametrize("op,message", [
    (lambda x: x.add_(1), LEAF), (lambda x: x.mul_(2), LEAF), (lambda x: x.zero_(), LEAF),
    (lambda x: x.fill_(1), LEAF), (lambda x: x.copy_(x.detach() * 2), LEAF), (lambda x: x.clamp_(0, 1), LEAF),
    (lambda x: x.__setitem__(slice(None), 1.0), LEAF), (lambda x: x.__setitem__(x > 0, 1.0), LEAF),
    (lambda x: x.__setitem__([0], 1.0), LEAF), (lambda x: x.__setitem__(0, 1.0), VIEW_OF_LEAF),
    (lambda x: x[1:].mul_(2), VIEW_OF_LEAF), (lambda x: x.view(3, 1).zero_(), VIEW_OF_LEAF),
    (lambda x: x.exp_(), LEAF), (lambda x: x.masked_fill_(x > 0, 0.0), LEAF),
])
def test_inplace_on_leaf_requiring_grad(op, message):
    for m in (tracefuse, torch):
        x = m.tensor([1.0, -2.0, 3.0], requires_grad=True)
        with pytest.raises(RuntimeError, match=re.escape(message)):
            op(x)
        with m.no_grad():  # allowed without grad mode, as in optimizer steps
            op(x)


def _saved_message(type_name, shape, maker):
    where = f", which is output 0 of {maker}," if maker else ""
    return ("one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{type_name} {shape}]{where} is at version 1; expected version 0 instead.")


@pytest.mark.parametrize("case", ["input_of_sin", "output_of_exp", "leaf_under_no_grad", "through_a_view", "mul_self"])
def test_saved_tensor_modified_in_place(case):
    """The leading part of PyTorch's message, word for word (PyTorch's hint names its anomaly mode;
    ours names the node whose gradient failed)."""
    for m in (tracefuse, torch):
        x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        if case == "input_of_sin":
            h = x * 1
            out = h.sin()
            h.add_(1)
            expected = _saved_message("FloatTensor", [3], "Add")
        elif case == "output_of_exp":
            out = x.exp()
            out.mul_(2)
            expected = _saved_message("FloatTensor", [3], "Exp")
        elif case == "leaf_under_no_grad":
            out = x.sin()
            with m.no_grad():
                x.add_(1)
            expected = _saved_message("FloatTensor", [3], None)
        elif case == "through_a_view":
            h = x * 1
            out = h.sigmoid() * h
            h[1:].mul_(2)
            expected = _saved_message("FloatTensor", [3], "CopySlices")
        else:
            h = x * 2
            h.mul_(h)
            out = h
            expected = _saved_message("FloatTensor", [3], "Mul")
        with pytest.raises(RuntimeError) as err:
            out.sum().backward()
        text = str(err.value).replace("torch.", "").replace("tracefuse.", "").replace("torch::autograd::", "")
        assert text.startswith(expected), (m.__name__, text)
        if m is tracefuse:
            assert "Hint: the operation that failed to compute its gradient is " in text


def test_version_counter_behaviour():
    """Writes through any alias (views, detach, .data is separate) count; copies do not."""
    x = tracefuse.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * 1
    y = h.exp()  # saves its output y
    h.clone().add_(1)  # a copy: no effect
    h.detach().add_(1)  # h is not saved by exp, so this is harmless
    y.detach()[1:].mul_(1.0)  # but writing y through a detached view is seen by the saved output
    with pytest.raises(RuntimeError, match="is at version 1; expected version 0 instead"):
        y.sum().backward()
    z = x.tanh()
    z.data.mul_(1)  # .data shares storage but not the version counter, as in PyTorch
    z.sum().backward()
    assert x.grad is not None


def test_no_grad_view_modified_in_grad_mode():
    message = ("A view was created in no_grad mode and is being modified inplace with grad mode enabled. Given that "
               "this use case is ambiguous and error-prone, it is forbidden.")
    for m in (tracefuse, torch):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        h = x * 1
        with m.no_grad():
            v = h[1:]
        with pytest.raises(RuntimeError, match=re.escape(message)):
            v.mul_(2)


def test_overlapping_inplace_write():
    message = ("unsupported operation: more than one element of the written-to tensor refers to a single memory "
               "location. Please clone() the tensor before performing the operation.")
    for m in (tracefuse, torch):
        e = m.zeros(1).expand(3)
        with pytest.raises(RuntimeError, match=re.escape(message)):
            e.add_(1)
        with pytest.raises(RuntimeError, match=re.escape(message)):
            e.copy_(m.ones(3))
        e.fill_(2)  # writing one value everywhere is fine
        assert e.tolist() == [2.0, 2.0, 2.0]


# --- grad modes -----------------------------------------------------------------------------------------

def _grad_mode_run(m):
    x = m.tensor([1.0], requires_grad=True)
    seen = []
    with m.no_grad():
        seen.append((x * 2).requires_grad)
        with m.enable_grad():
            seen.append((x * 2).requires_grad)
        seen.append(m.is_grad_enabled())
    seen.append(m.is_grad_enabled())

    @m.no_grad()
    def f(t):
        return t * 2

    @m.no_grad
    def g(t):
        return t * 2

    @m.enable_grad()
    def h(t):
        return t * 2

    seen += [f(x).requires_grad, g(x).requires_grad, m.is_grad_enabled()]
    with m.no_grad():
        seen.append(h(x).requires_grad)
    m.set_grad_enabled(False)
    seen += [m.is_grad_enabled(), (x * 2).requires_grad]
    m.set_grad_enabled(True)
    with m.set_grad_enabled(False):
        seen.append(m.is_grad_enabled())
    seen.append(m.is_grad_enabled())
    with m.set_grad_enabled(True):
        seen.append((x * 2).requires_grad)

    @m.set_grad_enabled(False)
    def k(t):
        return t * 2

    seen += [m.is_grad_enabled(), k(x).requires_grad, m.is_grad_enabled()]
    try:
        with m.no_grad():
            raise ValueError
    except ValueError:
        seen.append(m.is_grad_enabled())
    seen.append(f.__name__)
    return seen


def test_grad_modes():
    assert _grad_mode_run(tracefuse) == _grad_mode_run(torch)


def test_grad_mode_is_per_thread():
    import threading
    seen = []
    with tracefuse.no_grad():
        t = threading.Thread(target=lambda: seen.append(tracefuse.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_requires_grad_flags():
    for m in (tracefuse, torch):
        x = m.ones(2, requires_grad=True)
        y = x * 2
        with pytest.raises(RuntimeError, match="you can only change requires_grad flags of leaf variables."):
            y.requires_grad_(False)
        assert y.requires_grad and not y.is_leaf and not y.detach().requires_grad
        z = m.ones(2)
        assert (z * x).requires_grad and not (z * 2).requires_grad
        z.requires_grad_()
        assert z.is_leaf and z.requires_grad
        assert (x > 0).requires_grad is False and x.argmax().requires_grad is False
        assert x.max(0).indices.requires_grad is False
        assert x.detach().is_leaf and not x.detach().requires_grad and x.requires_grad


def test_grad_runs_only_the_part_of_the_graph_it_needs():
    """autograd.grad skips nodes that lead to none of its inputs, even freed ones."""
    for m in (tracefuse, torch):
        x = m.tensor([0.5, 1.0], requires_grad=True)
        w = m.tensor([2.0, 3.0], requires_grad=True)
        h = x.exp()
        h.sum().backward()  # frees ExpBackward
        (gw,) = m.autograd.grad((h * w).sum(), w)
        assert gw.tolist() == pytest.approx(np.exp([0.5, 1.0]).tolist())
        y = h * w
        (gy,) = m.autograd.grad((y * y).sum(), y)
        assert gy.tolist() == pytest.approx((2 * y).tolist())


def _function_with_backward(m, backward, n_inputs=1):
    class F(m.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            return xs[0] * 2

    F.backward = staticmethod(backward)
    x = m.ones(2, requires_grad=True)
    F.apply(*([x] * n_inputs)).sum().backward()
    return x.grad.tolist()


@pytest.mark.parametrize("backward,n_inputs,error", [
    (lambda ctx, g: (g, None), 1, None),
    (lambda ctx, g: (g, g), 1, "function FBackward returned an incorrect number of gradients (expected 1, got 2)"),
    (lambda ctx, g: g, 2, "function FBackward returned an incorrect number of gradients (expected 2, got 1)"),
    (lambda ctx, g: g.sum(), 1,
     "Function FBackward returned an invalid gradient at index 0 - got [] but expected shape compatible with [2]"),
    (lambda ctx, g: g.double(), 1, None),  # cast back to the input's dtype
])
def test_custom_function_backward_results(backward, n_inputs, error):
    for m in (tracefuse, torch):
        if error is None:
            assert _function_with_backward(m, backward, n_inputs) == [1.0, 1.0]
        else:
            with pytest.raises(RuntimeError, match=re.escape(error)):
                _function_with_backward(m, backward, n_inputs)


@pytest.mark.parametrize("data, dim", [
    ([[1.0, 3.0, 3.0], [0.0, 0.0, -2.0], [0.0, 2.0, 5.0]], 1),
    ([[1.0, 3.0, 3.0], [0.0, 0.0, -2.0], [0.0, 2.0, 5.0]], 0),
    ([2.0, 0.0, 4.0], None),
])
def test_prod_gradient_with_zeros_matches_torch(data, dim):
    ours = tracefuse.tensor(data, dtype=tracefuse.float64, requires_grad=True)
    theirs = torch.tensor(data, dtype=torch.float64, requires_grad=True)
    (ours.prod() if dim is None else ours.prod(dim)).sum().backward()
    (theirs.prod() if dim is None else theirs.prod(dim)).sum().backward()
    assert np.isfinite(ours.grad.numpy()).all()
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())
