"""Fixtures of the multi-device tests: several logical CUDA devices (on the GPU when there is one,
else on the interpret backend)."""
import pytest

from tracefuse.runtime import devices
from tests.conftest import device_backend


@pytest.fixture(params=[2, 4])
def n_devices(request, monkeypatch):
    monkeypatch.setattr(devices, "_backend", device_backend(request.param))
    return request.param


@pytest.fixture
def four_devices(monkeypatch):
    monkeypatch.setattr(devices, "_backend", device_backend(4))
    return 4
