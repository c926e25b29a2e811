"""Gradient clipping against torch.nn.utils: norms of every order, scaled gradients, errors, and the
one-node property (one norm op and one scale op whatever the number of parameters)."""
from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest
import torch

import tracefuse
import tracefuse.nn as nn
from tracefuse.dispatch import dispatch
from tracefuse.nn.utils import clip_grad

from tests.conftest import assert_same, torch_dtype

SHAPES = [(3, 4), (5,), (), (2, 3, 2), (0, 3)]


def _params(rng, dtype, shapes=SHAPES, scale=3.0, without_grad=(1,)):
    """Matching tracefuse and torch leaf parameters; those in `without_grad` get no gradient."""
    ours, theirs = [], []
    for i, shape in enumerate(shapes):
        value = np.asarray(rng.standard_normal(shape)).reshape(shape)
        p = tracefuse.tensor(value).to(dtype).requires_grad_()
        q = torch.tensor(value).to(torch_dtype(dtype)).requires_grad_()
        if i not in without_grad:
            g = np.asarray(rng.standard_normal(shape) * scale).reshape(shape)
            p.grad = tracefuse.tensor(g).to(dtype)
            q.grad = torch.tensor(g).to(torch_dtype(dtype))
        ours.append(p)
        theirs.append(q)
    return ours, theirs


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-14) if dtype is tracefuse.float64 else {}


def _assert_grads(ours, theirs, **tol):
    for p, q in zip(ours, theirs):
        assert_same(p.grad, q.grad, **tol)


@pytest.mark.parametrize("norm_type", [0.5, 1, 1.5, 2, 4, math.inf, 0, -math.inf])
@pytest.mark.parametrize("dtype", [tracefuse.float64, tracefuse.float32])
@pytest.mark.parametrize("max_norm", [1.0, 1e4])
def test_clip_grad_norm_matches_torch(rng, norm_type, dtype, max_norm):
    shapes = SHAPES if math.isfinite(norm_type) else SHAPES[:-1]  # no inf norm of an empty tensor
    ours, theirs = _params(rng, dtype, shapes)
    total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert_same(total, expected, **_tol(dtype))
    _assert_grads(ours, theirs, **_tol(dtype))
    assert ours[1].grad is None


@pytest.mark.parametrize("norm_type", [1.5, 2, math.inf])
@pytest.mark.parametrize("dtype", [tracefuse.float16, tracefuse.bfloat16])
def test_clip_grad_norm_half_precisions_match_torch(rng, norm_type, dtype):
    ours, theirs = _params(rng, dtype, shapes=[(40, 7), (33,), (2, 5)])
    total = nn.utils.clip_grad_norm_(ours, 0.5, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
    assert_same(total, expected)
    _assert_grads(ours, theirs)


def test_clip_grad_norm_mixed_dtypes_promote_like_torch(rng):
    p32, q32 = _params(rng, tracefuse.float32, shapes=[(4, 3)], without_grad=())
    p64, q64 = _params(rng, tracefuse.float64, shapes=[(6,)], without_grad=())
    total = nn.utils.clip_grad_norm_(p32 + p64, 0.1)
    expected = torch.nn.utils.clip_grad_norm_(q32 + q64, 0.1)
    assert_same(total, expected)
    _assert_grads(p32 + p64, q32 + q64)


def test_clip_grad_norm_single_tensor_and_generator(rng):
    ours, theirs = _params(rng, tracefuse.float64, shapes=[(3, 3), (4,)], without_grad=())
    assert_same(nn.utils.clip_grad_norm_(ours[0], 0.5), torch.nn.utils.clip_grad_norm_(theirs[0], 0.5))
    assert_same(nn.utils.clip_grad_norm_((p for p in ours), 0.5, 4.0),
                torch.nn.utils.clip_grad_norm_((q for q in theirs), 0.5, 4.0))
    _assert_grads(ours, theirs, rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_writes_each_grad_in_place():
    p = tracefuse.tensor([3.0, 4.0], requires_grad=True)
    p.grad = tracefuse.tensor([3.0, 4.0])
    grad, version = p.grad, p.grad._version.value
    view = grad[:1]
    total = nn.utils.clip_grad_norm_([p], 1.0)
    assert total.item() == pytest.approx(5.0)
    assert p.grad is grad and grad._version.value == version + 1
    np.testing.assert_allclose(grad.numpy(), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(view.numpy(), [0.6], rtol=1e-6)  # the storage itself was written


def test_clip_grad_norm_does_not_amplify_small_gradients():
    p = tracefuse.tensor([0.3, 0.4], requires_grad=True)
    p.grad = tracefuse.tensor([0.3, 0.4])
    nn.utils.clip_grad_norm_([p], 10.0)
    np.testing.assert_array_equal(p.grad.numpy(), np.array([0.3, 0.4], dtype=np.float32))


def test_clip_grad_norm_is_not_recorded_by_autograd(rng):
    ours, _ = _params(rng, tracefuse.float32, shapes=[(3,)], without_grad=())
    ours[0].grad.requires_grad_()
    total = nn.utils.clip_grad_norm_(ours, 0.1)
    assert total.grad_fn is None and not total.requires_grad


@pytest.mark.parametrize("norm_type,order", [(2, "2.0"), (math.inf, "inf"), (1.5, "1.5")])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_error_if_nonfinite(norm_type, order, bad):
    msg = (f"The total norm of order {order} for gradients from `parameters` is non-finite, so it cannot be "
           "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
           "`error_if_nonfinite=False`")
    p = tracefuse.tensor([1.0, bad], requires_grad=True)
    p.grad = tracefuse.tensor([1.0, bad])
    q = torch.tensor([1.0, bad], requires_grad=True)
    q.grad = torch.tensor([1.0, bad])
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.nn.utils.clip_grad_norm_([q], 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        nn.utils.clip_grad_norm_([p], 1.0, norm_type, error_if_nonfinite=True)
    np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())  # nothing was scaled
    # Without the flag both libraries scale by the non-finite norm.
    assert_same(nn.utils.clip_grad_norm_([p], 1.0, norm_type), torch.nn.utils.clip_grad_norm_([q], 1.0, norm_type))
    assert_same(p.grad, q.grad)


@pytest.mark.parametrize("norm_type", [math.inf, -math.inf])
def test_infinity_norm_of_an_empty_gradient_raises_like_torch(norm_type):
    p, q = tracefuse.zeros(0, 2, requires_grad=True), torch.zeros(0, 2, requires_grad=True)
    p.grad, q.grad = tracefuse.zeros(0, 2), torch.zeros(0, 2)
    with pytest.raises(RuntimeError) as expected:
        torch.nn.utils.clip_grad_norm_([q], 1.0, norm_type)
    with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
        nn.utils.clip_grad_norm_([p], 1.0, norm_type)


def test_empty_parameters():
    total = nn.utils.clip_grad_norm_([], 1.0)
    assert_same(total, torch.nn.utils.clip_grad_norm_([], 1.0))
    no_grad = tracefuse.zeros(3, requires_grad=True)
    assert_same(nn.utils.clip_grad_norm_([no_grad], 1.0), torch.tensor(0.0))
    msg = "`parameters` is an empty generator, no gradient clipping will occur."
    with pytest.warns(UserWarning, match=re.escape(msg)):
        nn.utils.clip_grad_norm_((p for p in []), 1.0)


def test_clip_grad_norm_deprecated_alias(rng):
    ours, theirs = _params(rng, tracefuse.float64, shapes=[(4,)], without_grad=())
    msg = "`tracefuse.nn.utils.clip_grad_norm` is now deprecated in favor of `tracefuse.nn.utils.clip_grad_norm_`."
    with pytest.warns(FutureWarning, match=re.escape(msg)):
        total = nn.utils.clip_grad_norm(ours, 0.1, 1)
    with pytest.warns(FutureWarning, match=re.escape(msg.replace("tracefuse.", "torch."))):
        expected = torch.nn.utils.clip_grad_norm(theirs, 0.1, 1)
    assert_same(total, expected)
    _assert_grads(ours, theirs)


def test_get_total_norm_and_clip_grads_with_norm(rng):
    ours, theirs = _params(rng, tracefuse.float64, without_grad=())
    grads = [p.grad for p in ours]
    total = nn.utils.get_total_norm(grads, 3.0)
    expected = torch.nn.utils.get_total_norm([q.grad for q in theirs], 3.0)
    assert_same(total, expected, rtol=1e-12, atol=0)
    nn.utils.clip_grads_with_norm_(ours, 2.0, total)
    torch.nn.utils.clip_grads_with_norm_(theirs, 2.0, expected)
    _assert_grads(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [tracefuse.float64, tracefuse.float16])
def test_clip_grad_value_matches_torch(rng, dtype):
    ours, theirs = _params(rng, dtype)
    ours[0].grad[0, 0] = math.nan
    theirs[0].grad[0, 0] = math.nan
    assert nn.utils.clip_grad_value_(ours, 1.25) is None
    torch.nn.utils.clip_grad_value_(theirs, 1.25)
    _assert_grads(ours, theirs)


def _dispatched(monkeypatch, fn):
    """Run `fn()`; return the op names dispatched by clip_grad itself and by tensor methods."""
    calls = {"clip_grad": [], "tensor": []}
    tensor_module = importlib.import_module("tracefuse.tensor")  # `tracefuse.tensor` is the factory

    def counting(where, real):
        def count(name, *args, **kwargs):
            calls[where].append(name)
            return real(name, *args, **kwargs)
        return count

    monkeypatch.setattr(clip_grad, "dispatch", counting("clip_grad", clip_grad.dispatch))
    monkeypatch.setattr(tensor_module, "dispatch", counting("tensor", tensor_module.dispatch))
    fn()
    monkeypatch.undo()
    return calls


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_one_norm_op_and_one_scale_op_for_200_parameters(monkeypatch, norm_type):
    params = []
    for i in range(200):
        p = tracefuse.ones(2 + i % 3, requires_grad=True)
        p.grad = tracefuse.full((2 + i % 3,), float(i))
        params.append(p)
    many = _dispatched(monkeypatch, lambda: nn.utils.clip_grad_norm_(params, 1.0, norm_type))
    assert many["clip_grad"] == ["multi_tensor_norm", "multi_tensor_scale"]
    few = _dispatched(monkeypatch, lambda: nn.utils.clip_grad_norm_(params[:3], 1.0, norm_type))
    assert few["clip_grad"] == ["multi_tensor_norm", "multi_tensor_scale"]
    # The clip coefficient is computed inside the scale op: no scalar ops around it.
    assert many["tensor"] == few["tensor"] == []


def test_multi_tensor_scale_rounds_like_torch_foreach(rng):
    """Half precisions scale in float32 by the float32 coefficient; float32 casts a float64 one."""
    for dtype, coef_dtype in [(tracefuse.float16, tracefuse.float32), (tracefuse.bfloat16, tracefuse.float32),
                              (tracefuse.float32, tracefuse.float64)]:
        values = rng.standard_normal(257)
        coef = tracefuse.tensor(0.3337123456789, dtype=coef_dtype)
        (out,) = dispatch("multi_tensor_scale", coef, tracefuse.tensor(values).to(dtype))
        expected = [torch.tensor(values).to(torch_dtype(dtype))]
        torch._foreach_mul_(expected, torch.tensor(0.3337123456789, dtype=torch_dtype(coef_dtype)))
        assert_same(out, expected[0], rtol=0, atol=0)


def test_multi_tensor_norm_of_mixed_half_precisions_matches_torch(rng):
    values = [rng.standard_normal(7), rng.standard_normal((2, 3))]
    ours = [tracefuse.tensor(values[0]).half(), tracefuse.tensor(values[1]).bfloat16()]
    theirs = [torch.tensor(values[0]).half(), torch.tensor(values[1]).bfloat16()]
    total = dispatch("multi_tensor_norm", *ours, p=2.0)
    assert_same(total, torch.nn.utils.get_total_norm(theirs), rtol=0, atol=0)  # float32, from rounded norms


def test_exports():
    assert set(clip_grad.__all__) == {"clip_grad_norm", "clip_grad_norm_", "clip_grad_value_",
                                      "clip_grads_with_norm_", "get_total_norm"}
    for name in clip_grad.__all__:
        assert getattr(nn.utils, name) is getattr(clip_grad, name)
