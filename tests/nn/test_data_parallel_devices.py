"""DataParallel and the tracefuse.nn.parallel primitives on several logical devices (the interpret
backend: 2 devices from the `interpret` fixture, 4 from `four_devices`).

torch.nn.DataParallel needs CUDA, so PyTorch is the oracle in two ways: its container logic
(scatter_gather, parallel_apply's checks) runs on the CPU with its CUDA-only Scatter/Gather
functions replaced by chunk/cat, and a model wrapped in DataParallel must give what the same
model gives on the CPU (in tracefuse and in PyTorch): outputs, gradients, parameters after an
SGD step.
"""
from __future__ import annotations

import re
import threading
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.parallel.scatter_gather as torch_scatter_gather

import tracefuse
import tracefuse.nn as nn
from tracefuse.device import as_device
from tracefuse.nn import parallel
from tracefuse.nn.parallel import comm
from tests.conftest import assert_same

Pair = namedtuple("Pair", ["first", "second"])




@pytest.fixture
def torch_cpu_collectives(monkeypatch):
    """torch's scatter/gather container logic with its CUDA copies replaced by chunk and cat."""

    class Scatter:
        @staticmethod
        def apply(target_gpus, chunk_sizes, dim, tensor):
            return tensor.chunk(len(target_gpus), dim)

    class Gather:
        @staticmethod
        def apply(target_device, dim, *inputs):
            return torch.cat(inputs, dim)

    monkeypatch.setattr(torch_scatter_gather, "Scatter", Scatter)
    monkeypatch.setattr(torch_scatter_gather, "Gather", Gather)


def cuda(i):
    return tracefuse.device("cuda", i)


def _np(t):
    """A tracefuse tensor's values as a NumPy array, wherever it lives."""
    return t.detach().cpu().numpy()


def _tensor(x, **kwargs):
    return tracefuse.tensor(np.asarray(x, dtype=np.float64), **kwargs)


def _assert_like_torch(ours, theirs, device=None):
    """Same structure (types, lengths, keys) and values; shared non-tensors are the same object;
    our tensors are on `device[i]` for the i-th tensor met when `device` is a callable."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, tracefuse.Tensor), type(ours)
        assert_same(ours.cpu(), theirs, rtol=0, atol=0)
        return
    if isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), (type(ours), type(theirs), ours, theirs)
        for a, b in zip(ours, theirs):
            _assert_like_torch(a, b)
        return
    if isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs)
        for k in theirs:
            _assert_like_torch(ours[k], theirs[k])
        return
    assert ours is theirs


def _tensors_in(obj):
    if isinstance(obj, tracefuse.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _tensors_in(x)]
    return []


# --- scatter --------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, dim", [(8, 0), (6, 0), (5, 0), (3, 0), (1, 0), (7, 1), (4, -1)])
def test_scatter_chunks_a_tensor_like_torch(n_devices, batch, dim, rng):
    shape = [batch, 3] if dim == 0 else [2, batch]
    x = rng.standard_normal(shape)
    chunks = parallel.scatter(_tensor(x), list(range(n_devices)), dim)
    expected = torch.tensor(x).chunk(n_devices, dim)
    assert isinstance(chunks, tuple) and len(chunks) == len(expected) <= n_devices
    for i, (c, e) in enumerate(zip(chunks, expected)):
        assert c.device == cuda(i)
        assert_same(c.cpu(), e, rtol=0, atol=0)


def test_scatter_keeps_a_chunk_on_its_own_device_as_a_view(interpret):
    x = _tensor(np.arange(12.0).reshape(4, 3)).to("cuda:1")
    first, second = parallel.scatter(x, [1, 0])
    assert first.device == cuda(1) and second.device == cuda(0)
    assert np.shares_memory(first._data, x._data) and not np.shares_memory(second._data, x._data)


def test_scatter_walks_containers_like_torch(interpret, torch_cpu_collectives, rng):
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((4, 3))
    shared = object()

    def inputs(lib):
        t = lib.tensor
        return (t(x), [t(y), "label", shared], {"a": t(x), "b": 7}, Pair(t(y), None), (), [], {})

    ours = parallel.scatter(inputs(tracefuse), [0, 1])
    theirs = torch_scatter_gather.scatter(inputs(torch), [0, 1])
    _assert_like_torch(ours, theirs)
    for i, replica_inputs in enumerate(ours):
        assert all(t.device == cuda(i) for t in _tensors_in(replica_inputs))


@pytest.mark.parametrize("batches", [(4, 4), (4, 1), (1, 4), (None, 2), (2, None), (None, None), (1, 0)])
def test_scatter_kwargs_pads_like_torch(interpret, torch_cpu_collectives, batches):
    def call(lib, scatter_kwargs):
        args = () if batches[0] is None else (lib.ones(batches[0], 2), 3.0)
        kwargs = {} if batches[1] is None else {"flag": True}
        if batches[1]:
            kwargs["mask"] = lib.zeros(batches[1])
        # (1, 0): keywords without tensors give one dict per device, and PyTorch then pads the
        # arguments with empty tuples up to the device count.
        return scatter_kwargs(args, kwargs, [0, 1], 0)

    ours = call(tracefuse, parallel.scatter_gather.scatter_kwargs)
    theirs = call(torch, torch_scatter_gather.scatter_kwargs)
    _assert_like_torch(ours, theirs)


def test_scatter_gradient_flows_back_to_the_input(n_devices, rng):
    x = rng.standard_normal((7, 3))
    ours = _tensor(x, requires_grad=True)
    pieces = parallel.scatter(ours, list(range(n_devices)))
    out = parallel.gather([p * p + 1.0 for p in pieces], "cpu")
    assert out.device.type == "cpu"
    (out * _tensor(np.arange(21.0).reshape(7, 3))).sum().backward()
    np.testing.assert_allclose(_np(ours.grad), 2 * x * np.arange(21.0).reshape(7, 3), rtol=1e-12)


def test_scatter_errors(interpret):
    x = tracefuse.ones(4, 2)
    with pytest.raises(RuntimeError, match="Expected at least one device to scatter to"):
        comm.scatter(x, [])
    with pytest.raises(RuntimeError, match=re.escape("Expected devices and chunk_sizes to be of same length, but "
                                                     "got len(devices) = 2 and len(chunk_sizes) = 3")):
        comm.scatter(x, [0, 1], chunk_sizes=[1, 1, 2])
    first, second = comm.scatter(x, [0, 1], chunk_sizes=[1, 3])
    assert (first.shape, second.shape) == ((1, 2), (3, 2))
    with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
        parallel.scatter(x, ["cpu", 0])
    out = [tracefuse.zeros(3, 2).to("cuda:1"), tracefuse.zeros(1, 2).to("cuda:0")]
    assert all(a is b for a, b in zip(comm.scatter(x * 2, out=out), out))
    np.testing.assert_array_equal(_np(out[0]), np.full((3, 2), 2.0))
    with pytest.raises(RuntimeError, match=re.escape("Total size for output tensors along scatter dim (4) does not "
                                                     "match the size of input tensor (2).")):
        comm.scatter(x, out=out, dim=1)
    with pytest.raises(RuntimeError, match="'devices' must not be specified when 'out' is specified"):
        comm.scatter(x, [0], out=out)


# --- gather ---------------------------------------------------------------------------------------

def test_gather_walks_containers_like_torch(interpret, torch_cpu_collectives, rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 3))

    def outputs(lib, place):
        def one(v, i):
            t = place(lib.tensor(v), i)
            return {"out": t, "pair": Pair(t, [t * 2]), "none": None}, (t,)
        return [one(a, 0), one(b, 1)]

    ours = parallel.gather(outputs(tracefuse, lambda t, i: t.to(cuda(i))), "cpu")
    theirs = torch_scatter_gather.gather(outputs(torch, lambda t, i: t), "cpu")
    _assert_like_torch(ours, theirs)
    assert all(t.device.type == "cpu" for t in _tensors_in(ours))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather_concatenates_on_the_output_device(interpret, dim, rng):
    parts = [rng.standard_normal((2, 3)), rng.standard_normal((2, 3) if dim == 0 else (2, 1))]
    if dim == 0:
        parts[1] = rng.standard_normal((1, 3))
    out = parallel.gather([_tensor(parts[0]).to("cuda:1"), _tensor(parts[1]).to("cuda:0")], 1, dim)
    assert out.device == cuda(1)
    np.testing.assert_array_equal(_np(out), np.concatenate(parts, dim))


def test_gather_of_scalars_returns_a_vector_and_warns(interpret):
    scalars = [_tensor(1.5).to("cuda:0"), _tensor(2.5).to("cuda:1")]
    with pytest.warns(UserWarning, match="all input tensors were scalars; will instead unsqueeze"):
        out = parallel.gather(scalars, "cpu")
    np.testing.assert_array_equal(_np(out), [1.5, 2.5])


def test_gather_errors(interpret):
    a, b = tracefuse.ones(2, 3).to("cuda:0"), tracefuse.ones(2, 4).to("cuda:1")
    with pytest.raises(AssertionError, match="Gather function not implemented for CPU tensors"):
        parallel.gather([a, tracefuse.ones(2, 3)], 0)
    with pytest.raises(RuntimeError, match=re.escape("Input tensor at index 1 has invalid shape [2, 4], but expected "
                                                     "[2, 3]")):
        parallel.gather([a, b], "cpu")
    with pytest.raises(ValueError, match="All dicts must have the same number of keys"):
        parallel.gather([{"x": a}, {"x": a, "y": a}], "cpu")
    with pytest.raises(RuntimeError, match="Expected at least one tensor to gather from"):
        comm.gather([], 0, "cpu")
    with pytest.warns(FutureWarning, match="Using -1 to represent CPU tensor is deprecated"):
        assert comm.gather([a, a], 0, -1).device.type == "cpu"


# --- broadcast and reduce_add ---------------------------------------------------------------------

def test_broadcast_copies_to_each_device(n_devices, rng):
    x = _tensor(rng.standard_normal((3, 2))).to("cuda:0")
    copies = comm.broadcast(x, list(range(n_devices)))
    assert copies[0] is x
    for i, c in enumerate(copies):
        assert c.device == cuda(i)
        np.testing.assert_array_equal(_np(c), _np(x))
    from_cpu = comm.broadcast(x.cpu(), [1, 0])
    assert [c.device for c in from_cpu] == [cuda(1), cuda(0)]
    with pytest.raises(RuntimeError, match="device of broadcasted tensor must appear as the first on devices list"):
        comm.broadcast(x, [1, 0])
    with pytest.raises(RuntimeError, match="Exactly one of 'devices' and 'out' must be specified"):
        comm.broadcast(x)
    out = [tracefuse.zeros(3, 2, dtype=tracefuse.float64).to(cuda(i)) for i in range(2)]
    assert all(a is b for a, b in zip(comm.broadcast(x, out=out), out))
    np.testing.assert_array_equal(_np(out[1]), _np(x))


def test_broadcast_coalesced(interpret, rng):
    a, b = _tensor(rng.standard_normal(3), requires_grad=True), _tensor(rng.standard_normal((2, 2)))
    a, b = a.to("cuda:0"), b.to("cuda:0")
    first, second = comm.broadcast_coalesced([a, b], [0, 1])
    assert first[0] is a and first[1] is b
    assert [t.device for t in second] == [cuda(1), cuda(1)] and not second[0].requires_grad
    np.testing.assert_array_equal(_np(second[1]), _np(b))
    with pytest.raises(RuntimeError, match=re.escape("All tensors must be on devices[0]: 1")):
        comm.broadcast_coalesced([a, b], [1, 0])


def test_reduce_add(n_devices, rng):
    parts = [rng.standard_normal((2, 3)) for _ in range(n_devices)]
    inputs = [_tensor(p).to(cuda(i)) for i, p in enumerate(parts)]
    total = comm.reduce_add(inputs, destination=1)
    assert total.device == cuda(1)
    np.testing.assert_allclose(_np(total), sum(parts), rtol=1e-12)
    assert comm.reduce_add(inputs[:1], 0) is inputs[0]
    sums = comm.reduce_add_coalesced([[t, t * 2] for t in inputs], 0)
    np.testing.assert_allclose(_np(sums[1]), 2 * sum(parts), rtol=1e-12)
    with pytest.raises(AssertionError, match="reduce_add expects all inputs to be on GPUs, but input 1 is on CPU"):
        comm.reduce_add([inputs[0], inputs[1].cpu()], 0)
    with pytest.raises(ValueError, match="input 1 has invalid size: got 3x2, but expected 2x3"):
        comm.reduce_add([inputs[0], inputs[1].t()], 0)
    with pytest.raises(RuntimeError, match="reduce_add expects destination to be on the same GPU with one of the"):
        comm.reduce_add(inputs[:1], 1)


# --- replicate --------------------------------------------------------------------------------------

class Affine(nn.Module):
    """x * w + b with w, b of x's shape (elementwise only) and a step counter buffer."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(tracefuse.arange(float(np.prod(shape)), dtype=tracefuse.float64).reshape(shape) + 1)
        self.b = nn.Parameter(tracefuse.ones(shape, dtype=tracefuse.float64))
        self.register_buffer("steps", tracefuse.zeros((), dtype=tracefuse.int64))
        self.no_bias = None

    def forward(self, x, scale=1.0):
        self.steps.add_(1)
        return (x * self.w + self.b) * scale


def test_replicas_hold_copies_on_their_devices(n_devices):
    model = nn.Sequential(Affine((2, 3)), nn.Sequential(Affine((2, 3)))).to("cuda:0")
    model[1].register_parameter("unused", None)
    replicas = parallel.replicate(model, list(range(n_devices)))
    assert len(replicas) == n_devices
    for i, replica in enumerate(replicas):
        assert type(replica) is nn.Sequential and type(replica[1][0]) is Affine
        assert list(replica.parameters()) == []  # copies are not registered parameters, as in torch
        assert replica[1].unused is None and replica[0].no_bias is None
        for original, copy in ((model[0].w, replica[0].w), (model[1][0].b, replica[1][0].b)):
            assert copy.device == cuda(i) and copy.requires_grad
            np.testing.assert_array_equal(_np(copy), _np(original))
        assert replica[0].steps.device == cuda(i) and not replica[0].steps.requires_grad
    assert replicas[0][0].w is model[0].w  # the copy on the parameters' device is the parameter
    assert replicas[0][0].steps is model[0].steps  # so in-place buffer updates on device 0 are kept
    assert model[0]._parameters and replicas[1][0]._modules == {} and replicas[1][1][0] is not model[1][0]


def test_replica_gradients_sum_into_the_original(n_devices, rng):
    model = Affine((2, 3)).to("cuda:0")
    inputs = [rng.standard_normal((2, 3)) for _ in range(n_devices)]
    replicas = parallel.replicate(model, list(range(n_devices)))
    outs = [r(_tensor(x).to(cuda(i))) for i, (r, x) in enumerate(zip(replicas, inputs))]
    total = parallel.gather(outs, "cpu")
    total.sum().backward()
    assert model.w.grad.device == cuda(0)
    np.testing.assert_allclose(_np(model.w.grad), sum(inputs), rtol=1e-12)
    np.testing.assert_allclose(_np(model.b.grad), np.full((2, 3), float(n_devices)))
    assert int(model.steps.item()) == 1  # only replica 0's in-place update reaches the original


def test_replicate_without_grad_detaches(interpret):
    model = Affine((3,)).to("cuda:0")
    first, second = parallel.replicate(model, [0, 1], detach=True)
    assert first.w is model.w and not second.w.requires_grad and second.w.grad_fn is None


def test_replicate_refuses_a_module_on_the_cpu(interpret):
    with pytest.raises(AssertionError, match="Broadcast function not implemented for CPU tensors"):
        parallel.replicate(Affine((3,)), [0, 1])
    with pytest.raises(RuntimeError, match=re.escape("All tensors must be on devices[0]: 0")):
        parallel.replicate(Affine((3,)), [0, 1], detach=True)
    assert parallel.replicate(Affine((3,)), []) == []


# --- parallel_apply -------------------------------------------------------------------------------

class Probe(nn.Module):
    """Records where and how it ran; raises for inputs marked bad."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, bad=None):
        if bad is not None:
            raise bad
        self.calls.append((x.device, tracefuse.cuda.current_device(), threading.current_thread().name,
                           tracefuse.is_grad_enabled(), as_device("cuda")))
        return x * 2


def test_parallel_apply_runs_one_thread_per_device(n_devices):
    probe = Probe()
    xs = [tracefuse.ones(2).to(cuda(i)) * i for i in range(n_devices)]
    with tracefuse.no_grad():
        outs = parallel.parallel_apply([probe] * n_devices, [(x,) for x in xs], None, list(range(n_devices)))
    assert [o.device for o in outs] == [cuda(i) for i in range(n_devices)]
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(_np(o), [2.0 * i] * 2)
    calls = sorted(probe.calls, key=lambda c: c[1])
    assert [c[1] for c in calls] == list(range(n_devices))  # each replica's device was current in its thread
    assert all(c[0] == c[4] == cuda(c[1]) and not c[3] for c in calls)
    assert len({c[2] for c in calls}) == n_devices and threading.current_thread().name not in {c[2] for c in calls}
    assert tracefuse.cuda.current_device() == 0


def test_parallel_apply_finds_the_device_of_the_inputs(interpret):
    probe = Probe()
    x = tracefuse.ones(2).to("cuda:1")
    outs = parallel.parallel_apply([probe, probe], [x, [x.to("cuda:0")]])  # a bare tensor is the one argument
    assert [o.device for o in outs] == [cuda(1), cuda(0)]
    assert sorted(c[1] for c in probe.calls) == [0, 1]
    with pytest.raises(RuntimeError, match="in replica 1, no device was provided and no tensor input was found"):
        parallel.parallel_apply([probe, probe], [x, (3,)])


def test_parallel_apply_one_module_runs_in_the_calling_thread(interpret):
    probe = Probe()
    (out,) = parallel.parallel_apply([probe], [(tracefuse.ones(1).to("cuda:1"),)], devices=[1])
    assert probe.calls[0][1:3] == (1, threading.current_thread().name)
    assert out.device == cuda(1) and tracefuse.cuda.current_device() == 0


def test_an_exception_in_a_replica_is_raised_naming_the_device(interpret):
    probe = Probe()
    xs = [tracefuse.ones(1).to("cuda:0"), tracefuse.ones(1).to("cuda:1")]
    kwargs = [{}, {"bad": ValueError("replica failed")}]
    with pytest.raises(ValueError) as info:
        parallel.parallel_apply([probe, probe], [(x,) for x in xs], kwargs, [0, 1])
    message = str(info.value)
    assert message.startswith("Caught ValueError in replica 1 on device 1.\nOriginal Traceback (most recent call last):")
    assert "ValueError: replica failed" in message and "in forward" in message
    with pytest.raises(KeyError) as info:
        parallel.parallel_apply([probe, probe], [(x,) for x in xs], [{"bad": KeyError("k")}, {}], [0, 1])
    assert str(info.value).startswith("Caught KeyError in replica 0 on device 0.")


def test_parallel_apply_checks_lengths_like_torch(interpret):
    cases = [([1, 2], [3], None, None), ([1, 2], [3, 4], [{}], None), ([1, 2], [3, 4], None, [0])]
    for modules, inputs, kwargs, devs in cases:
        with pytest.raises(AssertionError) as ours:
            parallel.parallel_apply(modules, inputs, kwargs, devs)
        with pytest.raises(AssertionError) as theirs:
            torch.nn.parallel.parallel_apply(modules, inputs, kwargs, devs)
        assert str(ours.value) == str(theirs.value)


# --- DataParallel: elementwise models -------------------------------------------------------------

class Elementwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tracefuse.tensor([1.0, -2.0, 3.0], dtype=tracefuse.float64))

    def forward(self, x, *, mask, scale):
        return {"y": (x * self.w).relu() * mask * scale, "x": x}, None


def test_data_parallel_configuration(interpret):
    dp = nn.DataParallel(Elementwise())
    assert (dp.device_ids, dp.output_device, dp.dim, dp.src_device_obj) == ([0, 1], 0, 0, cuda(0))
    single = nn.DataParallel(Elementwise(), device_ids=[1])
    assert single.module.w.device == cuda(1)  # one device: the module moves there
    with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
        nn.DataParallel(Elementwise(), device_ids=["cpu"])


def test_data_parallel_refuses_parameters_off_device_ids_0(interpret):
    model = Elementwise().to("cuda:1")
    msg = ("module must have its parameters and buffers on device cuda:0 (device_ids[0]) but found one of them on "
           "device: cuda:1")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        nn.DataParallel(model)(tracefuse.ones(2, 3), mask=tracefuse.ones(2, 3), scale=1.0)
    with pytest.raises(RuntimeError, match=re.escape(msg.replace("cuda:1", "cpu"))):
        parallel.data_parallel(Elementwise(), tracefuse.ones(2, 3))


def test_data_parallel_on_one_device_moves_and_calls(interpret, rng):
    x = rng.standard_normal((4, 3))
    dp = nn.DataParallel(Elementwise(), device_ids=[1])
    (out, none) = dp(_tensor(x), mask=tracefuse.ones(3, dtype=tracefuse.float64), scale=2.0)
    assert none is None and out["y"].device == cuda(1) and out["x"].device == cuda(1)
    np.testing.assert_allclose(_np(out["y"]), np.maximum(x * [1, -2, 3], 0) * 2, rtol=1e-12)


# --- DataParallel: models (need matmul, reductions and cat on the device) ------------------------

class MLP(torch.nn.Module):
    """Built for either library; returns a tuple with a dict, a namedtuple and None."""

    def __init__(self, lib):
        super().__init__()
        self.fc1 = lib.nn.Linear(4, 5)
        self.fc2 = lib.nn.Linear(5, 3)

    def forward(self, x, *, shift=None, scale=1.0):
        h = self.fc1(x).relu()
        if shift is not None:
            h = h + shift
        y = self.fc2(h) * scale
        return y, {"hidden": h, "nothing": None}, Pair(y.sigmoid(), h.tanh())


def _models(kind="linear"):
    """(tracefuse model, torch model) with the same float64 weights: nn.Linear(4, 3) or the MLP."""
    theirs = torch.nn.Linear(4, 3) if kind == "linear" else MLP(torch)
    ours = nn.Linear(4, 3) if kind == "linear" else _TfMLP()
    theirs.double(), ours.double()
    ours.load_state_dict({k: tracefuse.tensor(v.detach().numpy()) for k, v in theirs.state_dict().items()})
    return ours, theirs


class _TfMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    forward = MLP.forward


@pytest.mark.parametrize("batch", [8, 6, 3])
def test_linear_matches_the_cpu_with_gradients_and_a_step(n_devices, batch, rng):
    ours, theirs = _models()
    dp = nn.DataParallel(ours.to("cuda:0"))
    x, target = rng.standard_normal((batch, 4)), rng.standard_normal((batch, 3))
    opt = tracefuse.optim.SGD(dp.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        out = dp(_tensor(x))
        tout = theirs(torch.tensor(x))
        assert out.device == cuda(0)
        assert_same(out.cpu(), tout, rtol=1e-12, atol=1e-12)
        diff, tdiff = out - _tensor(target).to("cuda:0"), tout - torch.tensor(target)
        loss, tloss = (diff * diff).sum(), (tdiff * tdiff).sum()
        opt.zero_grad()
        topt.zero_grad()
        loss.backward()
        tloss.backward()
        for p, tp in zip(ours.parameters(), theirs.parameters()):
            assert p.grad.device == cuda(0)
            assert_same(p.grad.cpu(), tp.grad, rtol=1e-12, atol=1e-12)
        opt.step()
        topt.step()
    for p, tp in zip(ours.parameters(), theirs.parameters()):
        assert p.device == cuda(0)
        assert_same(p.detach().cpu(), tp, rtol=1e-12, atol=1e-12)


def test_mlp_with_structured_output_kwargs_and_output_device(n_devices, rng):
    ours, theirs = _models("mlp")
    dp = nn.DataParallel(ours.to("cuda:0"), output_device=n_devices - 1)
    x, shift = rng.standard_normal((7, 4)), rng.standard_normal((7, 5))
    out = dp(_tensor(x), shift=_tensor(shift), scale=0.5)
    tout = theirs(torch.tensor(x), shift=torch.tensor(shift), scale=0.5)
    y, extra, pair = out
    assert type(out) is tuple and type(pair) is Pair and extra["nothing"] is None and list(extra) == ["hidden", "nothing"]
    assert all(t.device == cuda(n_devices - 1) for t in _tensors_in(out))
    for a, b in ((y, tout[0]), (extra["hidden"], tout[1]["hidden"]), (pair.first, tout[2].first),
                 (pair.second, tout[2].second)):
        assert_same(a.cpu(), b, rtol=1e-12, atol=1e-12)
    (y.sum() + pair.second.sum()).backward()
    (tout[0].sum() + tout[2].second.sum()).backward()
    for p, tp in zip(ours.parameters(), theirs.parameters()):
        assert_same(p.grad.cpu(), tp.grad, rtol=1e-12, atol=1e-12)


def test_functional_data_parallel(n_devices, rng):
    ours, theirs = _models("mlp")
    x = rng.standard_normal((8, 4))
    out = parallel.data_parallel(ours.to("cuda:0"), _tensor(x), output_device=1, module_kwargs={"scale": 3.0})
    tout = theirs(torch.tensor(x), scale=3.0)
    assert out[0].device == cuda(1)
    assert_same(out[0].cpu(), tout[0], rtol=1e-12, atol=1e-12)


def test_scatter_along_dim_1(n_devices, rng):
    ours, theirs = _models()
    dp = nn.DataParallel(ours.to("cuda:0"), dim=1)
    x = rng.standard_normal((3, 5, 4))  # (time, batch, features): the batch is dim 1
    xs = _tensor(x, requires_grad=True)
    out = dp(xs)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    assert_same(out.cpu(), tout, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    tout.sum().backward()
    assert_same(xs.grad, tx.grad, rtol=1e-12, atol=1e-12)
    assert_same(ours.weight.grad.cpu(), theirs.weight.grad, rtol=1e-12, atol=1e-12)


def test_no_grad_forward_and_scalar_outputs(interpret, rng):
    ours, theirs = _models()
    dp = nn.DataParallel(ours.to("cuda:0"))
    x = rng.standard_normal((4, 4))
    with tracefuse.no_grad():
        out = dp(_tensor(x))
    assert not out.requires_grad
    assert_same(out.cpu(), theirs(torch.tensor(x)), rtol=1e-12, atol=1e-12)

    class Loss(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).sum()

    with pytest.warns(UserWarning, match="will instead unsqueeze and return a vector"):
        losses = nn.DataParallel(Loss(ours))(_tensor(x))
    expected = theirs(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(_np(losses), [expected[:2].sum(), expected[2:].sum()], rtol=1e-12)


def test_an_exception_in_a_data_parallel_replica(interpret):
    class Fails(Elementwise):
        def forward(self, x):
            if x.device == tracefuse.device("cuda", 1):
                raise RuntimeError("only on the second device")
            return x * self.w

    with pytest.raises(RuntimeError, match=r"Caught RuntimeError in replica 1 on device 1\.\nOriginal Traceback"):
        nn.DataParallel(Fails().to("cuda:0"))(tracefuse.ones(4, 3, dtype=tracefuse.float64))
