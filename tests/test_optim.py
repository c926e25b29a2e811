"""tracefuse.optim against torch.optim, step for step: SGD, Adam and AdamW with every option that
changes the arithmetic, parameter groups, state dicts (also through tracefuse.save/load) and errors."""
from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pytest
import torch

import tracefuse
import tracefuse.nn as nn
from tests.conftest import assert_same, torch_dtype

SHAPES = [(3, 4), (5,), ()]


def _params(rng, dtype, shapes=SHAPES):
    ours, theirs = [], []
    for shape in shapes:
        value = np.asarray(rng.standard_normal(shape)).reshape(shape)
        ours.append(tracefuse.tensor(value).to(dtype).requires_grad_())
        theirs.append(torch.tensor(value).to(torch_dtype(dtype)).requires_grad_())
    return ours, theirs


def _set_grads(rng, ours, theirs, skip=()):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        if i in skip:
            p.grad = q.grad = None
            continue
        g = np.asarray(rng.standard_normal(p.shape)).reshape(tuple(p.shape))
        p.grad = tracefuse.tensor(g).to(p.dtype)
        q.grad = torch.tensor(g).to(q.dtype)


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-14) if dtype is tracefuse.float64 else {}


def _assert_state(opt, topt, **tol):
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for k, state in ours["state"].items():
        assert state.keys() == theirs["state"][k].keys()
        for name, value in state.items():
            assert_same(value, theirs["state"][k][name], **tol)


def _run(rng, opt, topt, ours, theirs, steps, skip=(), **tol):
    for _ in range(steps):
        _set_grads(rng, ours, theirs, skip)
        opt.step()
        topt.step()
        for p, q in zip(ours, theirs):
            assert_same(p, q, **tol)
    _assert_state(opt, topt, **tol)


SGD_OPTIONS = [dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
               for m, d, n, w, x in itertools.product([0, 0.9], [0, 0.3], [False, True], [0, 0.1], [False, True])
               if not n or (m > 0 and d == 0)]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", [tracefuse.float64, tracefuse.float32])
def test_sgd_matches_torch(rng, options, dtype):
    ours, theirs = _params(rng, dtype)
    opt = tracefuse.optim.SGD(ours, lr=0.1, **options)
    topt = torch.optim.SGD(theirs, lr=0.1, **options)
    _run(rng, opt, topt, ours, theirs, steps=4, skip=(2,) if options["momentum"] else (), **_tol(dtype))


ADAM_OPTIONS = [dict(amsgrad=a, weight_decay=w, maximize=x)
                for a, w, x in itertools.product([False, True], [0, 0.1], [False, True])]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", [tracefuse.float64, tracefuse.float32])
def test_adam_matches_torch(rng, cls, options, dtype):
    ours, theirs = _params(rng, dtype)
    opt = getattr(tracefuse.optim, cls)(ours, lr=0.05, betas=(0.8, 0.95), eps=1e-6, **options)
    topt = getattr(torch.optim, cls)(theirs, lr=0.05, betas=(0.8, 0.95), eps=1e-6, **options)
    _run(rng, opt, topt, ours, theirs, steps=4, skip=(1,), **_tol(dtype))


def test_adam_defaults_and_decoupled_flag_match_torch(rng):
    ours, theirs = _params(rng, tracefuse.float64)
    opt = tracefuse.optim.Adam(ours, decoupled_weight_decay=True, weight_decay=0.3)
    topt = torch.optim.Adam(theirs, decoupled_weight_decay=True, weight_decay=0.3)
    _run(rng, opt, topt, ours, theirs, steps=3, **_tol(tracefuse.float64))
    assert tracefuse.optim.AdamW(ours).defaults["weight_decay"] == torch.optim.AdamW(theirs).defaults["weight_decay"]
    assert opt.state[ours[0]]["step"].dtype is tracefuse.float32  # the host-side counter, as in torch


def test_param_groups_with_their_own_options(rng):
    ours, theirs = _params(rng, tracefuse.float64)
    opt = tracefuse.optim.SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.5, "momentum": 0.5}],
                              lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.5, "momentum": 0.5}],
                           lr=0.1, momentum=0.9)
    _run(rng, opt, topt, ours, theirs, steps=3, **_tol(tracefuse.float64))
    new = tracefuse.tensor([1.0], requires_grad=True)
    opt.add_param_group({"params": new, "lr": 0.01})
    assert opt.param_groups[-1]["params"] == [new] and opt.param_groups[-1]["momentum"] == 0.9


class _Model(nn.Module):
    def __init__(self, lib, w, b):
        super().__init__()
        self.w = lib.nn.Parameter(lib.tensor(w))
        self.b = lib.nn.Parameter(lib.tensor(b))

    def forward(self, x):
        return ((x @ self.w + self.b).tanh() ** 2).sum()


class _TorchModel(torch.nn.Module):
    forward = _Model.forward

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.b = torch.nn.Parameter(torch.tensor(b))


def test_training_a_module_with_closure_matches_torch(rng):
    w, b, x = rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal((5, 4))
    model, tmodel = _Model(tracefuse, w, b), _TorchModel(w, b)
    opt = tracefuse.optim.Adam(model.parameters(), lr=0.1, amsgrad=True)
    topt = torch.optim.Adam(tmodel.parameters(), lr=0.1, amsgrad=True)

    def closure(model, opt, x):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        return loss

    for _ in range(3):
        with tracefuse.no_grad():  # the closure still computes gradients
            loss = opt.step(lambda: closure(model, opt, tracefuse.tensor(x)))
        tloss = topt.step(lambda: closure(tmodel, topt, torch.tensor(x)))
        assert_same(loss, tloss, rtol=1e-12, atol=0)
    for name, p in model.named_parameters():
        assert_same(p, dict(tmodel.named_parameters())[name], rtol=1e-12, atol=1e-14)
        assert p.is_leaf and p.requires_grad and p.grad_fn is None


def test_step_updates_parameters_in_place():
    p = tracefuse.tensor([1.0, 2.0], requires_grad=True)
    data, version = p._data, p._version.value
    p.grad = tracefuse.tensor([1.0, 1.0])
    tracefuse.optim.SGD([p], lr=0.5).step()
    assert p._data is data and p._version.value > version
    np.testing.assert_array_equal(p.detach().numpy(), np.array([0.5, 1.5], dtype=np.float32))


def test_zero_grad(rng):
    ours, _ = _params(rng, tracefuse.float32)
    for p in ours:
        p.grad = tracefuse.ones_like(p)
    opt = tracefuse.optim.SGD(ours, lr=0.1)
    grad = ours[0].grad
    opt.zero_grad(set_to_none=False)
    assert ours[0].grad is grad and not grad.any()
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


# --- state dicts -------------------------------------------------------------------------------
def _state_dict_layout(sd):
    """The state dict with every tensor replaced by its shape and dtype name."""
    def walk(v):
        if isinstance(v, (tracefuse.Tensor, torch.Tensor)):
            return ("tensor", tuple(v.shape), str(v.dtype).split(".")[-1])
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v
    return walk(sd)


@pytest.mark.parametrize("cls,options", [("SGD", dict(momentum=0.9, nesterov=True)), ("Adam", dict(amsgrad=True)),
                                         ("AdamW", {})])
def test_state_dict_has_torchs_format(rng, cls, options):
    ours, theirs = _params(rng, tracefuse.float64)
    opt = getattr(tracefuse.optim, cls)([{"params": ours[:1]}, {"params": ours[1:], "lr": 0.3}], **options)
    topt = getattr(torch.optim, cls)([{"params": theirs[:1]}, {"params": theirs[1:], "lr": 0.3}], **options)
    _run(rng, opt, topt, ours, theirs, steps=2, skip=(1,), **_tol(tracefuse.float64))
    mine, expected = _state_dict_layout(opt.state_dict()), _state_dict_layout(topt.state_dict())
    assert mine["state"] == expected["state"]
    for group, tgroup in zip(mine["param_groups"], expected["param_groups"]):
        assert group == {k: tgroup[k] for k in group}  # torch adds foreach/fused/... switches


@pytest.mark.parametrize("cls,options", [("SGD", dict(momentum=0.9, dampening=0.1)), ("Adam", dict(amsgrad=True)),
                                         ("AdamW", dict(maximize=True))])
def test_state_dict_round_trip_through_a_file_continues_identically(rng, cls, options):
    ours, theirs = _params(rng, tracefuse.float64)
    opt = getattr(tracefuse.optim, cls)(ours, lr=0.05, **options)
    topt = getattr(torch.optim, cls)(theirs, lr=0.05, **options)
    _run(rng, opt, topt, ours, theirs, steps=3, **_tol(tracefuse.float64))

    buffer = io.BytesIO()
    tracefuse.save({"params": ours, "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    loaded = tracefuse.load(buffer)
    params = [p.detach().requires_grad_() for p in loaded["params"]]
    resumed = getattr(tracefuse.optim, cls)(params, lr=1.0)
    resumed.load_state_dict(loaded["optim"])
    assert resumed.param_groups[0]["lr"] == 0.05 and resumed.param_groups[0]["params"] == params

    for _ in range(3):
        seed = int(rng.integers(1 << 30))
        _set_grads(np.random.default_rng(seed), ours, theirs)
        _set_grads(np.random.default_rng(seed), params, theirs)
        opt.step()
        resumed.step()
        topt.step()
        for p, r, q in zip(ours, params, theirs):
            np.testing.assert_array_equal(r.detach().numpy(), p.detach().numpy())
            assert_same(r, q, **_tol(tracefuse.float64))


def test_load_state_dict_casts_state_to_the_parameter_dtype(rng):
    ours, _ = _params(rng, tracefuse.float64, shapes=[(3,)])
    opt = tracefuse.optim.Adam(ours)
    ours[0].grad = tracefuse.ones(3, dtype=tracefuse.float64)
    opt.step()
    p32 = tracefuse.zeros(3, requires_grad=True)
    other = tracefuse.optim.Adam([p32])
    other.load_state_dict(opt.state_dict())
    assert other.state[p32]["exp_avg"].dtype is tracefuse.float32
    assert other.state[p32]["step"].dtype is tracefuse.float32 and other.state[p32]["step"].item() == 1.0


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def test_load_state_dict_errors_match_torch(rng):
    ours, theirs = _params(rng, tracefuse.float32)
    opt, topt = tracefuse.optim.SGD(ours), torch.optim.SGD(theirs)
    two, ttwo = tracefuse.optim.SGD([{"params": ours[:1]}, {"params": ours[1:]}]), \
        torch.optim.SGD([{"params": theirs[:1]}, {"params": theirs[1:]}])
    short, tshort = tracefuse.optim.SGD(ours[:2]), torch.optim.SGD(theirs[:2])
    assert _raised(lambda: opt.load_state_dict(two.state_dict())) == \
        _raised(lambda: topt.load_state_dict(ttwo.state_dict()))
    assert _raised(lambda: opt.load_state_dict(short.state_dict())) == \
        _raised(lambda: topt.load_state_dict(tshort.state_dict()))
    assert _raised(lambda: opt.load_state_dict(short.state_dict()))[1] == \
        "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"


# --- argument errors ---------------------------------------------------------------------------
CONSTRUCTOR_ERRORS = [
    ("SGD", dict(lr=-1)), ("SGD", dict(lr=0.1, momentum=-0.5)), ("SGD", dict(weight_decay=-1e-3)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(momentum=0.9, dampening=0.1, nesterov=True)),
    ("Adam", dict(lr=-0.5)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.9))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1)), ("Adam", dict(betas=(0, 0.5))),
    ("AdamW", dict(lr=-1e-3)),
]


@pytest.mark.parametrize("cls,kwargs", CONSTRUCTOR_ERRORS)
def test_constructor_errors_match_torch(rng, cls, kwargs):
    ours, theirs = _params(rng, tracefuse.float32)
    assert _raised(lambda: getattr(tracefuse.optim, cls)(ours, **kwargs)) == \
        _raised(lambda: getattr(torch.optim, cls)(theirs, **kwargs))


def test_parameter_list_errors_match_torch():
    x, tx = tracefuse.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    cases = [
        (lambda lib, x: [], ValueError),
        (lambda lib, x: [x * 2], ValueError),
        (lambda lib, x: [{"params": [x]}, {"params": [x]}], ValueError),
        (lambda lib, x: [{"params": {x}}], TypeError),
        (lambda lib, x: [x, 3], TypeError),
    ]
    for params, kind in cases:
        ours = _raised(lambda: tracefuse.optim.SGD(params(tracefuse, x)))
        theirs = _raised(lambda: torch.optim.SGD(params(torch, tx)))
        assert ours == theirs and ours[0] is kind
    msg = "params argument given to the optimizer should be an iterable of Tensors or dicts, but got "
    assert _raised(lambda: tracefuse.optim.SGD(x)) == (TypeError, msg + "tracefuse.FloatTensor")
    assert _raised(lambda: torch.optim.SGD(tx)) == (TypeError, msg + "torch.FloatTensor")


def test_repr():
    opt = tracefuse.optim.SGD([tracefuse.ones(1, requires_grad=True)], lr=0.1, momentum=0.9)
    assert repr(opt) == ("SGD (\nParameter Group 0\n    dampening: 0\n    lr: 0.1\n    maximize: False\n"
                         "    momentum: 0.9\n    nesterov: False\n    weight_decay: 0\n)")


def test_base_optimizer_step_is_abstract():
    opt = tracefuse.optim.Optimizer([tracefuse.ones(1, requires_grad=True)], {"lr": 0.1})
    with pytest.raises(NotImplementedError):
        opt.step()


def test_exports():
    assert set(tracefuse.optim.__all__) == {"Adam", "AdamW", "Optimizer", "SGD"}
    assert re.fullmatch(r"tracefuse\.optim(\.\w+)?", tracefuse.optim.SGD.__module__)
