"""tracefuse.compile: compiled calls match eager ones, guards recompile exactly when they change,
and what a graph cannot express is a clear error (or an eager run with fallback='eager')."""
import re
import warnings

import numpy as np
import pytest

import tracefuse
from tracefuse import nn
from tracefuse.nn import functional as F
from tracefuse.tracer.api import compiled_callable
from tracefuse.tracer.context import TracingError


def _params(model):
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def _grads(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return F.relu(self.norm(self.proj(x))) * x[:, :4].sigmoid() + 1.0


def test_compiled_module_matches_eager_and_shares_state():
    tracefuse.manual_seed(0)
    model = Head().double()
    compiled = tracefuse.compile(model)
    x = tracefuse.randn(3, 6, dtype=tracefuse.float64)
    np.testing.assert_array_equal(compiled(x).detach().numpy(), model(x).detach().numpy())
    assert isinstance(compiled, Head)
    assert list(compiled.state_dict()) == list(model.state_dict())
    assert compiled.proj.weight is model.proj.weight
    compiled.eval()
    assert model.training is False


def test_cache_reuse_and_recompile_reasons():
    model = Head().double()
    compiled = tracefuse.compile(model)
    compiled(tracefuse.randn(3, 6, dtype=tracefuse.float64))
    compiled(tracefuse.randn(3, 6, dtype=tracefuse.float64))
    cache = compiled_callable(compiled)
    assert len(cache.entries) == 1 and cache.recompiles == []
    compiled(tracefuse.randn(5, 6, dtype=tracefuse.float64))
    assert len(cache.entries) == 2
    assert str(cache.recompiles[-1]) == "guard failed: L['x'].shape: (3, 6) -> (5, 6)"
    compiled.eval()
    compiled(tracefuse.randn(5, 6, dtype=tracefuse.float64))
    assert str(cache.recompiles[-1]) == "guard failed: self.training: True -> False"
    with tracefuse.no_grad():
        compiled(tracefuse.randn(5, 6, dtype=tracefuse.float64))
    assert str(cache.recompiles[-1]) == "guard failed: grad_mode: True -> False"
    assert len(cache.entries) == 4


def test_backward_through_compiled_call_matches_eager():
    tracefuse.manual_seed(1)
    model = Head().double()
    compiled = tracefuse.compile(model)
    for _ in range(3):  # the first call traces; later calls replay on new data
        x = tracefuse.randn(3, 6, dtype=tracefuse.float64, requires_grad=True)
        model.zero_grad()
        model(x).pow(2).sum().backward()
        eager_grads, eager_x = _grads(model), x.grad.numpy().copy()
        model.zero_grad()
        x.grad = None
        out = compiled(x)
        assert out.grad_fn.name() == "CompiledFunctionBackward"
        out.pow(2).sum().backward()
        for name, g in _grads(model).items():
            np.testing.assert_allclose(g, eager_grads[name], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(x.grad.numpy(), eager_x, rtol=1e-12, atol=1e-14)
    assert len(compiled_callable(compiled).entries) == 1, compiled_callable(compiled).recompiles


class Encoder(nn.Module):
    def __init__(self, bidirectional=False):
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=bidirectional)
        self.head = nn.Linear(7 * (2 if bidirectional else 1), 3)

    def forward(self, tokens, targets):
        out, _ = self.lstm(self.embed(tokens))
        return F.cross_entropy(self.head(out).reshape(-1, 3), targets.reshape(-1))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_model_compiles_to_one_scan_per_layer_and_direction(bidirectional):
    tracefuse.manual_seed(2)
    model = Encoder(bidirectional).double()
    tokens = tracefuse.randint(0, 11, (4, 3))
    targets = tracefuse.randint(0, 3, (4, 3))
    eager = model(tokens, targets)
    eager.backward()
    eager_grads = _grads(model)
    model.zero_grad()
    report = tracefuse.explain(model, tokens, targets)
    ops = [n.op for n in report.optimized.nodes]
    assert ops.count("lstm_layer") == 2 * (2 if bidirectional else 1)
    assert not {"sigmoid", "tanh"} & set(ops)
    assert "encoder" not in str(report.graph)  # scopes are module paths such as 'lstm', 'head'
    assert re.search(r"= lstm_layer\(.*# lstm test_compile\.py:\d+", str(report.graph))
    compiled = tracefuse.compile(model)
    compiled(tokens, targets)  # traces on this batch; the check below replays on another
    tokens, targets = tracefuse.randint(0, 11, (4, 3)), tracefuse.randint(0, 3, (4, 3))
    model.zero_grad()
    eager = model(tokens, targets)
    eager.backward()
    eager_grads = _grads(model)
    model.zero_grad()
    loss = compiled(tokens, targets)
    np.testing.assert_allclose(loss.item(), eager.item(), rtol=1e-12)
    loss.backward()
    for name, g in _grads(model).items():
        np.testing.assert_allclose(g, eager_grads[name], rtol=1e-10, atol=1e-12)
    assert len(compiled_callable(compiled).entries) == 1, compiled_callable(compiled).recompiles


def test_packed_sequence_lengths_become_value_guards():
    tracefuse.manual_seed(3)
    lstm = nn.LSTM(4, 5).double()

    @tracefuse.compile
    def run(x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out)[0], h

    x = tracefuse.randn(6, 3, 4, dtype=tracefuse.float64)
    for lengths in ([6, 2, 4], [6, 2, 4], [3, 5, 1]):
        lengths = tracefuse.tensor(lengths)
        out, h = run(x, lengths)
        ref_out, (ref_h, _) = lstm(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
        np.testing.assert_array_equal(out.detach().numpy(),
                                      nn.utils.rnn.pad_packed_sequence(ref_out)[0].detach().numpy())
        np.testing.assert_array_equal(h.detach().numpy(), ref_h.detach().numpy())
    cache = compiled_callable(run)
    assert len(cache.entries) == 2
    assert str(cache.recompiles[-1]).startswith("guard failed: values of lengths")


def test_buffers_updated_in_place_are_written_back():
    tracefuse.manual_seed(4)
    bn = nn.BatchNorm1d(3).double()
    twin = nn.BatchNorm1d(3).double()
    compiled = tracefuse.compile(bn)
    for _ in range(3):
        x = tracefuse.randn(8, 3, dtype=tracefuse.float64)
        np.testing.assert_allclose(compiled(x).detach().numpy(), twin(x).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), twin.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), twin.running_var.numpy(), rtol=1e-12)
    assert bn.num_batches_tracked.item() == 3


def test_decorator_forms_and_module_class():
    @tracefuse.compile
    def f(x, scale=2.0):
        return (x * scale).tanh()

    @tracefuse.compile(fallback="eager")
    def g(x):
        return x.exp()

    x = tracefuse.randn(4)
    np.testing.assert_array_equal(f(x).numpy(), (x * 2.0).tanh().numpy())
    f(x, scale=3.0)
    assert str(compiled_callable(f).recompiles[-1]).startswith("guard failed: arguments")
    np.testing.assert_array_equal(g(x).numpy(), x.exp().numpy())

    CompiledHead = tracefuse.compile(Head)
    model = CompiledHead().double()
    y = model(tracefuse.randn(2, 6, dtype=tracefuse.float64))
    assert y.shape == (2, 4) and compiled_callable(model) is not None


def test_data_dependent_control_flow_is_an_error_naming_the_line():
    def branchy(x):
        if x.sum() > 0:  # data-dependent
            return x * 2
        return x

    compiled = tracefuse.compile(branchy)
    with pytest.raises(TracingError, match=r"item\(\) reads the values of a traced tensor at test_compile\.py:\d+.*"
                                           r"tracefuse\.where"):
        compiled(tracefuse.ones(3))


def test_fallback_eager_warns_once_and_runs_eagerly():
    def branchy(x):
        return x * 2 if x.sum() > 0 else x

    compiled = tracefuse.compile(branchy, fallback="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compiled(tracefuse.ones(3)).tolist() == [2.0, 2.0, 2.0]
        assert compiled(-tracefuse.ones(3)).tolist() == [-1.0, -1.0, -1.0]
    assert len([w for w in caught if "fallback='eager'" in str(w.message)]) == 1
    assert compiled_callable(compiled).fallbacks


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


def _train_step(model, optimizer):
    def step(x, y):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        optimizer.step()
        return loss
    return step


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: tracefuse.optim.Adam(ps, lr=0.01),
    lambda ps: tracefuse.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
])
def test_whole_training_step_compiles_and_matches_eager(make_optimizer):
    tracefuse.manual_seed(5)
    model, twin = Tagger().double(), Tagger().double()
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = make_optimizer(model.parameters()), make_optimizer(twin.parameters())
    compiled = tracefuse.compile(_train_step(model, opt))
    eager = _train_step(twin, twin_opt)
    for _ in range(4):  # warm-up (eager, creates optimizer state), trace, replay, replay
        x = tracefuse.randn(5, 2, 4, dtype=tracefuse.float64)
        y = tracefuse.randint(0, 3, (5, 2))
        loss, twin_loss = compiled(x, y), eager(x, y)
        np.testing.assert_allclose(loss.item(), twin_loss.item(), rtol=1e-12)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    cache = compiled_callable(compiled)
    assert cache.warmups == 1 and len(cache.entries) == 1
    ops = [n.op for n in cache.entries[0].captured.forward.nodes]
    assert ops.count("multi_tensor_norm") == 1 and ops.count("multi_tensor_scale") == 1
    assert ops.count("lstm_layer") == 4 and ops.count("lstm_layer_backward") == 4
    for group in opt.param_groups:
        group["lr"] = 0.001
    compiled(x, y)
    assert "param_groups" in str(cache.recompiles[-1])


def test_in_place_update_of_a_view_of_an_input_is_refused():
    @tracefuse.compile
    def poke(x):
        x[0].add_(1)
        return x

    with pytest.raises(TracingError, match="in-place update of a view"):
        poke(tracefuse.zeros(2, 2))


def test_non_tensor_outputs_are_refused():
    @tracefuse.compile
    def weird(x):
        return x, object()

    with pytest.raises(TracingError, match="returns a Python object"):
        weird(tracefuse.zeros(2))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        tracefuse.compile(lambda x: x, backend="cuda-magic")
    with pytest.raises(ValueError, match="fallback must be one of"):
        tracefuse.compile(lambda x: x, fallback="maybe")
    with pytest.raises(TypeError, match="expects a Module, a Module class or a function"):
        tracefuse.compile(3)


def test_recompile_limit():
    compiled = tracefuse.compile(lambda x: x + 1, options={"recompile_limit": 2})
    compiled(tracefuse.zeros(1))
    compiled(tracefuse.zeros(2))
    with pytest.raises(TracingError, match=r"recompile limit \(2\) reached .* guard failed: L\['x'\].shape"):
        compiled(tracefuse.zeros(3))


def test_explain_report_and_dump(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEFUSE_DUMP", "graph,optimized,kernels,guards")
    monkeypatch.setenv("TRACEFUSE_DUMP_DIR", str(tmp_path))
    model = Head().double()
    report = tracefuse.explain(model, tracefuse.randn(3, 6, dtype=tracefuse.float64))
    text = str(report)
    assert "== graph (as traced) ==" in text and "== optimized ==" in text and "== guards ==" in text
    assert report.kernels == {} and report.kernel_count >= 1
    assert report.guards["L['x'].shape"] == (3, 6)
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert {"graph.txt", "graph.dot", "optimized.txt", "optimized.dot", "optimized.json", "guards.txt",
            "kernels.txt", "passes.txt"} <= files


def test_rebinding_module_state_during_a_call_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", tracefuse.zeros(()))

        def forward(self, x):
            self.seen = self.seen + x.shape[0]  # rebinds the buffer instead of updating it
            return x * 2

    with pytest.raises(TracingError, match="replaced buffer 'seen' of Counter with a new tensor"):
        tracefuse.compile(Counter())(tracefuse.ones(3))


def test_constants_that_compare_equal_but_differ_retrace():
    @tracefuse.compile
    def scaled(x, s):
        return x * s

    ints = tracefuse.tensor([1, 2])
    assert scaled(ints, 1).dtype is tracefuse.int64
    assert scaled(ints, 1.0).dtype is tracefuse.float32
    ones = tracefuse.ones(2)
    assert (ones / scaled(ones, 0.0)).tolist() == [float("inf")] * 2
    assert (ones / scaled(ones, -0.0)).tolist() == [float("-inf")] * 2


def test_gradients_accumulate_across_compiled_steps_without_zero_grad():
    tracefuse.manual_seed(6)
    model, twin = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    twin.load_state_dict(model.state_dict())

    @tracefuse.compile
    def step(x):
        loss = model(x).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(4):
        x = tracefuse.randn(4, 3, dtype=tracefuse.float64)
        step(x)
        twin(x).pow(2).sum().backward()
        np.testing.assert_allclose(model.weight.grad.numpy(), twin.weight.grad.numpy(), rtol=1e-12)
    assert re.fullmatch(r"guard failed: \w+\.grad is None: True -> False", str(compiled_callable(step).recompiles[0]))


def test_view_taken_before_an_in_place_update_is_refused():
    @tracefuse.compile
    def stale(x):
        v = x[0]
        x.add_(1)
        return v * 1

    with pytest.raises(TracingError, match="updated in place after it was made"):
        stale(tracefuse.zeros(2, 2))


def test_in_place_updates_through_aliases_and_aliased_arguments():
    @tracefuse.compile
    def through_detach(x):
        x.detach().add_(1)
        return x * 1

    a = tracefuse.zeros(2)
    for expected in (1.0, 2.0, 3.0):
        assert through_detach(a).tolist() == [expected] * 2 and a.tolist() == [expected] * 2

    @tracefuse.compile
    def two(a, b):
        a.add_(1)
        return b * 2

    x, y, z = tracefuse.zeros(2), tracefuse.zeros(2), tracefuse.zeros(2)
    assert two(x, x).tolist() == [2.0, 2.0]
    assert two(y, z).tolist() == [0.0, 0.0] and y.tolist() == [1.0, 1.0]
    assert str(compiled_callable(two).recompiles[-1]).startswith("guard failed: argument aliasing")


def test_results_that_view_a_folded_constant_are_fresh_tensors():
    @tracefuse.compile
    def with_constant(x):
        return x + 1, tracefuse.zeros(2, 2)[0]

    with_constant(tracefuse.ones(1))[1].add_(5)
    assert with_constant(tracefuse.ones(1))[1].tolist() == [0.0, 0.0]


def test_compiled_backward_checks_inputs_were_not_modified_and_refuses_double_backward():
    model = nn.Linear(3, 2).double()
    compiled = tracefuse.compile(model)
    x = tracefuse.randn(2, 3, dtype=tracefuse.float64)
    out = compiled(x)
    x.mul_(2)  # the weight's gradient reads x
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    x.requires_grad_(True)
    loss = compiled(x).pow(2).sum()
    with pytest.raises(RuntimeError, match="double backward .* through a compiled call is not supported"):
        tracefuse.autograd.grad(loss, x, create_graph=True)


def _eager_and_compiled_grads(fn, make_input, calls=3):
    """Gradients of fn's scalar result w.r.t. its argument, eager and compiled, per call."""
    compiled = tracefuse.compile(fn)
    results = []
    for i in range(calls):
        a, b = make_input(i).requires_grad_(True), make_input(i).requires_grad_(True)
        fn(a).backward()
        compiled(b).backward()
        results.append((a.grad.numpy().copy(), b.grad.numpy().copy()))
    return results


def test_gradient_barriers_custom_functions_and_hooks_survive_compilation():
    class StraightThrough(tracefuse.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.round()

        @staticmethod
        def backward(ctx, g):
            return g

    def barriers(x):
        with tracefuse.no_grad():
            s = x.sum()
        return (x * s).sum() + (x * x.detach()).sum()

    def custom(x):
        return (StraightThrough.apply(x) * 2).sum()

    def hooked(x):
        y = x * 2
        y.register_hook(lambda g: g * 10)
        return y.sum()

    for fn in (barriers, custom, hooked):
        for eager, compiled in _eager_and_compiled_grads(fn, lambda i: tracefuse.tensor([1.0, 2.0, 3.0 + i])):
            np.testing.assert_allclose(compiled, eager, rtol=1e-12, err_msg=fn.__name__)


def test_parameter_hooks_run_once_and_can_be_removed_after_compiling():
    model = nn.Linear(2, 1).double()
    compiled = tracefuse.compile(model)
    handle = model.weight.register_hook(lambda g: g * 10)
    x = tracefuse.ones(1, 2, dtype=tracefuse.float64)
    compiled(x).sum().backward()
    np.testing.assert_allclose(model.weight.grad.numpy(), [[10.0, 10.0]])
    handle.remove()
    model.zero_grad()
    compiled(x).sum().backward()
    np.testing.assert_allclose(model.weight.grad.numpy(), [[1.0, 1.0]])


def test_setting_data_or_requires_grad_of_a_traced_tensor_is_refused():
    w = tracefuse.ones(3)

    @tracefuse.compile
    def rebind(x):
        w.data = w.data * 2
        return x * w

    with pytest.raises(TracingError, match="setting .data of a traced tensor"):
        rebind(tracefuse.ones(3))

    @tracefuse.compile
    def toggle(x):
        x.requires_grad_(True)
        return x.sum()

    with pytest.raises(TracingError, match="setting requires_grad of a traced tensor"):
        toggle(tracefuse.ones(3))


def test_grad_assigned_inside_a_compiled_function_is_fresh_each_call():
    w_eager, w_compiled = tracefuse.ones(3, requires_grad=True), tracefuse.ones(3, requires_grad=True)

    def make(w):
        def f(x):
            w.grad = tracefuse.zeros(3)
            return (w * x).sum()
        return f

    eager, compiled = make(w_eager), tracefuse.compile(make(w_compiled))
    for i in range(3):
        x = tracefuse.full((3,), float(i + 1))
        eager(x).backward()
        compiled(x).backward()
        assert w_compiled.grad.tolist() == w_eager.grad.tolist() == [float(i + 1)] * 3


def test_value_guard_records_the_value_the_call_started_with():
    @tracefuse.compile
    def bump(x, n):
        n.add_(1)
        return x * n.item()

    n = tracefuse.tensor(0)
    assert [bump(tracefuse.ones(1), n).item() for _ in range(3)] == [1.0, 2.0, 3.0]


def test_reloaded_or_cleared_optimizer_state_retraces():
    tracefuse.manual_seed(7)
    model, twin = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = tracefuse.optim.Adam(model.parameters(), lr=0.1), tracefuse.optim.Adam(twin.parameters(), lr=0.1)

    def make(m, o):
        def step(x):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
        return step

    compiled, eager = tracefuse.compile(make(model, opt)), make(twin, twin_opt)
    xs = [tracefuse.randn(4, 3, dtype=tracefuse.float64) for _ in range(8)]
    for x in xs[:3]:
        compiled(x), eager(x)
    checkpoint, twin_checkpoint = opt.state_dict(), twin_opt.state_dict()
    for x in xs[3:5]:
        compiled(x), eager(x)
    opt.load_state_dict(checkpoint)
    twin_opt.load_state_dict(twin_checkpoint)
    for x in xs[5:7]:
        compiled(x), eager(x)
    opt.state.clear()
    twin_opt.state.clear()
    compiled(xs[7]), eager(xs[7])
    np.testing.assert_allclose(model.weight.detach().numpy(), twin.weight.detach().numpy(), rtol=1e-12)
    assert any("Adam.state" in str(r) for r in compiled_callable(compiled).recompiles)


def test_objects_and_numpy_scalars_as_arguments():
    model = nn.Linear(2, 1).double()

    @tracefuse.compile
    def apply(m, x, scale):
        return m(x).sum() * scale

    x = tracefuse.ones(3, 2, dtype=tracefuse.float64)
    assert apply(model, x, np.float32(2)).item() == pytest.approx(model(x).sum().item() * 2)
    other = nn.Linear(2, 1).double()
    assert apply(other, x, np.float32(2)).item() == pytest.approx(other(x).sum().item() * 2)
    assert len(compiled_callable(apply).entries) == 2


def test_returning_an_input_updated_in_place_returns_that_tensor():
    @tracefuse.compile
    def double(x):
        x.mul_(2)
        return x

    x = tracefuse.ones(2)
    for expected in (2.0, 4.0):
        out = double(x)
        assert out is x and x.tolist() == [expected] * 2


def test_boolean_mask_assignment_replays_for_any_number_of_selected_elements():
    @tracefuse.compile
    def clear(x, mask):
        x[mask] = 0.0
        return x * 1

    for k in (2, 3, 5):
        x = tracefuse.arange(6.0)
        assert clear(x.clone(), x < k).tolist() == [0.0] * k + list(map(float, range(k, 6)))


def test_module_attributes_of_any_kind_are_guarded():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.scales, self._offset = tracefuse.relu, [2.0], {"b": 0.0}

        def forward(self, x):
            return self.act(x) * self.scales[0] + self._offset["b"]

    model = Scaled()
    compiled = tracefuse.compile(model)
    x = tracefuse.tensor([-1.0, 1.0])
    for change in (lambda: None, lambda: setattr(model, "act", tracefuse.tanh),
                   lambda: setattr(model, "scales", [5.0]), lambda: setattr(model, "_offset", {"b": 1.0})):
        change()
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert len(compiled_callable(compiled).entries) == 4


def test_enable_grad_inside_a_compiled_call_under_no_grad():
    w = tracefuse.ones(2, requires_grad=True)

    @tracefuse.compile
    def f(x):
        with tracefuse.enable_grad():
            return (x * w).sum()

    for scale in (1.0, 2.0):
        with tracefuse.no_grad():
            out = f(tracefuse.full((2,), scale))
        assert out.requires_grad
        w.grad = None
        out.backward()
        assert w.grad.tolist() == [scale, scale]


def test_forward_hooks_warn_that_side_effects_are_not_replayed():
    model = nn.Linear(2, 2)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o))
    with pytest.warns(UserWarning, match="forward hooks of self run while tracing only"):
        tracefuse.compile(model)(tracefuse.ones(1, 2))
    assert len(seen) == 1


def test_gradients_made_outside_are_read_live_by_compiled_code():
    w = tracefuse.ones(3, requires_grad=True)
    opt = tracefuse.optim.SGD([w], lr=1.0)
    step = tracefuse.compile(opt.step)
    norm = tracefuse.compile(lambda: w.grad.norm())
    for i in range(1, 4):
        w.grad = None
        (w * float(i)).sum().backward()
        assert norm().item() == pytest.approx(i * 3 ** 0.5)
        before = w.detach().numpy().copy()
        step()
        np.testing.assert_allclose(w.detach().numpy() - before, [-float(i)] * 3, rtol=1e-6)
    assert len(compiled_callable(step).entries) == 1


def test_boolean_mask_reads_of_data_are_data_dependent():
    @tracefuse.compile
    def positive_mean(x):
        return x[x > 0].mean()

    with pytest.raises(TracingError, match="boolean-mask indexing reads the values of a traced tensor"):
        positive_mean(tracefuse.tensor([1.0, -1.0, 3.0]))


def test_attributes_of_uncalled_submodules_and_config_objects_are_guarded():
    from types import SimpleNamespace

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Identity()
            self.head.k = 2.0
            self.cfg = SimpleNamespace(scale=3.0)

        def forward(self, x):
            return x * self.head.k * self.cfg.scale

    model = Model()
    compiled = tracefuse.compile(model)
    x = tracefuse.ones(1)
    for change in (lambda: None, lambda: setattr(model.head, "k", 5.0), lambda: setattr(model.cfg, "scale", 1.0)):
        change()
        assert compiled(x).item() == model(x).item()


def test_returning_a_view_of_an_input_updated_in_place_is_refused():
    @tracefuse.compile
    def flat_double(x):
        return x.mul_(2).view(-1)

    with pytest.raises(TracingError, match="returns a view of a tensor it updated in place"):
        flat_double(tracefuse.ones(2, 2))


def test_first_compiled_call_draws_the_same_random_numbers_as_eager():
    eager, compiled = nn.Dropout(0.5), tracefuse.compile(nn.Dropout(0.5))
    for seed in range(3):
        tracefuse.manual_seed(seed)
        expected = eager(tracefuse.ones(16)).tolist()
        tracefuse.manual_seed(seed)
        assert compiled(tracefuse.ones(16)).tolist() == expected


def test_gradients_of_tensor_arguments_are_traced():
    """clip_grad_norm_ over parameters passed as an argument reads and updates their .grad."""
    params = [tracefuse.randn(3, requires_grad=True) for _ in range(3)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    for p, q in zip(params, twins):
        p.grad = tracefuse.randn(3)
        q.grad = p.grad.clone()
    clip = tracefuse.compile(lambda ps: tracefuse.nn.utils.clip_grad_norm_(ps, max_norm=0.5))
    for _ in range(3):
        total, expected = clip(params), tracefuse.nn.utils.clip_grad_norm_(twins, max_norm=0.5)
        assert total.item() == expected.item() > 0
        for p, q in zip(params, twins):
            assert p.grad.equal(q.grad)
            p.grad.mul_(3)
            q.grad.mul_(3)
    params[1].grad = None
    twins[1].grad = None
    assert clip(params).item() == tracefuse.nn.utils.clip_grad_norm_(twins, max_norm=0.5).item()
    assert "L['ps'][1].grad is None" in str(compiled_callable(clip).recompiles[-1])
