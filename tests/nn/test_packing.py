"""tracefuse.nn.utils.rnn against torch.nn.utils.rnn: pack/pad round trips, the sorted and
unsorted indices, gradients through packing and padding, PackedSequence's methods, errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.utils.rnn as trnn

import tracefuse as tf
import tracefuse.nn.utils.rnn as rnn
from conftest import assert_same

TIGHT = dict(rtol=0, atol=0)


def leaf_pair(array):
    return tf.from_numpy(array.copy()).requires_grad_(), torch.from_numpy(array.copy()).requires_grad_()


def backward_both(ours, theirs, rng):
    """Backpropagate the same random linear function of the results on both sides."""
    w = rng.standard_normal(tuple(theirs.shape))
    (ours * tf.from_numpy(w)).sum().backward()
    (theirs * torch.from_numpy(w)).sum().backward()


def assert_packed_same(ours, theirs):
    assert isinstance(ours, rnn.PackedSequence)
    for field in rnn.PackedSequence._fields:
        assert_same(getattr(ours, field), getattr(theirs, field), **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths,enforce_sorted", [([4, 3, 3, 1], True), ([2, 4, 1, 4], False),
                                                    ([3, 3, 3, 3], False), ([1, 2, 2, 1], False)])
@pytest.mark.parametrize("trailing", [(), (2,), (2, 3)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_pack_padded_and_pad_packed_match_torch(batch_first, lengths, enforce_sorted, trailing, as_tensor, rng):
    steps, batch = 5, len(lengths)
    shape = (batch, steps, *trailing) if batch_first else (steps, batch, *trailing)
    x_ours, x_theirs = leaf_pair(rng.standard_normal(shape))
    lengths_ours = tf.tensor(lengths) if as_tensor else lengths
    lengths_theirs = torch.tensor(lengths) if as_tensor else lengths
    packed_ours = rnn.pack_padded_sequence(x_ours, lengths_ours, batch_first, enforce_sorted)
    packed_theirs = trnn.pack_padded_sequence(x_theirs, lengths_theirs, batch_first, enforce_sorted)
    assert_packed_same(packed_ours, packed_theirs)
    padded_ours, lens_ours = rnn.pad_packed_sequence(packed_ours, batch_first, padding_value=-2.5, total_length=6)
    padded_theirs, lens_theirs = trnn.pad_packed_sequence(packed_theirs, batch_first, padding_value=-2.5,
                                                          total_length=6)
    assert_same(padded_ours, padded_theirs, **TIGHT)
    assert_same(lens_ours, lens_theirs, **TIGHT)
    backward_both(padded_ours, padded_theirs, rng)
    assert_same(x_ours.grad, x_theirs.grad, **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
def test_pad_packed_defaults_and_gradient_wrt_packed_data(batch_first, rng):
    x = rng.standard_normal((4, 3, 2))
    packed_ours = rnn.pack_padded_sequence(tf.from_numpy(x), [2, 4, 3], enforce_sorted=False)
    packed_theirs = trnn.pack_padded_sequence(torch.from_numpy(x), [2, 4, 3], enforce_sorted=False)
    data_ours, data_theirs = leaf_pair(packed_ours.data.numpy())
    padded_ours, lens_ours = rnn.pad_packed_sequence(packed_ours._replace(data=data_ours), batch_first)
    padded_theirs, lens_theirs = trnn.pad_packed_sequence(packed_theirs._replace(data=data_theirs), batch_first)
    assert_same(padded_ours, padded_theirs, **TIGHT)
    assert_same(lens_ours, lens_theirs, **TIGHT)
    backward_both(padded_ours, padded_theirs, rng)
    assert_same(data_ours.grad, data_theirs.grad, **TIGHT)


def test_integer_data_and_padding_value_cast_like_torch():
    seq = [[1, 2, 0], [3, 0, 0], [4, 5, 6]]
    packed_ours = rnn.pack_padded_sequence(tf.tensor(seq), [2, 1, 3], batch_first=True, enforce_sorted=False)
    packed_theirs = trnn.pack_padded_sequence(torch.tensor(seq), [2, 1, 3], batch_first=True, enforce_sorted=False)
    assert_packed_same(packed_ours, packed_theirs)
    assert_same(rnn.pad_packed_sequence(packed_ours, True, padding_value=7.9)[0],
                trnn.pad_packed_sequence(packed_theirs, True, padding_value=7.9)[0], **TIGHT)


@pytest.mark.parametrize("lengths", [torch.tensor([3.0, 2.0]), torch.tensor([3, 2], dtype=torch.int32),
                                     [3.7, 2.2], (3, 2)])
def test_lengths_of_other_types_are_cast_to_int64(lengths):
    x = np.arange(8.0).reshape(4, 2)
    ours_lengths = tf.from_numpy(lengths.numpy()) if isinstance(lengths, torch.Tensor) else lengths
    assert_packed_same(rnn.pack_padded_sequence(tf.from_numpy(x), ours_lengths),
                       trnn.pack_padded_sequence(torch.from_numpy(x), lengths))


@pytest.mark.parametrize("enforce_sorted,lengths", [(True, [4, 2, 1]), (False, [1, 4, 2]), (False, [2, 2, 3])])
def test_pack_sequence_and_unpack_sequence_match_torch(enforce_sorted, lengths, rng):
    pairs = [leaf_pair(rng.standard_normal((n, 2))) for n in lengths]
    packed_ours = rnn.pack_sequence([p[0] for p in pairs], enforce_sorted)
    packed_theirs = trnn.pack_sequence([p[1] for p in pairs], enforce_sorted)
    assert_packed_same(packed_ours, packed_theirs)
    unpacked_ours, unpacked_theirs = rnn.unpack_sequence(packed_ours), trnn.unpack_sequence(packed_theirs)
    assert_same(unpacked_ours, unpacked_theirs, **TIGHT)
    backward_both(tf.cat(unpacked_ours), torch.cat(unpacked_theirs), rng)
    for o, t in pairs:
        assert_same(o.grad, t.grad, **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("trailing", [(), (3,)])
def test_pad_sequence_matches_torch(batch_first, padding_side, trailing, rng):
    pairs = [leaf_pair(rng.standard_normal((n, *trailing))) for n in (2, 4, 1)]
    ours = rnn.pad_sequence([p[0] for p in pairs], batch_first, 1.5, padding_side)
    theirs = trnn.pad_sequence([p[1] for p in pairs], batch_first, 1.5, padding_side)
    assert_same(ours, theirs, **TIGHT)
    backward_both(ours, theirs, rng)
    for o, t in pairs:
        assert_same(o.grad, t.grad, **TIGHT)


def test_pad_sequence_takes_the_first_dtype_and_broadcasts_like_torch():
    seqs = [np.arange(3.0).reshape(3, 1), np.ones((2, 1))]
    ours = rnn.pad_sequence([tf.from_numpy(seqs[0]).float(), tf.from_numpy(seqs[1])])
    theirs = trnn.pad_sequence([torch.from_numpy(seqs[0]).float(), torch.from_numpy(seqs[1])])
    assert_same(ours, theirs, **TIGHT)
    broadcast = [np.ones((2, 3)), np.full((1, 1), 4.0)]
    assert_same(rnn.pad_sequence([tf.from_numpy(a) for a in broadcast]),
                trnn.pad_sequence([torch.from_numpy(a) for a in broadcast]), **TIGHT)
    rows = np.arange(6).reshape(2, 3)  # a tensor is iterated along its first dim
    assert_same(rnn.pad_sequence(tf.from_numpy(rows)), trnn.pad_sequence(torch.from_numpy(rows)), **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unpad_sequence_matches_torch(batch_first, rng):
    x = rng.standard_normal((3, 4, 2))
    ours = rnn.unpad_sequence(tf.from_numpy(x), tf.tensor([4, 1, 3]) if batch_first else tf.tensor([3, 2, 1, 3]),
                              batch_first)
    theirs = trnn.unpad_sequence(torch.from_numpy(x.copy()),
                                 torch.tensor([4, 1, 3]) if batch_first else torch.tensor([3, 2, 1, 3]), batch_first)
    assert_same(ours, theirs, **TIGHT)


def test_invert_permutation():
    perm = [2, 0, 3, 1]
    assert_same(rnn.invert_permutation(tf.tensor(perm)), trnn.invert_permutation(torch.tensor(perm)))
    assert rnn.invert_permutation(None) is None


# --- PackedSequence ------------------------------------------------------------------------------------
def _unsorted_pack(lib_rnn, x):
    return lib_rnn.pack_padded_sequence(x, [1, 3, 2], enforce_sorted=False)


def test_packed_sequence_is_a_named_tuple_like_torch():
    x = np.arange(9.0).reshape(3, 3)
    ours, theirs = _unsorted_pack(rnn, tf.from_numpy(x)), _unsorted_pack(trnn, torch.from_numpy(x))
    data, batch_sizes, sorted_indices, unsorted_indices = ours
    assert data is ours.data and batch_sizes is ours.batch_sizes
    assert sorted_indices is ours.sorted_indices and unsorted_indices is ours.unsorted_indices
    assert isinstance(ours, tuple) and ours._fields == theirs._fields
    assert repr(ours) == repr(theirs).replace("torch.", "tracefuse.")
    rebuilt = rnn.PackedSequence((ours.data, ours.batch_sizes))
    assert rebuilt.data is ours.data and rebuilt.sorted_indices is None and rebuilt.unsorted_indices is None
    inverted = rnn.PackedSequence(ours.data, ours.batch_sizes, ours.sorted_indices)
    assert_same(inverted.unsorted_indices, theirs.unsorted_indices)


@pytest.mark.parametrize("method,args", [("to", (tf.float64,)), ("to", (tf.float32,)), ("double", ()),
                                         ("float", ()), ("half", ()), ("long", ()), ("int", ()), ("short", ()),
                                         ("char", ()), ("byte", ()), ("cpu", ()), ("to", ("cpu",))])
def test_packed_sequence_conversions_match_torch(method, args):
    x = np.arange(9.0).reshape(3, 3).astype(np.float32)
    ours, theirs = _unsorted_pack(rnn, tf.from_numpy(x)), _unsorted_pack(trnn, torch.from_numpy(x))
    theirs_args = tuple(getattr(torch, a.name) if isinstance(a, tf.dtype) else a for a in args)
    converted_ours, converted_theirs = getattr(ours, method)(*args), getattr(theirs, method)(*theirs_args)
    assert type(converted_ours) is rnn.PackedSequence
    assert_packed_same(converted_ours, converted_theirs)
    assert (converted_ours is ours) == (converted_theirs is theirs)
    assert converted_ours.is_cuda is False


def test_packed_sequence_cuda_raises_without_a_gpu():
    packed = rnn.pack_sequence([tf.ones(2), tf.ones(1)])
    with pytest.raises(RuntimeError):
        packed.cuda()


# --- errors ---------------------------------------------------------------------------------------------
def assert_same_error(ours_fn, theirs_fn):
    with pytest.raises(Exception) as expected:
        theirs_fn()
    message = str(expected.value).replace("torch.", "tracefuse.")
    with pytest.raises(type(expected.value), match="^" + re.escape(message) + "$"):
        ours_fn()


ERRORS = {
    "unsorted": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [4, 2, 3]),
    "zero_length": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [4, 2, 0]),
    "zero_length_unsorted": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [0, 2, 4],
                                                                   enforce_sorted=False),
    "zero_first_sorted": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [0, 2, 4]),
    "negative_length": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [4, 2, -1]),
    "too_few_lengths": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), [4, 2]),
    "too_many_lengths_batch_first": lambda r, lib: r.pack_padded_sequence(lib.zeros(3, 4, 2), [4, 2, 1, 1],
                                                                          batch_first=True),
    "lengths_2d": lambda r, lib: r.pack_padded_sequence(lib.zeros(4, 3, 2), lib.tensor([[4, 2, 1]])),
    "empty_input": lambda r, lib: r.pack_padded_sequence(lib.zeros(0, 3), [4, 2, 1]),
    "total_length": lambda r, lib: r.pad_packed_sequence(r.pack_sequence([lib.ones(4), lib.ones(1)]),
                                                         total_length=2),
    "pack_sequence_unsorted": lambda r, lib: r.pack_sequence([lib.ones(2), lib.ones(3)]),
    "pack_sequence_empty": lambda r, lib: r.pack_sequence([]),
    "pack_sequence_empty_sequence": lambda r, lib: r.pack_sequence([lib.zeros(0, 2)]),
    "pad_sequence_empty": lambda r, lib: r.pad_sequence([]),
    "pad_sequence_side": lambda r, lib: r.pad_sequence([lib.ones(2), lib.ones(3)], padding_side="up"),
    "pad_sequence_not_iterable": lambda r, lib: r.pad_sequence(5),
    "pad_sequence_not_tensor": lambda r, lib: r.pad_sequence([lib.ones(2, 3), 5]),
    "pad_sequence_trailing": lambda r, lib: r.pad_sequence([lib.ones(2, 3), lib.ones(3, 2)]),
    "packed_sequence_bad_data": lambda r, lib: r.PackedSequence(lib.ones(3)),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_match_torch(case):
    fn = ERRORS[case]
    assert_same_error(lambda: fn(rnn, tf), lambda: fn(trnn, torch))
