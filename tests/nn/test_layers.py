"""The non-recurrent layers of tracefuse.nn against torch.nn: repr text, parameter and buffer
registration, default initialisation, and forward/backward with torch's parameters copied from
ours (values and the gradients of inputs and parameters); BatchNorm's running statistics over
several steps in train and eval mode; errors by type and message."""
from __future__ import annotations

import ast
import math
import re
import warnings

import numpy as np
import pytest
import torch

import tracefuse as tf
import tracefuse.nn as nn
from tests.conftest import assert_same
from tests.nn.test_functional import TIGHT, assert_same_error, run_both

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")


def both(name, *args, dtype="float64", **kwargs):
    """The layer built on both sides, torch's parameters and buffers copied from ours by state_dict name."""
    ours = getattr(nn, name)(*args, **kwargs)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    if dtype == "float64":
        ours, theirs = ours.double(), theirs.double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})
    return ours, theirs


def compare_layer(ours, theirs, *arrays, dtype="float64"):
    """Outputs and the gradients of the inputs and of every parameter, on both sides."""
    rtol, atol = (TIGHT["rtol"], TIGHT["atol"]) if dtype == "float64" else (None, None)
    rng = np.random.default_rng(7)
    xs = [tf.tensor(a, dtype=getattr(tf, dtype), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in arrays]
    out, expected = ours(*xs), theirs(*ts)
    assert_same(out, expected, rtol, atol)
    cot = rng.standard_normal(tuple(expected.shape))
    (out * tf.tensor(cot, dtype=out.dtype)).sum().backward()
    (expected * torch.tensor(cot, dtype=expected.dtype)).sum().backward()
    for x, t in zip(xs, ts):
        assert_same(x.grad, t.grad, rtol, atol)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_same(p.grad, theirs_params[name].grad, rtol, atol)
    return out


# --- repr and registration -----------------------------------------------------------------------

MODULES = [
    ("Linear", (1, 2), {}),
    ("Linear", (3, 4), {"bias": False}),
    ("Bilinear", (3, 2, 4), {}),
    ("Identity", (54,), {"unused": 1}),
    ("Flatten", (), {}),
    ("Flatten", (0, 2), {}),
    ("Embedding", (10, 3), {}),
    ("Embedding", (10, 3), {"padding_idx": -2, "max_norm": 1.0, "norm_type": 1.0}),
    ("Dropout", (), {}),
    ("Dropout", (0.2, True), {}),
    ("ReLU", (), {}),
    ("ReLU", (True,), {}),
    ("Tanh", (), {}),
    ("Sigmoid", (), {}),
    ("GELU", (), {}),
    ("GELU", ("tanh",), {}),
    ("LeakyReLU", (), {}),
    ("LeakyReLU", (0.2, True), {}),
    ("ELU", (0.5,), {"inplace": True}),
    ("Softplus", (2, 10), {}),
    ("Softmax", (), {}),
    ("Softmax", (1,), {}),
    ("LogSoftmax", (-1,), {}),
    ("LayerNorm", (5,), {}),
    ("LayerNorm", ((3, 4),), {"eps": 1e-3, "elementwise_affine": False}),
    ("LayerNorm", ([4],), {"bias": False}),
    ("BatchNorm1d", (3,), {}),
    ("BatchNorm1d", (3,), {"bias": False}),
    ("BatchNorm2d", (4,), {"momentum": None, "affine": False, "track_running_stats": False}),
    ("Conv1d", (4, 6, 3), {}),
    ("Conv2d", (10, 20, 4), {}),
    ("Conv2d", (4, 6, (3, 2)), {"stride": 2, "padding": 1, "dilation": (2, 1), "groups": 2, "bias": False}),
    ("Conv2d", (4, 6, 3), {"padding": "same", "padding_mode": "reflect"}),
    ("Conv1d", (4, 6, 3), {"padding": "valid", "padding_mode": "circular"}),
    ("MaxPool1d", (3,), {}),
    ("MaxPool2d", (2,), {}),
    ("MaxPool2d", ((3, 2), 1, 1, 2, True, True), {}),
    ("AvgPool1d", (3,), {"stride": 2, "padding": 1}),
    ("AvgPool2d", (2,), {}),
    ("AvgPool2d", ((3, 2), (2, 1), 1, True, False, 3), {}),
    ("MSELoss", (), {}),
    ("CrossEntropyLoss", (), {"label_smoothing": 0.1}),
    ("CosineSimilarity", (), {}),
    ("PairwiseDistance", (), {"p": 1.0}),
]


@pytest.mark.parametrize("name, args, kwargs", MODULES, ids=[m[0] for m in MODULES])
def test_repr_parameters_and_buffers_match_torch(name, args, kwargs):
    ours, theirs = getattr(nn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert [(k, tuple(p.shape), p.requires_grad) for k, p in ours.named_parameters()] == \
        [(k, tuple(p.shape), p.requires_grad) for k, p in theirs.named_parameters()]
    assert [(k, tuple(b.shape), b.dtype.name) for k, b in ours.named_buffers()] == \
        [(k, tuple(b.shape), str(b.dtype).replace("torch.", "")) for k, b in theirs.named_buffers()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_seed_spec_prints():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("conv", nn.Conv2d(10, 20, 4))
            self.add_module("conv1", nn.Conv2d(20, 10, 4))

    assert [repr(m) for m in Model().children()] == ["Conv2d(10, 20, kernel_size=(4, 4), stride=(1, 1))",
                                                      "Conv2d(20, 10, kernel_size=(4, 4), stride=(1, 1))"]
    assert repr(nn.Linear(1, 2)) == "Linear(in_features=1, out_features=2, bias=True)"


# --- default initialisation ----------------------------------------------------------------------

@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(400, 300), 400),
    (lambda: nn.Conv2d(16, 64, 5), 16 * 25),
    (lambda: nn.Conv1d(8, 50, 7, groups=2), 4 * 7),
])
def test_linear_and_conv_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    tf.manual_seed(0)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    w = layer.weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert abs(w.mean()) < 0.02 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    b = layer.bias.detach().numpy()
    assert np.abs(b).max() <= bound and b.std() > 0.3 * bound


def test_bilinear_embedding_and_norm_init():
    tf.manual_seed(1)
    bil = nn.Bilinear(20, 30, 40)
    assert np.abs(bil.weight.detach().numpy()).max() <= 1 / math.sqrt(20)
    emb = nn.Embedding(300, 100, padding_idx=-1)
    w = emb.weight.detach().numpy()
    assert emb.padding_idx == 299 and not w[299].any()
    assert abs(w[:299].mean()) < 0.02 and abs(w[:299].std() - 1) < 0.02
    bn, ln = nn.BatchNorm1d(5), nn.LayerNorm((2, 3))
    for p, value in ((bn.weight, 1), (bn.bias, 0), (bn.running_mean, 0), (bn.running_var, 1), (ln.weight, 1),
                     (ln.bias, 0)):
        assert (p.detach().numpy() == value).all()
    assert bn.num_batches_tracked.dtype is tf.int64 and bn.num_batches_tracked.item() == 0


def test_factory_kwargs_set_the_parameter_dtype():
    for layer in (nn.Linear(2, 3, dtype=tf.float64), nn.Conv2d(1, 2, 3, dtype=tf.float64),
                  nn.LayerNorm(4, dtype=tf.float64), nn.BatchNorm2d(2, dtype=tf.float64),
                  nn.Embedding(4, 2, dtype=tf.float64)):
        assert {p.dtype for p in layer.parameters()} == {tf.float64}


# --- forward and backward against torch ----------------------------------------------------------

@pytest.mark.parametrize("name, args, kwargs, shapes", [
    ("Linear", (3, 4), {}, [(5, 3)]),
    ("Linear", (3, 4), {"bias": False}, [(2, 5, 3)]),
    ("Bilinear", (3, 2, 4), {}, [(5, 3), (5, 2)]),
    ("LayerNorm", ((3, 4),), {}, [(2, 3, 4)]),
    ("LayerNorm", (4,), {"bias": False}, [(2, 3, 4)]),
    ("Conv1d", (4, 6, 3), {"stride": 2, "padding": 1, "groups": 2}, [(2, 4, 9)]),
    ("Conv2d", (3, 4, (3, 2)), {"padding": "same", "dilation": 2}, [(2, 3, 6, 5)]),
    ("Conv2d", (3, 4, 3), {"padding": 1, "padding_mode": "reflect"}, [(2, 3, 5, 5)]),
    ("Conv2d", (3, 4, 3), {"padding": (1, 2), "padding_mode": "circular"}, [(2, 3, 5, 5)]),
    ("Conv2d", (3, 4, 2), {"padding": "same", "padding_mode": "replicate"}, [(1, 3, 5, 5)]),
    ("MaxPool2d", (3, 2, 1), {"ceil_mode": True}, [(2, 3, 7, 6)]),
    ("MaxPool1d", (2,), {}, [(2, 3, 7)]),
    ("AvgPool2d", (3, 2, 1), {"count_include_pad": False}, [(2, 3, 7, 6)]),
    ("AvgPool1d", (3, 1, 1), {}, [(2, 3, 7)]),
    ("GELU", ("tanh",), {}, [(3, 4)]),
    ("LeakyReLU", (0.3,), {}, [(3, 4)]),
    ("ELU", (0.5,), {}, [(3, 4)]),
    ("Softplus", (2.0, 1.0), {}, [(3, 4)]),
    ("Softmax", (0,), {}, [(3, 4)]),
    ("LogSoftmax", (1,), {}, [(3, 4)]),
    ("Tanh", (), {}, [(3, 4)]),
    ("Sigmoid", (), {}, [(3, 4)]),
    ("ReLU", (), {}, [(3, 4)]),
    ("Flatten", (), {}, [(2, 3, 4)]),
    ("Identity", (), {}, [(2, 3)]),
    ("CosineSimilarity", (), {"dim": 0}, [(3, 4), (3, 4)]),
    ("PairwiseDistance", (), {"keepdim": True}, [(3, 4), (3, 4)]),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layers_forward_and_backward(name, args, kwargs, shapes, dtype, rng):
    ours, theirs = both(name, *args, dtype=dtype, **kwargs)
    compare_layer(ours, theirs, *(rng.standard_normal(s) for s in shapes), dtype=dtype)


def test_embedding_module(rng):
    ours, theirs = both("Embedding", 6, 3, padding_idx=2)
    idx = np.array([[0, 2, 5], [2, 1, 1]])
    out, expected = ours(tf.tensor(idx)), theirs(torch.tensor(idx))
    assert_same(out, expected, **TIGHT)
    cot = rng.standard_normal((2, 3, 3))
    (out * tf.tensor(cot)).sum().backward()
    (expected * torch.tensor(cot)).sum().backward()
    assert_same(ours.weight.grad, theirs.weight.grad, **TIGHT)
    assert not ours.weight.grad.numpy()[2].any()


def test_embedding_from_pretrained_shares_storage_and_freezes():
    weights = tf.tensor([[1.0, 2.3, 3.0], [4.0, 5.1, 6.3]])
    emb = nn.Embedding.from_pretrained(weights)
    assert not emb.weight.requires_grad and repr(emb) == "Embedding(2, 3)"
    assert_same(emb(tf.tensor([1])), torch.tensor([[4.0, 5.1, 6.3]]))
    with tf.no_grad():
        weights[0, 0] = 7.0
    assert emb.weight[0, 0].item() == 7.0
    trainable = nn.Embedding.from_pretrained(weights, freeze=False, padding_idx=0)
    assert trainable.weight.requires_grad and trainable.padding_idx == 0


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.Embedding(3, 2, padding_idx=3),
    lambda lib: lib.nn.Embedding(3, 2, padding_idx=-4),
    lambda lib: lib.nn.Embedding(3, 2, _weight=lib.zeros(2, 2)),
    lambda lib: lib.nn.Embedding.from_pretrained(lib.zeros(3)),
])
def test_embedding_errors(call):
    assert_same_error(call)


def test_dropout_module_respects_train_and_eval():
    drop = nn.Dropout(0.5)
    x = tf.ones(100, 100)
    assert (drop(x).numpy() == 0).any()
    drop.eval()
    assert drop(x) is x


def test_softmax_module_without_dim_warns_like_torch(rng):
    x = rng.standard_normal((2, 3))
    messages = []
    for lib in (tf, torch):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = lib.nn.Softmax()(lib.tensor(x))
        messages.append([str(w.message) for w in caught])
        np.testing.assert_allclose(out.numpy(), torch.softmax(torch.tensor(x), 1).numpy(), rtol=1e-12)
    assert messages[0] == messages[1] and len(messages[0]) == 1


# --- BatchNorm -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, kwargs", [
    ("BatchNorm1d", (6, 3), {}),
    ("BatchNorm1d", (4, 3, 5), {"momentum": None}),
    ("BatchNorm2d", (2, 3, 4, 4), {"momentum": 0.3, "eps": 1e-3}),
    ("BatchNorm2d", (2, 3, 4, 4), {"affine": False}),
    ("BatchNorm2d", (2, 3, 4, 4), {"bias": False}),
    ("BatchNorm1d", (6, 3), {"track_running_stats": False}),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_modules_over_train_and_eval_steps(name, shape, kwargs, dtype, rng):
    ours, theirs = both(name, 3, dtype=dtype, **kwargs)
    rtol, atol = (TIGHT["rtol"], TIGHT["atol"]) if dtype == "float64" else (None, None)
    for step in range(3):
        compare_layer(ours, theirs, rng.standard_normal(shape) * (step + 1) + step, dtype=dtype)
        for (k, b), (_, t) in zip(ours.named_buffers(), theirs.named_buffers()):
            assert_same(b, t, rtol, atol)
    ours.eval()
    theirs.eval()
    compare_layer(ours, theirs, rng.standard_normal(shape), dtype=dtype)


def test_batch_norm_input_dim_errors():
    assert_same_error(lambda lib: lib.nn.BatchNorm1d(3)(lib.randn(2, 3, 4, 5)))
    assert_same_error(lambda lib: lib.nn.BatchNorm2d(3)(lib.randn(2, 3, 4)))
    assert_same_error(lambda lib: lib.nn.BatchNorm1d(3)(lib.randn(1, 3)))


# --- module construction errors ------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.Conv2d(4, 6, 3, groups=0),
    lambda lib: lib.nn.Conv2d(4, 6, 3, groups=3),
    lambda lib: lib.nn.Conv2d(4, 6, 3, groups=4),
    lambda lib: lib.nn.Conv2d(4, 6, 3, padding="full"),
    lambda lib: lib.nn.Conv1d(4, 6, 3, stride=2, padding="same"),
    lambda lib: lib.nn.Dropout(1.5),
    lambda lib: lib.nn.GELU("foo")(lib.randn(2)),
])
def test_module_errors(call):
    assert_same_error(call)


def test_conv_padding_mode_error_lists_the_modes():
    # The message prints a Python set, whose order follows string hashing: compare the parsed sets.
    pattern = r"padding_mode must be one of (\{.*\}), but got padding_mode='mirror'"
    modes = []
    for lib in (torch, tf):
        with pytest.raises(ValueError) as caught:
            lib.nn.Conv2d(1, 1, 1, padding_mode="mirror")
        modes.append(ast.literal_eval(re.fullmatch(pattern, str(caught.value)).group(1)))
    assert modes[0] == modes[1] == {"zeros", "reflect", "replicate", "circular"}


# --- a small network, one training step ----------------------------------------------------------

def build_net(lib):
    m = lib.nn
    return m.Sequential(m.Conv2d(2, 4, 3, padding=1), m.BatchNorm2d(4), m.ReLU(), m.MaxPool2d(2), m.Dropout(0.0),
                        m.Flatten(), m.Linear(4 * 3 * 3, 5), m.LayerNorm(5), m.GELU(), m.Linear(5, 3))


def test_small_network_matches_torch(rng):
    """Conv, BatchNorm (training), pooling, Linear, LayerNorm and the loss, end to end: the loss,
    the input gradient, every parameter gradient and BatchNorm's updated running statistics."""
    tf.manual_seed(0)
    ours, theirs = build_net(tf).double(), build_net(torch).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})
    run_both(lambda lib, x, t: lib.nn.functional.cross_entropy((ours if lib is tf else theirs)(x), t),
             rng.standard_normal((4, 2, 6, 6)), np.array([0, 2, 1, 2]))
    for name, p in ours.named_parameters():
        assert p.grad is None  # run_both differentiates with autograd.grad: .grad stays untouched
    assert_same(list(ours.buffers()), list(theirs.buffers()), **TIGHT)
    x = rng.standard_normal((4, 2, 6, 6))
    loss = tf.nn.functional.cross_entropy(ours(tf.tensor(x)), tf.tensor([0, 1, 2, 0]))
    expected = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    expected.backward()
    assert_same(loss, expected, **TIGHT)
    assert_same([p.grad for p in ours.parameters()], [p.grad for p in theirs.parameters()], **TIGHT)
