"""state_dict / load_state_dict against torch: keys, values, round trips, errors, strict=False, assign."""
import numpy as np
import pytest
import torch

import tracefuse
from tests.conftest import assert_same, to_torch, same_error


def model(lib, seed=0, dtype="float32"):
    """Parameters, persistent and non-persistent buffers, a None parameter, nested and shared modules."""
    nn = lib.nn
    rng = np.random.default_rng(seed)
    dt = getattr(lib, dtype)

    class Affine(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight = nn.Parameter(lib.tensor(rng.standard_normal((n_out, n_in)), dtype=dt))
            self.bias = nn.Parameter(lib.tensor(rng.standard_normal(n_out), dtype=dt))
            self.register_buffer("steps", lib.tensor([seed], dtype=lib.int64))
            self.register_buffer("scratch", lib.zeros(2, dtype=dt), persistent=False)

        def forward(self, x):
            return (x @ self.weight.t() + self.bias).tanh()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(lib.tensor(rng.standard_normal(()), dtype=dt))
            self.unused = None
            self.register_parameter("absent", None)
            self.register_buffer("mean", lib.tensor(rng.standard_normal(3), dtype=dt))
            self.body = nn.Module()
            self.body.first = Affine(3, 4)
            self.body.second = Affine(4, 2)
            self.head = Affine(2, 1)
            self.alias = self.head  # a module reachable twice: its entries appear under both names

        def forward(self, x):
            return self.head(self.body.second(self.body.first(x - self.mean))) * self.scale

    return Net()


def keys_of(sd):
    return list(sd.keys())


def test_keys_order_and_metadata_match_torch():
    ours, theirs = model(tracefuse).state_dict(), model(torch).state_dict()
    assert keys_of(ours) == keys_of(theirs)
    assert keys_of(ours) == ["scale", "mean", "body.first.weight", "body.first.bias", "body.first.steps",
                             "body.second.weight", "body.second.bias", "body.second.steps", "head.weight",
                             "head.bias", "head.steps", "alias.weight", "alias.bias", "alias.steps"]
    assert dict(ours._metadata) == dict(theirs._metadata)
    assert type(ours).__name__ == "OrderedDict"


def test_values_are_detached_and_share_storage():
    m = model(tracefuse)
    sd = m.state_dict()
    assert_same(list(sd.values()), list(model(torch).state_dict().values()))
    w = sd["body.first.weight"]
    assert type(w) is tracefuse.Tensor and not w.requires_grad and w.is_leaf
    with tracefuse.no_grad():
        w.fill_(3.0)
    assert float(m.body.first.weight.sum()) == 36.0  # same storage as the parameter
    kept = m.state_dict(keep_vars=True)
    assert kept["body.first.weight"] is m.body.first.weight and kept["mean"] is m.mean


def test_destination_and_prefix():
    def run(lib, positional):
        m = model(lib)
        dest = {}
        if positional:
            with pytest.warns(FutureWarning, match="Positional args are being deprecated"):
                out = m.body.state_dict(dest, "model.body.")
        else:
            out = m.body.state_dict(destination=dest, prefix="model.body.")
        return out is dest, keys_of(dest)

    for positional in (False, True):
        assert run(tracefuse, positional) == run(torch, positional)


def test_round_trip_between_models():
    src, dst = model(tracefuse, seed=1), model(tracefuse, seed=2)
    params = list(dst.parameters())
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert repr(result) == repr(model(torch).load_state_dict(model(torch, seed=3).state_dict()))
    assert list(dst.parameters()) == params  # loaded in place
    for (name, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    x = tracefuse.tensor(np.linspace(-1, 1, 6).reshape(2, 3), dtype=tracefuse.float32)
    np.testing.assert_array_equal(src(x).detach().numpy(), dst(x).detach().numpy())


def test_load_torch_weights_gives_torch_outputs():
    ours, theirs = model(tracefuse, seed=5, dtype="float64"), model(torch, seed=7, dtype="float64")
    ours.load_state_dict({k: tracefuse.tensor(v.numpy()) for k, v in theirs.state_dict().items()})
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    out_ours = ours(tracefuse.tensor(x))
    out_theirs = theirs(torch.tensor(x))
    out_ours.sum().backward()
    out_theirs.sum().backward()
    assert_same([out_ours] + [p.grad for p in ours.parameters()],
                [out_theirs] + [p.grad for p in theirs.parameters()], rtol=1e-12, atol=1e-12)


def test_load_converts_dtype_and_keeps_leaves():
    m = model(tracefuse).double()
    src = model(tracefuse, seed=9)  # float32 values
    m.load_state_dict(src.state_dict())
    w = m.body.first.weight
    assert w.dtype is tracefuse.float64 and w.requires_grad and w.is_leaf and w.grad_fn is None
    np.testing.assert_array_equal(w.detach().numpy(), src.body.first.weight.detach().numpy().astype(np.float64))
    assert m.body.first.steps.dtype is tracefuse.int64 and m.body.first.steps.tolist() == [9]


def test_scalar_parameter_from_one_element_checkpoint():
    def run(lib):
        m = model(lib)
        sd = m.state_dict()
        sd["scale"] = lib.tensor([2.5])
        m.load_state_dict(sd)
        return float(m.scale.detach()), tuple(m.scale.shape)

    assert run(tracefuse) == run(torch) == (2.5, ())


def _edit(lib, drop=(), add=(), resize=(), strict=True):
    m = model(lib)
    sd = m.state_dict()
    for k in drop:
        del sd[k]
    for k in add:
        sd[k] = lib.zeros(1)
    for k in resize:
        sd[k] = lib.zeros(*[n + 1 for n in sd[k].shape])
    return m.load_state_dict(sd, strict=strict)


@pytest.mark.parametrize("edit", [
    dict(drop=["head.bias"]),
    dict(drop=["mean", "body.second.weight"]),
    dict(add=["extra"]),
    dict(add=["body.first.extra", "nothing.here", "head.weight.sub"]),
    dict(resize=["body.first.weight"]),
    dict(resize=["mean", "head.bias"]),
    dict(drop=["scale"], add=["extra"], resize=["body.second.bias"]),
])
def test_load_errors_match_torch(edit):
    kind, message = same_error(lambda lib: _edit(lib, **edit))
    assert kind == "RuntimeError" and message.startswith("Error(s) in loading state_dict for Net:\n\t")


def test_load_error_texts():
    _, message = same_error(lambda lib: _edit(lib, drop=["head.bias"], add=["extra"], resize=["body.first.weight"]))
    assert message == (
        'Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "head.bias". '
        '\n\tUnexpected key(s) in state_dict: "extra". \n\tsize mismatch for body.first.weight: copying a param '
        "with shape tracefuse.Size([5, 4]) from checkpoint, the shape in current model is tracefuse.Size([4, 3]).")


@pytest.mark.parametrize("edit", [dict(drop=["head.bias", "mean"]), dict(add=["extra", "body.zz"]),
                                  dict(drop=["scale"], add=["body.first.weight.x"]), dict()])
def test_non_strict_reports_keys(edit):
    ours, theirs = _edit(tracefuse, strict=False, **edit), _edit(torch, strict=False, **edit)
    assert (ours.missing_keys, ours.unexpected_keys) == (theirs.missing_keys, theirs.unexpected_keys)
    assert repr(ours) == repr(theirs) and ours == theirs
    assert type(ours).__name__ == "_IncompatibleKeys" and ours._fields == ("missing_keys", "unexpected_keys")


def test_non_strict_still_rejects_size_mismatch():
    same_error(lambda lib: _edit(lib, resize=["head.weight"], strict=False))


@pytest.mark.parametrize("bad", ["list", "tensor_value", "array_value"])
def test_load_type_errors(bad):
    def run(lib):
        m = model(lib)
        if bad == "list":
            m.load_state_dict(list(m.state_dict().items()))
        sd = m.state_dict()
        sd["mean"] = [1.0, 2.0, 3.0] if bad == "tensor_value" else np.zeros(3)
        m.load_state_dict(sd)

    kind, message = same_error(run)
    if bad == "list":
        assert (kind, message) == ("TypeError", "Expected state_dict to be dict-like, got <class 'list'>.")


def test_assign_replaces_parameters():
    def run(lib):
        m = model(lib)
        old = m.body.first.weight
        sd = model(lib, seed=4).state_dict()
        m.load_state_dict(sd, assign=True)
        w = m.body.first.weight
        return (w is not old, type(w).__name__, w.requires_grad, m.mean is sd["mean"],
                w.detach().tolist() == sd["body.first.weight"].tolist())

    assert run(tracefuse) == run(torch) == (True, "Parameter", True, True, True)


def test_state_dict_values_convert_to_torch():
    ours, theirs = model(tracefuse, seed=3).state_dict(), model(torch, seed=3).state_dict()
    for key in theirs:
        torch.testing.assert_close(to_torch(ours[key]), theirs[key], rtol=0, atol=0)


def test_missing_key_message_for_simple_module():
    def run(lib):
        class Linear(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = lib.nn.Parameter(lib.zeros(3, 3))
                self.bias = lib.nn.Parameter(lib.zeros(3))

        Linear().load_state_dict({"weight": lib.zeros(3, 3)})

    assert same_error(run) == ("RuntimeError", 'Error(s) in loading state_dict for Linear:\n\t'
                                               'Missing key(s) in state_dict: "bias". ')
