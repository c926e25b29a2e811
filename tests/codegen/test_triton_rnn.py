"""The recurrent ops' emitters (the fused scans of lstm/gru/rnn layers, forward and backward, and
the cells) on the interpret backend against the NumPy implementations: values, dtypes and shapes
of every output (the workspace too), launch counts, and nn.LSTM / nn.GRU / nn.RNN modules moved
to the device, forward and every parameter gradient."""

import numpy as np
import pytest

import tracefuse as tf
import tracefuse.nn as nn
from conftest import ON_GPU, assert_device_matches, to_numpy
from tracefuse.codegen.triton import recording
from tracefuse.dispatch import dispatch
from tracefuse.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

pytestmark = pytest.mark.usefixtures("interpret")

T, B, I, H, P = 4, 3, 5, 17, 6  # odd sizes: every tile is masked
LENGTHS = [3, 0, 4]  # unsorted, one empty sequence, one full-length
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
KINDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
F64 = dict(rtol=1e-10, atol=1e-11)
# (dtype, rtol, atol): both sides compute in float32 and round once, so halves differ by an ulp or two
FLOATS = {"f32": (tf.float32, 1e-5, 1e-5), "f16": (tf.float16, 2e-3, 2e-3), "bf16": (tf.bfloat16, 1.6e-2, 1.6e-2)}


def randn(*shape, dtype=tf.float64):
    return tf.randn(*shape, dtype=tf.float64).to(dtype)


class Layer:
    """One layer direction's op, its inputs, and a function running forward then backward on them."""

    def __init__(self, kind, dtype=tf.float64, bias=True, reverse=False, lengths=None, sizes=(T, B, I, H)):
        self.op = kind.split("_")[0]
        self.proj = kind == "lstm_proj"
        steps, batch, inputs, hidden = sizes
        out = P if self.proj else hidden
        gates = GATES[self.op] * hidden
        self.attrs = dict(reverse=reverse, has_bias=bias, has_proj=self.proj, has_lengths=lengths is not None)
        if self.op == "rnn":
            self.attrs["nonlinearity"] = kind.split("_")[1]
        tf.manual_seed(sum(map(ord, kind)) + 7 * bias + 3 * reverse)
        x = randn(steps, batch, inputs, dtype=dtype)
        states = [randn(batch, out, dtype=dtype)] + ([randn(batch, hidden, dtype=dtype)] if self.op == "lstm" else [])
        weights = [randn(gates, inputs, dtype=dtype), randn(gates, out, dtype=dtype)]
        weights += [randn(gates, dtype=dtype), randn(gates, dtype=dtype)] if bias else [None, None]
        weights += [randn(out, hidden, dtype=dtype) if self.proj else None] if self.op == "lstm" else []
        lengths = None if lengths is None else tf.tensor(lengths, dtype=tf.int64)
        grads = [randn(steps, batch, out, dtype=dtype)] + [randn(*s.shape, dtype=dtype) for s in states]
        self.tensors = [x, *states, *weights, lengths, *grads]
        self.n_inputs = 1 + len(states) + len(weights) + 1

    def forward(self, *tensors):
        return dispatch(f"{self.op}_layer", *tensors[:self.n_inputs], **self.attrs)

    def forward_backward(self, *tensors):
        """The layer's outputs (the workspace included) and the backward op's gradients."""
        outputs = self.forward(*tensors)
        y, workspace = outputs[0], outputs[-1]
        grads = dispatch(f"{self.op}_layer_backward", *tensors[self.n_inputs:], *tensors[:self.n_inputs], y,
                         workspace, **self.attrs)
        return tuple(outputs) + tuple(grads)


def _layer_cases():
    for kind in KINDS:
        for bias in (True, False):
            for reverse in (False, True):
                for lengths in (None, LENGTHS):
                    yield pytest.param(kind, bias, reverse, lengths,
                                       id=f"{kind}-bias{int(bias)}-rev{int(reverse)}-len{int(lengths is not None)}")


@pytest.mark.parametrize("kind,bias,reverse,lengths", list(_layer_cases()))
def test_layer_forward_and_backward_float64(kind, bias, reverse, lengths):
    layer = Layer(kind, bias=bias, reverse=reverse, lengths=lengths)
    assert_device_matches(layer.forward_backward, *layer.tensors, **F64)


@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("kind", KINDS)
def test_layer_dtypes(kind, dtype):
    """float32 as float32; float16/bfloat16 in float32 with a float32 workspace, rounded once."""
    dtype, rtol, atol = FLOATS[dtype]
    layer = Layer(kind, dtype=dtype, reverse=True, lengths=LENGTHS)
    assert_device_matches(layer.forward_backward, *layer.tensors, rtol=rtol, atol=atol)
    workspace = layer.forward(*[t.cuda() if t is not None else None for t in layer.tensors])[-1]
    assert workspace.dtype is tf.float32 and workspace.device.type == "cuda"


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (3, 18, 2, 5), (2, 0, 3, 4), (2, 2, 20, 20)],
                         ids=["one-step-one-unit", "two-programs", "empty-batch", "wide"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_layer_sizes(kind, sizes):
    """A single step and unit, batches that need two programs or none, inputs wider than a block."""
    lengths = None if sizes[1] != 18 else [(3 * b) % 4 for b in range(18)]
    layer = Layer(kind, reverse=True, lengths=lengths, sizes=sizes)
    assert_device_matches(layer.forward_backward, *layer.tensors, **F64)


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_layer_non_contiguous_inputs(kind):
    """x as a transposed (batch-first) view, W_hh as a transposed view, dy as a strided slice."""
    layer = Layer(kind, lengths=LENGTHS)
    w_hh, dy = 2 + (layer.op == "lstm") + 1, layer.n_inputs  # positions in layer.tensors

    def fn(*tensors):
        tensors = list(tensors)
        tensors[0] = tensors[0].transpose(0, 1)
        tensors[w_hh] = tensors[w_hh].t()
        tensors[dy] = tensors[dy][..., ::2]
        return layer.forward_backward(*tensors)

    args = list(layer.tensors)
    args[0] = args[0].transpose(0, 1).contiguous()
    args[w_hh] = args[w_hh].t().contiguous()
    args[dy] = tf.stack([args[dy], args[dy]], dim=-1).reshape(T, B, -1)  # every other column is dy
    assert_device_matches(fn, *args, **F64)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_launch_counts(kind):
    """Two launches per layer direction (input GEMM + scan); backward: scan, dx, dW_ih, dW_hh (+ dW_hr)."""
    layer = Layer(kind, lengths=LENGTHS)
    tensors = [t.cuda() if t is not None else None for t in layer.tensors]
    with recording() as forward:
        outputs = layer.forward(*tensors)
    assert [r.kernel.name for r in forward] == [f"{layer.op}_layer_input_projection_kernel", f"{layer.op}_layer_kernel"]
    with recording() as backward:
        dispatch(f"{layer.op}_layer_backward", *tensors[layer.n_inputs:], *tensors[:layer.n_inputs], outputs[0],
                 outputs[-1], **layer.attrs)
    assert len(backward) == 4 + layer.proj
    assert backward[0].kernel.name == f"{layer.op}_layer_backward_kernel"


def test_scan_source_reads_like_a_kernel():
    """Block sizes are constexprs, the time loop is inside the kernel, the state has named masks."""
    layer = Layer("lstm")
    with recording() as records:
        layer.forward(*[t.cuda() if t is not None else None for t in layer.tensors])
    source = records[1].kernel.source
    assert "while step < T:" in source and "tl.debug_barrier()" in source
    assert "BLOCK_B: tl.constexpr" in source and "seq_mask" in source and "tile_mask" in source
    assert records[1].constexprs["H"] == H
    # one program owns every hidden unit where programs run one after another (the interpreter);
    # on a GPU they are spread over resident programs
    programs = records[1].constexprs["H_PROGRAMS"]
    assert records[1].grid == (1, programs) and (programs > 1 if ON_GPU else programs == 1)


def test_scan_spreads_hidden_units_over_resident_programs(monkeypatch):
    """On a device that runs many programs at once, each owns a slice of the hidden units and the
    programs of a batch block wait for each other after every step (a cooperative launch)."""
    from tracefuse.runtime import devices

    layer = Layer("gru")
    backend = devices.backend(tf.device("cuda:0"))
    monkeypatch.setattr(backend, "resident_programs", lambda device: 8)
    # (recorded, not run: the interpreter runs one program at a time, so they would wait forever)
    monkeypatch.setattr(backend, "launch", lambda *args, **kwargs: None)
    with recording() as records:
        layer.forward(*[t.cuda() if t is not None else None for t in layer.tensors])
    (scan,) = [r for r in records if r.kernel.name == "gru_layer_kernel"]
    programs = scan.constexprs["H_PROGRAMS"]
    assert scan.grid == (1, programs) and 1 < programs <= 8
    assert scan.constexprs["H_SLICE"] * programs >= H and scan.constexprs["launch_cooperative_grid"] is True
    assert 'tl.atomic_add(barrier_ptr + pid, 1, sem="release")' in scan.kernel.source


# --- cells ---------------------------------------------------------------------------------------


def _cell_inputs(kind, bias, dtype):
    op = kind.split("_")[0]
    tf.manual_seed(11)
    states = [randn(B, H, dtype=dtype)] * (2 if op == "lstm" else 1)
    states = [randn(B, H, dtype=dtype) for _ in states]
    gates = GATES[op] * H
    weights = [randn(gates, I, dtype=dtype), randn(gates, H, dtype=dtype)]
    weights += [randn(gates, dtype=dtype), randn(gates, dtype=dtype)] if bias else [None, None]
    attrs = {"has_bias": bias} | ({"nonlinearity": kind.split("_")[1]} if op == "rnn" else {})
    return f"{op}_cell", [randn(B, I, dtype=dtype), *states, *weights], attrs


@pytest.mark.parametrize("dtype", ["f64", "f32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cell_forward(kind, bias, dtype):
    dtype, rtol, atol = (tf.float64, *F64.values()) if dtype == "f64" else FLOATS[dtype]
    name, tensors, attrs = _cell_inputs(kind, bias, dtype)
    assert_device_matches(lambda *t: dispatch(name, *t, **attrs), *tensors, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_cell_gradients(kind):
    """The cells' gradient rules are tensor ops (so double backward works): they run on the device too."""
    name, tensors, attrs = _cell_inputs(kind, True, tf.float64)

    def grads(device):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = dispatch(name, *[t.to(device) for t in leaves], **attrs)
        outs = out if isinstance(out, tuple) else (out,)
        tf.autograd.backward(list(outs), [randn(*o.shape, dtype=tf.float64).to(device) for o in outs])
        return [to_numpy(t.grad.cpu()) for t in leaves]

    tf.manual_seed(5)
    expected = grads("cpu")
    tf.manual_seed(5)
    got = grads("cuda:0")
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **F64)


# --- modules moved to the device -------------------------------------------------------------------

MODULES = {
    "lstm": lambda: nn.LSTM(I, 7, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(I, 7, proj_size=3),
    "gru": lambda: nn.GRU(I, 7, num_layers=2, bidirectional=True),
    "rnn_relu": lambda: nn.RNN(I, 7, nonlinearity="relu", bias=False, batch_first=True),
}


def _run_module(module, x, hx, packed, device):
    """(output, final states, every parameter's gradient) for a fixed loss, on `device`."""
    module.zero_grad()
    x = x.to(device)
    hx = None if hx is None else (tuple(h.to(device) for h in hx) if isinstance(hx, tuple) else hx.to(device))
    first = module.batch_first
    inp = pack_padded_sequence(x, tf.tensor([3, 1, 4]), batch_first=first, enforce_sorted=False) if packed else x
    y, h = module(inp, hx)
    if packed:
        y = pad_packed_sequence(y, batch_first=first, total_length=T)[0]
    finals = list(h) if isinstance(h, tuple) else [h]
    outs = [y] + finals
    tf.manual_seed(3)
    tf.autograd.backward(outs, [randn(*o.shape).to(device) for o in outs])
    return [to_numpy(o.detach().cpu()) for o in outs], {n: to_numpy(p.grad.cpu()) for n, p in module.named_parameters()}


@pytest.mark.parametrize("given_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", list(MODULES))
def test_module_forward_backward(kind, packed, given_state):
    """nn modules built on the CPU and moved with .cuda(): outputs, final states, parameter grads."""
    tf.manual_seed(1)
    module = MODULES[kind]().double()
    x = randn(B, T, I) if module.batch_first else randn(T, B, I)
    hx = None
    if given_state:
        layers = module.num_layers * (2 if module.bidirectional else 1)
        h = randn(layers, B, module.proj_size or module.hidden_size)
        hx = (h, randn(layers, B, module.hidden_size)) if kind.startswith("lstm") else h
    expected_outs, expected_grads = _run_module(module, x, hx, packed, "cpu")
    module.cuda()
    outs, grads = _run_module(module, x, hx, packed, "cuda:0")
    for got, want in zip(outs, expected_outs):
        np.testing.assert_allclose(got, want, **F64)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], expected_grads[name], err_msg=name, **F64)


# --- ahead-of-time builds ----------------------------------------------------------------------------


@pytest.mark.slow
def test_scan_kernels_build_for_sm80_and_sm90_without_spills():
    """The scans (the big kernels: fp32 FMA dots, and fp64 dots) compile with no GPU present and
    do not spill."""
    from tracefuse.codegen.triton import aot

    with recording() as records:
        for kind, dtype in [("lstm_proj", tf.float32), ("lstm_proj", tf.float64), ("gru", tf.float32),
                            ("rnn_relu", tf.float32)]:
            layer = Layer(kind, dtype=dtype, reverse=True, lengths=LENGTHS)
            layer.forward_backward(*[t.cuda() if t is not None else None for t in layer.tensors])
    scans = [r for r in records if r.kernel.name.endswith(("layer_kernel", "backward_kernel"))]
    assert len(scans) == 8
    for row in aot.build_report(scans, archs=(80, 90)):
        assert row.error is None and row.spills == 0, (row.kernel, row.arch, row.error, row.spills)
