"""nn.RNN / nn.LSTM / nn.GRU and the cells against torch.nn: outputs, final states and every
gradient in float64, over padded, packed (sorted and unsorted) and unbatched inputs; construction,
parameters, repr, and errors by type and message."""
from __future__ import annotations

import itertools
import math
import re
import warnings

import numpy as np
import pytest
import torch

import tracefuse as tf
import tracefuse.nn as nn
from conftest import assert_same

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

TIGHT = dict(rtol=1e-7, atol=1e-9)
I, H, PROJ, T, B = 3, 5, 2, 5, 3


def make_modules(kind, *args, **kwargs):
    """The same layer in tracefuse and torch, torch's weights copied from ours by state_dict name."""
    ours = getattr(nn, kind)(*args, **kwargs)
    theirs_kwargs = dict(kwargs)
    if "dtype" in kwargs:
        theirs_kwargs["dtype"] = getattr(torch, kwargs["dtype"].name)
    theirs = getattr(torch.nn, kind)(*args, **theirs_kwargs)
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.detach().numpy(), copy=True))
                            for k, v in ours.state_dict().items()})
    return ours, theirs


def leaf_pair(array):
    """A float64 leaf requiring grad on each side, with the same values."""
    return tf.from_numpy(array.copy()).requires_grad_(), torch.from_numpy(array.copy()).requires_grad_()


def flatten(result):
    """The tensors of a module's result, in order (PackedSequence -> its data)."""
    out, hidden = result
    data = out.data if hasattr(out, "batch_sizes") else out
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def backward_both(ours, theirs, rng):
    """Backpropagate the same random linear function of all results on both sides."""
    weights = [rng.standard_normal(tuple(t.shape)) for t in theirs]
    sum(((o * tf.from_numpy(w)).sum() for o, w in zip(ours, weights)), tf.zeros((), dtype=tf.float64)).backward()
    sum((t * torch.from_numpy(w)).sum() for t, w in zip(theirs, weights)).backward()


def assert_grads(ours_module, theirs_module, leaves):
    for name, p in ours_module.named_parameters():
        assert_same(p.grad, theirs_module.get_parameter(name).grad, **TIGHT)
    for o, t in leaves:
        assert_same(o.grad, t.grad, **TIGHT)


# --- conformance over the configuration space ------------------------------------------------------
MODES = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
         "RNN_RELU": ("RNN", {"nonlinearity": "relu"})}
KINDS = ("padded", "packed_sorted", "packed_unsorted", "unbatched")


def _cases():
    """The full product of the factors, per mode (projection only for LSTM)."""
    factors = dict(num_layers=(1, 2), bias=(True, False), batch_first=(False, True), bidirectional=(False, True),
                   proj=(False, True), kind=KINDS, hx=(True, False), dropout=(False, True))
    cases = []
    for mode in MODES:
        levels = dict(factors, proj=factors["proj"] if mode == "LSTM" else (False,))
        for combo in itertools.product(*levels.values()):
            case = dict(zip(levels, combo))
            if case["dropout"] and case["num_layers"] == 1:
                continue  # dropout only acts between layers
            cases.append(pytest.param(mode, case, id=f"{mode}-" + "-".join(f"{k}={v}" for k, v in case.items())))
    return cases


@pytest.mark.parametrize("mode,case", _cases())
def test_matches_torch(mode, case, rng):
    kind, extra = MODES[mode]
    kwargs = dict(extra, num_layers=case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
                  bidirectional=case["bidirectional"], dtype=tf.float64)
    if case["proj"]:
        kwargs["proj_size"] = PROJ
    if case["dropout"]:
        kwargs["dropout"] = 0.5
    ours, theirs = make_modules(kind, I, H, **kwargs)
    ours.eval()
    theirs.eval()
    directions = 2 if case["bidirectional"] else 1
    unbatched = case["kind"] == "unbatched"
    x_shape = (T, I) if unbatched else (B, T, I) if case["batch_first"] else (T, B, I)
    x_ours, x_theirs = leaf_pair(rng.standard_normal(x_shape))
    leaves = [(x_ours, x_theirs)]
    hx_ours = hx_theirs = None
    if case["hx"]:
        batch = () if unbatched else (B,)
        sizes = [PROJ if case["proj"] else H] + ([H] if kind == "LSTM" else [])
        pairs = [leaf_pair(rng.standard_normal((case["num_layers"] * directions, *batch, s))) for s in sizes]
        leaves += pairs
        hx_ours, hx_theirs = ([p[i] for p in pairs] for i in (0, 1))
        hx_ours, hx_theirs = (tuple(h) if kind == "LSTM" else h[0] for h in (hx_ours, hx_theirs))
    input_ours, input_theirs = x_ours, x_theirs
    if case["kind"].startswith("packed"):
        lengths = [5, 3, 2] if case["kind"] == "packed_sorted" else [2, 5, 3]
        sorted_ = case["kind"] == "packed_sorted"
        input_ours = nn.utils.rnn.pack_padded_sequence(x_ours, lengths, case["batch_first"], enforce_sorted=sorted_)
        input_theirs = torch.nn.utils.rnn.pack_padded_sequence(x_theirs, lengths, case["batch_first"],
                                                              enforce_sorted=sorted_)
    result_ours, result_theirs = ours(input_ours, hx_ours), theirs(input_theirs, hx_theirs)
    if case["kind"].startswith("packed"):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert_same(getattr(result_ours[0], field), getattr(result_theirs[0], field))
    flat_ours, flat_theirs = flatten(result_ours), flatten(result_theirs)
    assert_same(flat_ours, flat_theirs, **TIGHT)
    backward_both(flat_ours, flat_theirs, rng)
    assert_grads(ours, theirs, leaves)


def test_float32_matches_torch_with_default_tolerances(rng):
    ours, theirs = make_modules("LSTM", I, H, num_layers=2, bidirectional=True)
    x_ours, x_theirs = (t.float() for t in leaf_pair(rng.standard_normal((T, B, I))))
    result_ours, result_theirs = ours(x_ours), theirs(x_theirs)
    assert_same(flatten(result_ours), flatten(result_theirs))


def test_training_mode_dropout_changes_outputs_only_when_p_positive(rng):
    x = tf.from_numpy(rng.standard_normal((T, B, I)))
    tf.manual_seed(0)
    for p, changes in ((0.5, True), (0.0, False)):
        model = nn.GRU(I, H, num_layers=2, dropout=p, dtype=tf.float64)
        model.eval()
        expected = model(x)[0].detach().numpy()
        model.train()
        assert (not np.allclose(model(x)[0].detach().numpy(), expected)) is changes


def test_zero_batch_matches_torch(rng):
    for kind in ("LSTM", "GRU", "RNN"):
        ours, theirs = make_modules(kind, I, H, num_layers=2, bidirectional=True, dtype=tf.float64)
        x_ours, x_theirs = leaf_pair(np.zeros((T, 0, I)))
        flat_ours, flat_theirs = flatten(ours(x_ours)), flatten(theirs(x_theirs))
        assert_same(flat_ours, flat_theirs)
        backward_both(flat_ours, flat_theirs, rng)
        assert_grads(ours, theirs, [(x_ours, x_theirs)])


# --- construction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,args,kwargs", [
    ("LSTM", (10, 20), {"num_layers": 2}),
    ("LSTM", (10, 20, 2, False, True, 0.5, True, 5), {}),
    ("LSTM", (4, 6), {"proj_size": 3, "bidirectional": True}),
    ("GRU", (4, 6), {"batch_first": True, "dropout": 0.25, "num_layers": 3}),
    ("RNN", (10, 20, 2, "relu", False), {}),
    ("RNN", (3, 4), {"nonlinearity": "tanh", "bidirectional": True}),
    ("LSTMCell", (10, 20), {"bias": False}),
    ("GRUCell", (3, 4), {}),
    ("RNNCell", (10, 20), {"bias": False, "nonlinearity": "relu"}),
    ("RNNCell", (10, 20), {"nonlinearity": "x"}),
])
def test_parameters_and_repr_match_torch(kind, args, kwargs):
    ours, theirs = getattr(nn, kind)(*args, **kwargs), getattr(torch.nn, kind)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    if hasattr(theirs, "_flat_weights_names"):
        assert ours._flat_weights_names == theirs._flat_weights_names
        assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
            [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
        assert all(a is b for a, b in zip(ours._flat_weights, ours.parameters()))


def test_init_is_uniform_in_plus_minus_one_over_sqrt_hidden():
    model = nn.LSTM(8, 16, num_layers=2, proj_size=4)
    bound = 1 / math.sqrt(16)
    values = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound
    assert abs(values.std() - bound / math.sqrt(3)) < 0.02  # the std of U(-b, b)
    cell = nn.GRUCell(3, 25)
    assert np.abs(cell.weight_hh.detach().numpy()).max() <= 0.2


def test_dtype_and_module_conversion():
    model = nn.GRU(I, H, dtype=tf.float64)
    assert all(p.dtype is tf.float64 for p in model.parameters())
    model.float()
    assert model._flat_weights[0].dtype is tf.float32
    out, h = model(tf.randn(T, B, I))
    assert out.dtype is tf.float32 and h.dtype is tf.float32


def test_dropout_with_one_layer_warns_like_torch():
    message = ("dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
               "num_layers greater than 1, but got dropout=0.5 and num_layers=1")
    with pytest.warns(UserWarning, match=re.escape(message)):
        nn.LSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match=re.escape(message)):
        torch.nn.LSTM(3, 4, dropout=0.5)


def assert_same_error(ours_fn, theirs_fn):
    """Both raise: the same exception type and message (torch. spelled tracefuse.)."""
    with pytest.raises(Exception) as expected:
        theirs_fn()
    message = str(expected.value).replace("torch.", "tracefuse.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(type(expected.value), match="^" + re.escape(message) + "$"):
            ours_fn()


@pytest.mark.parametrize("kind,args,kwargs", [
    ("RNN", (10, 20), {"nonlinearity": "x"}),
    ("RNN", (10, 20, 1, "sigmoid"), {}),
    ("RNN", (10, 20), {"proj_size": 3}),
    ("GRU", (10, 20), {"proj_size": 3}),
    ("GRU", (10, 20), {"dropout": 1.5}),
    ("GRU", (10, 20), {"dropout": -0.1}),
    ("GRU", (10, 20), {"dropout": True}),
    ("GRU", (10, 20), {"dropout": "a"}),
    ("GRU", (10, 0), {}),
    ("GRU", (10, 20, 0), {}),
    ("GRU", (0, 20), {}),
    ("GRU", (10.0, 20), {}),
    ("GRU", (10, 20.0), {}),
    ("GRU", (10, 20), {"bias": 1}),
    ("GRU", (10, 20), {"batch_first": 1}),
    ("LSTM", (10, 20), {"proj_size": -1}),
    ("LSTM", (10, 20), {"proj_size": 20}),
    ("LSTM", (10, 20), {"num_layers": -1}),
    ("LSTM", (10, 20), {"num_layers": 2.0}),
])
def test_constructor_errors_match_torch(kind, args, kwargs):
    assert_same_error(lambda: getattr(nn, kind)(*args, **kwargs), lambda: getattr(torch.nn, kind)(*args, **kwargs))


# --- forward errors: the same call on both sides ------------------------------------------------------
def _state(lib, lstm, shape, cell_shape=None, dtype=None):
    h = lib.zeros(*shape)
    if dtype is not None:
        h = h.to(dtype)
    return (h, lib.zeros(*(cell_shape or shape))) if lstm else h


def _pack(lib, x, lengths, **kw):
    return lib.nn.utils.rnn.pack_padded_sequence(x, lengths, **kw)


def _dtype(lib, name):
    return getattr(lib, name)


FORWARD_ERRORS = {
    "rank4": lambda lib, m, L: m(lib.randn(5, 3, 10, 1)),
    "rank1": lambda lib, m, L: m(lib.randn(5)),
    "input_size": lambda lib, m, L: m(lib.randn(5, 3, 7)),
    "input_size_batch_first": lambda lib, m, L: m(lib.randn(5, 3, 7)),
    "hidden_batch": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (2, 4, 20))),
    "hidden_layers": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (1, 3, 20))),
    "hidden_size": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (2, 3, 19))),
    "hidden_rank_batched": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (3, 20))),
    "hidden_rank_unbatched": lambda lib, m, L: m(lib.randn(5, 10), _state(lib, L, (2, 3, 20))),
    "hidden_unbatched_size": lambda lib, m, L: m(lib.randn(5, 10), _state(lib, L, (2, 19))),
    "input_dtype": lambda lib, m, L: m(lib.randn(5, 3, 10).double()),
    "input_int": lambda lib, m, L: m(lib.randn(5, 3, 10).long()),
    "zero_length": lambda lib, m, L: m(lib.randn(0, 3, 10)),
    "zero_length_unbatched": lambda lib, m, L: m(lib.randn(0, 10)),
    "packed_hidden_batch": lambda lib, m, L: m(_pack(lib, lib.randn(5, 3, 10), [5, 3, 2]),
                                              _state(lib, L, (2, 4, 20))),
    "packed_input_size": lambda lib, m, L: m(_pack(lib, lib.randn(5, 3, 7), [5, 3, 2])),
    "packed_dtype": lambda lib, m, L: m(_pack(lib, lib.randn(5, 3, 10), [5, 3, 2]).double()),
}
NOT_LSTM = {"hidden_dtype": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (2, 3, 20), dtype=lib.float64)),
            "hidden_long": lambda lib, m, L: m(lib.randn(5, 3, 10), _state(lib, L, (2, 3, 20), dtype=lib.int64))}
ONLY_LSTM = {
    "cell_size": lambda lib, m, L: m(lib.randn(5, 3, 10), (lib.zeros(2, 3, 20), lib.zeros(2, 3, 19))),
    "cell_rank": lambda lib, m, L: m(lib.randn(5, 3, 10), (lib.zeros(2, 3, 20), lib.zeros(2, 3))),
    "hidden_not_tuple": lambda lib, m, L: m(lib.randn(5, 3, 10), lib.zeros(2, 3, 20)),
    "packed_cell_batch": lambda lib, m, L: m(_pack(lib, lib.randn(5, 3, 10), [5, 3, 2]),
                                            (lib.zeros(2, 3, 20), lib.zeros(2, 2, 20))),
}


@pytest.mark.parametrize("kind,case", [(k, c) for k in ("LSTM", "GRU", "RNN") for c in FORWARD_ERRORS]
                         + [(k, c) for k in ("GRU", "RNN") for c in NOT_LSTM]
                         + [("LSTM", c) for c in ONLY_LSTM])
def test_forward_errors_match_torch(kind, case):
    fn = {**FORWARD_ERRORS, **NOT_LSTM, **ONLY_LSTM}[case]
    kwargs = {"batch_first": True} if case.endswith("batch_first") else {}
    ours, theirs = getattr(nn, kind)(10, 20, 2, **kwargs), getattr(torch.nn, kind)(10, 20, 2, **kwargs)
    lstm = kind == "LSTM"
    assert_same_error(lambda: fn(tf, ours, lstm), lambda: fn(torch, theirs, lstm))


def test_lstm_projection_hidden_dtype_error_matches_torch():
    ours, theirs = nn.LSTM(10, 20, proj_size=5), torch.nn.LSTM(10, 20, proj_size=5)
    assert_same_error(lambda: ours(tf.randn(5, 3, 10), (tf.zeros(1, 3, 5).double(), tf.zeros(1, 3, 20))),
                      lambda: theirs(torch.randn(5, 3, 10), (torch.zeros(1, 3, 5).double(), torch.zeros(1, 3, 20))))


# --- cells ----------------------------------------------------------------------------------------------
CELLS = {"LSTMCell": ("LSTMCell", {}), "GRUCell": ("GRUCell", {}), "RNNCell_tanh": ("RNNCell", {}),
         "RNNCell_relu": ("RNNCell", {"nonlinearity": "relu"})}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
def test_cell_matches_torch(cell, bias, batched, given_hx, rng):
    kind, extra = CELLS[cell]
    ours, theirs = make_modules(kind, I, H, bias=bias, dtype=tf.float64, **extra)
    batch = (B,) if batched else ()
    x_ours, x_theirs = leaf_pair(rng.standard_normal((*batch, I)))
    leaves = [(x_ours, x_theirs)]
    hx_ours = hx_theirs = None
    if given_hx:
        pairs = [leaf_pair(rng.standard_normal((*batch, H))) for _ in range(2 if kind == "LSTMCell" else 1)]
        leaves += pairs
        hx_ours, hx_theirs = (tuple(p[i] for p in pairs) for i in (0, 1))
        if kind != "LSTMCell":
            hx_ours, hx_theirs = hx_ours[0], hx_theirs[0]
    out_ours, out_theirs = ours(x_ours, hx_ours), theirs(x_theirs, hx_theirs)
    out_ours, out_theirs = (list(o) if isinstance(o, tuple) else [o] for o in (out_ours, out_theirs))
    assert_same(out_ours, out_theirs, **TIGHT)
    backward_both(out_ours, out_theirs, rng)
    assert_grads(ours, theirs, leaves)


def test_cell_zero_batch_matches_torch():
    for kind in ("LSTMCell", "GRUCell", "RNNCell"):
        ours, theirs = make_modules(kind, I, H, dtype=tf.float64)
        out_ours, out_theirs = ours(tf.zeros(0, I, dtype=tf.float64)), theirs(torch.zeros(0, I, dtype=torch.float64))
        assert_same(out_ours, out_theirs)


def _cell_state(lib, lstm, *shape, cell_shape=None):
    return (lib.zeros(*shape), lib.zeros(*(cell_shape or shape))) if lstm else lib.zeros(*shape)


CELL_ERRORS = {
    "input_rank3": lambda lib, m, L: m(lib.randn(3, 10, 1)),
    "hidden_rank3": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 3, 20, 1)),
    "input_size": lambda lib, m, L: m(lib.randn(3, 7)),
    "input_size_unbatched": lambda lib, m, L: m(lib.randn(7)),
    "hidden_batch": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 2, 20)),
    "hidden_size": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 3, 19)),
    "hidden_unbatched_vs_batched": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 20)),
    "hidden_batched_vs_unbatched": lambda lib, m, L: m(lib.randn(10), _cell_state(lib, L, 3, 20)),
    "input_dtype": lambda lib, m, L: m(lib.randn(3, 10).double()),
    "empty_input": lambda lib, m, L: m(lib.zeros(0)),
}
LSTM_CELL_ERRORS = {
    "cell_batch": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 3, 20, cell_shape=(2, 20))),
    "cell_size": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 3, 20, cell_shape=(3, 19))),
    "cell_rank": lambda lib, m, L: m(lib.randn(3, 10), _cell_state(lib, L, 3, 20, cell_shape=(3, 20, 1))),
    "h_dtype": lambda lib, m, L: m(lib.randn(3, 10), (lib.zeros(3, 20).double(), lib.zeros(3, 20))),
}


@pytest.mark.parametrize("kind,case", [(k, c) for k in ("LSTMCell", "GRUCell", "RNNCell") for c in CELL_ERRORS]
                         + [("LSTMCell", c) for c in LSTM_CELL_ERRORS]
                         + [("RNNCell_x", c) for c in ("input_rank3", "hidden_rank3", "input_size", "hidden_batch")])
def test_cell_errors_match_torch(kind, case):
    fn = {**CELL_ERRORS, **LSTM_CELL_ERRORS}[case]
    kwargs = {"nonlinearity": "x"} if kind == "RNNCell_x" else {}
    kind = kind.removesuffix("_x")
    ours, theirs = getattr(nn, kind)(10, 20, **kwargs), getattr(torch.nn, kind)(10, 20, **kwargs)
    lstm = kind == "LSTMCell"
    assert_same_error(lambda: fn(tf, ours, lstm), lambda: fn(torch, theirs, lstm))
