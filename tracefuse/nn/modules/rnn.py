"""Recurrent layers (as torch.nn.modules.rnn): RNN, LSTM, GRU and their one-step cells.

A layer module runs one `lstm_layer` / `gru_layer` / `rnn_layer` op per layer and direction over
the whole sequence. A packed batch is padded in its sorted order and masked by its lengths (the
ops keep a finished sequence's state and write zeros past its end), then packed again with the
same batch sizes and indices: shapes never change step by step, so the ops stay fusable.
Argument checks and their messages follow PyTorch's, including those its kernels raise.
"""
from __future__ import annotations

import math
import numbers
import warnings

from ...autograd import no_grad
from ...creation import empty, zeros
from ...dispatch import dispatch
from ...functions import cat, stack
from .. import functional as F
from ..parameter import Parameter
from ..utils.rnn import PackedSequence, _pack_rows, _pad_packed, _scalar_name
from .module import Module

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]

# mode -> (gates per hidden unit, the name PyTorch's messages print, the layer op, its extra attrs)
_MODES = {
    "LSTM": (4, "LSTM", "lstm_layer", {}),
    "GRU": (3, "GRU", "gru_layer", {}),
    "RNN_TANH": (1, "RNN", "rnn_layer", {"nonlinearity": "tanh"}),
    "RNN_RELU": (1, "RNN", "rnn_layer", {"nonlinearity": "relu"}),
}


def _check_matmul_dtype(operand, weight):
    """The dtype error PyTorch's kernels raise when an input or state meets the weights."""
    if operand.dtype is not weight.dtype:
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_scalar_name(operand.dtype)} "
                           f"and {_scalar_name(weight.dtype)}")


def _uniform_init(module, hidden_size):
    """PyTorch's recurrent init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    stdv = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0
    with no_grad():
        for weight in module.parameters():
            weight.uniform_(-stdv, stdv)


class RNNBase(Module):
    """What RNN, LSTM and GRU share: parameters per layer and direction, checks, the layer loop.

    The hidden state is a tensor for RNN/GRU and an (h, c) pair for LSTM; `_states` and
    `_hidden` convert it to and from a tuple so the loop is written once."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__()
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self._check_config(dropout)
        if mode not in _MODES:
            raise ValueError("Unrecognized RNN mode: " + mode)
        gate_size = _MODES[mode][0] * hidden_size
        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
            for direction in range(num_directions):
                shapes = {"weight_ih": (gate_size, layer_input_size), "weight_hh": (gate_size, real_hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, Parameter(empty(shape, dtype=dtype, device=device)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def _check_config(self, dropout):
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          "expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={self.num_layers}", stacklevel=4)
        for name in ("bias", "batch_first"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} should be of type bool, got: {type(getattr(self, name)).__name__}")
        for name in ("input_size", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if self.num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if self.proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if self.proj_size >= self.hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self):
        """A no-op kept for PyTorch compatibility: the weights are never packed into one buffer."""

    def reset_parameters(self):
        _uniform_init(self, self.hidden_size)

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # --- checks (PyTorch's names and messages) -----------------------------------------------------
    def check_input(self, input, batch_sizes):
        weight = self._flat_weights[0]
        if input.dtype is not weight.dtype:
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                             f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError("input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {input.size(-1)}")

    def _mini_batch(self, input, batch_sizes):
        if batch_sizes is not None:
            return int(batch_sizes[0])
        return input.size(0) if self.batch_first else input.size(1)

    def get_expected_hidden_size(self, input, batch_sizes):
        num_directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (self.num_layers * num_directions, self._mini_batch(input, batch_sizes), size)

    def check_hidden_size(self, hx, expected_hidden_size, msg="Expected hidden size {}, got {}"):
        if tuple(hx.size()) != tuple(expected_hidden_size):
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input, hidden, batch_sizes):
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def _check_packed_args(self, data, hx, batch_sizes):
        self.check_forward_args(data, hx, batch_sizes)

    def _check_hidden_rank(self, hx, batched):
        rank = 3 if batched else 2
        if hx.dim() != rank:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx should also be {rank}-D but got {hx.dim()}-D tensor")

    # --- the hidden state as a tuple of tensors ----------------------------------------------------
    def _states(self, hx):
        return (hx,)

    def _hidden(self, states):
        return states[0]

    def _state_sizes(self):
        return (self.hidden_size,)

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        return self._hidden([s.index_select(1, permutation) for s in self._states(hx)])

    def _zero_hidden(self, input, batch):
        num_directions = 2 if self.bidirectional else 1
        return self._hidden([zeros(self.num_layers * num_directions, batch, size, dtype=input.dtype,
                                   device=input.device) for size in self._state_sizes()])

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = self._zero_hidden(data, int(batch_sizes[0]))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            self._check_packed_args(data, hx, batch_sizes)
            padded, lengths = _pad_packed(data, batch_sizes, False, 0.0, batch_sizes.size(0))
            output, hidden = self._run(padded, hx, lengths.to(padded.device))
            packed = PackedSequence(_pack_rows(output, batch_sizes.tolist()), batch_sizes, sorted_indices,
                                    unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if input.dim() not in (2, 3):
            name = _MODES[self.mode][1]
            kind = " tensor" if name == "RNN" else ""
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{kind} instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            hx = self._zero_hidden(input, input.size(batch_dim))
        else:
            self._check_hidden_rank(hx, batched)
            if not batched:
                hx = self._hidden([s.unsqueeze(1) for s in self._states(hx)])
        self.check_forward_args(input, hx, None)
        output, hidden = self._run(input.transpose(0, 1) if self.batch_first else input, hx, None)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(batch_dim)
            hidden = self._hidden([s.squeeze(1) for s in self._states(hidden)])
        return output, hidden

    def _run(self, x, hx, lengths):
        """All layers over a time-major batch x [T, B, I]; returns (output, hidden)."""
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        states = self._states(hx)
        for s in states:
            _check_matmul_dtype(s, self._flat_weights[0])
        num_directions = 2 if self.bidirectional else 1
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                y, *last = self._layer(x, [s[k] for s in states], k, lengths, reverse=direction == 1)
                outputs.append(y)
                finals.append(last)
            x = outputs[0] if num_directions == 1 else cat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, p=self.dropout, training=True)
        return x, self._hidden([stack([f[i] for f in finals]) for i in range(len(states))])

    def _layer(self, x, states, k, lengths, reverse):
        """One layer and direction (index k of all_weights): (y, *final states)."""
        weights = self.all_weights[k]
        w_ih, w_hh = weights[:2]
        b_ih, b_hh = weights[2:4] if self.bias else (None, None)
        proj = (weights[-1] if self.proj_size > 0 else None,) if self.mode == "LSTM" else ()
        _, _, op, attrs = _MODES[self.mode]
        y, *rest = dispatch(op, x, *states, w_ih, w_hh, b_ih, b_hh, *proj, lengths, reverse=reverse,
                            has_bias=self.bias, has_proj=self.proj_size > 0, has_lengths=lengths is not None, **attrs)
        return (y, *rest[:-1])  # the last output is the op's workspace


def _reject_proj_size(kwargs):
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class RNN(RNNBase):
    """RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None): an Elman RNN, tanh or ReLU."""

    def __init__(self, *args, **kwargs):
        _reject_proj_size(kwargs)
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)


class LSTM(RNNBase):
    """LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None); hidden state (h, c)."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def _states(self, hx):
        return (hx[0], hx[1])

    def _hidden(self, states):
        return tuple(states)

    def _state_sizes(self):
        return (self.proj_size if self.proj_size > 0 else self.hidden_size, self.hidden_size)

    def get_expected_cell_size(self, input, batch_sizes):
        num_directions = 2 if self.bidirectional else 1
        return (self.num_layers * num_directions, self._mini_batch(input, batch_sizes), self.hidden_size)

    def check_forward_args(self, input, hidden, batch_sizes):
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def _check_packed_args(self, data, hx, batch_sizes):
        # PyTorch's LSTM hands packed batches to its kernel unchecked; these are the kernel's errors.
        weight = self._flat_weights[0]
        _check_matmul_dtype(data, weight)
        if data.dim() == 2 and data.size(1) != self.input_size:
            raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({data.size(0)}x{data.size(1)} and "
                               f"{self.input_size}x{weight.size(0)})")
        batch = int(batch_sizes[0])
        h, c = hx
        if h.dim() == 3 and c.dim() == 3:
            for a, b in ((h.size(1), batch), (batch, c.size(1))):
                if a != b:
                    raise RuntimeError(f"The size of tensor a ({a}) must match the size of tensor b ({b}) at "
                                       "non-singleton dimension 0")
        self.check_forward_args(data, hx, batch_sizes)

    def _check_hidden_rank(self, hx, batched):
        rank = 3 if batched else 2
        h, c = hx[0], hx[1]
        if h.dim() != rank or c.dim() != rank:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {rank}-D but got "
                               f"({h.dim()}-D, {c.dim()}-D) tensors")


class GRU(RNNBase):
    """GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None)."""

    def __init__(self, *args, **kwargs):
        _reject_proj_size(kwargs)
        super().__init__("GRU", *args, **kwargs)


class RNNCellBase(Module):
    """One recurrent step: weight_ih [chunks*H, I], weight_hh [chunks*H, H], optional biases."""

    _op = None  # the cell op: lstm_cell, gru_cell or rnn_cell
    _name = None  # the class name PyTorch's messages print
    _num_states = 1

    def __init__(self, input_size, hidden_size, bias, num_chunks, device=None, dtype=None):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = Parameter(empty((num_chunks * hidden_size, input_size), dtype=dtype, device=device))
        self.weight_hh = Parameter(empty((num_chunks * hidden_size, hidden_size), dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(empty(num_chunks * hidden_size, dtype=dtype, device=device))
            self.bias_hh = Parameter(empty(num_chunks * hidden_size, dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def reset_parameters(self):
        _uniform_init(self, self.hidden_size)

    def _states(self, hx):
        return (hx,)

    def _result(self, states):
        return states[0]

    def _check_hidden_dims(self, hx):
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{self._name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")

    def _op_attrs(self):
        return {}

    def _check_cell_args(self, input, states):
        """PyTorch's cell kernel checks: feature sizes, batch sizes, then dtypes."""
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        for k, s in enumerate(states):
            if input.size(0) != s.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{k} batch size {s.size(0)}")
            if s.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.size(1)}, "
                                   f"expected {self.hidden_size}")
        for t in (input, *states):
            _check_matmul_dtype(t, self.weight_ih)

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        self._check_hidden_dims(hx)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            h = zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (h,) * self._num_states
        else:
            states = tuple(s if batched else s.unsqueeze(0) for s in self._states(hx))
        attrs = self._op_attrs()
        self._check_cell_args(input, states)
        out = dispatch(self._op, input, *states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                       has_bias=self.bias, **attrs)
        out = out if isinstance(out, tuple) else (out,)
        return self._result(out if batched else [s.squeeze(0) for s in out])


class RNNCell(RNNCellBase):
    """RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)."""

    _op = "rnn_cell"
    _name = "RNNCell"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def _op_attrs(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return {"nonlinearity": self.nonlinearity}


class LSTMCell(RNNCellBase):
    """LSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None); state (h, c)."""

    _op = "lstm_cell"
    _name = "LSTMCell"
    _num_states = 2

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def _states(self, hx):
        return (hx[0], hx[1])

    def _result(self, states):
        return tuple(states)

    def _check_hidden_dims(self, hx):
        for idx, value in enumerate(() if hx is None else hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")


class GRUCell(RNNCellBase):
    """GRUCell(input_size, hidden_size, bias=True, device=None, dtype=None)."""

    _op = "gru_cell"
    _name = "GRUCell"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)
