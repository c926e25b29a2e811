"""nn.Module and nn.Parameter against torch: registration, iteration, modes, conversion, printing.

Every test builds the same structure with `torch` and with `tracefuse` (the `lib` argument of the
builders) and compares what both report; messages are compared with torch's names spelled
`tracefuse`.
"""
import copy
import re

import numpy as np
import pytest
import torch

import tracefuse
from tests.conftest import assert_same, same_error

LIBS = (torch, tracefuse)


def classes(lib):
    """Small modules defined the same way on both sides: weights from fixed NumPy arrays."""
    nn = lib.nn

    class Affine(nn.Module):
        def __init__(self, n_in, n_out, seed=0):
            super().__init__()
            rng = np.random.default_rng(seed)
            self.n_in, self.n_out = n_in, n_out
            self.weight = nn.Parameter(lib.tensor(rng.standard_normal((n_out, n_in)), dtype=lib.float32))
            self.bias = nn.Parameter(lib.tensor(rng.standard_normal(n_out), dtype=lib.float32))
            self.register_buffer("count", lib.zeros(1, dtype=lib.int64))
            self.register_buffer("scale", lib.ones(n_out))
            self.register_buffer("cache", lib.zeros(2), persistent=False)

        def forward(self, x):
            return x @ self.weight.t() + self.bias

        def extra_repr(self):
            return f"in_features={self.n_in}, out_features={self.n_out}"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Affine(3, 4, seed=1)
            self.hidden = lib.zeros(2)  # a plain tensor: not registered
            self.gain = nn.Parameter(lib.ones(4))
            self.block = nn.Module()
            self.block.inner = Affine(4, 2, seed=2)
            self.block.tied = self.encoder  # shared: listed once
            self.head = Affine(2, 2, seed=3)

        def forward(self, x):
            return self.head(self.block.inner(self.encoder(x) * self.gain))

    return Affine, Net


def net(lib):
    return classes(lib)[1]()


# --- Parameter ------------------------------------------------------------------------------

def test_parameter_is_a_leaf_sharing_its_data():
    data = tracefuse.zeros(2, 3)
    p = tracefuse.nn.Parameter(data)
    assert isinstance(p, tracefuse.Tensor) and isinstance(p, tracefuse.nn.Parameter)
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    with tracefuse.no_grad():
        data.add_(2.0)
    np.testing.assert_array_equal(p.detach().numpy(), np.full((2, 3), 2.0, np.float32))
    assert not tracefuse.nn.Parameter(data, requires_grad=False).requires_grad
    assert tuple(tracefuse.nn.Parameter().shape) == tuple(torch.nn.Parameter().shape) == (0,)


def test_parameter_of_integers_cannot_require_grad():
    assert same_error(lambda lib: lib.nn.Parameter(lib.tensor([1, 2]))) == (
        "RuntimeError", "Only Tensors of floating point and complex dtype can require gradients")
    p = tracefuse.nn.Parameter(tracefuse.tensor([1, 2]), requires_grad=False)
    assert p.dtype is tracefuse.int64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_parameter_repr(dtype, requires_grad):
    values = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]])

    def make(lib):
        return repr(lib.nn.Parameter(lib.tensor(values, dtype=getattr(lib, dtype)), requires_grad=requires_grad))

    assert make(tracefuse) == make(torch).replace("torch.", "tracefuse.")


def test_parameter_deepcopy_copies_storage():
    p = tracefuse.nn.Parameter(tracefuse.ones(3), requires_grad=False)
    q = copy.deepcopy(p)
    assert type(q) is tracefuse.nn.Parameter and q is not p and not q.requires_grad
    with tracefuse.no_grad():
        q.add_(1.0)
    np.testing.assert_array_equal(p.numpy(), np.ones(3, np.float32))


def test_buffer_marker_registers_a_buffer():
    def build(lib):
        m = lib.nn.Module()
        m.kept = lib.nn.Buffer(lib.ones(2))
        m.dropped = lib.nn.Buffer(lib.zeros(1), persistent=False)
        return [n for n, _ in m.named_buffers()], list(m.state_dict())

    assert build(tracefuse) == build(torch) == (["kept", "dropped"], ["kept"])
    assert isinstance(tracefuse.nn.Buffer(tracefuse.ones(1)), tracefuse.nn.Buffer)
    assert not isinstance(tracefuse.ones(1), tracefuse.nn.Buffer)


# --- registration ---------------------------------------------------------------------------

def test_registration_order_and_names():
    def names(lib):
        m = net(lib)
        return ([n for n, _ in m.named_parameters()], [n for n, _ in m.named_buffers()],
                [n for n, _ in m.named_modules()], [n for n, _ in m.named_children()], list(m.state_dict()))

    ours = names(tracefuse)
    assert ours == names(torch)
    assert ours[0] == ["gain", "encoder.weight", "encoder.bias", "block.inner.weight", "block.inner.bias",
                       "head.weight", "head.bias"]


def test_plain_tensor_attribute_is_not_registered():
    m = net(tracefuse)
    assert "hidden" in m.__dict__ and all(n != "hidden" for n, _ in m.named_buffers())
    assert all(p is not m.hidden for p in m.parameters())


def test_duplicates_listed_once_unless_asked():
    def walk(lib):
        m = net(lib)
        m.block.again = m.block.inner  # a second path to the same module and parameters
        return ([n for n, _ in m.named_modules(remove_duplicate=False)],
                [n for n, _ in m.named_parameters(remove_duplicate=False)],
                [n for n, _ in m.named_modules(prefix="model")],
                len(list(m.parameters())), len(list(m.modules())), len(list(m.block.children())),
                [n for n, _ in m.named_parameters(prefix="p", recurse=False)],
                [n for n, _ in m.block.named_buffers(recurse=True)])

    ours = walk(tracefuse)
    assert ours == walk(torch)
    assert ours[3] == 7 and ours[4] == 5


def test_shared_parameter_listed_once():
    def build(lib):
        m = lib.nn.Module()
        m.a = lib.nn.Module()
        m.b = lib.nn.Module()
        m.a.w = m.b.w = lib.nn.Parameter(lib.ones(2))
        return [n for n, _ in m.named_parameters()], list(m.state_dict())

    assert build(tracefuse) == build(torch) == (["a.w"], ["a.w", "b.w"])


def test_getattr_returns_registered_members():
    m = net(tracefuse)
    assert m.gain is m._parameters["gain"]
    assert m.encoder.scale is m.encoder._buffers["scale"]
    assert m.block.inner is m.block._modules["inner"]
    assert same_error(lambda lib: net(lib).missing) == (
        "AttributeError", "'Net' object has no attribute 'missing'")


def test_assigning_a_tensor_over_a_parameter_raises():
    assert same_error(_assign_over_param) == (
        "TypeError", "cannot assign 'tracefuse.FloatTensor' as parameter 'weight' "
                     "(tracefuse.nn.Parameter or None expected)")


def _assign_over_param(lib):
    m = classes(lib)[0](2, 3)
    m.weight = lib.zeros(3, 2)


@pytest.mark.parametrize("case", ["module_over_module", "str_over_buffer", "int_param", "tensor_param",
                                  "nonleaf_param", "dot_buffer", "empty_buffer", "int_buffer_name",
                                  "existing_buffer", "existing_param", "dot_module", "empty_module",
                                  "not_a_module", "int_module_name", "existing_module", "param_before_init",
                                  "module_before_init", "buffer_before_init", "init_kwarg", "init_arg",
                                  "no_forward", "tensor_buffer_value",
                                  "module_over_param"])
def test_registration_errors(case):
    def run(lib):
        nn = lib.nn
        m = classes(lib)[1]()
        if case == "module_over_module":
            m.head = 3
        elif case == "str_over_buffer":
            m.encoder.scale = "x"
        elif case == "int_param":
            m.register_parameter("p", 3)
        elif case == "tensor_param":
            m.register_parameter("p", lib.zeros(1))
        elif case == "nonleaf_param":
            m.register_parameter("p", nn.Parameter(lib.ones(2)) * 2)
        elif case == "dot_buffer":
            m.register_buffer("a.b", lib.zeros(1))
        elif case == "empty_buffer":
            m.register_buffer("", lib.zeros(1))
        elif case == "int_buffer_name":
            m.register_buffer(1, lib.zeros(1))
        elif case == "existing_buffer":
            m.register_buffer("hidden", lib.zeros(1))
        elif case == "existing_param":
            m.register_parameter("forward", None)
        elif case == "dot_module":
            m.add_module("a.b", nn.Module())
        elif case == "empty_module":
            m.add_module("", nn.Module())
        elif case == "not_a_module":
            m.add_module("x", lib.zeros(1))
        elif case == "int_module_name":
            m.add_module(1, nn.Module())
        elif case == "existing_module":
            m.add_module("gain", nn.Module())
        elif case == "param_before_init":
            _uninitialised(nn).w = nn.Parameter(lib.ones(1))
        elif case == "module_before_init":
            _uninitialised(nn).sub = nn.Module()
        elif case == "buffer_before_init":
            _uninitialised(nn).register_buffer("b", lib.ones(1))
        elif case == "init_kwarg":
            nn.Module(foo=1)
        elif case == "init_arg":
            nn.Module(1, 2)
        elif case == "no_forward":
            nn.Module()(lib.ones(1))
        elif case == "module_over_param":
            m.gain = nn.Module()
        elif case == "tensor_buffer_value":
            m.register_buffer("b", [1.0])

    same_error(run)


def _uninitialised(nn):
    class Early(nn.Module):
        def __init__(self):  # forgets super().__init__()
            pass

    return Early()


def test_reassignment_moves_between_tables():
    def build(lib):
        m = classes(lib)[0](2, 2)
        m.scale = lib.nn.Parameter(lib.ones(2))  # buffer -> parameter
        m.bias = None  # parameter slot kept, now empty
        del m.weight
        m.weight = lib.nn.Module()  # a deleted parameter's name can hold a module
        m.count = None
        del m.cache
        return (list(m._parameters), list(m._buffers), list(m._modules), list(m.state_dict()),
                [n for n, _ in m.named_parameters()])

    assert build(tracefuse) == build(torch)


def test_buffer_reassignment_keeps_persistence():
    def build(lib):
        m = classes(lib)[0](2, 2)
        m.cache = lib.ones(3)  # stays non-persistent
        m.scale = lib.ones(3)
        m.register_buffer("scale", m.scale, persistent=False)  # flipped by re-registering
        m.register_buffer("cache", m.cache)
        return [n for n, _ in m.named_buffers()], list(m.state_dict()), m.cache.tolist()

    assert build(tracefuse) == build(torch)


def test_deepcopy_keeps_sharing_inside_the_copy():
    m = net(tracefuse)
    m.register_forward_hook(lambda mod, args, out: out * 2)
    c = copy.deepcopy(m)
    assert c.block.tied is c.encoder and c.encoder is not m.encoder
    assert c.gain is not m.gain and type(c.gain) is tracefuse.nn.Parameter
    assert repr(c) == repr(m) and list(c.state_dict()) == list(m.state_dict())
    x = tracefuse.ones(2, 3)
    np.testing.assert_array_equal(c(x).detach().numpy(), m(x).detach().numpy())


def test_delattr_and_dir():
    def probe(lib):
        m = net(lib)
        seq = lib.nn.Sequential(lib.nn.Module())
        listed = [k for k in dir(m) if k in ("gain", "encoder", "hidden", "training", "forward", "state_dict")]
        del m.gain, m.encoder, m.hidden
        gone = [hasattr(m, k) for k in ("gain", "encoder", "hidden")]
        return listed, gone, "0" in dir(seq), [n for n, _ in m.named_parameters()]

    ours = probe(tracefuse)
    assert ours == probe(torch)
    assert ours[0] == ["encoder", "forward", "gain", "hidden", "state_dict", "training"]


@pytest.mark.parametrize("target", ["", "block", "block.inner", "block.missing", "gain", "block.inner.weight",
                                    "block.inner.scale", "head.count", "gain.x", "block.inner.nope"])
def test_get_submodule_parameter_buffer(target):
    for getter in ("get_submodule", "get_parameter", "get_buffer"):
        def get(lib):
            m = net(lib)
            found = getattr(m, getter)(target)
            return [n for n, x in named_members(m) if x is found]

        try:
            expected = get(torch)
        except Exception:
            same_error(get)
        else:
            assert get(tracefuse) == expected


def named_members(m):
    return list(m.named_modules()) + list(m.named_parameters()) + list(m.named_buffers())


@pytest.mark.parametrize("target,strict", [("block.extra", False), ("block.inner", True), ("block.extra", True),
                                           ("", False), ("gain", False), ("head.weight", False)])
def test_set_submodule(target, strict):
    def run(lib):
        m = net(lib)
        m.set_submodule(target, lib.nn.Module(), strict=strict)
        return [n for n, _ in m.named_modules()]

    try:
        expected = run(torch)
    except Exception:
        same_error(run)
    else:
        assert run(tracefuse) == expected
    assert same_error(lambda lib: net(lib).set_submodule("block", 3)) == (
        "ValueError", "`module` is not an nn.Module, found <class 'int'>")


# --- modes, gradients, conversion -------------------------------------------------------------

def test_train_eval_propagate():
    m = net(tracefuse)
    assert m.training and m.block.inner.training
    assert m.eval() is m
    assert not any(x.training for x in m.modules())
    m.block.train()  # block holds the shared encoder too
    assert [x.training for x in m.modules()] == [False, True, True, True, False]
    assert same_error(lambda lib: net(lib).train("yes")) == ("ValueError", "training mode is expected to be boolean")


def test_zero_grad_and_requires_grad():
    def run(lib, set_to_none):
        m = net(lib)
        m(lib.ones(2, 3)).sum().backward()
        had = [p.grad is not None for p in m.parameters()]
        m.zero_grad(set_to_none=set_to_none)
        after = [None if p.grad is None else float(p.grad.abs().sum()) for p in m.parameters()]
        m.requires_grad_(False)
        return had, after, [p.requires_grad for p in m.parameters()]

    for set_to_none in (True, False):
        assert run(tracefuse, set_to_none) == run(torch, set_to_none)
    assert run(tracefuse, False)[1] == [0.0] * 7


def test_apply_visits_children_first():
    def visit(lib):
        seen = []
        m = net(lib)
        names = {mod: name for name, mod in m.named_modules()}
        assert m.apply(lambda mod: seen.append(names[mod])) is m
        return seen

    assert visit(tracefuse) == visit(torch)


@pytest.mark.parametrize("method,dtype", [("double", "float64"), ("half", "float16"), ("bfloat16", "bfloat16"),
                                          ("float", "float32")])
def test_dtype_conversion_keeps_parameter_identity(method, dtype):
    m = net(tracefuse).double()
    m(tracefuse.ones(2, 3, dtype=tracefuse.float64)).sum().backward()
    params = list(m.parameters())
    assert getattr(m, method)() is m
    assert [p for p in m.parameters()] == params  # the very same objects, as optimizers hold them
    target = getattr(tracefuse, dtype)
    assert all(p.dtype is target and p.grad.dtype is target for p in params)
    assert all(isinstance(p, tracefuse.nn.Parameter) and p.is_leaf and p.requires_grad for p in params)
    assert m.encoder.scale.dtype is target and m.encoder.cache.dtype is target
    assert m.encoder.count.dtype is tracefuse.int64  # integer state keeps its dtype
    assert m.hidden.dtype is tracefuse.float32  # not registered, not converted


def test_double_matches_torch_values():
    def run(lib):
        m = net(lib).double()
        x = lib.tensor(np.linspace(-1, 1, 6).reshape(2, 3), dtype=lib.float64)
        out = m(x)
        out.sum().backward()
        return [out] + [p.grad for p in m.parameters()]

    assert_same(run(tracefuse), run(torch), rtol=1e-12, atol=1e-12)


def test_to_variants():
    m = net(tracefuse)
    assert m.to(tracefuse.float64) is m and m.gain.dtype is tracefuse.float64
    m.to(dtype=tracefuse.float32)
    assert m.gain.dtype is tracefuse.float32
    m.to(tracefuse.zeros(1, dtype=tracefuse.float16))
    assert m.gain.dtype is tracefuse.float16 and m.encoder.count.dtype is tracefuse.int64
    m.to("cpu", tracefuse.float64)
    assert m.gain.dtype is tracefuse.float64 and str(m.gain.device) == "cpu"
    assert m.cpu() is m
    assert same_error(lambda lib: net(lib).to(lib.int64)) == (
        "TypeError", "nn.Module.to only accepts floating point or complex dtypes, but got desired "
                     "dtype=tracefuse.int64")


@pytest.mark.parametrize("move", [lambda m: m.cuda(), lambda m: m.cuda(1), lambda m: m.to("cuda"),
                                  lambda m: m.to(tracefuse.device("cuda", 0))])
def test_cuda_without_gpu_raises_clearly(move):
    m = net(tracefuse)
    with pytest.raises(RuntimeError, match=re.escape("no CUDA backend is available")):
        move(m)


# --- calling and printing -----------------------------------------------------------------------

def test_forward_values_match():
    def run(lib):
        m = net(lib)
        x = lib.tensor(np.linspace(-2, 2, 12).reshape(4, 3), dtype=lib.float32, requires_grad=True)
        out = m(x)
        (out * out).sum().backward()
        return [out, x.grad] + [p.grad for p in m.parameters()]

    assert_same(run(tracefuse), run(torch))


def test_repr_matches_torch():
    def build(lib):
        m = net(lib)
        m.empty = lib.nn.Module()
        m.nothing = None
        return repr(m)

    ours = build(tracefuse)
    assert ours == build(torch).replace("torch.", "tracefuse.")
    assert ours.startswith("Net(\n  (encoder): Affine(in_features=3, out_features=4)\n  (block): Module(\n")


def test_multiline_extra_repr_and_leaf_repr():
    def build(lib):
        class Cell(lib.nn.Module):
            def extra_repr(self):
                return "a=1\nb=2"

        outer = lib.nn.Module()
        outer.cell = Cell()
        return repr(Cell()), repr(outer), repr(lib.nn.Module())

    assert build(tracefuse) == build(torch)
