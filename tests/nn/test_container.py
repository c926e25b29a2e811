"""Sequential, ModuleList, ModuleDict, ParameterList and ParameterDict against torch.

Each test runs the same container operations with `lib` = torch and `lib` = tracefuse and
compares a description of the result: names, reprs (torch's names spelled tracefuse), values.
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import tracefuse


def raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value).__name__, str(info.value).replace("torch", "tracefuse")


def same(fn):
    """fn(lib) gives equal results, or equal errors, with torch and tracefuse."""
    try:
        theirs = fn(torch)
    except Exception:
        ours, theirs = raised(lambda: fn(tracefuse)), raised(lambda: fn(torch))
        assert ours == theirs
        return ours
    ours = fn(tracefuse)
    assert ours == _tracefuse_names(theirs)
    return ours


def _tracefuse_names(value):
    if isinstance(value, str):
        return value.replace("torch.", "tracefuse.")
    if isinstance(value, (list, tuple)):
        return type(value)(_tracefuse_names(v) for v in value)
    return value


def mul(lib, k):
    """A module y = x * k with k a float64 Parameter; printed as Mul(k=...)."""

    class Mul(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = lib.nn.Parameter(lib.tensor(float(k), dtype=lib.float64))

        def forward(self, x):
            return x * self.k

        def extra_repr(self):
            return f"k={float(self.k.detach())}"

    return Mul()


def describe(m):
    return repr(m), [n for n, _ in m.named_parameters()], [type(x).__name__ for x in m.children()]


def ks(container):
    return [float(m.k.detach()) for m in container]


# --- Sequential ---------------------------------------------------------------------------------

def seq(lib, n=4):
    return lib.nn.Sequential(*[mul(lib, k) for k in range(1, n + 1)])


def seq_dict(lib):
    return lib.nn.Sequential(OrderedDict([("double", mul(lib, 2)), ("act", lib.nn.Module()), ("triple", mul(lib, 3))]))


def test_sequential_forward_chains():
    def run(lib):
        x = lib.tensor([1.0, -2.0], dtype=lib.float64, requires_grad=True)
        s = seq(lib)
        out = s(x)
        out.sum().backward()
        return out.tolist(), x.grad.tolist(), [float(p.grad) for p in s.parameters()]

    assert same(run)[0] == [24.0, -48.0]


@pytest.mark.parametrize("op", [
    "describe", "dict", "len", "index", "neg_index", "bad_index", "bad_neg", "slice", "step_slice", "dict_slice",
    "setitem", "setitem_bad", "del", "del_neg", "del_slice", "del_dict", "pop", "pop_slice", "append", "insert",
    "insert_neg", "insert_end", "insert_bad_index", "insert_not_module", "extend", "add", "add_bad", "iadd",
    "iadd_bad", "mul", "rmul", "imul", "mul_zero", "mul_float", "dir", "iter", "float_index",
])
def test_sequential_operations(op):
    def run(lib):
        s = seq(lib)
        if op == "describe":
            return describe(s)
        if op == "dict":
            return describe(seq_dict(lib))
        if op == "len":
            return len(s), len(lib.nn.Sequential())
        if op == "index":
            return repr(s[1])
        if op == "neg_index":
            return repr(s[-1]), repr(seq_dict(lib)[-2])
        if op == "bad_index":
            return s[4]
        if op == "bad_neg":
            return s[-5]
        if op == "float_index":
            return s[1.0]
        if op == "slice":
            return describe(s[1:3]), type(s[1:3]).__name__
        if op == "step_slice":
            return describe(s[::-2])
        if op == "dict_slice":
            return describe(seq_dict(lib)[1:])
        if op == "setitem":
            s[-2] = mul(lib, 9)
            return describe(s)
        if op == "setitem_bad":
            s[0] = 3
        if op == "del":
            del s[1]
        if op == "del_neg":
            del s[-1]
        if op == "del_slice":
            del s[::2]
        if op == "del_dict":
            d = seq_dict(lib)
            del d[0]
            return describe(d)
        if op == "pop":
            return repr(s.pop(2)), describe(s)
        if op == "pop_slice":
            return describe(s.pop(slice(1, 3))), describe(s)
        if op == "append":
            assert s.append(mul(lib, 7)) is s
        if op == "insert":
            assert s.insert(1, mul(lib, 8)) is s
        if op == "insert_neg":
            s.insert(-1, mul(lib, 8))
        if op == "insert_end":
            s.insert(4, mul(lib, 8))
        if op == "insert_bad_index":
            s.insert(6, mul(lib, 8))
        if op == "insert_not_module":
            s.insert(0, 3)
        if op == "extend":
            assert s.extend([mul(lib, 5), mul(lib, 6)]) is s
        if op == "add":
            total = s + seq(lib, 2)
            return describe(total), type(total).__name__, len(s)
        if op == "add_bad":
            return s + [mul(lib, 1)]
        if op == "iadd":
            before = s
            s += seq(lib, 2)
            assert s is before
        if op == "iadd_bad":
            s += 3
        if op == "mul":
            return describe(seq(lib, 2) * 3)
        if op == "rmul":
            return describe(2 * seq(lib, 2))
        if op == "imul":
            s2 = seq(lib, 2)
            s2 *= 2
            return describe(s2)
        if op == "mul_zero":
            return s * 0
        if op == "mul_float":
            return s * 2.0
        if op == "dir":
            return [k for k in dir(s) if k.isdigit()], "append" in dir(s)
        if op == "iter":
            return ks(s)
        return describe(s)

    same(run)


# --- ModuleList ---------------------------------------------------------------------------------

def mlist(lib, ks_=(1, 1, 1, 2, 2, 3, 1)):
    return lib.nn.ModuleList([mul(lib, k) for k in ks_])


@pytest.mark.parametrize("op", [
    "describe", "empty", "none", "len", "index", "neg_index", "bad_index", "slice", "setitem", "setitem_neg",
    "setitem_bad", "del", "del_neg", "del_slice", "pop", "append", "extend", "extend_generator", "extend_bad",
    "insert", "insert_end", "iadd", "add", "iter", "dir", "nested", "call", "single",
])
def test_module_list_operations(op):
    def run(lib):
        m = mlist(lib)
        if op == "empty":
            return describe(lib.nn.ModuleList())
        if op == "none":
            return describe(lib.nn.ModuleList(None))
        if op == "len":
            return len(m)
        if op == "index":
            return repr(m[3])
        if op == "neg_index":
            return repr(m[-2])
        if op == "bad_index":
            return m[7]
        if op == "slice":
            return describe(m[2:5]), type(m[1:]).__name__
        if op == "setitem":
            m[0] = mul(lib, 5)
        if op == "setitem_neg":
            m[-1] = mul(lib, 5)
        if op == "setitem_bad":
            m[10] = mul(lib, 5)
        if op == "del":
            del m[2]
        if op == "del_neg":
            del m[-3]
        if op == "del_slice":
            del m[1::3]
        if op == "pop":
            return repr(m.pop(-1)), describe(m)
        if op == "append":
            assert m.append(mul(lib, 4)) is m
        if op == "extend":
            assert m.extend([mul(lib, 4), mul(lib, 4)]) is m
        if op == "extend_generator":
            m.extend(mul(lib, k) for k in (6, 6))
        if op == "extend_bad":
            m.extend(3)
        if op == "insert":
            m.insert(1, mul(lib, 9))
        if op == "insert_end":
            m.insert(7, mul(lib, 9))
        if op == "iadd":
            before = m
            m += [mul(lib, 2)]
            assert m is before
        if op == "add":
            total = m + [mul(lib, 3)]
            return describe(total), type(total).__name__, len(m)
        if op == "iter":
            return ks(m)
        if op == "dir":
            return [k for k in dir(m) if k.isdigit()]
        if op == "nested":
            outer = lib.nn.ModuleList([mlist(lib, (1, 1)), mlist(lib, (1, 1)), seq(lib, 2)])
            return describe(outer)
        if op == "call":
            m(lib.ones(1))
        if op == "single":
            return describe(mlist(lib, (5,)))
        return describe(m)

    same(run)


def test_module_list_repr_compacts_runs():
    text = repr(tracefuse.nn.ModuleList([mul(tracefuse, 1) for _ in range(10)]))
    assert text == "ModuleList(\n  (0-9): 10 x Mul(k=1.0)\n)"


def test_module_list_example_forward():
    """The seed's ModuleList example: modules indexed and iterated inside forward."""

    def run(lib):
        class MyModule(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.linears = lib.nn.ModuleList([mul(lib, i + 1) for i in range(10)])

            def forward(self, x):
                for i, l in enumerate(self.linears):
                    x = self.linears[i // 2](x) + l(x)
                return x

        m = MyModule()
        x = lib.tensor([0.5, -1.0], dtype=lib.float64, requires_grad=True)
        out = m(x)
        out.sum().backward()
        return out.tolist(), x.grad.tolist(), len(list(m.parameters()))

    same(run)


# --- ModuleDict ---------------------------------------------------------------------------------

def mdict(lib):
    return lib.nn.ModuleDict({"b": mul(lib, 2), "a": mul(lib, 1), "c": lib.nn.Module()})


@pytest.mark.parametrize("op", [
    "describe", "pairs", "ordered", "from_moduledict", "getitem", "missing", "setitem", "setitem_bad", "delitem",
    "contains", "len", "iter", "keys", "items", "values", "pop", "clear", "update", "update_pairs",
    "update_bad", "update_bad_element", "update_bad_length", "call", "empty",
])
def test_module_dict_operations(op):
    def run(lib):
        d = mdict(lib)
        if op == "pairs":
            return describe(lib.nn.ModuleDict([("z", mul(lib, 1)), ["y", mul(lib, 2)]]))
        if op == "ordered":
            return describe(lib.nn.ModuleDict(OrderedDict([("z", mul(lib, 1)), ("a", mul(lib, 2))])))
        if op == "from_moduledict":
            return describe(lib.nn.ModuleDict(d))
        if op == "getitem":
            return repr(d["a"])
        if op == "missing":
            return d["zz"]
        if op == "setitem":
            d["a"] = mul(lib, 7)
            d["new"] = mul(lib, 8)
        if op == "setitem_bad":
            d["x"] = 1
        if op == "delitem":
            del d["b"]
        if op == "contains":
            return "a" in d, "zz" in d
        if op == "len":
            return len(d)
        if op == "iter":
            return list(d)
        if op == "keys":
            return list(d.keys())
        if op == "items":
            return [(k, repr(v)) for k, v in d.items()]
        if op == "values":
            return [repr(v) for v in d.values()]
        if op == "pop":
            return repr(d.pop("b")), describe(d)
        if op == "clear":
            d.clear()
        if op == "update":
            d.update({"a": mul(lib, 5), "d": mul(lib, 6)})
        if op == "update_pairs":
            d.update([("e", mul(lib, 1)), ("a", mul(lib, 3))])
        if op == "update_bad":
            d.update(3)
        if op == "update_bad_element":
            d.update([3])
        if op == "update_bad_length":
            d.update([("a", mul(lib, 1), 3)])
        if op == "call":
            d(1)
        if op == "empty":
            return describe(lib.nn.ModuleDict())
        return describe(d)

    same(run)


# --- ParameterList ------------------------------------------------------------------------------

def plist(lib, n=3):
    return lib.nn.ParameterList([lib.nn.Parameter(lib.full((2, i + 1), float(i))) for i in range(n)])


def pdesc(container):
    return (repr(container), [n for n, _ in container.named_parameters()],
            [type(p).__name__ for p in container], list(container.state_dict()))


@pytest.mark.parametrize("op", [
    "describe", "one", "empty", "tensors_become_parameters", "mixed", "len", "index", "neg_index", "bad_index",
    "slice", "setitem", "setitem_neg", "setitem_bad", "append", "extend", "extend_tensor", "extend_bad", "iadd",
    "iter", "dir", "call", "double", "no_grad_param",
])
def test_parameter_list_operations(op):
    def run(lib):
        p = plist(lib)
        if op == "one":
            return pdesc(plist(lib, 1))
        if op == "empty":
            return pdesc(lib.nn.ParameterList())
        if op == "tensors_become_parameters":
            q = lib.nn.ParameterList([lib.zeros(2), lib.ones(1, dtype=lib.float64)])
            return pdesc(q), [p.requires_grad for p in q]
        if op == "mixed":
            return pdesc(lib.nn.ParameterList([lib.zeros(2), "text", 3]))
        if op == "len":
            return len(p)
        if op == "index":
            return p[1].tolist()
        if op == "neg_index":
            return p[-1].tolist()
        if op == "bad_index":
            return p[3]
        if op == "slice":
            return pdesc(p[1:]), type(p[::2]).__name__, p[1:][0] is p[1]
        if op == "setitem":
            p[0] = lib.ones(4)
        if op == "setitem_neg":
            p[-1] = lib.nn.Parameter(lib.ones(1))
        if op == "setitem_bad":
            p[5] = lib.ones(1)
        if op == "append":
            assert p.append(lib.zeros(3, 3)) is p
        if op == "extend":
            assert p.extend([lib.zeros(1), lib.nn.Parameter(lib.ones(2))]) is p
        if op == "extend_tensor":
            p.extend(lib.zeros(2))
        if op == "extend_bad":
            p.extend(3)
        if op == "iadd":
            p += [lib.zeros(5)]
        if op == "iter":
            return [t.tolist() for t in p]
        if op == "dir":
            return [k for k in dir(p) if k.isdigit()]
        if op == "call":
            p(1)
        if op == "double":
            p.double()
            return pdesc(p)
        if op == "no_grad_param":
            p.append(lib.nn.Parameter(lib.zeros(2), requires_grad=False))
            return pdesc(p), p[3].requires_grad
        return pdesc(p)

    same(run)


def test_parameter_list_example_forward():
    """The seed's ParameterList example, with small fixed matrices."""

    def run(lib):
        rng = np.random.default_rng(0)

        class MyModule(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.params = lib.nn.ParameterList(
                    [lib.nn.Parameter(lib.tensor(rng.standard_normal((3, 3)) * 0.5)) for _ in range(4)])

            def forward(self, x):
                for i, p in enumerate(self.params):
                    x = self.params[i // 2].mm(x) + p.mm(x)
                return x

        m = MyModule()
        out = m(lib.tensor(rng.standard_normal((3, 2))))
        out.sum().backward()
        return np.round(out.detach().numpy(), 10).tolist(), [np.round(p.grad.numpy(), 10).tolist() for p in m.params]

    same(run)


# --- ParameterDict ------------------------------------------------------------------------------

def pdict(lib):
    return lib.nn.ParameterDict({"w": lib.nn.Parameter(lib.ones(2, 3)), "b": lib.zeros(3), "a": lib.ones(1).double()})


def ddesc(d):
    return repr(d), [n for n, _ in d.named_parameters()], list(d.keys()), [type(v).__name__ for v in d.values()]


@pytest.mark.parametrize("op", [
    "describe", "ordered", "pairs", "empty", "getitem", "missing", "int_key", "setitem", "setitem_object",
    "delitem", "contains", "len", "iter", "reversed", "items", "copy", "setdefault", "setdefault_existing", "clear",
    "pop", "popitem", "get", "get_default", "fromkeys", "update_pdict", "update_bad", "update_bad_element",
    "update_bad_length", "or", "ror", "ior", "call", "state_dict",
])
def test_parameter_dict_operations(op):
    def run(lib):
        d = pdict(lib)
        if op == "ordered":
            return ddesc(lib.nn.ParameterDict(OrderedDict([("z", lib.ones(1)), ("a", lib.ones(2))])))
        if op == "pairs":
            return ddesc(lib.nn.ParameterDict([("z", lib.ones(1)), ("a", lib.ones(2))]))
        if op == "empty":
            return ddesc(lib.nn.ParameterDict())
        if op == "getitem":
            return d["w"].tolist(), type(d["b"]).__name__
        if op == "missing":
            return d["zz"]
        if op == "int_key":
            return d[1]
        if op == "setitem":
            d["new"] = lib.zeros(4)
        if op == "setitem_object":
            d["obj"] = "hello"
        if op == "delitem":
            del d["b"]
        if op == "contains":
            return "w" in d, "q" in d
        if op == "len":
            return len(d)
        if op == "iter":
            return list(d)
        if op == "reversed":
            return list(reversed(d))
        if op == "items":
            return [(k, v.tolist()) for k, v in d.items()]
        if op == "copy":
            c = d.copy()
            return ddesc(c), c["w"] is d["w"]
        if op == "setdefault":
            return d.setdefault("x", lib.ones(1)).tolist(), ddesc(d)
        if op == "setdefault_existing":
            return d.setdefault("w", lib.ones(1)).tolist()
        if op == "clear":
            d.clear()
        if op == "pop":
            return d.pop("a").tolist(), ddesc(d)
        if op == "popitem":
            k, v = d.popitem()
            return k, v.tolist(), ddesc(d)
        if op == "get":
            return d.get("b").tolist()
        if op == "get_default":
            return d.get("zz", 5)
        if op == "fromkeys":
            return ddesc(d.fromkeys(["p", "q"], lib.ones(1)))
        if op == "update_pdict":
            d.update(lib.nn.ParameterDict(OrderedDict([("z", lib.ones(1)), ("b", lib.ones(3))])))
        if op == "update_bad":
            d.update(3)
        if op == "update_bad_element":
            d.update([3])
        if op == "update_bad_length":
            d.update([("a",)])
        if op == "or":
            return ddesc(d | lib.nn.ParameterDict({"z": lib.ones(1)}))
        if op == "ror":
            return ddesc(lib.nn.ParameterDict({"z": lib.ones(1)}).__ror__(d))
        if op == "ior":
            d |= lib.nn.ParameterDict({"z": lib.ones(1)})
        if op == "call":
            d(1)
        if op == "state_dict":
            return list(d.state_dict())
        return ddesc(d)

    same(run)


def test_containers_inside_a_model():
    def run(lib):
        class Model(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.seq = seq(lib, 2)
                self.layers = mlist(lib, (1, 2))
                self.named = mdict(lib)
                self.plist = plist(lib, 2)
                self.pdict = pdict(lib)

        m = Model()
        m.double()
        return (repr(m), [n for n, _ in m.named_parameters()], list(m.state_dict()),
                [str(p.dtype) for p in m.parameters()])

    same(run)
