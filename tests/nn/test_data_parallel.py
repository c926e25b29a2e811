"""nn.DataParallel against torch.nn.DataParallel: with no GPU it wraps the module transparently; with
GPUs visible it records its devices as torch does."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import tracefuse
import tracefuse.nn as nn
from tracefuse.runtime import devices
from tests.conftest import assert_same


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(devices, "_backend", None)  # also with TRACEFUSE_CUDA=interpret in the environment
    monkeypatch.setattr(devices, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """GPUs the driver reports, with no backend to run on them (DataParallel only records them)."""
    monkeypatch.setattr(devices, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)


def _linear_pair(rng):
    ours, theirs = nn.Linear(4, 3).double(), torch.nn.Linear(4, 3).double()
    ours.load_state_dict({k: tracefuse.tensor(v.detach().numpy()) for k, v in theirs.state_dict().items()})
    return ours, theirs


def test_without_gpu_it_calls_the_module(no_gpu, rng):
    ours, theirs = _linear_pair(rng)
    dp, tdp = nn.DataParallel(ours, device_ids=[0, 1], output_device=1, dim=1), torch.nn.DataParallel(theirs)
    x = rng.standard_normal((5, 4))
    out, tout = dp(tracefuse.tensor(x)), tdp(torch.tensor(x))
    assert_same(out, tout, rtol=1e-12, atol=0)
    out.sum().backward()
    tout.sum().backward()
    assert_same(ours.weight.grad, theirs.weight.grad, rtol=1e-12, atol=0)
    assert_same(ours.bias.grad, theirs.bias.grad, rtol=1e-12, atol=0)


def test_without_gpu_attributes_and_repr_match_torch(no_gpu, rng):
    ours, theirs = _linear_pair(rng)
    dp, tdp = nn.DataParallel(ours, output_device=0, dim=1), torch.nn.DataParallel(theirs, output_device=0, dim=1)
    assert isinstance(dp, nn.Module) and dp.module is ours
    assert dp.device_ids == tdp.device_ids == []
    for name in ("dim", "output_device", "src_device_obj"):
        assert hasattr(dp, name) == hasattr(tdp, name) == False  # noqa: E712  (torch sets neither)
    assert repr(dp) == repr(tdp).replace("torch.", "tracefuse.")
    assert list(dp.state_dict()) == list(tdp.state_dict()) == ["module.weight", "module.bias"]
    assert [n for n, _ in dp.named_parameters()] == [n for n, _ in tdp.named_parameters()]


def test_state_dict_round_trip_and_modes(no_gpu, rng):
    ours, _ = _linear_pair(rng)
    dp = nn.DataParallel(ours)
    other = nn.DataParallel(nn.Linear(4, 3).double())
    assert repr(other.load_state_dict(dp.state_dict())) == "<All keys matched successfully>"
    np.testing.assert_array_equal(other.module.weight.detach().numpy(), ours.weight.detach().numpy())
    dp.eval()
    assert not dp.training and not ours.training


def test_keyword_arguments_reach_the_module(no_gpu):
    class Scale(nn.Module):
        def forward(self, x, *, factor):
            return x * factor

    out = nn.DataParallel(Scale())(tracefuse.ones(2), factor=3.0)
    np.testing.assert_array_equal(out.numpy(), [3.0, 3.0])


def test_with_gpus_devices_are_recorded_like_torch(two_gpus, rng):
    ours, _ = _linear_pair(rng)
    dp = nn.DataParallel(ours, dim=1)
    assert (dp.device_ids, dp.output_device, dp.dim) == ([0, 1], 0, 1)
    assert dp.src_device_obj == tracefuse.device("cuda", 0)
    named = nn.DataParallel(ours, device_ids=["cuda:1", tracefuse.device("cuda", 0)], output_device="cuda:0")
    assert (named.device_ids, named.output_device) == ([1, 0], 0)


def test_with_gpus_a_module_left_on_the_cpu_is_refused(two_gpus, rng):
    ours, _ = _linear_pair(rng)
    msg = ("module must have its parameters and buffers on device cuda:0 (device_ids[0]) but found one of them on "
           "device: cpu")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        nn.DataParallel(ours)(tracefuse.ones(2, 4, dtype=tracefuse.float64))
