"""Whole training steps compiled against an eager twin, in float64, over several steps.

A step is zero_grad, forward, loss, backward, clip_grad_norm_ (several norm types) and an
optimizer step (Adam, AdamW, SGD with momentum). After every step the loss, the total norm, the
parameters, their gradients, the buffers and the optimizer state must equal the twin's. The
optimized graph of the step holds exactly one multi_tensor_norm and one multi_tensor_scale,
whatever the number of parameters, also when the clipping is written by hand.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import tracefuse as tf
from tracefuse import nn
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable
from tests.tracer.test_compiled_modules import TIGHT

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


class LanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 4, padding_idx=0)
        self.lstm = nn.LSTM(4, 5, num_layers=2)
        self.head = nn.Linear(5, 12)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


class PackedTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, bidirectional=True, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.head(out)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.AvgPool2d(1))
        self.classifier = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class ManyLayers(nn.Module):
    """100 small Linear layers: 200 parameters."""

    def __init__(self, n=100):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).tanh()
        return x


class ManyScales(nn.Module):
    """A ParameterList of 200 scalars."""

    def __init__(self, n=200):
        super().__init__()
        self.scales = nn.ParameterList(nn.Parameter(tf.tensor(1.0 + 0.01 * k)) for k in range(n))

    def forward(self, x):
        for k, scale in enumerate(self.scales):
            x = x * scale if k % 2 else x + scale
        return x


def token_batch(rng):
    return [tf.tensor(rng.integers(0, 12, (6, 3))), tf.tensor(rng.integers(0, 12, (6, 3)))]


def tagger_batch(rng):
    return [tf.tensor(rng.standard_normal((3, 5, 3))), tf.tensor([5, 2, 4]), tf.tensor(rng.integers(0, 3, (3, 5)))]


def image_batch(rng):
    return [tf.tensor(rng.standard_normal((4, 2, 6, 6))), tf.tensor(rng.integers(0, 4, (4,)))]


def regression_batch(rng):
    return [tf.tensor(rng.standard_normal((3, 2))), tf.tensor(rng.standard_normal((3, 2)))]


def sequence_ce(out, target):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), ignore_index=0)


def make_step(model, optimizer, loss_fn, norm_type, set_to_none=True):
    def step(*batch):
        *inputs, target = batch
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.3, norm_type=norm_type)
        optimizer.step()
        return loss, total
    return step


def _state_arrays(optimizer, p):
    return {k: (v.numpy() if isinstance(v, tf.Tensor) else np.asarray(v)) for k, v in optimizer.state[p].items()}


def assert_same_training_state(model, twin, opt, twin_opt):
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=name, **TIGHT)
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=f"{name}.grad", **TIGHT)
        ours, theirs = _state_arrays(opt, p), _state_arrays(twin_opt, q)
        assert ours.keys() == theirs.keys(), name
        for key in theirs:
            np.testing.assert_allclose(ours[key], theirs[key], err_msg=f"{name} state {key}", **TIGHT)
    for (name, b), c in zip(model.named_buffers(), twin.buffers()):
        np.testing.assert_allclose(b.numpy(), c.numpy(), err_msg=name, **TIGHT)


def train_both(make_model, make_optimizer, batch, loss_fn, norm_type, steps=4, set_to_none=True):
    """Run `steps` compiled steps and eager steps side by side; returns the compiled step's cache."""
    tf.manual_seed(0)
    model = make_model().double()
    twin = copy.deepcopy(model)
    opt, twin_opt = make_optimizer(model.parameters()), make_optimizer(twin.parameters())
    compiled = tf.compile(make_step(model, opt, loss_fn, norm_type, set_to_none))
    eager = make_step(twin, twin_opt, loss_fn, norm_type, set_to_none)
    for s in range(steps):
        data = batch(np.random.default_rng(s))
        (loss, total), (twin_loss, twin_total) = compiled(*data), eager(*data)
        np.testing.assert_allclose(loss.item(), twin_loss.item(), **TIGHT)
        np.testing.assert_allclose(total.item(), twin_total.item(), **TIGHT)
        assert_same_training_state(model, twin, opt, twin_opt)
    cache = compiled_callable(compiled)
    assert len(cache.entries) == 1, cache.recompiles
    return cache


def assert_two_multi_tensor_nodes(cache, n_grads):
    forward = cache.entries[0].captured.forward
    nodes = {op: [n for n in forward.nodes if n.op == op] for op in ("multi_tensor_norm", "multi_tensor_scale")}
    assert [len(v) for v in nodes.values()] == [1, 1], [n.op for n in forward.nodes]
    (norm,), (scale,) = nodes.values()
    assert len(norm.inputs) == n_grads and len(scale.inputs) == n_grads + 1  # the coefficient, then the grads
    assert "norm" not in {n.op for n in forward.nodes}


NORMS = [2.0, 1.0, math.inf, 3.0]


@pytest.mark.parametrize("norm_type", NORMS)
def test_language_model_with_adam(norm_type):
    cache = train_both(LanguageModel, lambda ps: tf.optim.Adam(ps, lr=0.01), token_batch, sequence_ce, norm_type)
    assert cache.warmups == 1  # Adam's first step creates its state eagerly
    assert_two_multi_tensor_nodes(cache, 11)
    ops = [n.op for n in cache.entries[0].captured.forward.nodes]
    assert ops.count("lstm_layer") == 2 and ops.count("lstm_layer_backward") == 2


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: tf.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: tf.optim.Adam(ps, lr=0.02, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01),
], ids=["AdamW", "Adam-amsgrad"])
def test_packed_bidirectional_gru_tagger(make_optimizer):
    cache = train_both(PackedTagger, make_optimizer, tagger_batch, sequence_ce, 2.0, set_to_none=False)
    assert_two_multi_tensor_nodes(cache, 10)
    assert [n.op for n in cache.entries[0].captured.forward.nodes].count("gru_layer_backward") == 2


@pytest.mark.parametrize("make_optimizer, warmups", [
    (lambda ps: tf.optim.SGD(ps, lr=0.1, momentum=0.9), 1),
    (lambda ps: tf.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01), 1),
    (lambda ps: tf.optim.SGD(ps, lr=0.05), 0),
], ids=["momentum", "dampening-decay", "plain"])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_conv_classifier_with_sgd(make_optimizer, warmups, norm_type):
    cache = train_both(ConvNet, make_optimizer, image_batch, F.cross_entropy, norm_type)
    assert cache.warmups == warmups
    assert_two_multi_tensor_nodes(cache, 6)


@pytest.mark.parametrize("make_model", [ManyLayers, ManyScales])
def test_two_hundred_parameters_clip_as_two_multi_tensor_nodes(make_model):
    cache = train_both(make_model, lambda ps: tf.optim.Adam(ps, lr=0.01), regression_batch, F.mse_loss, 2.0, steps=3)
    assert_two_multi_tensor_nodes(cache, 200)


def test_parameters_without_gradients_are_left_out_of_clipping_and_update():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)
            self.frozen = nn.Parameter(tf.ones(2), requires_grad=False)

        def forward(self, x):
            return self.used(x) * self.frozen

    cache = train_both(Partial, lambda ps: tf.optim.Adam(ps, lr=0.01), regression_batch, F.mse_loss, 2.0)
    assert_two_multi_tensor_nodes(cache, 2)


def test_hand_written_clipping_fuses_into_two_multi_tensor_nodes():
    tf.manual_seed(1)
    model = ManyLayers(30).double()
    twin = copy.deepcopy(model)
    opt, twin_opt = tf.optim.SGD(model.parameters(), lr=0.1), tf.optim.SGD(twin.parameters(), lr=0.1)

    def make(m, o):
        def step(x, y):
            o.zero_grad()
            loss = F.mse_loss(m(x), y)
            loss.backward()
            grads = [p.grad for p in m.parameters()]
            total = tf.stack([g.norm(2.0) for g in grads]).norm(2.0)
            coef = (0.1 / (total + 1e-6)).clamp(max=1.0)
            for p, g in zip(m.parameters(), grads):
                p.grad = g * coef
            o.step()
            return loss, total
        return step

    compiled, eager = tf.compile(make(model, opt)), make(twin, twin_opt)
    for s in range(3):
        data = regression_batch(np.random.default_rng(s))
        for a, b in zip(compiled(*data), eager(*data)):
            np.testing.assert_allclose(a.item(), b.item(), **TIGHT)
        assert_same_training_state(model, twin, opt, twin_opt)
    cache = compiled_callable(compiled)
    assert len(cache.entries) == 1 and cache.warmups == 0
    assert_two_multi_tensor_nodes(cache, 60)
    rules = cache.entries[0].captured.log.rules()
    assert rules.count("clip_norm_fusion/stacked_norms_to_multi_tensor_norm") == 1
    assert rules.count("clip_norm_fusion/scaling_muls_to_multi_tensor_scale") == 1
