"""DataParallel over a compiled module: the replicas share the module's compiled graphs.

Replicas are new module objects on every call; their calls reuse the graphs traced by earlier
replicas (one per device and guard set), bound to their own copies of the parameters, and must
give what the module gives eagerly on one device: outputs, gradients on the original's
parameters, parameters after an SGD step (float64, on the `interpret` fixture's 2 devices or on
4).
"""
from __future__ import annotations

import copy
import gc
import threading
import weakref

import numpy as np
import pytest

import tracefuse
import tracefuse.nn as nn
from tracefuse.tracer import api
from tracefuse.tracer.api import compiled_callable
from tracefuse.tracer.context import TracingError




@pytest.fixture
def traces(monkeypatch):
    """The calls traced so far (one item per capture)."""
    traced = []

    def counting_capture(*args, **kwargs):
        traced.append(args[1])
        return capture(*args, **kwargs)

    capture = api.capture
    monkeypatch.setattr(api, "capture", counting_capture)
    return traced


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)
        self.scale = 2.0

    def forward(self, x):
        return self.fc2(self.fc1(x).tanh()) * self.scale


def _net():
    tracefuse.manual_seed(0)
    return Net().double().to("cuda:0")


def _x(rng, batch):
    return tracefuse.tensor(rng.standard_normal((batch, 4)))


def _close(ours, theirs):
    np.testing.assert_allclose(ours.detach().cpu().numpy(), theirs.detach().cpu().numpy(), rtol=1e-12, atol=1e-12)


def test_calls_trace_once_per_device_and_train_like_one_device_eager(n_devices, traces, rng):
    net = _net()
    eager = copy.deepcopy(net)
    compiled = tracefuse.compile(net)
    dp = nn.DataParallel(compiled)
    opt = tracefuse.optim.SGD(dp.parameters(), lr=0.05, momentum=0.9)
    eager_opt = tracefuse.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        x, target = _x(rng, 8), tracefuse.tensor(rng.standard_normal((8, 3))).to("cuda:0")
        out, expected = dp(x), eager(x.to("cuda:0"))
        _close(out, expected)
        for o, model_opt in ((out, opt), (expected, eager_opt)):
            model_opt.zero_grad()
            ((o - target) ** 2).mean().backward()
        for p, e in zip(net.parameters(), eager.parameters()):
            assert p.grad.device == e.grad.device
            _close(p.grad, e.grad)
        opt.step()
        eager_opt.step()
    for p, e in zip(net.parameters(), eager.parameters()):
        _close(p, e)
    entries = compiled_callable(compiled).entries
    assert len(traces) == len(entries) == n_devices
    assert sorted(d for e in entries for d in e.devices) == [f"cuda:{i}" for i in range(n_devices)]


def test_a_changed_guard_retraces_once_per_device(interpret, traces, rng):
    net = _net()
    dp = nn.DataParallel(tracefuse.compile(net))

    def new_traces_of_call(batch=6):
        before, x = len(traces), _x(rng, batch)
        out = dp(x)
        with tracefuse.no_grad():
            _close(out, net(x.to("cuda:0")))  # the uncompiled module, on one device
        return len(traces) - before

    assert new_traces_of_call() == 2
    assert new_traces_of_call() == 0
    assert new_traces_of_call(batch=8) == 2  # the chunks' shapes
    net.eval()
    assert new_traces_of_call() == 2
    net.train()
    assert new_traces_of_call() == 0
    net.scale = 3.0  # an attribute of the original module, which replicas copy
    assert new_traces_of_call() == 2
    net.fc1.weight = nn.Parameter(net.fc1.weight.detach() * 2)
    assert new_traces_of_call() == 2
    with tracefuse.no_grad():  # replicas' copies are detached
        assert new_traces_of_call() == 2
        assert new_traces_of_call() == 0


def test_the_module_called_directly_shares_graphs_with_its_replica_on_its_device(interpret, traces, rng):
    net = _net()
    eager = copy.deepcopy(net)
    compiled = tracefuse.compile(net)
    dp = nn.DataParallel(compiled)
    x = _x(rng, 8)
    _close(dp(x), eager(x.to("cuda:0")))
    half = x[:4].to("cuda:0")
    out, expected = compiled(half), eager(half)  # replica 0's graph, bound to the module's parameters
    _close(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for p, e in zip(net.parameters(), eager.parameters()):
        _close(p.grad, e.grad)
    assert len(traces) == 2


def test_a_batch_smaller_than_the_device_count(four_devices, traces, rng):
    net = _net()
    eager = copy.deepcopy(net)
    compiled = tracefuse.compile(net)
    dp = nn.DataParallel(compiled)
    for _ in range(2):
        x = _x(rng, 3)
        out, expected = dp(x), eager(x.to("cuda:0"))
        _close(out, expected)
        out.sum().backward()
        expected.sum().backward()
    for p, e in zip(net.parameters(), eager.parameters()):
        _close(p.grad, e.grad)
    assert len(traces) == 3  # one replica per row


def test_buffers_updated_in_place_like_eager_data_parallel(interpret, traces, rng):
    """Replica 0 holds the original's buffers: its running statistics reach the module."""
    tracefuse.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double().to("cuda:0")
    eager = copy.deepcopy(net)
    dp, eager_dp = nn.DataParallel(tracefuse.compile(net)), nn.DataParallel(eager)
    for _ in range(3):
        x = _x(rng, 8)
        _close(dp(x), eager_dp(x))
    for ours, theirs in zip(net.buffers(), eager.buffers()):
        _close(ours, theirs)
    assert int(net[1].num_batches_tracked.item()) == 3
    assert len(traces) == 2


def test_the_shared_graphs_keep_no_replica_alive(interpret, rng):
    made = weakref.WeakSet()

    class Recording(nn.DataParallel):
        def replicate(self, module, device_ids):
            replicas = super().replicate(module, device_ids)
            made.update(replicas)
            return replicas

    dp = Recording(tracefuse.compile(_net()))
    for _ in range(2):
        dp(_x(rng, 4)).sum().backward()
    gc.collect()
    assert len(made) == 0


def test_threads_calling_at_once_trace_a_guard_set_once(interpret, traces, rng):
    compiled = tracefuse.compile(_net())
    x = _x(rng, 4).to("cuda:0")
    start, results = threading.Barrier(2), []

    def call():
        start.wait()
        results.append(compiled(x))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and len(traces) == 1
    _close(results[0], results[1])


def test_the_recompile_limit_counts_each_device_apart(interpret, rng):
    compiled = tracefuse.compile(_net(), options={"recompile_limit": 1})
    dp = nn.DataParallel(compiled)
    dp(_x(rng, 4))
    assert len(compiled_callable(compiled).entries) == 2
    with pytest.raises(TracingError, match=r"Caught TracingError in replica 0 on device 0\.(.|\n)*"
                                           r"recompile limit \(1\) reached .* guard failed: L\['x'\]\.shape"):
        dp(_x(rng, 6))
