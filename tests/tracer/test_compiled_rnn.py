"""nn.RNN / nn.LSTM / nn.GRU and the cells compiled against the same modules run eagerly, in float64.

The configuration space is the nn conformance suite's (mode, layers, bias, batch_first,
bidirectional, projection, padded / packed sorted / packed unsorted / unbatched input, initial
state given or not, inter-layer dropout in eval mode); hypothesis draws configurations and sizes,
a few explicit cases pin the corners. Outputs, h_n (and c_n), PackedSequence fields and every
gradient are compared on a second batch after tracing on a first. The optimized graphs are
checked too: one fused scan node per layer and direction and no gate arithmetic left, and a
Python loop over a cell rolled into one layer node.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracefuse as tf
from tracefuse import nn
from tracefuse.ir import ops
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable
from tests.tracer.test_compiled_modules import TIGHT, assert_tensors_close, check_compiled, f, inputs, ints, tensors

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

MODES = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
         "RNN_RELU": ("RNN", {"nonlinearity": "relu"})}
KINDS = ("padded", "packed_sorted", "packed_unsorted", "unbatched")
LAYER_OP = {"LSTM": "lstm_layer", "GRU": "gru_layer", "RNN": "rnn_layer"}


def build(mode, case):
    kind, extra = MODES[mode]
    kwargs = dict(extra, num_layers=case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                  bidirectional=case["bidirectional"], dtype=tf.float64)
    if case["proj"]:
        kwargs["proj_size"] = case["proj"]
    if case["dropout"]:
        kwargs["dropout"] = 0.5
    module = getattr(nn, kind)(case["I"], case["H"], **kwargs)
    return module.eval() if case["dropout"] else module


def check_rnn(mode, case):
    """Compiled vs eager on two batches with the same lengths and different values."""
    tf.manual_seed(0)
    module = build(mode, case)
    lstm = MODES[mode][0] == "LSTM"
    T, B, directions = case["T"], case["B"], 2 if case["bidirectional"] else 1
    unbatched = case["kind"] == "unbatched"
    x_shape = (T, case["I"]) if unbatched else (B, T, case["I"]) if case["batch_first"] else (T, B, case["I"])
    state_shapes = []
    if case["hx"]:
        batch = () if unbatched else (B,)
        sizes = [case["proj"] or case["H"]] + ([case["H"]] if lstm else [])
        state_shapes = [(case["num_layers"] * directions, *batch, s) for s in sizes]

    def make_arrays(rng):
        return [rng.standard_normal(x_shape)] + [rng.standard_normal(s) for s in state_shapes]

    def call(m, x, *hx):
        if case["kind"].startswith("packed"):
            x = nn.utils.rnn.pack_padded_sequence(x, case["lengths"], case["batch_first"],
                                                  enforce_sorted=case["kind"] == "packed_sorted")
        state = (tuple(hx) if lstm else hx[0]) if hx else None
        return m(x, state)

    compiled = check_compiled(module, make_arrays, call=call)
    return compiled_callable(compiled).entries[0].captured


@st.composite
def rnn_cases(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    H, T, B = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(KINDS))
    lengths = sorted(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)), reverse=True)
    if kind == "packed_unsorted":
        lengths = draw(st.permutations(lengths))
    num_layers = draw(st.integers(1, 2))
    return mode, dict(I=draw(st.integers(1, 4)), H=H, T=T, B=B, num_layers=num_layers, bias=draw(st.booleans()),
                      batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
                      proj=draw(st.integers(0, H - 1)) if mode == "LSTM" else 0, kind=kind, lengths=list(lengths),
                      hx=draw(st.booleans()), dropout=num_layers == 2 and draw(st.booleans()))


@given(rnn_cases())
@settings(max_examples=25, deadline=None)
def test_hypothesis_rnn_matches_eager(config):
    check_rnn(*config)


CORNERS = [
    ("LSTM", dict(num_layers=2, bias=True, batch_first=False, bidirectional=True, proj=2, kind="packed_unsorted",
                  hx=True, dropout=True)),
    ("LSTM", dict(num_layers=1, bias=False, batch_first=True, bidirectional=False, proj=0, kind="unbatched",
                  hx=False, dropout=False)),
    ("LSTM", dict(num_layers=2, bias=True, batch_first=True, bidirectional=True, proj=0, kind="packed_sorted",
                  hx=False, dropout=False)),
    ("GRU", dict(num_layers=2, bias=True, batch_first=True, bidirectional=True, proj=0, kind="packed_unsorted",
                 hx=True, dropout=True)),
    ("GRU", dict(num_layers=1, bias=False, batch_first=False, bidirectional=True, proj=0, kind="unbatched",
                 hx=True, dropout=False)),
    ("RNN_TANH", dict(num_layers=2, bias=True, batch_first=False, bidirectional=False, proj=0, kind="padded",
                      hx=True, dropout=False)),
    ("RNN_RELU", dict(num_layers=2, bias=False, batch_first=True, bidirectional=True, proj=0,
                      kind="packed_sorted", hx=False, dropout=True)),
    ("RNN_RELU", dict(num_layers=1, bias=True, batch_first=False, bidirectional=False, proj=0,
                      kind="packed_unsorted", hx=True, dropout=False)),
]


@pytest.mark.parametrize("mode, case", CORNERS, ids=[f"{m}-{c['kind']}-L{c['num_layers']}" for m, c in CORNERS])
def test_corner_cases_match_eager(mode, case):
    lengths = [5, 3, 2] if case["kind"] == "packed_sorted" else [2, 5, 3]
    check_rnn(mode, dict(case, I=3, H=5, T=5, B=3, lengths=lengths))


# --- the optimized graphs ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
def test_each_layer_and_direction_is_one_fused_scan(mode, bidirectional, kind):
    case = dict(I=3, H=4, T=5, B=3, num_layers=2, bias=True, batch_first=False, bidirectional=bidirectional,
                proj=0, kind=kind, lengths=[2, 5, 3], hx=True, dropout=False)
    captured = check_rnn(mode, case)
    layer, scans = LAYER_OP[MODES[mode][0]], 2 * (2 if bidirectional else 1)
    forward = [n.op for n in captured.forward.nodes]
    assert forward.count(layer) == scans
    assert not [op for op in forward if op != "input" and ops.get(op).kind == "elementwise"], forward
    backward = [n.op for n in captured.backward.nodes]
    assert backward.count(f"{layer}_backward") == scans
    elementwise = {op for op in backward if op != "input" and ops.get(op).kind == "elementwise"}
    assert elementwise <= {"add"}, backward  # gradients reaching a value twice are summed; no gate math


# --- models: embedding / linear / loss heads -----------------------------------------------------

class LanguageModel(nn.Module):
    def __init__(self, vocab=11):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4, padding_idx=0)
        self.lstm = nn.LSTM(4, 6, num_layers=2, proj_size=3, dropout=0.3)
        self.head = nn.Linear(3, vocab)

    def forward(self, tokens, targets, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=tokens.shape[0])
        logits = self.head(out)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=0), h, c


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Sequential(nn.Linear(8, 5), nn.LogSoftmax(-1))

    def forward(self, x, tags):
        out, _ = self.gru(x)
        return F.nll_loss(self.head(out).reshape(-1, 5), tags.reshape(-1), reduction="sum")


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x, target):
        _, h = self.rnn(x)
        features = tf.cat([h[-2], h[-1]], dim=1)
        return F.binary_cross_entropy_with_logits(self.head(features), target)


def test_packed_language_model_with_projection_and_loss_head():
    tf.manual_seed(1)
    model = LanguageModel().double().eval()
    lengths = tf.tensor([4, 6, 2])

    def make_arrays(rng):
        tokens = rng.integers(1, 11, (6, 3))
        tokens[np.arange(6)[:, None] >= lengths.numpy()] = 0
        return [tokens, rng.integers(0, 11, (6, 3))]

    check_compiled(model, make_arrays, call=lambda m, tokens, targets: m(tokens, targets, lengths), batches=3)


def test_bidirectional_gru_tagger_and_rnn_classifier():
    tf.manual_seed(2)
    check_compiled(Tagger().double(), inputs(f(2, 5, 3), ints(5, 2, 5)))
    check_compiled(Classifier().double(), lambda rng: [rng.standard_normal((4, 3, 3)), rng.random((3, 2))])


def test_training_mode_dropout_between_layers_draws_fresh_masks():
    tf.manual_seed(3)
    gru = nn.GRU(3, 5, num_layers=2, dropout=0.5, dtype=tf.float64)
    compiled = tf.compile(gru)
    x = tf.randn(4, 2, 3, dtype=tf.float64)
    first, second = compiled(x)[0].detach().numpy(), compiled(x)[0].detach().numpy()
    assert not np.allclose(first, second)
    gru.eval()
    np.testing.assert_allclose(compiled(x)[0].detach().numpy(), gru(x)[0].detach().numpy(), **TIGHT)
    assert str(compiled_callable(compiled).recompiles[-1]) == "guard failed: self.training: True -> False"


# --- cells, called once and in Python loops -----------------------------------------------------------

CELLS = {"LSTMCell": ("lstm_cell", "lstm_layer", 2), "GRUCell": ("gru_cell", "gru_layer", 1),
         "RNNCell": ("rnn_cell", "rnn_layer", 1)}


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("hx", [True, False])
def test_single_cell_step_matches_eager(cell, batched, hx):
    tf.manual_seed(4)
    module = getattr(nn, cell)(3, 4, dtype=tf.float64)
    n_states = CELLS[cell][2]
    batch = (2,) if batched else ()

    def make_arrays(rng):
        return [rng.standard_normal(batch + (3,))] + [rng.standard_normal(batch + (4,)) for _ in range(n_states * hx)]

    def call(m, x, *state):
        return m(x, (tuple(state) if n_states == 2 else state[0]) if state else None)

    check_compiled(module, make_arrays, call=call)


class CellLoop(nn.Module):
    """A cell applied step by step in Python, its hidden states stacked (the pattern rolled into a layer)."""

    def __init__(self, cell, style, reverse, **kwargs):
        super().__init__()
        self.cell = getattr(nn, cell)(3, 4, **kwargs)
        self.style, self.reverse = style, reverse

    def forward(self, x, *state):
        state = (state if len(state) == 2 else state[0]) if state else None
        steps = list(x.unbind(0)) if self.style == "unbind" else [x[t] for t in range(x.shape[0])]
        outputs = []
        for x_t in (steps[::-1] if self.reverse else steps):
            state = self.cell(x_t, state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return tf.stack(outputs[::-1] if self.reverse else outputs), state


LOOPS = [(cell, style, reverse, kwargs) for cell in sorted(CELLS) for style, reverse, kwargs in [
    ("unbind", False, {}), ("index", True, {"bias": False})]] + [("RNNCell", "unbind", False, {"nonlinearity": "relu"})]
LOOP_IDS = [f"{c}-{s}{'-reverse' if r else ''}{''.join(f'-{k}={v}' for k, v in kw.items())}" for c, s, r, kw in LOOPS]


def _loop_case(cell, style, reverse, kwargs, hx=True):
    tf.manual_seed(5)
    module = CellLoop(cell, style, reverse, **kwargs).double()
    n_states = CELLS[cell][2]

    def make(rng):
        return [rng.standard_normal((5, 2, 3))] + [rng.standard_normal((2, 4)) for _ in range(n_states * hx)]
    return module, make


@pytest.mark.parametrize("cell, style, reverse, kwargs", LOOPS, ids=LOOP_IDS)
def test_cell_loop_matches_eager_and_rolls_for_inference(cell, style, reverse, kwargs):
    module, make = _loop_case(cell, style, reverse, kwargs)
    with tf.no_grad():
        compiled = check_compiled(module, make)
    forward = [n.op for n in compiled_callable(compiled).entries[0].captured.forward.nodes]
    cell_op, layer_op, _ = CELLS[cell]
    assert forward.count(layer_op) == 1 and cell_op not in forward, forward
    assert "cat" not in forward, forward  # the stack of the steps' states is the layer's y


@pytest.mark.parametrize("cell, style, reverse, kwargs", LOOPS, ids=LOOP_IDS)
def test_cell_loop_with_gradients_matches_eager_and_rolls(cell, style, reverse, kwargs):
    module, make = _loop_case(cell, style, reverse, kwargs)
    compiled = check_compiled(module, make)
    captured = compiled_callable(compiled).entries[0].captured
    forward = [n.op for n in captured.forward.nodes]
    cell_op, layer_op, _ = CELLS[cell]
    assert "rnn_loop_rolling/cell_loop_to_layer" in captured.log.rules()
    assert forward.count(layer_op) == 1 and cell_op not in forward, forward


def test_cell_loop_without_initial_state_rolls_and_matches():
    module, make = _loop_case("GRUCell", "unbind", False, {}, hx=False)
    with tf.no_grad():
        compiled = check_compiled(module, make)
    assert [n.op for n in compiled_callable(compiled).entries[0].captured.forward.nodes].count("gru_layer") == 1


def test_outputs_and_states_of_a_compiled_lstm_are_fresh_tensors():
    """A compiled call returns new tensors each time (no const from the graph, no aliasing of the
    previous call's results), as eager calls do."""
    lstm = nn.LSTM(3, 4, dtype=tf.float64)
    compiled = tf.compile(lstm)
    x = tf.randn(2, 1, 3, dtype=tf.float64)
    with tf.no_grad():
        (y1, (h1, c1)), (y2, (h2, c2)) = compiled(x), compiled(x)
    assert all(a is not b for a, b in zip((y1, h1, c1), (y2, h2, c2)))
    y1.add_(1.0)
    with tf.no_grad():
        assert_tensors_close(tensors((y2, h2, c2)), tensors(lstm(x)))


def test_one_step_layer_returns_its_output_and_state_as_two_tensors():
    """With T = 1 the stack of h_n equals y; the compiled call still returns two tensors, each with
    its gradient path (the rolling pass must not merge two returned values)."""
    gru = nn.GRU(2, 3, bias=False, dtype=tf.float64)
    compiled = tf.compile(gru)
    x = tf.randn(1, 2, 2, dtype=tf.float64, requires_grad=True)
    y, h = compiled(x)
    assert y is not h
    np.testing.assert_array_equal(y.detach().numpy(), h.detach().numpy())
    (y.sum() + 2 * h.sum()).backward()
    expected = x.detach().requires_grad_()
    ey, eh = gru(expected)
    (ey.sum() + 2 * eh.sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), expected.grad.numpy(), **TIGHT)
