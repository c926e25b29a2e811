"""Packed variable-length sequences (as torch.nn.utils.rnn).

A PackedSequence stores the valid time steps of a batch sorted by decreasing length, time-major:
`data[offset(t) + b]` is step t of (sorted) sequence b, and `batch_sizes[t]` counts the sequences
still running at step t. Packing and padding are written as one `index_select` over the rows
(plus a padding row), so gradients flow through them like through any other op.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from ... import dtypes
from ...creation import arange, as_tensor, empty, tensor
from ...functions import cat
from ...tensor import Tensor, broadcast_shapes

__all__ = [
    "PackedSequence",
    "invert_permutation",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "unpad_sequence",
    "pack_sequence",
    "unpack_sequence",
]

# PyTorch's ScalarType names, which its kernel error messages print.
_SCALAR_NAMES = {"float16": "Half", "bfloat16": "BFloat16", "float32": "Float", "float64": "Double",
                 "uint8": "Byte", "int8": "Char", "int16": "Short", "int32": "Int", "int64": "Long",
                 "bool": "Bool"}


def _scalar_name(d):
    return _SCALAR_NAMES[d.name]


class PackedSequence_(NamedTuple):
    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


class PackedSequence(PackedSequence_):
    """Holds the data and `batch_sizes` of a packed batch (made by pack_padded_sequence & co.).

    `sorted_indices[i]` is the original batch position of sorted sequence i; `unsorted_indices`
    is its inverse. Both are None when the batch was packed already sorted."""

    __slots__ = ()

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        if batch_sizes is None:
            if not (isinstance(data, (list, tuple)) and len(data) == 2):
                raise AssertionError("Expected data to be a list or tuple of length 2")
            data, batch_sizes = data
        elif batch_sizes.device.type != "cpu":
            raise ValueError(
                "batch_sizes should always be on CPU. Instances of PackedSequence should never be created "
                "manually. They should be instantiated by functions like pack_sequence and "
                "pack_padded_sequences in nn.utils.rnn. "
                "https://pytorch.org/docs/stable/nn.html#torch.nn.utils.rnn.pack_sequence")
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def _with_data(self, data):
        """A copy holding `data` (self if unchanged); the index tensors follow data's device."""
        if data is self.data:
            return self

        def move(t):
            return None if t is None else t.to(data.device)
        return type(self)(data, self.batch_sizes, move(self.sorted_indices), move(self.unsorted_indices))

    def to(self, *args, **kwargs):
        """Tensor.to on `data`; returns self when nothing changes."""
        return self._with_data(self.data.to(*args, **kwargs))

    def cuda(self, device=None, non_blocking=False):
        return self._with_data(self.data.cuda(device))

    def cpu(self):
        return self._with_data(self.data.cpu())

    def double(self):
        return self.to(dtype=dtypes.float64)

    def float(self):
        return self.to(dtype=dtypes.float32)

    def half(self):
        return self.to(dtype=dtypes.float16)

    def long(self):
        return self.to(dtype=dtypes.int64)

    def int(self):
        return self.to(dtype=dtypes.int32)

    def short(self):
        return self.to(dtype=dtypes.int16)

    def char(self):
        return self.to(dtype=dtypes.int8)

    def byte(self):
        return self.to(dtype=dtypes.uint8)

    @property
    def is_cuda(self):
        return self.data.is_cuda


def invert_permutation(permutation):
    """The inverse of a 1-D permutation tensor (None stays None)."""
    if permutation is None:
        return None
    n = permutation.numel()
    positions = arange(n, dtype=permutation.dtype, device=permutation.device)
    return empty(n, dtype=permutation.dtype, device=permutation.device).scatter(0, permutation, positions)


def _lengths_of(batch_sizes):
    """Per sorted sequence, how many steps it runs (the inverse of batch sizes)."""
    sizes = np.asarray(batch_sizes.tolist(), dtype=np.int64)
    return [int((sizes > b).sum()) for b in range(int(sizes[0]) if sizes.size else 0)]


def _check_long_tensor(t):
    if t.ndim != 1 or t.device.type != "cpu" or t.dtype is not dtypes.int64:
        raise RuntimeError(f"'lengths' argument should be a 1D CPU int64 tensor, but got {t.ndim}D "
                           f"{t.device.type} {_scalar_name(t.dtype)} tensor")


def _pack_padded(input, lengths, batch_first):
    """(data, batch_sizes) from a padded batch sorted by decreasing length, with PyTorch's checks."""
    if input.numel() == 0:
        raise RuntimeError("Cannot pack empty tensors.")
    batch_dim, time_dim = (0, 1) if batch_first else (1, 0)
    batch, steps = input.size(batch_dim), input.size(time_dim)
    _check_long_tensor(lengths)
    if lengths.size(0) != batch:
        raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got {lengths.size(0)} "
                           f"(batch_size={batch})")
    lens = lengths.tolist()
    if lens[-1] <= 0:
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element in "
                           "'lengths' that is <= 0")
    if any(a < b for a, b in zip(lens, lens[1:])):
        raise RuntimeError(
            "`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. You can pass "
            "`enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to sidestep this requirement "
            "if you do not need ONNX exportability.")
    batch_sizes = [sum(1 for n in lens if n > t) for t in range(min(lens[0], steps))]
    return _pack_rows(input, batch_sizes, batch_first), tensor(batch_sizes, dtype=dtypes.int64)


def _pack_rows(padded, batch_sizes, batch_first=False):
    """The packed data of a padded batch (sorted order) whose step t runs `batch_sizes[t]` sequences."""
    batch_dim, time_dim = (0, 1) if batch_first else (1, 0)
    batch, steps = padded.size(batch_dim), padded.size(time_dim)
    # Row (t, b) of the padded batch flattened over its first two dims.
    rows = [b * steps + t if batch_first else t * batch + b for t, n in enumerate(batch_sizes) for b in range(n)]
    flat = padded.reshape(batch * steps, *padded.shape[2:])
    return flat.index_select(0, tensor(rows, dtype=dtypes.int64, device=padded.device))


def _pad_packed(data, batch_sizes, batch_first, padding_value, total_length):
    """(padded [T,B,*] or [B,T,*], lengths) in sorted order: every padded cell gathers its packed row,
    or a trailing padding row."""
    sizes = batch_sizes.tolist()
    lengths = _lengths_of(batch_sizes)
    batch = len(lengths)
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    pad_row = len(data)

    def row(t, b):
        return starts[t] + b if t < len(sizes) and b < sizes[t] else pad_row
    cells = ([(t, b) for b in range(batch) for t in range(total_length)] if batch_first
             else [(t, b) for t in range(total_length) for b in range(batch)])
    padding = data.new_full((1, *data.shape[1:]), padding_value)
    source = cat([data, padding])
    index = tensor([row(t, b) for t, b in cells], dtype=dtypes.int64, device=data.device)
    shape = (batch, total_length) if batch_first else (total_length, batch)
    padded = source.index_select(0, index).reshape(*shape, *data.shape[1:])
    return padded, tensor(lengths, dtype=dtypes.int64)


def _sort_by_length(lengths):
    """(lengths sorted decreasingly, sorted_indices), stable like PyTorch's CPU sort."""
    order = np.argsort(-np.asarray(lengths.tolist(), dtype=np.int64).reshape(-1), kind="stable")
    indices = tensor(order.tolist(), dtype=dtypes.int64)
    return lengths.reshape(-1).index_select(0, indices), indices


def pack_padded_sequence(input, lengths, batch_first=False, enforce_sorted=True):
    """Pack a padded batch ([T,B,*], or [B,T,*] with batch_first) of sequences of `lengths`.

    With enforce_sorted=False the batch is sorted by decreasing length first and the
    PackedSequence remembers the permutation."""
    if isinstance(lengths, Tensor):
        lengths = lengths.to(dtypes.int64)
    else:
        lengths = as_tensor(lengths, dtype=dtypes.int64, device="cpu")
    sorted_indices = None
    if not enforce_sorted:
        lengths, sorted_indices = _sort_by_length(lengths)
        sorted_indices = sorted_indices.to(input.device)
        input = input.index_select(0 if batch_first else 1, sorted_indices)
    data, batch_sizes = _pack_padded(input, lengths, batch_first)
    return PackedSequence(data, batch_sizes, sorted_indices, None)


def pad_packed_sequence(sequence, batch_first=False, padding_value=0.0, total_length=None):
    """Inverse of pack_padded_sequence: (padded batch in the original order, lengths)."""
    max_seq_length = sequence.batch_sizes.size(0)
    if total_length is not None:
        if total_length < max_seq_length:
            raise ValueError(
                "Expected total_length to be at least the length of the longest sequence in input, but got "
                f"total_length={total_length} and max sequence length being {max_seq_length}")
        max_seq_length = total_length
    padded, lengths = _pad_packed(sequence.data, sequence.batch_sizes, batch_first, padding_value,
                                  max_seq_length)
    unsorted = sequence.unsorted_indices
    if unsorted is not None:
        padded = padded.index_select(0 if batch_first else 1, unsorted)
        lengths = lengths.index_select(0, unsorted.cpu())
    return padded, lengths


def pad_sequence(sequences, batch_first=False, padding_value=0.0, padding_side="right"):
    """Stack sequences of shape [L_i, *] into [T, B, *] (or [B, T, *]), padding with `padding_value`.

    The result has the first sequence's dtype and trailing shape."""
    if not isinstance(sequences, Iterable):
        raise RuntimeError("pad_sequence: Expected iterable for input sequences, but got arg of type: "
                           f"{type(sequences)}")
    sequences = tuple(sequences)
    for i, s in enumerate(sequences):
        if not isinstance(s, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 0, but got {type(s).__name__}")
    if not sequences:
        raise RuntimeError("received an empty list of sequences")
    if padding_side not in ("left", "right"):
        raise RuntimeError(f"Expected padding_side to be one of left or right, but got {padding_side}.")
    first = sequences[0]
    trailing = tuple(first.shape[1:])
    max_len = max(s.size(0) for s in sequences)
    parts, starts, offset = [], [], 0
    for s in sequences:
        target = (s.size(0), *trailing)
        broadcast_shapes(target, s.shape)  # PyTorch copies each sequence in: same broadcasting error
        parts.append(s.to(first.dtype).expand(*target) if tuple(s.shape) != target else s.to(first.dtype))
        starts.append(offset)
        offset += s.size(0)
    pad_row = offset
    parts.append(first.new_full((1, *trailing), padding_value))

    def row(t, i):
        shift = max_len - sequences[i].size(0) if padding_side == "left" else 0
        k = t - shift
        return starts[i] + k if 0 <= k < sequences[i].size(0) else pad_row
    batch = len(sequences)
    cells = ([(t, i) for i in range(batch) for t in range(max_len)] if batch_first
             else [(t, i) for t in range(max_len) for i in range(batch)])
    index = tensor([row(t, i) for t, i in cells], dtype=dtypes.int64, device=first.device)
    shape = (batch, max_len) if batch_first else (max_len, batch)
    return cat(parts).index_select(0, index).reshape(*shape, *trailing)


def unpad_sequence(padded_sequences, lengths, batch_first=False):
    """Split a padded batch back into a list of sequences of the given lengths."""
    batch_dim = 0 if batch_first else 1
    return [padded_sequences.select(batch_dim, i)[:int(n)]
            for i, n in enumerate(lengths.tolist() if isinstance(lengths, Tensor) else lengths)]


def pack_sequence(sequences, enforce_sorted=True):
    """Pack a list of sequences of shape [L_i, *] (pad_sequence then pack_padded_sequence)."""
    lengths = as_tensor([v.size(0) for v in sequences], dtype=dtypes.int64)
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences):
    """The list of sequences a PackedSequence holds, in their original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
