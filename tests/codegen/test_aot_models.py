"""Every kernel the test models generate builds to cubin for sm_80 and sm_90 with no GPU present,
without spilling. The models: a 2-layer LSTM, a packed bidirectional GRU tagger (forward and
backward), a conv classifier and a language-model training step (embedding, LSTM, cross-entropy,
clip_grad_norm_, Adam), all compiled on cuda:0 of the interpret backend. The report (registers,
spills, shared memory per kernel and arch) is printed; `pytest -s` shows it."""

import numpy as np
import pytest

import tracefuse as tf
from tracefuse import nn
from tracefuse.codegen.triton import aot, recording
from tests.tracer.test_compiled_training import (
    ConvNet, LanguageModel, PackedTagger, image_batch, make_step, sequence_ce, tagger_batch, token_batch)

pytestmark = pytest.mark.usefixtures("interpret")


def _model_launches():
    with recording() as records:
        lstm = tf.compile(nn.LSTM(6, 8, num_layers=2).cuda())
        lstm(tf.randn(5, 3, 6).cuda())

        tagger = tf.compile(PackedTagger().cuda())
        x, lengths, _ = tagger_batch(np.random.default_rng(0))
        tagger(x.float().cuda(), lengths).sum().backward()

        conv = ConvNet().cuda()
        images, labels = image_batch(np.random.default_rng(0))
        tf.nn.functional.cross_entropy(tf.compile(conv)(images.float().cuda()), labels.cuda()).backward()

        model = LanguageModel().cuda()
        opt = tf.optim.Adam(model.parameters(), lr=0.01)
        step = tf.compile(make_step(model, opt, sequence_ce, 2.0))
        for s in range(2):  # the first step creates Adam's state eagerly; the second runs the graph
            step(*[t.cuda() for t in token_batch(np.random.default_rng(s))])
    return records


def test_every_model_kernel_builds_for_sm80_and_sm90_without_spills(tmp_path, monkeypatch):
    records = _model_launches()
    kernels = {r.kernel.name for r in records}
    assert {"lstm_layer_scan_kernel", "multi_tensor_adam_kernel", "conv_kernel"} & kernels
    rows = aot.build_report(records, archs=(80, 90))
    print("\n" + aot.format_report(rows))
    failed = [r for r in rows if r.error]
    assert not failed, aot.format_report(failed)
    assert {r.kernel for r in rows} == kernels and {r.arch for r in rows} == {80, 90}
    spilling = [r for r in rows if r.spills]
    assert not spilling, aot.format_report(spilling)
    assert all(r.registers > 0 for r in rows)


