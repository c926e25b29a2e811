"""compile(..., options={"cuda_graphs": True}): the forward captured once and replayed; same values
as eager, fresh results per call, module state updated in place, and the graphs that must not be
replayed run normally with the reason kept."""
import copy

import numpy as np
import pytest

import tracefuse as tf
from tracefuse import nn
from tracefuse.tracer.api import compiled_callable
from tests.tracer.test_compiled_triton import train_lm_on_device_like_cpu

pytestmark = pytest.mark.usefixtures("interpret")
TIGHT = dict(rtol=1e-9, atol=1e-11)


def _replay(compiled):
    (entry,) = compiled_callable(compiled).entries
    return entry.captured.replay


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def test_forward_is_captured_on_the_second_call_and_replayed_with_fresh_inputs():
    tf.manual_seed(0)
    model = _mlp()
    twin = copy.deepcopy(model)
    compiled = tf.compile(model.cuda(), options={"cuda_graphs": True})
    results = []
    with tf.no_grad():
        for step in range(4):
            x = tf.randn(5, 6, dtype=tf.float64)
            out = compiled(x.cuda())
            np.testing.assert_allclose(out.cpu().numpy(), twin(x).numpy(), **TIGHT)
            results.append((out, twin(x)))
    replay = _replay(compiled)
    assert replay.disabled is None and replay.captured is not None and replay.calls == 4
    with tf.no_grad():
        report = tf.explain(compiled, tf.randn(5, 6, dtype=tf.float64).cuda())
    # two matmul kernels (bias, tanh as epilogues) in the graph; the call copies its input in and its result out
    assert "replayed as one CUDA graph of 2 kernels" in str(report) and report.kernel_count == 4
    for out, expected in results:  # a replay writes into the graph's memory, never into earlier results
        np.testing.assert_allclose(out.cpu().numpy(), expected.numpy(), **TIGHT)


def test_training_step_replayed_updates_parameters_in_place_like_eager():
    compiled = train_lm_on_device_like_cpu(4, options={"cuda_graphs": True})
    replay = _replay(compiled)
    assert replay.disabled is None and replay.captured is not None


def test_random_ops_are_not_replayed():
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5)).cuda()
    compiled = tf.compile(model, options={"cuda_graphs": True})
    x = tf.ones(64, 6).cuda()
    masks = [(compiled(x) == 0).cpu() for _ in range(3)]
    assert "random" in _replay(compiled).disabled
    assert "CUDA graph not used: it draws random numbers (dropout)" in str(tf.explain(compiled, x))
    assert not masks[1].equal(masks[2])  # each call draws its own dropout mask


def test_work_that_cannot_be_recorded_disables_capture_and_the_results_stay_right():
    def moved(x):
        return (x * 2).to("cuda:1") + 1  # a copy between devices waits for both

    compiled = tf.compile(moved, options={"cuda_graphs": True})
    for seed in range(3):
        tf.manual_seed(seed)
        x = tf.randn(50, dtype=tf.float64)
        out = compiled(x.cuda())
        assert out.device == tf.device("cuda:1")
        np.testing.assert_allclose(out.cpu().numpy(), moved(x.cuda()).cpu().numpy(), **TIGHT)
    assert "cannot be recorded into a CUDA graph" in _replay(compiled).disabled


def test_without_the_option_nothing_is_captured():
    compiled = tf.compile(_mlp().cuda())
    with tf.no_grad():
        for _ in range(3):
            compiled(tf.randn(2, 6, dtype=tf.float64).cuda())
    assert _replay(compiled) is None
