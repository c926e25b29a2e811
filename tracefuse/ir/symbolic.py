"""Symbolic sizes: `compile(dynamic=True)` traces with them, so one graph serves many shapes.

A `SymInt` is a size known to the trace as an expression over the call's symbols (`s0` is
`x.shape[0]`, ...) together with its value in the traced call. Arithmetic keeps it symbolic
(`s0*s1`, `s1 - 1`), so reshapes, factories, the op table's shape rules and the graph's metadata
hold expressions. Whatever needs a plain Python value decides on the traced one and records a
*guard*: a comparison (`s0 == 1` in a broadcast check) or `bool()` keeps its answer, and
`int()`/`operator.index()` (`range(s0)`, a NumPy call) pins the symbol's value. A later call
reuses the graph only while every guard gives the same answer for its sizes; otherwise it is
traced again. Guarding every escape is what makes a symbolic trace safe: Python code that
branched or looped on a size replays only when the same branch would be taken.

`SymInt` is deliberately not an `int` subclass: CPython reads an int subclass's value in C
(`range()`, NumPy's shape arguments) without calling back, which would bake a size into the graph
silently. It is registered as a `numbers.Integral`, so argument checks accept it.
"""
from __future__ import annotations

import functools
import numbers
import operator
import re
import threading

_state = threading.local()
_tracing = 0  # symbolic traces running in any thread: eager code checks this before the thread-local
_tracing_lock = threading.Lock()


def active() -> "ShapeEnv | None":
    """The shape environment of the trace running in this thread, if it is symbolic."""
    return getattr(_state, "env", None) if _tracing else None


@functools.lru_cache(maxsize=4096)
def _code(source):
    return compile(source, "<tracefuse guard>", "eval")


def evaluate(source: str, values: dict):
    """The value of expression `source` for symbol values `values` (name -> int)."""
    return eval(_code(source), {"__builtins__": {}}, values)


class SymInt:
    """An integer size as an expression (`expr`, Python source) with its traced value."""

    __slots__ = ("expr", "value", "env")

    def __init__(self, expr: str, value: int, env: "ShapeEnv"):
        self.expr, self.value, self.env = expr, value, env

    # --- staying symbolic ----------------------------------------------------------------------
    def _operand(self, other):
        """`other` as (expression, value): a size of this trace, or an int (a size kept from a
        finished trace counts as the int it was); None for anything else."""
        if isinstance(other, SymInt):
            if other.env is self.env:
                return other.expr, other.value
            other = other.value
        if isinstance(other, numbers.Integral) and not isinstance(other, bool):
            return str(int(other)), int(other)
        return None

    def _combine(self, other, symbol, fn, reflected=False):
        if not self.env.open:  # a size kept past its trace (in a module attribute): the number it was
            return fn(other, self.value) if reflected else fn(self.value, other)
        operand = self._operand(other)
        if operand is None:
            if not isinstance(other, numbers.Real):
                return NotImplemented  # a tensor: its reflected method records the size as a scalar input
            value = self.__index__()  # a float (s0 * 0.5): the size's value takes part
            return fn(other, value) if reflected else fn(value, other)
        (other_expr, other_value) = operand
        a, b = (other_expr, self.expr) if reflected else (self.expr, other_expr)
        va, vb = (other_value, self.value) if reflected else (self.value, other_value)
        simple = _simplified(symbol, a, b)
        if isinstance(simple, int) or simple == self.expr:
            return self if simple == self.expr else simple
        return SymInt(simple or f"({a} {symbol} {b})", fn(va, vb), self.env)

    def __neg__(self):
        return SymInt(f"(-{self.expr})", -self.value, self.env) if self.env.open else -self.value

    def __pos__(self):
        return self

    def __abs__(self):
        return self if self >= 0 else -self

    # --- deciding: the traced answer, guarded --------------------------------------------------
    def _compare(self, other, symbol, fn):
        if not self.env.open:
            return fn(self.value, other)
        operand = self._operand(other)
        if operand is None:
            return fn(self.__index__(), other) if isinstance(other, numbers.Real) else NotImplemented
        other_expr, other_value = operand
        if other_expr == self.expr:
            return fn(0, 0)  # the same expression: no guard needed
        return self.env.decide(f"{self.expr} {symbol} {other_expr}", fn(self.value, other_value))

    def __bool__(self):
        return self.env.decide(f"{self.expr} != 0", self.value != 0) if self.env.open else self.value != 0

    def __index__(self):
        if self.env.open:
            self.env.specialize(self)
        return self.value

    # Everything else that needs a number takes the pinned value: int(), float(), hash() (so a
    # dict or set of sizes, an lru_cache keyed by one, answers as for the number), str() and
    # f-strings (a string made from a size can steer Python as well), NumPy (np.array(x.shape)),
    # rounding, and (_operators below) true division, powers and bit operations. Graphs print
    # the expression (graph.py). Binary operators are installed from tables after the class.
    __int__ = __index__

    def __float__(self):
        return float(self.__index__())

    def __hash__(self):
        return hash(self.__index__())

    def __str__(self):
        return str(self.__index__())

    def __format__(self, spec):
        return format(self.__index__(), spec)

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.__index__(), dtype=dtype)

    def __round__(self, ndigits=None):
        return self.__index__()

    def __invert__(self):
        return ~self.__index__()

    def __repr__(self):  # the expression while its trace runs (x.shape prints Size([s0, 3])), then the number
        return pretty(self.expr) if self.env.open else repr(self.value)


def _operators():
    """SymInt's binary operators, from three tables: arithmetic that stays symbolic, comparisons
    (decided and guarded), and the rest, on the pinned value (a tensor operand gets its own
    reflected method, which records the size as a scalar input)."""
    symbolic = {"add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul),
                "floordiv": ("//", operator.floordiv), "mod": ("%", operator.mod)}
    comparisons = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
    pinned = {"truediv": operator.truediv, "pow": operator.pow, "divmod": divmod, "and": operator.and_,
              "or": operator.or_, "xor": operator.xor, "lshift": operator.lshift, "rshift": operator.rshift}
    for name, (symbol, fn) in symbolic.items():
        yield f"__{name}__", lambda self, other, s=symbol, f=fn: self._combine(other, s, f)
        yield f"__r{name}__", lambda self, other, s=symbol, f=fn: self._combine(other, s, f, reflected=True)
    for name, symbol in comparisons.items():
        yield f"__{name}__", lambda self, other, s=symbol, f=getattr(operator, name): self._compare(other, s, f)
    for name, fn in pinned.items():
        yield f"__{name}__", lambda self, other, f=fn: (f(self.__index__(), other) if isinstance(other, numbers.Real)
                                                         else NotImplemented)
        yield f"__r{name}__", lambda self, other, f=fn: f(other, self.__index__())


for _name, _method in _operators():
    setattr(SymInt, _name, _method)


def pretty(expr: str) -> str:
    """An expression without its outermost parentheses: `s0 * s1`."""
    return expr[1:-1] if expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]) else expr


numbers.Integral.register(SymInt)


def _balanced(s):
    depth = 0
    for c in s:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def _simplified(symbol, a, b):
    """x + 0, x - 0, x * 1, x // 1, (x * c) // c, (x + c) - c, (x - c) + c -> x (the expression);
    x * 0 -> 0; else None."""
    if symbol in "+-" and b == "0":
        return a
    if symbol == "+" and a == "0":
        return b
    if symbol in ("*", "//") and b == "1":
        return a
    if symbol == "*" and a == "1":
        return b
    if symbol == "*" and "0" in (a, b):
        return 0
    undone = {"//": "*", "-": "+", "+": "-"}.get(symbol)  # (x * c) // c, (x + c) - c, (x - c) + c -> x
    if undone and b.isdigit() and b != "0" and a.endswith(f" {undone} {b})") and _balanced(a[1:-len(b) - 4]):
        return a[1:-len(b) - 4]
    return None


class ShapeEnv:
    """The symbols of one symbolic trace (where each comes from) and the guards it decided."""

    def __init__(self):
        self.symbols: dict[str, tuple] = {}  # name -> (label such as "x.shape[0]", traced value)
        self.guards: dict[str, object] = {}  # expression source -> its value in the traced call
        self.specialized: dict[str, str] = {}  # symbol expression -> where Python needed its value
        self._shapes: dict[int, tuple] = {}  # id(tensor) -> (tensor, symbolic shape), while tracing
        self.open = True  # until its trace ends: a size kept past it (a module attribute) is a number

    def symbol(self, label: str, value: int) -> SymInt:
        name = f"s{len(self.symbols)}"
        self.symbols[name] = (label, value)
        return SymInt(name, value, self)

    def decide(self, source: str, answer):
        self.guards.setdefault(source, answer)
        return answer

    def specialize(self, size: SymInt):
        if size.expr not in self.guards:
            from ..tracer.context import user_source

            self.specialized[pretty(size.expr)] = user_source() or "?"
        self.decide(size.expr, size.value)

    # --- tensors' symbolic shapes while tracing --------------------------------------------------
    def bind(self, tensor, shape):
        self._shapes[id(tensor)] = (tensor, tuple(shape))

    def shape_of(self, tensor):
        known = self._shapes.get(id(tensor))
        return known[1] if known is not None and known[0] is tensor else None

    def output_shapes(self, op, input_shapes, attrs, traced):
        """(shapes, followed): the symbolic shapes of `op`'s outputs by its shape rule, or where
        the rule cannot follow (a boolean mask's result), the `traced` shapes with every size the
        op read pinned to its value, and followed False."""
        if not (is_symbolic(input_shapes) or is_symbolic(attrs)):
            return traced, True
        try:
            shapes = [tuple(s) for s in op.shape(input_shapes, attrs)]
            if [substitute(s) for s in shapes] == [tuple(t) for t in traced]:
                return shapes, True
        except Exception:
            pass
        for size in _sizes((input_shapes, attrs)):
            self.specialize(size)
        return traced, False

    def tracing(self):
        return _Active(self)

    def strides(self, shape, traced):
        """A tensor's strides in elements: symbolic for the standard layout of `shape`, else the
        `traced` ones with every symbol pinned (they depend on storage the sizes do not show)."""
        strides, step = [], 1
        for n in reversed(shape):
            strides.insert(0, step)
            step = step * n
        if [substitute(s) for s in strides] == list(traced):
            return tuple(strides)
        for name, (_, value) in self.symbols.items():
            self.specialize(SymInt(name, value, self))
        return traced

    def close(self):
        """The trace is over: its sizes, wherever they were kept, act as the numbers they were."""
        self._shapes.clear()
        self.open = False

    # --- a later call ----------------------------------------------------------------------------
    def describe(self, source: str) -> str:
        """A guard's expression in the call's terms: `L['x'].shape[0] == 1`; a size pinned to its
        value says where the code needed it as a number."""
        text = re.sub(r"\bs\d+\b", lambda m: self.symbols[m.group()][0] if m.group() in self.symbols else m.group(),
                      pretty(source))
        where = self.specialized.get(pretty(source))
        return f"{text} (used as a number at {where})" if where else text

    def failed_guard(self, values: dict):
        """(expression, traced answer, answer now) of the first guard `values` fail, or None."""
        for source, expected in self.guards.items():
            try:
                now = evaluate(source, values)
            except ArithmeticError as exc:  # a size the traced code divided by is now 0
                now = f"{type(exc).__name__}: {exc}"
            if now != expected:
                return source, expected, now
        return None


class _Active:
    def __init__(self, env):
        self.env = env

    def __enter__(self):
        global _tracing
        self.outer = active()
        _state.env = self.env
        with _tracing_lock:
            _tracing += 1

    def __exit__(self, *exc):
        global _tracing
        with _tracing_lock:
            _tracing -= 1
        _state.env = self.outer


def _sizes(x):
    """The SymInts in `x` (tuples, lists, dicts, slices)."""
    if isinstance(x, SymInt):
        yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _sizes(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _sizes(v)
    elif isinstance(x, slice):
        yield from _sizes((x.start, x.stop, x.step))


def is_symbolic(x) -> bool:
    """Whether `x` (a size, or a tuple/list/dict/slice of them) holds a SymInt."""
    return next(_sizes(x), None) is not None


def _map(x, fn):
    """`x` with `fn` applied to each SymInt, through tuples (named ones too), lists, dicts and slices."""
    if isinstance(x, SymInt):
        return fn(x)
    if isinstance(x, tuple):
        items = tuple(_map(v, fn) for v in x)
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, list):
        return [_map(v, fn) for v in x]
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    if isinstance(x, slice):
        return slice(_map(x.start, fn), _map(x.stop, fn), _map(x.step, fn))
    return x


def substitute(x, values: dict | None = None):
    """`x` with each SymInt replaced by its value for symbol `values` (None: its traced value).
    Records no guard."""
    return _map(x, lambda size: size.value if values is None else evaluate(size.expr, values))


def pinned(x):
    """`x` with each SymInt replaced by its value, pinned by a guard (a size returned by a call)."""
    return _map(x, SymInt.__index__) if is_symbolic(x) else x


def matches(a, b) -> bool:
    """For passes: whether sizes or shapes `a` and `b` are equal. Guarded when they are (the rewrite
    that equality enables holds only while it does); unguarded when they are not, since a pass only
    declines a rewrite then, which stays right whatever the sizes of a later call."""
    return substitute(a) == substitute(b) and a == b


def concrete(x):
    """`x` with its traced values in place of SymInts (for running an op while tracing)."""
    return substitute(x) if is_symbolic(x) else x
