"""Every tracefuse.nn module compiled against the same module run eagerly, in float64.

Each check traces on one batch and compares on a second, different batch, so a value the trace
baked into the graph as a constant shows up as a mismatch. It compares outputs, the gradients of
the inputs and of every parameter, and the parameters and buffers after the call (running
statistics and renormalized embedding rows are written back by the compiled graph). Dropout in
training mode is random: its compiled masks are checked by their pattern and scaling.
Containers and small models built from the modules run the same checks; hypothesis draws
convolution, pooling and loss configurations.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracefuse as tf
from tracefuse import nn
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")

TIGHT = dict(rtol=1e-12, atol=1e-12)


# --- the check shared by the compiled-module tests -----------------------------------------------

def tensors(result):
    """The tensors of a call's result in order (tuples, lists, PackedSequence fields, dicts)."""
    if isinstance(result, tf.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in tensors(v)]
    if isinstance(result, (tuple, list)):
        return [t for v in result for t in tensors(v)]
    return []


def leaves(arrays):
    """Fresh tracefuse leaves for NumPy arrays: float64 ones require grad, integer ones are indices."""
    return [None if a is None else
            tf.tensor(a, dtype=tf.float64, requires_grad=True) if a.dtype.kind == "f" else tf.tensor(a)
            for a in arrays]


def assert_tensors_close(ours, expected, tol=TIGHT, what="output"):
    assert len(ours) == len(expected), f"{what}: {len(ours)} tensors, expected {len(expected)}"
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert tuple(a.shape) == tuple(b.shape) and a.dtype is b.dtype, \
            f"{what} {k}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), equal_nan=True, err_msg=f"{what} {k}",
                                   **tol)


def backward_same(outs, expected, rng):
    """Backpropagate the same random linear function of the float outputs on both sides."""
    pairs = [(o, e) for o, e in zip(outs, expected) if e.requires_grad]
    if not pairs:
        return False
    weights = [tf.tensor(rng.standard_normal(tuple(e.shape))) for _, e in pairs]
    for side in (0, 1):
        terms = [(pair[side] * w).sum() for pair, w in zip(pairs, weights)]
        sum(terms[1:], terms[0]).backward()
    return True


def assert_same_grads(model, twin, ours, theirs, tol=TIGHT):
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert (p.grad is None) == (q.grad is None), f"{name}.grad: {p.grad} vs {q.grad}"
        if q.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=f"{name}.grad", **tol)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if b is not None and b.requires_grad:
            assert (a.grad is None) == (b.grad is None), f"input {k}"
            if b.grad is not None:
                np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), err_msg=f"input {k}.grad", **tol)


def assert_same_state(model, twin, tol=TIGHT):
    theirs = twin.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), theirs[name].numpy(), err_msg=name, **tol)


def check_compiled(model, make_arrays, call=None, batches=2, tol=TIGHT, dynamic=False):
    """Compile `model` and compare it with an eager twin (a deep copy) over `batches` calls on
    different data (`make_arrays(rng)` -> NumPy arrays, or a list of such argument lists, one per
    call; `call(module, *tensors)` makes the call, by default `module(*tensors)`). The compiled
    graph must be traced once and then reused (with `dynamic`, across the calls' sizes too)."""
    call = call or (lambda module, *xs: module(*xs))
    twin = copy.deepcopy(model)
    compiled = tf.compile(model, dynamic=dynamic)
    listed = isinstance(make_arrays, list)
    for seed in range(len(make_arrays) if listed else batches):
        rng = np.random.default_rng(seed)
        arrays = make_arrays[seed] if listed else make_arrays(rng)
        ours, theirs = leaves(arrays), leaves(arrays)
        out, expected = tensors(call(compiled, *ours)), tensors(call(twin, *theirs))
        assert_tensors_close(out, expected, tol, what=f"call {seed} output")
        # The compiled call's outputs get their gradients from its backward graph (an argument
        # returned as is stays the caller's leaf).
        assert all(o.grad_fn.name() == "CompiledFunctionBackward" for o in out if o.grad_fn is not None)
        if backward_same(out, expected, rng):
            assert_same_grads(model, twin, ours, theirs, tol)
        assert_same_state(model, twin, tol)
        model.zero_grad()
        twin.zero_grad()
    cache = compiled_callable(compiled)
    assert len(cache.entries) == 1, [str(r) for r in cache.recompiles]
    return compiled


def f(*shape):
    """A standard-normal float input of `shape`."""
    return lambda rng: rng.standard_normal(shape)


def ints(high, *shape):
    return lambda rng: rng.integers(0, high, shape)


def inputs(*makers):
    return lambda rng: [m(rng) for m in makers]


# --- every module ----------------------------------------------------------------------------------

MODULES = [
    ("Linear", lambda: nn.Linear(3, 4), inputs(f(5, 3))),
    ("Linear-nobias-3d", lambda: nn.Linear(3, 4, bias=False), inputs(f(2, 5, 3))),
    ("Linear-1d-input", lambda: nn.Linear(3, 2), inputs(f(3))),
    ("Bilinear", lambda: nn.Bilinear(3, 2, 4), inputs(f(5, 3), f(5, 2))),
    ("Bilinear-nobias", lambda: nn.Bilinear(3, 2, 4, bias=False), inputs(f(2, 5, 3), f(2, 5, 2))),
    ("Identity", lambda: nn.Identity(54, unused=1), inputs(f(2, 3))),
    ("Flatten", lambda: nn.Flatten(), inputs(f(2, 3, 4))),
    ("Flatten-0-2", lambda: nn.Flatten(0, 2), inputs(f(2, 3, 4, 2))),
    ("Embedding", lambda: nn.Embedding(10, 3), inputs(ints(10, 4, 5))),
    ("Embedding-padding_idx", lambda: nn.Embedding(10, 3, padding_idx=2),
     lambda rng: [np.concatenate([rng.integers(0, 10, (4, 5)), np.full((4, 2), 2)], axis=1)]),
    ("Embedding-negative-padding_idx", lambda: nn.Embedding(10, 3, padding_idx=-2), inputs(ints(10, 7))),
    ("Embedding-max_norm", lambda: nn.Embedding(10, 3, max_norm=1.0), inputs(ints(10, 4, 5))),
    ("Embedding-max_norm-p1-padding", lambda: nn.Embedding(10, 3, padding_idx=0, max_norm=0.5, norm_type=1.0),
     inputs(ints(10, 6))),
    ("Dropout-eval", lambda: nn.Dropout(0.3).eval(), inputs(f(3, 4))),
    ("Dropout-p0-train", lambda: nn.Dropout(0.0), inputs(f(3, 4))),
    ("ReLU", nn.ReLU, inputs(f(3, 4))),
    ("Tanh", nn.Tanh, inputs(f(3, 4))),
    ("Sigmoid", nn.Sigmoid, inputs(f(3, 4))),
    ("GELU", nn.GELU, inputs(f(3, 4))),
    ("GELU-tanh", lambda: nn.GELU("tanh"), inputs(f(3, 4))),
    ("LeakyReLU", lambda: nn.LeakyReLU(0.3), inputs(f(3, 4))),
    ("ELU", lambda: nn.ELU(0.5), inputs(f(3, 4))),
    ("Softplus", lambda: nn.Softplus(2.0, 1.0), inputs(f(3, 4))),
    ("Softmax-0", lambda: nn.Softmax(0), inputs(f(3, 4))),
    ("Softmax-neg", lambda: nn.Softmax(-1), inputs(f(2, 3, 4))),
    ("LogSoftmax", lambda: nn.LogSoftmax(1), inputs(f(3, 4))),
    ("LayerNorm", lambda: nn.LayerNorm(4), inputs(f(2, 3, 4))),
    ("LayerNorm-2d-shape", lambda: nn.LayerNorm((3, 4), eps=1e-3), inputs(f(2, 3, 4))),
    ("LayerNorm-nobias", lambda: nn.LayerNorm(4, bias=False), inputs(f(2, 3, 4))),
    ("LayerNorm-noaffine", lambda: nn.LayerNorm([4], elementwise_affine=False), inputs(f(5, 4))),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3), inputs(f(6, 3))),
    ("BatchNorm1d-3d-cumulative", lambda: nn.BatchNorm1d(3, momentum=None), inputs(f(4, 3, 5))),
    ("BatchNorm1d-nostats", lambda: nn.BatchNorm1d(3, track_running_stats=False), inputs(f(6, 3))),
    ("BatchNorm1d-nobias", lambda: nn.BatchNorm1d(3, bias=False), inputs(f(6, 3))),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(3, momentum=0.3, eps=1e-3), inputs(f(2, 3, 4, 4))),
    ("BatchNorm2d-noaffine", lambda: nn.BatchNorm2d(3, affine=False), inputs(f(2, 3, 4, 4))),
    ("Conv1d", lambda: nn.Conv1d(4, 6, 3), inputs(f(2, 4, 9))),
    ("Conv1d-stride-groups", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), inputs(f(2, 4, 9))),
    ("Conv1d-unbatched-circular", lambda: nn.Conv1d(4, 6, 3, padding=2, padding_mode="circular"), inputs(f(4, 9))),
    ("Conv2d", lambda: nn.Conv2d(3, 4, 3), inputs(f(2, 3, 6, 5))),
    ("Conv2d-same-dilation", lambda: nn.Conv2d(3, 4, (3, 2), padding="same", dilation=2), inputs(f(2, 3, 6, 5))),
    ("Conv2d-reflect", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), inputs(f(2, 3, 5, 5))),
    ("Conv2d-circular", lambda: nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode="circular"), inputs(f(2, 3, 5, 5))),
    ("Conv2d-replicate-nobias", lambda: nn.Conv2d(3, 4, 2, padding="same", padding_mode="replicate", bias=False),
     inputs(f(1, 3, 5, 5))),
    ("Conv2d-groups-stride", lambda: nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(2, 1), groups=2),
     inputs(f(2, 4, 7, 6))),
    ("MaxPool1d", lambda: nn.MaxPool1d(2), inputs(f(2, 3, 7))),
    ("MaxPool1d-indices", lambda: nn.MaxPool1d(3, 2, 1, return_indices=True, ceil_mode=True), inputs(f(2, 3, 8))),
    ("MaxPool2d", lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), inputs(f(2, 3, 7, 6))),
    ("MaxPool2d-indices-dilation", lambda: nn.MaxPool2d((3, 2), 1, 1, 2, True, True), inputs(f(2, 3, 7, 6))),
    ("AvgPool1d", lambda: nn.AvgPool1d(3, 1, 1), inputs(f(2, 3, 7))),
    ("AvgPool1d-stride", lambda: nn.AvgPool1d(3, stride=2, padding=1), inputs(f(3, 10))),
    ("AvgPool2d", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), inputs(f(2, 3, 7, 6))),
    ("AvgPool2d-divisor", lambda: nn.AvgPool2d((3, 2), (2, 1), 1, True, False, 3), inputs(f(2, 3, 7, 6))),
    ("CosineSimilarity", lambda: nn.CosineSimilarity(dim=0), inputs(f(3, 4), f(3, 4))),
    ("CosineSimilarity-broadcast", lambda: nn.CosineSimilarity(dim=-1, eps=1e-4), inputs(f(2, 3, 4), f(3, 4))),
    ("PairwiseDistance", lambda: nn.PairwiseDistance(keepdim=True), inputs(f(3, 4), f(3, 4))),
    ("PairwiseDistance-p1", lambda: nn.PairwiseDistance(p=1.0, eps=1e-3), inputs(f(5, 4), f(5, 4))),
    ("MSELoss", nn.MSELoss, inputs(f(5, 4), f(5, 4))),
    ("MSELoss-sum", lambda: nn.MSELoss(reduction="sum"), inputs(f(5, 4), f(5, 4))),
    ("L1Loss-none", lambda: nn.L1Loss(reduction="none"), inputs(f(5, 4), f(5, 4))),
    ("CrossEntropyLoss", nn.CrossEntropyLoss, inputs(f(5, 4), ints(4, 5))),
    ("CrossEntropyLoss-ignore-smoothing-weight",
     lambda: nn.CrossEntropyLoss(weight=tf.tensor([1.0, 2.0, 0.5, 1.0]), ignore_index=0, label_smoothing=0.1),
     inputs(f(6, 4), ints(4, 6))),
    ("CrossEntropyLoss-k-dim-sum", lambda: nn.CrossEntropyLoss(reduction="sum", ignore_index=2),
     inputs(f(2, 4, 3), ints(4, 2, 3))),
    ("CrossEntropyLoss-probabilities", lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
     lambda rng: [rng.standard_normal((5, 4)), rng.dirichlet(np.ones(4), 5)]),
    ("NLLLoss", lambda: nn.NLLLoss(weight=tf.tensor([1.0, 2.0, 0.5, 1.0]), reduction="none"),
     inputs(f(5, 4), ints(4, 5))),
    ("NLLLoss-ignore", lambda: nn.NLLLoss(ignore_index=1), inputs(f(7, 4), ints(4, 7))),
    ("BCEWithLogitsLoss", nn.BCEWithLogitsLoss, lambda rng: [rng.standard_normal((5, 4)), rng.random((5, 4))]),
    ("BCEWithLogitsLoss-weights", lambda: nn.BCEWithLogitsLoss(weight=tf.tensor([1.0, 0.5, 2.0, 1.0]),
                                                                pos_weight=tf.tensor([2.0, 1.0, 0.5, 1.5]),
                                                                reduction="sum"),
     lambda rng: [rng.standard_normal((5, 4)), rng.random((5, 4))]),
]


@pytest.mark.parametrize("name, make, make_arrays", MODULES, ids=[m[0] for m in MODULES])
def test_compiled_module_matches_eager(name, make, make_arrays):
    tf.manual_seed(0)
    check_compiled(make().double(), make_arrays)


def test_every_nn_module_class_is_covered():
    """A module added to tracefuse.nn without a compiled check here fails this test."""
    covered = {name.split("-")[0] for name, _, _ in MODULES} | {
        "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Module",  # containers below
        "RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell",  # test_compiled_rnn.py
        "DataParallel"}  # runs replicas eagerly by design
    public = {n for n in dir(nn) if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module)}
    assert public <= covered, sorted(public - covered)


def test_batch_norm_running_stats_written_back_then_used_in_eval():
    tf.manual_seed(1)
    for bn in (nn.BatchNorm1d(3).double(), nn.BatchNorm2d(3, momentum=None).double()):
        shape = (6, 3) if isinstance(bn, nn.BatchNorm1d) else (2, 3, 3, 3)
        twin, compiled = copy.deepcopy(bn), tf.compile(bn)
        rng = np.random.default_rng(0)
        for step in range(3):
            x = tf.tensor(rng.standard_normal(shape) * (step + 1) + step)
            assert_tensors_close([compiled(x)], [twin(x)])
            assert_same_state(bn, twin)
        assert bn.num_batches_tracked.item() == 3
        compiled.eval()
        twin.eval()
        for _ in range(2):  # the eval graph reads the running statistics as inputs, not constants
            x = tf.tensor(rng.standard_normal(shape))
            assert_tensors_close([compiled(x)], [twin(x)])
            bn.running_mean.add_(0.5)
            twin.running_mean.add_(0.5)
        assert bn.num_batches_tracked.item() == 3
        cache = compiled_callable(compiled)
        assert len(cache.entries) == 2 and str(cache.recompiles[-1]) == "guard failed: self.training: True -> False"


# --- dropout in training mode ------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.25, 0.6])
def test_compiled_dropout_draws_a_fresh_valid_mask_each_call(p):
    model = nn.Sequential(nn.Linear(6, 50), nn.Dropout(p)).double()
    compiled = tf.compile(model)
    x = tf.randn(40, 6, dtype=tf.float64)
    dense = model[0](x).detach().numpy()
    masks = []
    for _ in range(3):
        x_leaf = tf.tensor(x.numpy(), requires_grad=True)
        out = compiled(x_leaf)
        kept = out.detach().numpy() != 0
        np.testing.assert_allclose(out.detach().numpy()[kept], dense[kept] / (1 - p), rtol=1e-12)
        assert abs(1 - kept.mean() - p) < 0.05  # 2000 draws: the dropped fraction is p +- 4 sigma
        model.zero_grad()
        out.sum().backward()  # the gradient flows through the kept units only, scaled by 1/(1-p)
        expected = kept / (1 - p)
        np.testing.assert_allclose(model[0].bias.grad.numpy(), expected.sum(0), rtol=1e-12)
        np.testing.assert_allclose(x_leaf.grad.numpy(), expected @ model[0].weight.detach().numpy(), rtol=1e-12)
        masks.append(kept)
    assert not (masks[0] == masks[1]).all() and not (masks[1] == masks[2]).all()  # not baked into the graph
    assert len(compiled_callable(compiled).entries) == 1


def test_returned_arguments_stay_leaves_and_detached_outputs_do_not_require_grad():
    @tf.compile
    def passthrough(x, y):
        z = x * 2
        return x, x.detach(), z, z

    x = tf.tensor([1.0, 2.0], requires_grad=True)
    same, detached, z, z_again = passthrough(x, tf.ones(2))
    assert same is x and x.is_leaf and x.grad_fn is None
    assert not detached.requires_grad and detached.tolist() == [1.0, 2.0]
    assert z is z_again and z.grad_fn.name() == "CompiledFunctionBackward"
    (same.sum() + 3 * z.sum() + z_again.sum()).backward()
    assert x.grad.tolist() == [9.0, 9.0]


def test_compiled_inplace_dropout_updates_the_argument():
    compiled = tf.compile(nn.Dropout(0.5, inplace=True))
    x = tf.ones(30, 20, dtype=tf.float64)
    out = compiled(x)
    np.testing.assert_array_equal(x.numpy(), out.numpy())
    assert set(np.unique(x.numpy())) == {0.0, 2.0}
    x2 = tf.ones(30, 20, dtype=tf.float64)
    compiled(x2)
    assert set(np.unique(x2.numpy())) == {0.0, 2.0} and not (x2.numpy() == x.numpy()).all()


# --- containers and models built from the modules ------------------------------------------------

class Stack(nn.Module):
    """A ModuleList looped over, a ModuleDict picked by a string argument, a ParameterList and a
    ParameterDict read directly."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "reg": nn.Sequential(nn.Linear(4, 2), nn.Tanh())})
        self.scales = nn.ParameterList([nn.Parameter(tf.randn(4)), nn.Parameter(tf.randn(4))])
        self.offsets = nn.ParameterDict({"a": nn.Parameter(tf.randn(4))})

    def forward(self, x, head="cls"):
        for block, scale in zip(self.blocks, list(self.scales) + [None]):
            x = F.gelu(block(x))
            if scale is not None:
                x = x * scale + self.offsets["a"]
        return self.heads[head](x)


def test_containers_match_eager_for_each_head():
    tf.manual_seed(2)
    model = Stack().double()
    for head in ("cls", "reg"):
        check_compiled(model, inputs(f(5, 4)), call=lambda m, x, head=head: m(x, head=head))


def test_sequential_classifier_with_loss_head():
    tf.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Dropout(0.0), nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.LayerNorm(5), nn.GELU(),
                        nn.Linear(5, 3)).double()
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.loss = net, loss

        def forward(self, x, y):
            return self.loss(self.net(x), y)

    check_compiled(WithLoss(), inputs(f(4, 2, 6, 6), ints(3, 4)), batches=3)


class TiedLM(nn.Module):
    """Embedding and output projection share one weight (two uses of one Parameter)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(9, 4, padding_idx=0)
        self.mix = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.out = nn.Linear(4, 9, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens, targets):
        logits = self.out(self.mix(self.embed(tokens)))
        return F.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1), ignore_index=0)


def test_tied_weights_accumulate_both_gradients():
    tf.manual_seed(4)
    model = TiedLM().double()
    compiled = check_compiled(model, inputs(ints(9, 3, 5), ints(9, 3, 5)))
    graph = compiled_callable(compiled).entries[0].captured.forward
    assert [n.name for n in graph.inputs() if n.attrs["kind"] == "param"] == [
        "embed.weight", "mix.0.weight", "mix.0.bias"]  # the shared weight is one graph input


def test_float32_model_matches_eager_with_float32_tolerances():
    tf.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ELU(), nn.Linear(8, 2))
    twin, compiled = copy.deepcopy(model), tf.compile(model)
    for seed in range(2):
        x = tf.tensor(np.random.default_rng(seed).standard_normal((4, 3)), dtype=tf.float32)
        out, expected = compiled(x), twin(x)
        assert out.dtype is tf.float32
        np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-6)


# --- hypothesis: convolution, pooling and loss configurations -------------------------------------

@st.composite
def conv_configs(draw):
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = draw(st.sampled_from(["same", "valid", 0, 1, 2]))
    stride = 1 if padding == "same" else draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])) if padding not in (0, "valid") \
        else "zeros"
    spatial = tuple(draw(st.integers(5, 7)) for _ in range(nd))
    batch = draw(st.sampled_from([(), (1,), (2,)]))
    return dict(nd=nd, args=(c_in, c_out, kernel), kwargs=dict(stride=stride, padding=padding, dilation=dilation,
                                                              groups=groups, bias=draw(st.booleans()),
                                                              padding_mode=mode),
                shape=batch + (c_in,) + spatial)


@given(conv_configs())
@settings(max_examples=25, deadline=None)
def test_hypothesis_conv(config):
    conv = (nn.Conv1d if config["nd"] == 1 else nn.Conv2d)(*config["args"], **config["kwargs"]).double()
    check_compiled(conv, inputs(f(*config["shape"])))


@st.composite
def pool_configs(draw):
    nd = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["max", "avg"]))
    kernel = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel // 2))
    kwargs = dict(kernel_size=kernel, stride=draw(st.sampled_from([None, 1, 2])), padding=padding,
                  ceil_mode=draw(st.booleans()))
    if kind == "max":
        kwargs.update(dilation=draw(st.integers(1, 2)), return_indices=draw(st.booleans()))
    else:
        kwargs.update(count_include_pad=draw(st.booleans()))
        if nd == 2:
            kwargs["divisor_override"] = draw(st.sampled_from([None, 2]))
    cls = getattr(nn, f"{kind.capitalize()}Pool{nd}d")
    return cls, kwargs, (2, 3) + (draw(st.integers(6, 8)),) * nd


@given(pool_configs())
@settings(max_examples=25, deadline=None)
def test_hypothesis_pool(config):
    cls, kwargs, shape = config
    check_compiled(cls(**kwargs), inputs(f(*shape)))


@st.composite
def loss_configs(draw):
    name = draw(st.sampled_from(["MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss"]))
    kwargs = dict(reduction=draw(st.sampled_from(["mean", "sum", "none"])))
    weight = tf.tensor(np.linspace(0.5, 2.0, 4)) if draw(st.booleans()) else None
    n = draw(st.integers(1, 6))
    if name in ("CrossEntropyLoss", "NLLLoss"):
        kwargs.update(weight=weight, ignore_index=draw(st.sampled_from([-100, 0, 3])))
        if name == "CrossEntropyLoss":
            kwargs["label_smoothing"] = draw(st.sampled_from([0.0, 0.15]))
        return name, kwargs, inputs(f(n, 4), ints(4, n))
    if name == "BCEWithLogitsLoss":
        kwargs.update(weight=weight, pos_weight=tf.tensor(np.linspace(2.0, 0.5, 4)) if draw(st.booleans()) else None)
        return name, kwargs, lambda rng: [rng.standard_normal((n, 4)), rng.random((n, 4))]
    return name, kwargs, inputs(f(n, 4), f(n, 4))


@given(loss_configs())
@settings(max_examples=25, deadline=None)
def test_hypothesis_loss(config):
    name, kwargs, make_arrays = config
    check_compiled(getattr(nn, name)(**kwargs), make_arrays)
