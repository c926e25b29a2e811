"""Symbolic sizes (ir/symbolic.py) and graphs made concrete for one call's sizes (ir/specialize.py).

Arithmetic stays symbolic; every place Python needs a value (comparisons, bool, int/index, range,
NumPy) decides on the traced value and records a guard, which a later call's sizes are checked
against. A graph made concrete is checked node by node against the shape rules.
"""
from __future__ import annotations

import operator

import numpy as np
import pytest

from tracefuse import dtypes
from tracefuse.ir.graph import Graph, Ref
from tracefuse.ir.specialize import SizeMismatch, specialize
from tracefuse.ir.symbolic import ShapeEnv, SymInt, concrete, evaluate, is_symbolic, substitute


@pytest.fixture
def env():
    return ShapeEnv()


def sizes(env):
    return env.symbol("L['x'].shape[0]", 6), env.symbol("L['x'].shape[1]", 4)


def test_arithmetic_stays_symbolic_with_the_traced_value(env):
    b, t = sizes(env)
    for expr, value in [(b * t, 24), (b + 1, 7), (2 + b, 8), (b - t, 2), (10 - b, 4), (b // 4, 1), (25 // b, 4),
                        (b % 4, 2), (-b, -6), (b * t * 3 // 3, 24)]:
        assert isinstance(expr, SymInt) and expr.value == value, (expr, value)
        assert evaluate(expr.expr, {"s0": 6, "s1": 4}) == value
        assert evaluate(expr.expr, {"s0": 9, "s1": 5}) == substitute(expr, {"s0": 9, "s1": 5})
    assert repr(b * t) == "s0 * s1" and repr((b * t) + 1) == "(s0 * s1) + 1"
    assert env.guards == {}  # arithmetic decides nothing


def test_simplifications_keep_the_expression_short(env):
    b, _ = sizes(env)
    assert (b + 0) is b and (b * 1) is b and (1 * b) is b and (b // 1) is b and (0 + b) is b
    assert b * 0 == 0 and isinstance(b * 0, int)
    assert repr((b * 50) // 50) == "s0" and ((b * 50) // 50).value == 6
    assert repr(b + 1 - 1) == "s0" and repr(b - 2 + 2) == "s0" and repr(b + 1 - 2) == "(s0 + 1) - 2"
    assert env.guards == {}


@pytest.mark.parametrize("op, source, answer, flips_at", [
    (operator.eq, "s0 == 6", True, 5), (operator.ne, "s0 != 1", True, 1), (operator.lt, "s0 < 7", True, 7),
    (operator.le, "s0 <= 1", False, 1), (operator.gt, "s0 > 1", True, 1), (operator.ge, "s0 >= 7", False, 8)])
def test_comparisons_answer_for_the_traced_value_and_guard_it(env, op, source, answer, flips_at):
    b, _ = sizes(env)
    assert op(b, int(source.split()[-1])) is answer
    assert env.guards == {source: answer}
    assert env.failed_guard({"s0": 6, "s1": 9}) is None
    assert env.failed_guard({"s0": flips_at, "s1": 4}) == (source, answer, not answer)


def test_comparing_two_symbols_guards_their_relation(env):
    b, t = sizes(env)
    assert (b == t) is False and (b > t) is True
    assert env.guards == {"s0 == s1": False, "s0 > s1": True}
    assert env.failed_guard({"s0": 3, "s1": 3})[0] == "s0 == s1"
    assert (b == b) is True and "s0 == s0" not in env.guards  # the same expression: no guard


def test_index_int_and_bool_pin_the_value_and_say_where(env):
    b, t = sizes(env)
    assert list(range(b)) == list(range(6))  # range() asks for __index__
    assert np.zeros((t, 2)).shape == (4, 2)  # so does NumPy
    assert bool(b - 6) is False
    assert env.guards == {"s0": 6, "s1": 4, "(s0 - 6) != 0": False}
    assert set(env.specialized) == {"s0", "s1"} and all("test_symbolic.py" in w for w in env.specialized.values())
    assert env.failed_guard({"s0": 6, "s1": 5}) == ("s1", 4, 5)
    assert env.describe("s1").startswith("L['x'].shape[1] (used as a number at test_symbolic.py:")


def test_floats_and_true_division_use_the_pinned_value(env):
    b, _ = sizes(env)
    assert b * 0.5 == 3.0 and b / 4 == 1.5 and float(b) == 6.0
    assert env.guards == {"s0": 6}


def test_dicts_sets_and_strings_answer_as_for_the_number_and_pin_it(env):
    b, t = sizes(env)
    assert b in {3, 6} and {6: "six"}.get(b) == "six" and {b * t: "product"}[24] == "product"
    assert f"({b}x{t})" == "(6x4)" and str(b) == "6" and f"{b * t:>4}" == "  24"
    assert {"s0", "s1", "(s0 * s1)"} <= set(env.guards)  # pinned (and the lookups' comparisons guarded)
    assert env.failed_guard({"s0": 5, "s1": 4}) == ("s0", 6, 5)
    assert repr((b, 3)) == "(s0, 3)"  # repr is the expression, as graphs print it: no guard


def test_a_size_kept_past_its_trace_acts_as_the_number_it_was(env):
    b, _ = sizes(env)
    kept = b * 2
    env.close()
    other = ShapeEnv()
    c = other.symbol("L['y'].shape[0]", 12)
    assert kept == 12 and kept + 1 == 13 and isinstance(kept * 2, int) and hash(kept) == hash(12)
    assert (c == kept) is True and other.guards == {"s0 == 12": True}  # a number to the new trace
    assert env.guards == {}


def test_describe_names_the_call_sizes(env):
    b, t = sizes(env)
    assert env.describe("(s0 * s1) != 1") == "(L['x'].shape[0] * L['x'].shape[1]) != 1"


def test_substitute_and_concrete_walk_containers(env):
    b, t = sizes(env)
    attrs = {"shape": (b, t * 2, 3), "index": (slice(None, b - 1), [t]), "dtype": dtypes.float32}
    assert is_symbolic(attrs) and not is_symbolic({"shape": (1, 2), "index": slice(0, 3)})
    assert substitute(attrs, {"s0": 2, "s1": 5}) == {"shape": (2, 10, 3), "index": (slice(None, 1), [5]),
                                                     "dtype": dtypes.float32}
    assert concrete(attrs) == {"shape": (6, 8, 3), "index": (slice(None, 5), [4]), "dtype": dtypes.float32}
    assert env.guards == {}


def _graph(env, shape_of_add):
    b, _ = sizes(env)
    g = Graph()
    g.add_input("x", (b, 3), dtypes.float32)
    g.add_input("w", (3,), dtypes.float32, kind="param")
    g.add_node("add", (Ref("x"), Ref("w")), {}, {"outputs": [(shape_of_add(b), dtypes.float32)]}, name="y")
    g.add_node("reshape", (Ref("y"),), {"shape": (b * 3,)}, {"outputs": [((b * 3,), dtypes.float32)]}, name="z")
    g.outputs = [Ref("z")]
    return g


def test_specialize_makes_every_size_concrete(env):
    g = _graph(env, lambda b: (b, 3))
    concrete_graph = specialize(g, {"s0": 5, "s1": 2})
    assert concrete_graph.node("x").meta["outputs"][0][0] == (5, 3)
    assert concrete_graph.node("z").attrs == {"shape": (15,)}
    assert str(concrete_graph).count("s0") == 0 and "f32[s0,3]" in str(g)  # the symbolic graph is untouched


def test_specialize_refuses_sizes_the_graph_does_not_follow(env):
    g = _graph(env, lambda b: (6, 3))  # a size taken as a plain number where it depended on s0
    assert specialize(g, {"s0": 6, "s1": 4}).node("y").meta["outputs"][0][0] == (6, 3)
    with pytest.raises(SizeMismatch, match=r"%y \(add\) gives shapes \[\(5, 3\)\], the graph says \[\(6, 3\)\]"):
        specialize(g, {"s0": 5, "s1": 4})


def test_numpy_sees_the_pinned_number(env):
    b, t = sizes(env)
    assert np.array([b, t]).dtype == np.int64 and np.sqrt(t) == 2.0
    assert env.guards == {"s0": 6, "s1": 4}


def test_operators_without_a_symbolic_form_pin(env):
    b, t = sizes(env)
    assert (2 ** t, round(b), divmod(b, 4), b & 3, b >> 1, 1 << t, ~t) == (16, 6, (1, 2), 2, 3, 16, -5)
    assert env.guards == {"s0": 6, "s1": 4}


def test_a_tensor_operand_is_left_to_the_tensor(env):
    b, _ = sizes(env)

    class Other:
        def __rmul__(self, size):
            return ("tensor's", size)

    assert b * Other() == ("tensor's", b) and env.guards == {}
