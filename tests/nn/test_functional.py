"""tracefuse.nn.functional against torch.nn.functional: activations, softmax family, layer_norm,
embedding, dropout, linear/bilinear, batch_norm, pad, distances and one_hot.

Every comparison runs the same call on both sides (`fn(lib, *tensors)` with lib = tracefuse or
torch) and compares values and the gradients of every floating input, in float64 tightly and in
float32 with torch's default tolerances; the new ops are also checked by central differences and
double backward. Errors are compared by type and message with torch's names spelled `tracefuse`.
The helpers here are shared by the other nn test files.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tracefuse as tf
from tests.conftest import assert_same

TIGHT = dict(rtol=1e-7, atol=1e-9)
LIBS = {"tracefuse": tf, "torch": torch}


# --- shared helpers ------------------------------------------------------------------------------

class Const:
    """Marks a float array that enters as a constant (class weights: torch refuses their gradient)."""

    def __init__(self, array):
        self.array = array


def const(array):
    return None if array is None else Const(array)


def _inputs(lib, arrays, dtype):
    """Float arrays become leaf tensors requiring grad (in `dtype`); integer arrays stay index
    tensors; `Const` arrays become tensors without grad."""
    out = []
    for a in arrays:
        if isinstance(a, Const):
            out.append(lib.tensor(a.array, dtype=getattr(lib, dtype)))
        elif a is None or not isinstance(a, np.ndarray):
            out.append(a)
        elif a.dtype.kind == "f":
            out.append(lib.tensor(a, dtype=getattr(lib, dtype), requires_grad=True))
        else:
            out.append(lib.tensor(a))
    return out


def _grads(lib, outputs, inputs, cotangents, create_graph):
    loss = sum((o * lib.tensor(c, dtype=o.dtype)).sum() for o, c in zip(outputs, cotangents))
    return lib.autograd.grad(loss, inputs, create_graph=create_graph, allow_unused=True)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run_both(fn, *arrays, dtype="float64", rtol=None, atol=None, double=False, seed=0):
    """Compare `fn(lib, *inputs)` between tracefuse and torch: outputs, first-order gradients of
    every floating input under a random cotangent and, with `double`, second-order ones."""
    if dtype == "float64" and rtol is None:
        rtol, atol = TIGHT["rtol"], TIGHT["atol"]
    rng = np.random.default_rng(seed)
    ours_in, theirs_in = _inputs(tf, arrays, dtype), _inputs(torch, arrays, dtype)
    ours, theirs = _as_tuple(fn(tf, *ours_in)), _as_tuple(fn(torch, *theirs_in))
    assert_same(ours, theirs, rtol, atol)
    diff = [o for o, t in zip(ours, theirs) if t.requires_grad]
    diff_t = [t for t in theirs if t.requires_grad]
    leaves = [i for i, t in enumerate(theirs_in) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not diff_t or not leaves:
        return ours
    cot = [rng.standard_normal(tuple(t.shape)) for t in diff_t]
    g_ours = _grads(tf, diff, [ours_in[i] for i in leaves], cot, double)
    g_theirs = _grads(torch, diff_t, [theirs_in[i] for i in leaves], cot, double)
    for a, b, i in zip(g_ours, g_theirs, leaves):
        _assert_grad(a, b, theirs_in[i], rtol, atol)
    if double:
        pairs = [(a, b) for a, b in zip(g_ours, g_theirs) if b is not None and b.requires_grad]
        assert pairs, "no gradient depends on the inputs: nothing to double-differentiate"
        cot2 = [rng.standard_normal(tuple(b.shape)) for _, b in pairs]
        gg_ours = _grads(tf, [a for a, _ in pairs], [ours_in[i] for i in leaves], cot2, False)
        gg_theirs = _grads(torch, [b for _, b in pairs], [theirs_in[i] for i in leaves], cot2, False)
        for a, b, i in zip(gg_ours, gg_theirs, leaves):
            _assert_grad(a, b, theirs_in[i], rtol, atol)
    return ours


def _assert_grad(ours, theirs, like, rtol, atol):
    """Gradients compare as tensors; an unused input (None) equals an all-zero gradient."""
    if theirs is None:
        theirs = torch.zeros_like(like)
    if ours is None:
        ours = tf.zeros(tuple(like.shape), dtype=getattr(tf, str(like.dtype).replace("torch.", "")))
    assert_same(ours, theirs, rtol, atol)


def check_central_differences(fn, *arrays, eps=1e-6, rtol=1e-6, atol=1e-8, seed=1):
    """Autograd gradients of sum(fn(*inputs) * R) against central differences, in float64."""
    rng = np.random.default_rng(seed)
    inputs = _inputs(tf, arrays, "float64")
    out = fn(*inputs)
    weight = rng.standard_normal(tuple(out.shape))
    positions = [i for i, x in enumerate(inputs) if isinstance(x, tf.Tensor) and x.requires_grad]
    grads = tf.autograd.grad((out * tf.tensor(weight)).sum(), [inputs[i] for i in positions])

    def value(values):
        with tf.no_grad():
            return float((fn(*values) * tf.tensor(weight)).sum())

    for position, g in zip(positions, grads):
        base = inputs[position].detach().numpy()
        numeric = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            shifted = []
            for sign in (1, -1):
                moved = base.copy()
                moved[idx] += sign * eps
                values = list(inputs)
                values[position] = tf.tensor(moved)
                shifted.append(value(values))
            numeric[idx] = (shifted[0] - shifted[1]) / (2 * eps)
        np.testing.assert_allclose(g.numpy(), numeric, rtol=rtol, atol=atol, err_msg=f"input {position}")


def assert_same_error(fn):
    """`fn(lib)` raises the same exception type and message with torch and with tracefuse."""
    with pytest.raises(Exception) as theirs:
        fn(torch)
    expected = str(theirs.value).replace("torch.", "tracefuse.")
    with pytest.raises(type(theirs.value)) as ours:
        fn(tf)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == expected
    return expected


def same_warning(fn):
    """`fn(lib)` warns with the same category and message on both sides; returns the message."""
    seen = {}
    for name, lib in LIBS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(lib)
        seen[name] = [(w.category, str(w.message).replace("torch.", "tracefuse.")) for w in caught]
    assert seen["tracefuse"] == seen["torch"] and seen["torch"]
    return seen["torch"][0][1]


def F(lib):
    return lib.nn.functional


# --- activations ---------------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": lambda lib, x: F(lib).relu(x),
    "leaky_relu": lambda lib, x: F(lib).leaky_relu(x, 0.2),
    "elu": lambda lib, x: F(lib).elu(x, alpha=0.7),
    "gelu": lambda lib, x: F(lib).gelu(x),
    "gelu_tanh": lambda lib, x: F(lib).gelu(x, approximate="tanh"),
    "sigmoid": lambda lib, x: F(lib).sigmoid(x),
    "tanh": lambda lib, x: F(lib).tanh(x),
    "softplus": lambda lib, x: F(lib).softplus(x, beta=2.0, threshold=3.0),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_torch(name, dtype, rng):
    run_both(ACTIVATIONS[name], rng.standard_normal((4, 5)) * 2, dtype=dtype)


@pytest.mark.parametrize("name, call", [
    ("relu", lambda lib, x: F(lib).relu(x, inplace=True)),
    ("relu_", lambda lib, x: F(lib).relu_(x)),
    ("leaky_relu", lambda lib, x: F(lib).leaky_relu(x, 0.1, inplace=True)),
    ("elu", lambda lib, x: F(lib).elu(x, 1.5, inplace=True)),
])
def test_inplace_activations_write_into_their_input(name, call, rng):
    def fn(lib, x):
        y = x * 1.0
        out = call(lib, y)
        assert out is y
        return out
    run_both(fn, rng.standard_normal((3, 4)))


def test_gelu_rejects_unknown_approximation():
    assert_same_error(lambda lib: F(lib).gelu(lib.randn(2), approximate="foo"))


# --- softmax family ------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_family_values_grads_and_double_backward(op, dim, rng):
    run_both(lambda lib, x: getattr(F(lib), op)(x, dim), rng.standard_normal((3, 4, 5)) * 3, double=True)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family_float32_and_dtype_argument(op, rng):
    x = rng.standard_normal((4, 6)) * 3
    run_both(lambda lib, t: getattr(F(lib), op)(t, 1), x, dtype="float32")
    run_both(lambda lib, t: getattr(F(lib), op)(t, 0, dtype=lib.float64), x, dtype="float32")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family_central_differences(op, rng):
    check_central_differences(lambda x: getattr(tf.nn.functional, op)(x, 1), rng.standard_normal((3, 5)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family_is_stable_for_large_and_infinite_inputs(op):
    x = np.array([[1000.0, 1001.0, 999.0], [-np.inf, 0.0, 1.0], [-1000.0, -1000.0, -1001.0]])
    for lib in (tf, torch):
        out = getattr(F(lib), op)(lib.tensor(x), 1)
        assert not np.isnan(out.detach().numpy()).any()
    run_both(lambda lib, t: getattr(F(lib), op)(t, 1), x[[0, 2]])
    assert_same(getattr(tf.nn.functional, op)(tf.tensor(x), 1), getattr(torch.nn.functional, op)(torch.tensor(x), 1))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (2, 3, 4), (2, 3, 4, 2)])
def test_implicit_softmax_dim_warns_and_picks_torchs_dim(op, shape, rng):
    x = rng.standard_normal(shape)
    message = same_warning(lambda lib: getattr(F(lib), op)(lib.tensor(x)))
    assert message == (f"Implicit dimension choice for {op} has been deprecated. "
                       "Change the call to include dim=X as an argument.")
    with pytest.warns(UserWarning) as caught:
        getattr(tf.nn.functional, op)(tf.tensor(x))
    assert caught[0].filename == __file__  # the warning points at the caller, as torch's does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_both(lambda lib, t: getattr(F(lib), op)(t), x)


def test_softmax_rejects_out_of_range_dim():
    assert_same_error(lambda lib: F(lib).softmax(lib.randn(2, 3), 2))


# --- layer_norm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("normalized, affine", [((5,), "both"), ((4, 5), "both"), ((5,), "weight"), ((5,), None)])
def test_layer_norm_values_grads_and_double_backward(normalized, affine, rng):
    x = rng.standard_normal((3, 4, 5)) * 2 + 1
    w = rng.standard_normal(normalized) if affine else None
    b = rng.standard_normal(normalized) if affine == "both" else None
    run_both(lambda lib, x, w, b: F(lib).layer_norm(x, normalized, w, b, eps=1e-3), x, w, b, double=True)


def test_layer_norm_float32(rng):
    run_both(lambda lib, x, w, b: F(lib).layer_norm(x, [6], w, b), rng.standard_normal((5, 6)),
             rng.standard_normal(6), rng.standard_normal(6), dtype="float32")


def test_layer_norm_central_differences(rng):
    check_central_differences(lambda x, w, b: tf.nn.functional.layer_norm(x, (4,), w, b),
                              rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4))


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), (5,)),
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), (2, 3, 4)),
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), (3,), lib.randn(4)),
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), (3,), None, lib.randn(4)),
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), ()),
    lambda lib: F(lib).layer_norm(lib.randn(2, 3), 3),
])
def test_layer_norm_errors(call):
    assert_same_error(call)


# --- embedding -----------------------------------------------------------------------------------

INDICES = np.array([[1, 3, 3], [0, 4, 1]])


@pytest.mark.parametrize("padding_idx", [None, 3, -2])
def test_embedding_values_grads_and_double_backward(padding_idx, rng):
    """The scale input makes the weight gradient depend on a tensor, so double backward runs
    through embedding_backward's own rule."""
    def fn(lib, w, idx, scale):
        return F(lib).embedding(idx, w, padding_idx=padding_idx) * scale
    run_both(fn, rng.standard_normal((5, 4)), INDICES, rng.standard_normal(4), double=True)


def test_embedding_float32_int32_indices_and_central_differences(rng):
    w = rng.standard_normal((5, 3))
    run_both(lambda lib, w, idx: F(lib).embedding(idx.int(), w), w, INDICES, dtype="float32")
    idx = tf.tensor(INDICES)
    check_central_differences(lambda w: tf.nn.functional.embedding(idx, w) ** 2, w)


def test_embedding_max_norm_renormalizes_looked_up_rows_in_place(rng):
    w = rng.standard_normal((6, 4)) * 3
    outs = {}
    for name, lib in LIBS.items():
        weight = lib.tensor(w)
        out = F(lib).embedding(lib.tensor(INDICES), weight, max_norm=1.5)
        outs[name] = (out, weight)
    assert_same(outs["tracefuse"], outs["torch"], **TIGHT)
    assert not np.allclose(outs["tracefuse"][1].numpy(), w)


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).embedding(lib.tensor([1]), lib.randn(3, 2), padding_idx=3),
    lambda lib: F(lib).embedding(lib.tensor([1]), lib.randn(3, 2), padding_idx=-4),
    lambda lib: F(lib).embedding(lib.tensor([3]), lib.randn(3, 2)),
    lambda lib: F(lib).embedding(lib.tensor([1.0]), lib.randn(3, 2)),
    lambda lib: F(lib).embedding(lib.tensor([1]), lib.randn(3)),
])
def test_embedding_errors(call):
    assert_same_error(call)


# --- dropout -------------------------------------------------------------------------------------

def test_dropout_keeps_one_minus_p_and_scales_survivors():
    tf.manual_seed(0)
    x = tf.ones(200, 100, requires_grad=True)
    y = tf.nn.functional.dropout(x, p=0.3)
    kept = y.detach().numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y.detach().numpy()[kept], 1 / 0.7)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.7)


def test_dropout_is_seeded_identity_when_off_and_zero_at_p_one():
    x = tf.randn(4, 5)
    tf.manual_seed(3)
    a = tf.nn.functional.dropout(x, 0.5)
    tf.manual_seed(3)
    b = tf.nn.functional.dropout(x, 0.5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert tf.nn.functional.dropout(x, 0.5, training=False) is x
    assert tf.nn.functional.dropout(x, 0.0) is x
    assert not tf.nn.functional.dropout(x, 1.0).numpy().any()


def test_dropout_inplace_writes_its_input():
    x = tf.ones(50, 50)
    out = tf.nn.functional.dropout(x, 0.5, inplace=True)
    assert out is x
    assert set(np.unique(x.numpy())) == {0.0, 2.0}


@pytest.mark.parametrize("p", [1.5, -0.1])
def test_dropout_probability_out_of_range(p):
    message = assert_same_error(lambda lib: F(lib).dropout(lib.randn(2), p))
    assert message == f"dropout probability has to be between 0 and 1, but got {p}"


# --- linear and bilinear -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 4, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape, bias, rng):
    b = rng.standard_normal(5) if bias else None
    run_both(lambda lib, x, w, b: F(lib).linear(x, w, b), rng.standard_normal(shape), rng.standard_normal((5, 3)), b)


def test_linear_float32(rng):
    run_both(lambda lib, x, w, b: F(lib).linear(x, w, b), rng.standard_normal((4, 3)), rng.standard_normal((5, 3)),
             rng.standard_normal(5), dtype="float32")


@pytest.mark.parametrize("shape", [(2, 3), (2, 2, 3)])
def test_linear_shape_errors(shape):
    assert_same_error(lambda lib: F(lib).linear(lib.randn(*shape), lib.randn(4, 5)))


@pytest.mark.parametrize("lead, bias", [((4,), True), ((2, 3), False)])
def test_bilinear(lead, bias, rng):
    b = rng.standard_normal(5) if bias else None
    run_both(lambda lib, x1, x2, w, b: F(lib).bilinear(x1, x2, w, b), rng.standard_normal(lead + (3,)),
             rng.standard_normal(lead + (2,)), rng.standard_normal((5, 3, 2)), b)


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).bilinear(lib.randn(2, 3), lib.randn(2, 4), lib.randn(5, 3, 3)),
    lambda lib: F(lib).bilinear(lib.randn(2, 3), lib.randn(3, 4), lib.randn(5, 3, 4)),
    lambda lib: F(lib).bilinear(lib.randn(2, 3), lib.randn(2, 4), lib.randn(5, 3, 4), lib.randn(4)),
    lambda lib: F(lib).bilinear(lib.randn(2, 3), lib.randn(2, 2, 4), lib.randn(5, 3, 4)),
    lambda lib: F(lib).bilinear(lib.randn(2, 2), lib.randn(2, 4), lib.randn(5, 3, 4)),
])
def test_bilinear_errors(call):
    assert_same_error(call)


# --- batch_norm ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_batch_norm_training_updates_running_stats(shape, rng):
    stats = {}

    def fn(lib, x, w, b):
        mean, var = lib.tensor(rng_mean), lib.tensor(rng_var)
        out = F(lib).batch_norm(x, mean, var, w, b, training=True, momentum=0.3, eps=1e-4)
        stats[lib.__name__] = (mean, var)
        return out

    rng_mean, rng_var = rng.standard_normal(3), rng.random(3) + 0.5
    run_both(fn, rng.standard_normal(shape) * 2 + 1, rng.standard_normal(3), rng.standard_normal(3))
    assert_same(stats["tracefuse"], stats["torch"], **TIGHT)


def test_batch_norm_eval_uses_running_stats(rng):
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    run_both(lambda lib, x, w, b: F(lib).batch_norm(x, lib.tensor(mean), lib.tensor(var), w, b),
             rng.standard_normal((4, 3, 2)), rng.standard_normal(3), rng.standard_normal(3))
    run_both(lambda lib, x: F(lib).batch_norm(x, None, None, training=True), rng.standard_normal((5, 3)),
             dtype="float32")


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).batch_norm(lib.randn(1, 3), lib.zeros(3), lib.ones(3), training=True),
    lambda lib: F(lib).batch_norm(lib.randn(1, 3, 1), lib.zeros(3), lib.ones(3), training=True),
    lambda lib: F(lib).batch_norm(lib.randn(4, 3), lib.zeros(2), lib.ones(2), training=True),
    lambda lib: F(lib).batch_norm(lib.randn(4, 3), lib.zeros(3), lib.ones(2), training=True),
    lambda lib: F(lib).batch_norm(lib.randn(4, 3), lib.zeros(3), lib.ones(3), lib.ones(2), training=True),
    lambda lib: F(lib).batch_norm(lib.randn(4, 3), None, None),
])
def test_batch_norm_errors(call):
    assert_same_error(call)


# --- pad -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, pad, shape", [
    ("constant", (1, 2), (2, 3)),
    ("constant", (1, -1, 2, 0), (2, 3, 4)),
    ("reflect", (2, 1), (2, 3, 4)),
    ("reflect", (1, 2, 2, 1), (1, 2, 3, 4)),
    ("replicate", (3, 1), (2, 4)),
    ("replicate", (1, 0, 2, 3), (2, 3, 4)),
    ("circular", (2, 3), (1, 2, 4)),
    ("circular", (1, 1, 2, 0), (2, 3, 4)),
])
def test_pad_modes(mode, pad, shape, rng):
    value = 1.5 if mode == "constant" else None
    run_both(lambda lib, x: F(lib).pad(x, pad, mode=mode, value=value), rng.standard_normal(shape))


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).pad(lib.randn(2, 3), (1,)),
    lambda lib: F(lib).pad(lib.randn(2, 3), (1, 1, 1, 1, 1, 1)),
    lambda lib: F(lib).pad(lib.randn(2, 3), (1, 1), mode="foo"),
    lambda lib: F(lib).pad(lib.randn(1, 2, 3), (3, 3), mode="reflect"),
    lambda lib: F(lib).pad(lib.randn(3), (1, 1), mode="reflect"),
    lambda lib: F(lib).pad(lib.randn(1, 1, 3, 3), (1, 1), mode="replicate"),
    lambda lib: F(lib).pad(lib.randn(1, 2, 3), (4, 4), mode="circular"),
    lambda lib: F(lib).pad(lib.randn(1, 2, 3), (1, 1), mode="reflect", value=1.0),
])
def test_pad_errors(call):
    assert_same_error(call)


# --- distances, normalize, one_hot ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cosine_similarity(dtype, rng):
    run_both(lambda lib, a, b: F(lib).cosine_similarity(a, b), rng.standard_normal((4, 5)),
             rng.standard_normal((4, 5)), dtype=dtype)
    run_both(lambda lib, a, b: F(lib).cosine_similarity(a, b, dim=-1, eps=1e-3), rng.standard_normal((3, 1, 4)),
             rng.standard_normal((2, 4)), dtype=dtype)
    run_both(lambda lib, a, b: F(lib).cosine_similarity(a, b), np.zeros((2, 3)), rng.standard_normal((2, 3)),
             dtype=dtype)


@pytest.mark.parametrize("p, keepdim", [(2.0, False), (1.0, True), (3.0, False)])
def test_pairwise_distance(p, keepdim, rng):
    run_both(lambda lib, a, b: F(lib).pairwise_distance(a, b, p=p, keepdim=keepdim), rng.standard_normal((4, 5)),
             rng.standard_normal((4, 5)))
    run_both(lambda lib, a, b: F(lib).pairwise_distance(a, b, p=p), rng.standard_normal(5),
             rng.standard_normal(5))
    run_both(lambda lib, a, b: F(lib).pairwise_distance(a, b), rng.standard_normal((3, 4)), rng.standard_normal(4),
             dtype="float32")


@pytest.mark.parametrize("p, dim", [(2.0, 1), (1.0, 0), (3.0, -1)])
def test_normalize(p, dim, rng):
    x = rng.standard_normal((3, 4))
    x[1] = 0
    run_both(lambda lib, x: F(lib).normalize(x, p=p, dim=dim), x)


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).cosine_similarity(lib.randn(3, 4), lib.randn(3, 5)),
    lambda lib: F(lib).cosine_similarity(lib.randn(3, 2), lib.randn(3, 2), dim=2),
    lambda lib: F(lib).normalize(lib.randn(3, 4), dim=2),
])
def test_distance_errors(call):
    assert_same_error(call)


@pytest.mark.parametrize("values, classes", [([1, 0, 3], -1), ([[2, 0], [1, 1]], 5), ([], 3)])
def test_one_hot(values, classes):
    ours = tf.nn.functional.one_hot(tf.tensor(values, dtype=tf.int64), classes)
    theirs = torch.nn.functional.one_hot(torch.tensor(values, dtype=torch.int64), classes)
    assert_same(ours, theirs)


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).one_hot(lib.tensor([1.0])),
    lambda lib: F(lib).one_hot(lib.tensor([1], dtype=lib.int32)),
    lambda lib: F(lib).one_hot(lib.tensor([-1])),
    lambda lib: F(lib).one_hot(lib.tensor([3]), 3),
    lambda lib: F(lib).one_hot(lib.tensor([], dtype=lib.long)),
    lambda lib: F(lib).one_hot(lib.tensor([1]), -2),
])
def test_one_hot_errors(call):
    assert_same_error(call)


def test_helpers_catch_a_wrong_gradient(rng):
    """The comparison helpers fail on a deliberately wrong result (so passing tests mean something)."""
    with pytest.raises(AssertionError):
        run_both(lambda lib, x: x * 2 if lib is tf else x * 2.001, rng.standard_normal(3))
    with pytest.raises(AssertionError):
        check_central_differences(lambda x: x.detach() * x, rng.standard_normal(3))
    with pytest.raises(AssertionError):
        assert_same_error(lambda lib: F(lib).dropout(lib.randn(2), 1.5) if lib is torch else
                          F(lib).dropout(lib.randn(2), 2.5))
