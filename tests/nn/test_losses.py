"""Losses (functional and modules) against torch: mse/l1, cross_entropy (class indices with
ignore_index, weights and label smoothing; probabilities; K-dim inputs), nll_loss and
binary_cross_entropy_with_logits, over every reduction; values and gradients of inputs (and of
probability targets); warnings and errors by type and message."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tracefuse as tf
from tests.conftest import assert_same
from tests.nn.test_functional import TIGHT, F, assert_same_error, const, run_both, same_warning

REDUCTIONS = ["none", "mean", "sum"]


# --- mse / l1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pointwise_losses(name, reduction, rng):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    run_both(lambda lib, x, y: getattr(F(lib), name)(x, y, reduction=reduction), x, y)
    run_both(lambda lib, x, y: getattr(F(lib), name)(x, y, reduction=reduction), x, y, dtype="float32")
    weight = rng.random((3, 4))
    run_both(lambda lib, x, y, w: getattr(F(lib), name)(x, y, reduction=reduction, weight=w), x, y, weight)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_pointwise_losses_warn_on_broadcasting_targets(name, rng):
    x, y = rng.standard_normal((3, 1)), rng.standard_normal(3)
    message = same_warning(lambda lib: getattr(F(lib), name)(lib.tensor(x), lib.tensor(y)))
    assert message.startswith("Using a target size (tracefuse.Size([3])) that is different to the input size "
                              "(tracefuse.Size([3, 1])).")
    with pytest.warns(UserWarning):
        run_both(lambda lib, x, y: getattr(F(lib), name)(x, y), x, y)


@pytest.mark.parametrize("size_average, reduce", [(False, None), (None, False), (True, True)])
def test_legacy_reduction_arguments(size_average, reduce, rng):
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    message = same_warning(lambda lib: F(lib).mse_loss(lib.tensor(x), lib.tensor(y), size_average, reduce))
    assert message.startswith("size_average and reduce args will be deprecated, please use reduction=")
    with pytest.warns(UserWarning):
        run_both(lambda lib, x, y: F(lib).mse_loss(x, y, size_average, reduce), x, y)


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).mse_loss(lib.randn(3), lib.randn(3), reduction="foo"),
    lambda lib: F(lib).l1_loss(lib.randn(3), lib.randn(3), weight=lib.ones(2)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, 3]), reduction="foo"),
])
def test_pointwise_loss_errors(call):
    assert_same_error(call)


# --- cross_entropy / nll_loss --------------------------------------------------------------------

TARGETS = np.array([1, 0, 3, 2, 3])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 3])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_class_indices(reduction, weighted, ignore_index, smoothing, rng):
    weight = const(rng.random(4) + 0.5 if weighted else None)
    run_both(lambda lib, x, t, w: F(lib).cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction,
                                                        label_smoothing=smoothing),
             rng.standard_normal((5, 4)) * 2, TARGETS, weight)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_k_dim_unbatched_and_float32(smoothing, rng):
    targets = rng.integers(0, 3, size=(2, 4, 5))
    targets[0, 0, 0] = -100
    for reduction in REDUCTIONS:
        run_both(lambda lib, x, t, w: F(lib).cross_entropy(x, t, w, reduction=reduction, label_smoothing=smoothing),
                 rng.standard_normal((2, 3, 4, 5)), targets, const(rng.random(3) + 0.5))
    run_both(lambda lib, x, t: F(lib).cross_entropy(x, t, label_smoothing=smoothing), rng.standard_normal(6),
             np.array(4))
    run_both(lambda lib, x, t: F(lib).cross_entropy(x, t, label_smoothing=smoothing), rng.standard_normal((5, 4)),
             TARGETS, dtype="float32")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_probability_targets(reduction, weighted, smoothing, rng):
    """Gradients flow to the probabilities as well as to the logits."""
    probs = rng.random((3, 4, 2))
    probs /= probs.sum(1, keepdims=True)
    weight = const(rng.random(4) + 0.5 if weighted else None)
    run_both(lambda lib, x, p, w: F(lib).cross_entropy(x, p, w, reduction=reduction, label_smoothing=smoothing),
             rng.standard_normal((3, 4, 2)), probs, weight)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_all_targets_ignored_gives_nan_mean_and_zero_grads(smoothing, rng):
    out = run_both(lambda lib, x, t: F(lib).cross_entropy(x, t, label_smoothing=smoothing),
                   rng.standard_normal((2, 3)), np.array([-100, -100]))
    assert np.isnan(out[0].item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(reduction, rng):
    run_both(lambda lib, x, t, w: F(lib).nll_loss(x, t, w, ignore_index=0, reduction=reduction),
             rng.standard_normal((5, 4)), TARGETS, const(rng.random(4)))
    run_both(lambda lib, x, t: F(lib).nll_loss(x, t, reduction=reduction), rng.standard_normal((2, 3, 4)),
             rng.integers(0, 3, size=(2, 4)))
    run_both(lambda lib, x, t: F(lib).nll_loss(x, t, reduction=reduction), rng.standard_normal((5, 4)),
             TARGETS.astype(np.uint8), dtype="float32")


@pytest.mark.parametrize("call", [
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2])),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, 4])),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, -1])),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.rand(3, 5)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, 3], dtype=lib.int32)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1.0, 2.0, 3.0])),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, 3]), label_smoothing=1.5),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.tensor([1, 2, 3]), weight=lib.ones(3)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4, 5), lib.ones(3, 6, dtype=lib.long)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4, 2), lib.rand(3, 4, 5)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.rand(3, 4), ignore_index=1),
    lambda lib: F(lib).cross_entropy(lib.randn(()), lib.tensor(1)),
    lambda lib: F(lib).cross_entropy(lib.randn(3, 4), lib.rand(3, 4), weight=lib.ones(2)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4), lib.ones(3, 2, dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(()), lib.ones((), dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4, 5), lib.ones(3, dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4, 5, 6), lib.ones(3, 5, 7, dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4, 5, 6), lib.ones(3, 5, dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4, 5), lib.ones(2, 5, dtype=lib.long)),
    lambda lib: F(lib).nll_loss(lib.randn(3, 4), lib.ones(3, dtype=lib.long), weight=lib.ones(5)),
])
def test_classification_loss_errors(call):
    assert_same_error(call)


# --- binary_cross_entropy_with_logits ------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted, pos_weighted", [(False, False), (True, False), (False, True), (True, True)])
def test_bce_with_logits(reduction, weighted, pos_weighted, rng):
    weight = const(rng.random((1, 3)) if weighted else None)
    pos_weight = const(rng.random(3) * 3 if pos_weighted else None)
    run_both(lambda lib, x, t, w, pw: F(lib).binary_cross_entropy_with_logits(x, t, w, reduction=reduction,
                                                                               pos_weight=pw),
             rng.standard_normal((4, 3)) * 3, rng.random((4, 3)), weight, pos_weight)


def test_bce_with_logits_is_stable_for_extreme_logits_and_float32(rng):
    x = np.array([[-200.0, -30.0, 0.0, 30.0, 200.0]])
    run_both(lambda lib, x, t: F(lib).binary_cross_entropy_with_logits(x, t, reduction="none"), x, rng.random((1, 5)))
    run_both(lambda lib, x, t: F(lib).binary_cross_entropy_with_logits(x, t), rng.standard_normal((4, 3)),
             rng.random((4, 3)), dtype="float32")


def test_bce_with_logits_size_error():
    assert_same_error(lambda lib: F(lib).binary_cross_entropy_with_logits(lib.randn(3, 1), lib.rand(3)))


# --- loss modules --------------------------------------------------------------------------------

def _both(name, *args, **kwargs):
    """The loss module built on both sides; tensor arguments given as NumPy arrays."""
    def build(lib):
        conv = {k: lib.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        return getattr(lib.nn, name)(*args, **conv)
    return build(tf), build(torch)


@pytest.mark.parametrize("name, kwargs, target", [
    ("MSELoss", dict(reduction="sum"), "real"),
    ("L1Loss", dict(), "real"),
    ("CrossEntropyLoss", dict(weight=np.array([1.0, 2.0, 0.5, 1.0]), ignore_index=0, label_smoothing=0.1), "class"),
    ("NLLLoss", dict(weight=np.array([1.0, 2.0, 0.5, 1.0]), reduction="none"), "class"),
    ("BCEWithLogitsLoss", dict(pos_weight=np.array([2.0, 1.0, 0.5, 1.5])), "prob"),
])
def test_loss_modules(name, kwargs, target, rng):
    ours, theirs = _both(name, **kwargs)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.reduction == theirs.reduction
    t = {"real": rng.standard_normal((5, 4)), "class": TARGETS, "prob": rng.random((5, 4))}[target]
    run_both(lambda lib, x, t: (ours if lib is tf else theirs)(x, t), rng.standard_normal((5, 4)), t)


def test_loss_module_legacy_arguments_pick_a_reduction():
    with pytest.warns(UserWarning, match="please use reduction='sum' instead"):
        ours = tf.nn.MSELoss(size_average=False)
    assert ours.reduction == "sum"
    x = np.arange(4.0)
    assert_same(ours(tf.tensor(x), tf.zeros(4, dtype=tf.float64)),
                torch.nn.functional.mse_loss(torch.tensor(x), torch.zeros(4, dtype=torch.float64), reduction="sum"),
                **TIGHT)
