"""Elementwise ops: one Triton expression per op, used alone (an eager op) or inlined into a
fused group's kernel (codegen/triton/fused.py).

Each entry takes the operand names (already loaded and cast to the compute type) and an `arg`
callback that turns an attribute value into a scalar kernel argument, and returns a Triton
expression. The compute type follows the dispatcher: promote/float/bool ops compute in the
promoted type (float16/bfloat16 in float32), others in their input's type.

Functions Triton has no instruction for (tanh, expm1, log1p, atan2, pow, round half to even) are
written out from exp/log/exp2/log2/floor and short polynomials, accurate to a few ulps in
float64 (tests compare them with NumPy to 1e-12). Integer and float semantics of the same op
(pow, remainder, floor division, rounding) are told apart by a conditional on the operands'
dtype: Triton resolves `A if x.dtype.is_floating() else B` while compiling, so only one branch
is ever built. A tensor operand may meet a Python scalar (a scalar input of a binary op); those
ops bring both operands to their common type first (`_binary`). Values used more than once are
bound to names inside the expression (`_Scope.let`), so each is computed and written once.

dropout draws random numbers and has two outputs: it has its own emitter below.
"""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes
from .launch import emitter
from .pointwise import Pointwise

INF = 'float("inf")'
NAN = 'float("nan")'


class _Scope:
    """Names for the intermediate values of one expression. `let` binds a value to a fresh name
    for the body that uses it, as `[body for name in (value,)][0]`: Triton (3.6 and newer, and
    its interpreter) evaluates a comprehension over a one-element tuple once, so a value used
    many times is computed once and written once. The names start with an underscore and are
    unique within the expression, so they shadow no kernel variable and no outer binding. Each
    binding goes on its own line: the expression reads as its result, then where each name
    used in it comes from."""

    def __init__(self):
        self.count = 0

    def let(self, hint: str, value: str, body) -> str:
        name = f"_{hint}{self.count}"
        self.count += 1
        return f"[{body(name)}\n        for {name} in ({value},)][0]"


def _horner(z: str, coefficients) -> str:
    """c0 + z * (c1 + z * (c2 + ...)) as an expression."""
    out = repr(float(coefficients[-1]))
    for c in reversed(coefficients[:-1]):
        out = f"({float(c)!r} + {z} * {out})"
    return out


def _monic(z: str, coefficients) -> str:
    """z^n + c0 z^(n-1) + ... + c(n-1) (Cephes' p1evl), coefficients from the highest power down."""
    out = f"({z} + {float(coefficients[0])!r})"
    for c in coefficients[1:]:
        out = f"({out} * {z} + {float(c)!r})"
    return out


def _poly(z: str, coefficients) -> str:
    """c0 z^n + ... + cn (Cephes' polevl), coefficients from the highest power down."""
    return _horner(z, coefficients[::-1])


# Cephes' coefficients (float64-accurate; float32 is computed with the same ones).
# expm1(x) = x * sum_k x^k / (k + 1)!: twelve terms are exact to 1e-17 for |x| < 0.25; outside
# that, exp(x) - 1 loses at most a few ulps.
_EXPM1_SERIES = [1.0 / math.factorial(k + 1) for k in range(12)]
# log1p(x) = x - x^2 / 2 + x^3 P(x) / Q(x) for 1 + x in [1/sqrt(2), sqrt(2)]; log(1 + x) outside.
_LOG1P_P = [4.5270000862445199635215E-5, 4.9854102823193375972212E-1, 6.5787325942061044846969E0,
            2.9911919328553073277375E1, 6.0949667980987787057556E1, 5.7112963590585538103336E1,
            2.0039553499201281259648E1]
_LOG1P_Q = [1.5062909083469192043167E1, 8.3047565967967209469434E1, 2.2176239823732856465394E2,
            3.0909872225312059774938E2, 2.1642788614495947685003E2, 6.0118660497603843919306E1]
_LOG1P_LOW, _LOG1P_HIGH = math.sqrt(0.5) - 1.0, math.sqrt(2.0) - 1.0
# tanh(x) = x + x^3 P(x^2) / Q(x^2) for |x| <= 0.625; 1 - 2 / (exp(2|x|) + 1), signed, beyond.
_TANH_P = [-9.64399179425052238628E-1, -9.92877231001918586564E1, -1.61468768441708447952E3]
_TANH_Q = [1.12811678491632931402E2, 2.23548839060100448583E3, 4.84406305325125486048E3]
# atan(u) = u + u^3 P(u^2) / Q(u^2) for |u| <= 0.66, and pi/4 + atan((t - 1) / (t + 1)) above.
_ATAN_P = [-8.750608600031904122785E-1, -1.615753718733365076637E1, -7.500855792314704667340E1,
           -1.228866684490136173410E2, -6.485021904942025371773E1]
_ATAN_Q = [2.485846490142306297962E1, 1.650270098316988542046E2, 4.328810604912902668951E2,
           4.853903996359136964868E2, 1.945506571482613964425E2]
_ATAN_MOREBITS = 6.123233995736765886130E-17  # pi/4's rounding error in float64


def _expm1(s: _Scope, x: str) -> str:
    return s.let("x", x, lambda v: f"tl.where(tl.abs({v}) < 0.25, {v} * {_horner(v, _EXPM1_SERIES)}, tl.exp({v}) - 1.0)")


def _log1p(s: _Scope, x: str) -> str:
    def body(v):
        def series(z):
            return f"{v} + (-0.5 * {z} + {v} * ({z} * {_poly(v, _LOG1P_P)} / {_monic(v, _LOG1P_Q)}))"
        near_zero = f"({v} > {_LOG1P_LOW!r}) & ({v} < {_LOG1P_HIGH!r})"
        return f"tl.where({v} == 0, {v}, tl.where({near_zero}, {s.let('z', f'{v} * {v}', series)}, tl.log(1.0 + {v})))"
    return s.let("x", x, body)


def _tanh(s: _Scope, x: str) -> str:
    def body(v):
        def small(z):
            return f"{v} + {v} * {z} * {_poly(z, _TANH_P)} / {_monic(z, _TANH_Q)}"
        large = f"tl.where({v} < 0, -1.0, 1.0) * (1.0 - 2.0 / (tl.exp(2.0 * tl.abs({v})) + 1.0))"
        return f"tl.where({v} == 0, {v}, tl.where(tl.abs({v}) > 0.625, {large}, {s.let('z', f'{v} * {v}', small)}))"
    return s.let("x", x, body)


def _signbit(x: str) -> str:
    """x < 0, counting -0.0 (1 / -0.0 is -inf)."""
    return f"(({x} < 0) | (({x} == 0) & (1.0 / {x} < 0)))"


def _atan_unit(s: _Scope, t: str) -> str:
    """atan(t) for t in [0, 1], summed in Cephes' order."""
    def reduced(t):
        def series(u):
            def value(z):
                near_zero = f"{u} * ({z} * {_poly(z, _ATAN_P)} / {_monic(z, _ATAN_Q)}) + {u}"
                return s.let("a", near_zero, lambda a: (
                    f"tl.where({t} > 0.66, {math.pi / 4!r} + ({a} + {0.5 * _ATAN_MOREBITS!r}), {a})"))
            return s.let("z", f"{u} * {u}", value)
        return s.let("u", f"tl.where({t} > 0.66, ({t} - 1.0) / ({t} + 1.0), {t})", series)
    return s.let("t", t, reduced)


def _atan2(s: _Scope, y: str, x: str) -> str:
    """C99 atan2: the angle of (x, y) in [-pi, pi], signed zeros and infinities included: atan of
    the smaller over the larger magnitude, turned into pi/2 - a, pi - a and signed as y."""
    def body(ax, ay):
        ratio = (f"tl.where({ax} == {ay}, tl.where({ax} == 0, 0.0, 1.0), "  # 0/0 and inf/inf: 0 and 1
                 f"tl.where({ay} > {ax}, {ax} / {ay}, {ay} / {ax}))")

        def turn(a):
            return s.let("b", f"tl.where({ay} > {ax}, {math.pi / 2!r} - {a}, {a})", lambda b: s.let(
                "c", f"tl.where({_signbit(x)}, {math.pi!r} - {b}, {b})",
                lambda c: f"tl.where({_signbit(y)}, {c} * -1.0, {c})"))
        return s.let("angle", _atan_unit(s, ratio), turn)
    return s.let("ax", f"tl.abs({x})", lambda ax: s.let("ay", f"tl.abs({y})", lambda ay: body(ax, ay)))


def _binary(s: _Scope, a, body) -> str:
    """`body(x, y, t)` over a binary op's operands brought to their common type t. `tl.where(True,
    a, b)` is `a` promoted with `b`; unlike `tl.cast`, it keeps a Python float operand's every bit."""
    return s.let("lhs", f"tl.where(True, {a[0]}, {a[1]})", lambda x: s.let(
        "rhs", f"tl.where(True, {a[1]}, {x})", lambda y: body(x, y, f"{x}.dtype")))


def _float_pow(s: _Scope, x: str, y: str) -> str:
    """C's pow: exp2(y log2|x|) with the sign of odd integral powers of negative bases, NaN for
    negative bases to non-integral powers, and C's special cases."""
    def body(mag):
        odd = f"((tl.floor({y}) == {y}) & (tl.floor({y} * 0.5) * 2.0 != {y}))"
        signed = f"tl.where({_signbit(x)} & {odd}, {mag} * -1.0, {mag})"
        nan_case = f"({x} < 0) & ({x} > -{INF}) & (tl.floor({y}) != {y}) & (tl.abs({y}) < {INF})"
        one = f"({y} == 0) | ({x} == 1) | (({x} == -1) & (tl.abs({y}) == {INF}))"
        return f"tl.where({y} == 2, {x} * {x}, tl.where({one}, 1.0, tl.where({nan_case}, {NAN}, {signed})))"
    return s.let("magnitude", f"tl.exp2({y} * tl.log2(tl.abs({x})))", body)


def _int_pow(s: _Scope, x: str, e: str) -> str:
    """Integer power by squaring (kernel.py's `wrapping_integer_power` helper), wrapping as the
    CPU does. Negative exponents give 1 ** e = 1, (-1) ** e = +-1 and 0 otherwise (PyTorch's
    integer pow; the CPU raises, which a kernel cannot)."""
    def powers(e64):
        parity = f"tl.where(({e64} & 1) != 0, {x}, 1)"
        # x + 1 == 0 also finds 2^k - 1, which is -1 modulo 2^k in unsigned types
        negative = f"tl.where({x} == 1, 1, tl.where({x} + 1 == 0, {parity}, 0))"
        return f"tl.where({e64} < 0, {negative}, wrapping_integer_power({x}, {e64}))"
    return s.let("e", f"{e}.to(tl.int64)", powers)


def _pow(a, arg, attrs) -> str:
    s = _Scope()

    def body(x, e, t):
        floating = s.let("x64_", f"tl.cast({x}, tl.float64)", lambda x64: s.let(
            "y64_", f"tl.cast({e}, tl.float64)", lambda y64: f"tl.cast({_float_pow(s, x64, y64)}, {t})"))
        boolean = f"(({x} != 0) | ({e} == 0))"
        integral = f"tl.cast({_int_pow(s, x, e)}, {t})"
        return f"({floating} if {t}.is_floating() else {boolean} if {t} == tl.int1 else {integral})"
    return _binary(s, a, body)


def _remainder(a, arg, attrs) -> str:
    """NumPy's mod: the sign of the divisor (Python's %), a zero of the divisor's sign, NaN for a
    zero float divisor; an integer divisor of 0 gives 0 (the CPU raises; a kernel cannot)."""
    s = _Scope()

    def body(x, y, t):
        def python_mod(m, d):  # C's fmod/srem turned toward the divisor's sign
            return f"tl.where(({m} != 0) & (({m} < 0) != ({d} < 0)), {m} + {d}, {m})"
        floating = s.let("mod", python_mod(f"({x} % {y})", y),
                         lambda m: f"tl.where({m} == 0, tl.where({y} < 0, -1.0, 1.0) * 0.0, {m})")
        integral = s.let("divisor", f"tl.where({y} == 0, 1, {y})", lambda d: s.let(
            "mod", f"{x} % {d}", lambda m: f"tl.where({y} == 0, 0, {python_mod(m, d)})"))
        return f"({floating} if {t}.is_floating() else tl.cast({integral}, {t}))"
    return _binary(s, a, body)


def _trunc(x: str) -> str:
    return f"tl.where({x} < 0, tl.ceil({x}), tl.floor({x}))"


def _quotient(x: str, y: str, t: str) -> str:
    """x / y correctly rounded: a GPU's float32 `/` is approximate (x / x can land below 1),
    tl.div_rn is IEEE division; float64's `/` already is."""
    return f"(tl.div_rn({x}, {y}) if {t} == tl.float32 else {x} / {y})"


def _div_mode(a, arg, attrs) -> str:
    """x / y rounded toward zero ('trunc') or down ('floor', NumPy's floor_divide: the quotient
    of x - fmod(x, y), as Python's //). Integer division by 0 gives 0 (the CPU raises). Float
    quotients are correctly rounded (`_quotient`), so they round to the CPU's integers."""
    s = _Scope()
    trunc = attrs["rounding_mode"] == "trunc"

    def body(x, y, t):
        if trunc:
            floating = s.let("q", _quotient(x, y, t), _trunc)
        else:
            def rounded(d):
                return s.let("fl", f"tl.floor({d})", lambda fl: f"tl.where({d} - {fl} > 0.5, {fl} + 1.0, {fl})")

            def quotient(m):
                adjust = f"({m} != 0) & (({y} < 0) != ({m} < 0))"
                return s.let("d", f"{_quotient(f'({x} - {m})', y, t)} - tl.where({adjust}, 1.0, 0.0)", lambda d: (
                    f"tl.where({d} != 0, {rounded(d)}, tl.where({_signbit(x)} != {_signbit(y)}, -1.0, 1.0) * 0.0)"))
            floating = f"tl.where({y} == 0, {x} / {y}, {s.let('mod', f'{x} % {y}', quotient)})"

        def integral(d):
            if trunc:
                return f"tl.where({y} == 0, 0, {x} // {d})"
            return s.let("mod", f"{x} % {d}", lambda m: (
                f"tl.where({y} == 0, 0, {x} // {d} - tl.where(({m} != 0) & (({m} < 0) != ({d} < 0)), 1, 0))"))
        integral = s.let("divisor", f"tl.where({y} == 0, 1, {y})", integral)
        return f"({floating} if {t}.is_floating() else tl.cast({integral}, {t}))"
    return _binary(s, a, body)


def _round(s: _Scope, x: str) -> str:
    """Round half to even, keeping the sign of zero (round(-0.3) is -0.0) and inf/NaN."""
    def body(v):
        def rounded(f):
            def pick(d):
                r = f"tl.where({d} > 0.5, {f} + 1.0, tl.where({d} < 0.5, {f}, {f} + ({f} - 2.0 * tl.floor({f} * 0.5))))"
                return s.let("r", r, lambda r: f"tl.where({d} == {d}, tl.where({r} == 0, {v} * 0.0, {r}), {v})")
            return s.let("d", f"{v} - {f}", pick)
        return s.let("f", f"tl.floor({v})", rounded)
    return s.let("x", x, body)


def _like(expression: str, x: str) -> str:
    """`expression` in `x`'s type (a float scalar argument may be wider than a float32 tensor)."""
    return f"({expression}).to({x}.dtype)"


def _float_only(x: str, expression: str) -> str:
    """`expression` for floats; integers and bools are their own floor/ceil/round/trunc."""
    return f"({expression} if ({x}).dtype.is_floating() else {x})"


def _clamp(a, arg, attrs) -> str:
    """max(min(x, hi), lo) as torch.clamp: a NaN in x or in a bound propagates."""
    s = _Scope()

    def body(x):
        out = x
        if attrs["min"] is not None:
            lo = arg(attrs["min"])
            out = f"tl.where(({out} != {out}) | ({out} > {lo}), {out}, {lo})"
        if attrs["max"] is not None:
            hi = arg(attrs["max"])
            if attrs["min"] is not None:
                return s.let("low", out, lambda v: _like(f"tl.where(({v} != {v}) | ({v} < {hi}), {v}, {hi})", x))
            out = f"tl.where(({out} != {out}) | ({out} < {hi}), {out}, {hi})"
        return _like(out, x)
    return s.let("x", a[0], body)


def _gelu(a, arg, attrs) -> str:
    s = _Scope()

    def body(x):
        if attrs["approximate"] == "tanh":
            inner = f"{math.sqrt(2.0 / math.pi)!r} * ({x} + 0.044715 * ({x} * {x} * {x}))"
            return f"0.5 * {x} * (1.0 + {_tanh(s, inner)})"
        return f"0.5 * {x} * (1.0 + tl.erf({x} / {math.sqrt(2.0)!r}))"
    return s.let("x", a[0], body)


def _elu(a, arg, attrs) -> str:
    s = _Scope()
    alpha = arg(attrs["alpha"])
    return s.let("x", a[0], lambda x: _like(
        f"tl.where({x} > 0, {x}, {alpha} * {_expm1(s, f'tl.where(({x} < 0) | ({x} != {x}), {x}, 0.0)')})", x))


def _softplus(a, arg, attrs) -> str:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold."""
    s = _Scope()
    beta, threshold = arg(attrs["beta"]), arg(attrs["threshold"])

    def body(x):
        def soft(bx):
            return _like(f"tl.where({bx} > {threshold}, {x}, "
                         f"{_log1p(s, f'tl.exp(tl.where({bx} > {threshold}, {threshold}, {bx}))')} / {beta})", x)
        return s.let("bx", f"{beta} * {x}", soft)
    return s.let("x", a[0], body)


def _unary(build):
    """An EXPRESSIONS entry for a math helper of one operand."""
    return lambda a, arg, attrs: build(_Scope(), a[0])


EXPRESSIONS = {
    "add": lambda a, arg, attrs: f"{a[0]} + {a[1]}",
    "sub": lambda a, arg, attrs: f"{a[0]} - {a[1]}",
    "mul": lambda a, arg, attrs: f"{a[0]} * {a[1]}",
    "div": lambda a, arg, attrs: f"{a[0]} / {a[1]}",
    "neg": lambda a, arg, attrs: f"{a[0]} * -1",  # not 0 - x: keeps -0.0 (Triton 3.6's interpreter has -x = 0 - x)
    "abs": lambda a, arg, attrs: f"tl.abs({a[0]})",
    "exp": lambda a, arg, attrs: f"tl.exp({a[0]})",
    "expm1": _unary(_expm1),
    "log": lambda a, arg, attrs: f"tl.log({a[0]})",
    "log1p": _unary(_log1p),
    "log2": lambda a, arg, attrs: f"tl.log2({a[0]})",
    "sqrt": lambda a, arg, attrs: f"tl.sqrt({a[0]})",
    "rsqrt": lambda a, arg, attrs: f"1.0 / tl.sqrt({a[0]})",
    "sin": lambda a, arg, attrs: f"tl.sin({a[0]})",
    "cos": lambda a, arg, attrs: f"tl.cos({a[0]})",
    "tanh": _unary(_tanh),
    "erf": lambda a, arg, attrs: f"tl.erf({a[0]})",
    "reciprocal": lambda a, arg, attrs: f"1.0 / {a[0]}",
    "sigmoid": lambda a, arg, attrs: f"1.0 / (1.0 + tl.exp(-{a[0]}))",
    "relu": lambda a, arg, attrs: f"tl.where({a[0]} < 0, 0, {a[0]})",  # keeps -0.0 and nan
    "gelu": _gelu,
    "elu": _elu,
    "softplus": _softplus,
    "sign": lambda a, arg, attrs: f"tl.where({a[0]} > 0, 1, tl.where({a[0]} < 0, -1, 0)).to(({a[0]}).dtype)",  # sign(nan) = 0
    "floor": lambda a, arg, attrs: _float_only(a[0], f"tl.floor({a[0]})"),
    "ceil": lambda a, arg, attrs: _float_only(a[0], f"tl.ceil({a[0]})"),
    "trunc": lambda a, arg, attrs: _float_only(a[0], _Scope().let("x", a[0], _trunc)),
    "round": lambda a, arg, attrs: _float_only(a[0], _round(_Scope(), a[0])),
    "pow": _pow,
    "atan2": lambda a, arg, attrs: (lambda s: _binary(s, a, lambda y, x, t: _atan2(s, y, x)))(_Scope()),
    "remainder": _remainder,
    "div_mode": _div_mode,
    # NaN-propagating, as torch.maximum/minimum
    "maximum": lambda a, arg, attrs: f"tl.where(({a[0]} != {a[0]}) | ({a[0]} > {a[1]}), {a[0]}, {a[1]})",
    "minimum": lambda a, arg, attrs: f"tl.where(({a[0]} != {a[0]}) | ({a[0]} < {a[1]}), {a[0]}, {a[1]})",
    "clamp": _clamp,
    "eq": lambda a, arg, attrs: f"{a[0]} == {a[1]}",
    "ne": lambda a, arg, attrs: f"{a[0]} != {a[1]}",
    "lt": lambda a, arg, attrs: f"{a[0]} < {a[1]}",
    "le": lambda a, arg, attrs: f"{a[0]} <= {a[1]}",
    "gt": lambda a, arg, attrs: f"{a[0]} > {a[1]}",
    "ge": lambda a, arg, attrs: f"{a[0]} >= {a[1]}",
    "logical_and": lambda a, arg, attrs: f"({a[0]} != 0) & ({a[1]} != 0)",
    "logical_or": lambda a, arg, attrs: f"({a[0]} != 0) | ({a[1]} != 0)",
    "logical_xor": lambda a, arg, attrs: f"({a[0]} != 0) ^ ({a[1]} != 0)",
    "logical_not": lambda a, arg, attrs: f"{a[0]} == 0",
    "isnan": lambda a, arg, attrs: f"{a[0]} != {a[0]}",
    "isinf": lambda a, arg, attrs: f"(tl.abs({a[0]}) == {INF} if ({a[0]}).dtype.is_floating() else {a[0]} != {a[0]})",
    "isfinite": lambda a, arg, attrs: f"(tl.abs({a[0]}) < {INF} if ({a[0]}).dtype.is_floating() else {a[0]} == {a[0]})",
    "where": lambda a, arg, attrs: f"tl.where({a[0]} != 0, {a[1]}, {a[2]})",
    "cast": lambda a, arg, attrs: f"{a[0]} != 0" if attrs["dtype"] is dtypes.bool_ else a[0],
    "masked_fill": lambda a, arg, attrs: f"tl.where({a[1]} != 0, {arg(attrs['value'])}, {a[0]})",
    "leaky_relu": lambda a, arg, attrs: f"tl.where({a[0]} > 0, {a[0]}, {a[0]} * {arg(attrs['negative_slope'])})",
}


def compute_types(op, inputs, out_dtype):
    """Per input: the type it is loaded as (None: as stored)."""
    if op.dtype_rule in ("promote", "float", "bool"):
        ct = dtypes.compute_type(out_dtype)
        return [None if i in op.keep_inputs else ct for i in range(len(inputs))]
    return [dtypes.compute_type(dtypes.from_numpy_dtype(x.dtype)) if hasattr(x, "dtype") else None for x in inputs]


def output_dtype(op, out_dtype):
    """The dtype the emitter stores: bool for comparisons and the custom-rule predicates
    (logical_*, isnan, isinf, isfinite), else the dtype rule's result."""
    if op.dtype_rule == "bool" or (op.dtype_rule == "custom" and op.out_dtypes[:1] == ("bool",)):
        return dtypes.bool_
    return out_dtype


@emitter(*EXPRESSIONS)
def elementwise(call):
    op = call.op
    _check_integer_power(call)
    _check_clamp_bounds(call)
    shape = _broadcast_shape(call.inputs)
    kernel = Pointwise(f"{op.name}_kernel", shape)
    names = []
    for i, (x, ct) in enumerate(zip(call.inputs, compute_types(op, call.inputs, call.out_dtype))):
        if hasattr(x, "shape"):
            names.append(kernel.load(f"in{i}", x, ct))
        else:
            names.append(kernel.scalar(f"in{i}", x))
    scalars = iter(range(1000))
    result = kernel.compute(op.name, EXPRESSIONS[op.name](names, lambda v: kernel.scalar(f"attr{next(scalars)}", v), call.attrs))
    out = call.empty(shape, output_dtype(op, call.out_dtype))
    kernel.store("out", result, out)
    kernel.launch(call)
    return out


def _check_integer_power(call):
    """An integer tensor to a negative Python int power raises as on the CPU (the exponent is
    known on the host; a negative exponent inside a tensor cannot be checked without reading it)."""
    if call.op.name != "pow" or call.out_dtype is None or call.out_dtype.is_floating_point or call.out_dtype is dtypes.bool_:
        return
    exponent = call.inputs[1]
    if not hasattr(exponent, "shape") and exponent < 0:
        raise RuntimeError("Integers to negative integer powers are not allowed.")


def _check_clamp_bounds(call):
    """A bound out of range of the tensor's integer type raises NumPy's OverflowError, as on the CPU."""
    if call.op.name == "clamp" and call.out_dtype is not None:
        for bound in (call.attrs["min"], call.attrs["max"]):
            if bound is not None:
                np.asarray(bound, dtype=dtypes.compute_type(call.out_dtype))


def _broadcast_shape(inputs):
    return np.broadcast_shapes(*[x.shape for x in inputs if hasattr(x, "shape")])


@emitter("dropout")
def dropout(call):
    """(x * keep * 1 / (1 - p), keep) with keep = uniform >= p, drawn by Triton's Philox
    generator from a seed taken from tracefuse's generator (so each call draws anew, and
    manual_seed makes a run repeatable), at the element's flat index."""
    from ..numpy.random import generator

    (x,) = call.inputs
    p = float(call.attrs["p"])
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    seed = int(generator().integers(0, 2**31 - 1))
    kernel = Pointwise("dropout_kernel", x.shape)
    ct = compute_types(call.op, [x], call.out_dtype)[0]
    name = kernel.load("x", x, ct)
    seed_param = kernel.scalar("seed", seed)
    p_param, scale_param = kernel.scalar("p", p), kernel.scalar("scale", scale)
    keep = kernel.compute("keep", f"tl.rand({seed_param}, offsets) >= {p_param}")
    result = kernel.compute("result", _like(f"{name} * {keep}.to({name}.dtype) * {scale_param}", name))
    out, mask = call.empty(x.shape, call.out_dtype), call.empty(x.shape, dtypes.bool_)
    kernel.store("out", result, out)
    kernel.store("keep_mask", keep, mask)
    kernel.launch(call)
    return out, mask


def copy_into(call, dst, src, name="copy_kernel"):
    """dst[...] = src (broadcast, cast to dst's type): in-place assignment on a device."""
    kernel = Pointwise(name, dst.shape)
    kernel.store("dst", kernel.load("src", src), dst)
    kernel.launch(call)


def is_contiguous(array) -> bool:
    """Whether `array` is C-contiguous (the stride of an extent-1 dim does not matter)."""
    expected = array.itemsize
    for n, stride in zip(reversed(array.shape), reversed(array.strides)):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


def contiguous(call, array):
    """`array` itself when it is C-contiguous or empty (or None: an absent operand), else a
    C-contiguous copy made on the device (one copy launch)."""
    if array is None or array.size == 0 or is_contiguous(array):
        return array
    copy = call.empty(array.shape, array.dtype)
    copy_into(call, copy, array, "contiguous_kernel")
    return copy
