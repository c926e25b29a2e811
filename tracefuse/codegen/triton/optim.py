"""Optimizer steps on a device: `multi_tensor_sgd` and `multi_tensor_adam` each run as ONE kernel
launch for any number of parameters of one dtype (one launch per dtype present).

The tensors are described to the kernel by tables built on the host from metadata only (device
addresses, element counts) and copied to the device at once, like apex's multi_tensor_apply:

    params[t], grads[t], ...           the address of tensor t of each input
    new_params[t], ...                 the address of tensor t of each output: the input's own
                                       memory when the graph executor updates it in place
    sizes[t]                           tensor t's element count
    program_tensor[pid]                the tensor program `pid` updates
    first_program[t]                   tensor t's first program (t = T: the program count)

Each program updates one CHUNK of one tensor, BLOCK elements at a time, reading every input at
an element before writing any output there, so outputs may share memory with their inputs.

The arithmetic is the NumPy implementation's (codegen/numpy/optim.py), op by op: float16 and
bfloat16 load, compute in float32 and round to their dtype after every op; Python scalars
(hyperparameters, passed as float64 bits in the table) are converted to the compute type; float32
divisions and square roots are IEEE-rounded (`tl.div_rn`, `tl.sqrt_rn`).

Adam's step counters are 0-dim device tensors. Every program of a tensor reads the counter and
computes its increment and the float64 bias corrections (beta ** step by repeated squaring in
double-double arithmetic, the step being a whole number: correctly rounded, where NumPy's pow on
the CPU is off by one ulp for a few percent of steps, so float64 runs agree to ~1e-16 relative,
not bit for bit, after such a step); the program that finishes last (an
atomic ticket per tensor, after a barrier: the other programs have read the counter by then)
writes the new counter, so the counter too can be updated in place. A 0-dim parameter's update
is float64 arithmetic rounded once, as the float64 0-dim bias corrections promote it on the CPU.

Non-contiguous inputs are first copied to contiguous arrays (one strided-copy launch each).
"""
from __future__ import annotations

import numpy as np

from .elementwise import contiguous
from .heuristics import multi_tensor_blocks
from .launch import emitter, tl_type
from .multi_tensor import Tables
from .pointwise import store_cast

FLOAT_TYPES = ("float64", "float32", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")


# --- host side ------------------------------------------------------------------------------------------


def _name(array) -> str:
    return np.dtype(array.dtype).name


def _float_bits(value) -> int:
    """A Python number as the int64 holding its float64 bits (how hyperparameters reach a kernel)."""
    return int(np.array([float(value)], np.float64).view(np.int64)[0])


def _check(op_name, arrays):
    for a in arrays:
        if isinstance(a, (int, float)) or not hasattr(a, "shape"):
            raise RuntimeError(f"{op_name} on a CUDA device needs every tensor on the device (a 0-dim CPU tensor "
                               "took part: move the optimizer's state to the parameters' device)")
        if _name(a) not in FLOAT_TYPES:
            raise TypeError(f"{op_name} on a CUDA device updates floating-point tensors only, got {_name(a)}")


def _by_dtype(keys):
    """Tensor indices grouped by key, in first-appearance order."""
    groups: dict = {}
    for t, key in enumerate(keys):
        groups.setdefault(key, []).append(t)
    return list(groups.items())


# --- generated source: arithmetic rounded per op -----------------------------------------------------------


class _Source:
    """The body lines of a kernel, written op by op in the compute type of dtype `name`, each
    result rounded to `name` as the NumPy implementation rounds it."""

    def __init__(self, name):
        self.name = name
        self.compute = "tl.float64" if name == "float64" else "tl.float32"
        self.lines: list = []

    def rounded(self, expression):
        if self.name in _HALF:
            return store_cast(f"({expression})", self.name) + ".to(tl.float32)"
        return expression

    def let(self, temp, expression, exact=False):
        """`temp = expression`, rounded to the dtype (not where the result is exact: negation, max)."""
        self.lines.append(f"{temp} = {expression if exact else self.rounded(expression)}")
        return temp

    def div(self, a, b):
        return f"tl.div_rn({a}, {b})" if self.compute == "tl.float32" else f"{a} / {b}"

    def sqrt(self, a):
        return f"tl.sqrt_rn({a})" if self.compute == "tl.float32" else f"tl.sqrt({a})"

    def scaled(self, temp, x, alpha_value, alpha_name):
        """`y.add(x, alpha=...)`'s second operand: x * alpha, or x itself when alpha == 1."""
        return x if alpha_value == 1 else self.let(temp, f"{x} * {alpha_name}")

    def comment(self, text):
        self.lines.append(f"# {text}")

    def load(self, roles, maximize):
        """Each role's elements in the compute type; the gradient negated for `maximize`."""
        for role in roles:
            self.lines.append(f"{role} = tl.load({role}_ptr + offsets, mask=in_bounds).to({self.compute})")
        if maximize:
            self.let("grad", "-grad", exact=True)

    def store(self, roles, values):
        """Each value rounded to the dtype and stored through its role's pointer."""
        for role, value in zip(roles, values):
            self.lines.append(f"tl.store({role}_ptr + offsets, {store_cast(value, self.name)}, mask=in_bounds)")


def _kernel_head(name, groups, scalars_comment):
    lines = ["@triton.jit", f"def {name}("]
    for comment, params in groups:
        lines.append(f"    # {comment}")
        lines.append("    " + ", ".join(params) + ",")
    lines += [f"    # {scalars_comment}", "    hyperparameters,",
              "    # each program updates CHUNK elements of one tensor, BLOCK at a time",
              "    BLOCK: tl.constexpr, CHUNK: tl.constexpr,", "):"]
    return lines


def _program_lines():
    return ["pid = tl.program_id(0)",
            "tensor = tl.load(program_tensor + pid)",
            "first = tl.load(first_program + tensor)",
            "chunk_start = (pid - first) * CHUNK",
            "numel = tl.load(sizes + tensor)"]


def _hyperparameter_lines(names, compute, wide=()):
    """Each hyperparameter from its float64 bits, converted to the compute type (`wide` ones stay float64)."""
    lines = []
    for k, name in enumerate(names):
        convert = "" if name in wide or compute == "tl.float64" else f".to({compute})"
        lines.append(f"{name} = tl.load(hyperparameters + {k}).to(tl.float64, bitcast=True){convert}")
    return lines


def _pointer_lines(roles, dtype_name):
    pointer = f"tl.pointer_type({tl_type(dtype_name)})"
    return [f"{role}_ptr = tl.load({role}s + tensor).to({pointer})" for role in roles]


def _indent(lines, by=1):
    return ["    " * by + line for line in lines]


def _chunk_loop(lines):
    """`lines` run over the program's chunk, BLOCK elements at a time."""
    return ["for start in range(0, CHUNK, BLOCK):",
            "    offsets = chunk_start + start + tl.arange(0, BLOCK)",
            "    in_bounds = offsets < numel"] + _indent(lines)


# --- multi_tensor_sgd ----------------------------------------------------------------------------------------


def _sgd_source(name, dtype_name, attrs, has_buffers):
    momentum, dampening = attrs["momentum"], attrs["dampening"]
    weight_decay, lr = attrs["weight_decay"], attrs["lr"]
    uses_buffers = momentum != 0
    inputs = ["param", "grad"] + (["momentum_buffer"] if uses_buffers and has_buffers else [])
    outputs = ["new_param"] + (["new_momentum_buffer"] if uses_buffers else [])
    hyper = ["neg_lr", "weight_decay", "momentum", "dampening_complement"]

    s = _Source(dtype_name)
    s.load(inputs, attrs["maximize"])
    if weight_decay != 0:
        s.let("grad", "grad + " + s.scaled("decay", "param", weight_decay, "weight_decay"))
    if uses_buffers:
        if has_buffers:
            s.let("momentum_buffer", "momentum_buffer * momentum")
            damped = s.scaled("damped", "grad", 1 - dampening, "dampening_complement")
            s.let("momentum_buffer", "momentum_buffer + " + damped)
        else:
            s.comment("the first step: the buffer is the gradient")
            s.let("momentum_buffer", "grad", exact=True)
        if attrs["nesterov"]:
            s.let("grad", "grad + " + s.scaled("look_ahead", "momentum_buffer", momentum, "momentum"))
        else:
            s.let("grad", "momentum_buffer", exact=True)
    s.let("new_param", "param + " + s.scaled("step", "grad", -lr, "neg_lr"))
    s.store(outputs, ["new_param"] + (["momentum_buffer"] if uses_buffers else []))

    head = _kernel_head(name, [
        ("tensor table, one entry per tensor: the inputs' addresses", [r + "s" for r in inputs]),
        ("the outputs' addresses (the inputs' own memory when updated in place)", [r + "s" for r in outputs]),
        ("element counts; the program table: each program's tensor, each tensor's first program",
         ["sizes", "program_tensor", "first_program"]),
    ], "float64 bits of: " + ", ".join(hyper))
    body = _program_lines() + _hyperparameter_lines(hyper, s.compute)
    body += _pointer_lines(inputs + outputs, dtype_name)
    body += _chunk_loop(s.lines)
    return "\n".join(head + _indent(body)) + "\n"


@emitter("multi_tensor_sgd")
def multi_tensor_sgd(call):
    attrs = call.attrs
    n, has_buffers, momentum = attrs["n"], attrs["has_buffers"], attrs["momentum"]
    groups = 3 if has_buffers else 2
    inputs = list(call.inputs)
    assert len(inputs) == groups * n, (len(inputs), n)
    _check("multi_tensor_sgd", inputs)
    params, grads = inputs[:n], inputs[n:2 * n]
    buffers = inputs[2 * n:] if has_buffers else []
    n_out = 2 if momentum != 0 else 1
    outputs = [call.output(k * n + t, params[t].shape, params[t].dtype) for k in range(n_out) for t in range(n)]
    hyper = [-attrs["lr"], attrs["weight_decay"], momentum, 1 - attrs["dampening"]]

    for dtype_name, members in _by_dtype([_name(p) for p in params]):
        sizes = [int(params[t].size) for t in members]
        if not any(sizes):
            continue
        block, chunk = multi_tensor_blocks(sizes, 8)
        tables = Tables(call, sizes, chunk, at_least_one_chunk=False)
        tables.addresses("params", [contiguous(call, params[t]) for t in members])
        tables.addresses("grads", [contiguous(call, grads[t]) for t in members])
        if momentum != 0 and has_buffers:
            tables.addresses("momentum_buffers", [contiguous(call, buffers[t]) for t in members])
        tables.addresses("new_params", [outputs[t] for t in members])
        if momentum != 0:
            tables.addresses("new_momentum_buffers", [outputs[n + t] for t in members])
        tables.add("hyperparameters", [_float_bits(v) for v in hyper])
        table = tables.to_device()
        source = _sgd_source("multi_tensor_sgd_kernel", dtype_name, attrs, has_buffers)
        kernel = call.kernel("multi_tensor_sgd_kernel", source)
        names = [k for k in tables.sections if k not in ("sizes", "program_tensor", "first_program", "hyperparameters")]
        args = [table[k] for k in names] + [table["sizes"], table["program_tensor"], table["first_program"],
                                             table["hyperparameters"]]
        call.launch(kernel, (tables.programs,), *args, BLOCK=block, CHUNK=chunk)
    return tuple(outputs)


# --- multi_tensor_adam ---------------------------------------------------------------------------------------

_INTEGER_POWER = """
@triton.jit
def double_double_product(a_hi, a_lo, b_hi, b_lo):
    # (a_hi + a_lo) * (b_hi + b_lo) as an unevaluated sum hi + lo (the fma makes a_hi * b_hi exact)
    product = a_hi * b_hi
    error = tl.fma(a_hi, b_hi, -product) + (a_hi * b_lo + a_lo * b_hi)
    hi = product + error
    return hi, error - (hi - product)


@triton.jit
def integer_power(base, exponent):
    # base ** exponent (float64) for a whole-number exponent >= 0: repeated squaring in
    # double-double arithmetic, rounded once at the end (so it agrees with a correctly rounded pow)
    result_hi = base * 0.0 + 1.0
    result_lo = base * 0.0
    base_hi = base
    base_lo = base * 0.0
    remaining = exponent.to(tl.int64)
    while remaining > 0:
        if remaining % 2 == 1:
            result_hi, result_lo = double_double_product(result_hi, result_lo, base_hi, base_lo)
        base_hi, base_lo = double_double_product(base_hi, base_lo, base_hi, base_lo)
        remaining = remaining // 2
    return result_hi + result_lo

"""


def _adam_source(name, dtype_name, step_name, attrs, has_scalars):
    amsgrad, weight_decay = attrs["amsgrad"], attrs["weight_decay"]
    states = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    inputs = ["param", "grad"] + states
    outputs = ["new_" + r for r in ["param"] + states]
    hyper = ["lr", "beta1", "beta2", "eps", "weight_decay", "decay", "lerp_weight", "lerp_complement",
             "beta2_complement"]
    wide_hyper = ("lr", "beta1", "beta2", "eps")

    s = _Source(dtype_name)
    s.load(inputs, attrs["maximize"])
    if weight_decay != 0:
        if attrs["decoupled_weight_decay"]:
            s.let("param", "param * decay")
        else:
            s.let("grad", "grad + " + s.scaled("decayed", "param", weight_decay, "weight_decay"))
    s.comment("exp_avg.lerp_(grad, 1 - beta1)")
    s.let("diff", "grad - exp_avg")
    if abs(1 - attrs["beta1"]) < 0.5:
        s.let("exp_avg", "exp_avg + " + s.let("lerp_step", "diff * lerp_weight"))
    else:
        s.let("exp_avg", "grad - " + s.let("lerp_step", "diff * lerp_complement"))
    s.comment("exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)")
    s.let("exp_avg_sq", "exp_avg_sq * beta2_c")
    s.let("grad_sq", s.let("grad_scaled", "grad * beta2_complement") + " * grad")
    s.let("exp_avg_sq", "exp_avg_sq + grad_sq")
    if amsgrad:
        s.let("max_exp_avg_sq", "tl.where((exp_avg_sq > max_exp_avg_sq) | (exp_avg_sq != exp_avg_sq), exp_avg_sq, "
              "max_exp_avg_sq)", exact=True)
        second = "max_exp_avg_sq"
    else:
        second = "exp_avg_sq"
    s.let("root", s.sqrt(second))
    narrow = _Source(dtype_name)
    narrow.let("denom", narrow.div("root", "(tl.zeros_like(root) + bias_correction2_sqrt_c)"))
    narrow.let("denom", "denom + eps_c")
    narrow.let("update", narrow.div(narrow.let("scaled_avg", "exp_avg * neg_step_size_c"), "denom"))
    narrow.let("new_param", "param + update")
    if has_scalars and dtype_name != "float64":
        s.lines.append("if is_scalar:")
        s.lines.append("    # a 0-dim parameter: float64 arithmetic, rounded once into the parameter")
        wide = ["wide_denom = root.to(tl.float64) / bias_correction2_sqrt + eps",
                "wide_update = exp_avg.to(tl.float64) * -step_size / wide_denom",
                "wide_param = param.to(tl.float64) + wide_update"]
        # float64 -> float16 directly; to bfloat16 through float32 (as ml_dtypes converts on the CPU)
        rounded = {"float32": "wide_param.to(tl.float32)", "float16": "wide_param.to(tl.float16).to(tl.float32)",
                   "bfloat16": "round_to_bfloat16(wide_param.to(tl.float32)).to(tl.float32)"}[dtype_name]
        wide.append(f"new_param = {rounded}")
        s.lines += _indent(wide)
        s.lines.append("else:")
        s.lines += _indent(narrow.lines)
    else:
        s.lines += narrow.lines
    s.store(outputs, ["new_param"] + states)

    step_compute = "tl.float64" if step_name == "float64" else "tl.float32"
    counter = _Source(step_name)
    counter.let("step", f"tl.load(step_ptr).to({step_compute}) + 1.0")
    head = _kernel_head(name, [
        ("tensor table, one entry per tensor: the inputs' addresses", [r + "s" for r in inputs] + ["steps"]),
        ("the outputs' addresses (the inputs' own memory when updated in place)", [r + "s" for r in outputs]
         + ["new_steps"]),
        ("element counts" + (", whether the parameter is 0-dim" if has_scalars else "")
         + "; the program table: each program's tensor, each tensor's first program",
         ["sizes"] + (["is_scalars"] if has_scalars else []) + ["program_tensor", "first_program"]),
        ("per tensor: how many of its programs have finished", ["finished"]),
    ], "float64 bits of: " + ", ".join(hyper))
    body = _program_lines()
    if has_scalars:
        body.append("is_scalar = tl.load(is_scalars + tensor) != 0")
    body += _hyperparameter_lines(hyper, s.compute, wide=wide_hyper)
    body.append(f"beta2_c = beta2.to({s.compute})")
    body += _pointer_lines(inputs + outputs, dtype_name)
    body += _pointer_lines(["step", "new_step"], step_name)
    body.append("# the step counter, incremented in its dtype; the bias corrections in float64")
    body += counter.lines
    body += ["bias_correction1 = 1.0 - integer_power(beta1, step.to(tl.float64))",
             "bias_correction2_sqrt = tl.sqrt(1.0 - integer_power(beta2, step.to(tl.float64)))",
             "step_size = lr / bias_correction1",
             f"bias_correction2_sqrt_c = bias_correction2_sqrt.to({s.compute})",
             f"neg_step_size_c = (-step_size).to({s.compute})",
             f"eps_c = eps.to({s.compute})"]
    body += _chunk_loop(s.lines)
    body += ["# the program that finishes last writes the new step: every program has read the old one",
             "tl.debug_barrier()",
             "finished_before = tl.atomic_add(finished + tensor, 1)",
             "if finished_before == tl.load(first_program + tensor + 1) - first - 1:",
             f"    tl.store(new_step_ptr, {store_cast('step', step_name)})",
             "    tl.store(finished + tensor, 0)  # zero again for the next launch (a CUDA graph's replay)"]
    return _INTEGER_POWER + "\n".join(head + _indent(body)) + "\n"


@emitter("multi_tensor_adam")
def multi_tensor_adam(call):
    attrs = call.attrs
    n, amsgrad = attrs["n"], attrs["amsgrad"]
    groups = 6 if amsgrad else 5
    inputs = list(call.inputs)
    assert len(inputs) == groups * n, (len(inputs), n)
    _check("multi_tensor_adam", inputs)
    params, grads = inputs[:n], inputs[n:2 * n]
    states = [inputs[k * n:(k + 1) * n] for k in range(2, groups - 1)]
    steps = inputs[(groups - 1) * n:]
    outputs = [call.output(k * n + t, params[t].shape, params[t].dtype) for k in range(groups - 2) for t in range(n)]
    outputs += [call.output((groups - 2) * n + t, (), steps[t].dtype) for t in range(n)]
    lr, beta1, beta2, weight_decay = attrs["lr"], attrs["beta1"], attrs["beta2"], attrs["weight_decay"]
    hyper = [lr, beta1, beta2, attrs["eps"], weight_decay, 1 - lr * weight_decay, 1 - beta1, 1 - (1 - beta1),
             1 - beta2]

    for (dtype_name, step_name), members in _by_dtype([(_name(p), _name(st)) for p, st in zip(params, steps)]):
        sizes = [int(params[t].size) for t in members]
        scalars = [params[t].ndim == 0 for t in members]
        block, chunk = multi_tensor_blocks(sizes, 8)
        tables = Tables(call, sizes, chunk, at_least_one_chunk=True)  # an empty parameter's step still counts
        tables.addresses("params", [contiguous(call, params[t]) for t in members])
        tables.addresses("grads", [contiguous(call, grads[t]) for t in members])
        names = ["exp_avgs", "exp_avg_sqs"] + (["max_exp_avg_sqs"] if amsgrad else [])
        for name, state in zip(names, states):
            tables.addresses(name, [contiguous(call, state[t]) for t in members])
        tables.addresses("steps", [steps[t] for t in members])
        for k, name in enumerate(["new_params"] + ["new_" + m for m in names]):
            tables.addresses(name, [outputs[k * n + t] for t in members])
        tables.addresses("new_steps", [outputs[(groups - 2) * n + t] for t in members])
        has_scalars = any(scalars) and dtype_name != "float64"
        if has_scalars:
            tables.add("is_scalars", scalars)
        tables.add("finished", [0] * len(members))
        tables.add("hyperparameters", [_float_bits(v) for v in hyper])
        table = tables.to_device()
        source = _adam_source("multi_tensor_adam_kernel", dtype_name, step_name, attrs, has_scalars)
        kernel = call.kernel("multi_tensor_adam_kernel", source)
        order = (["params", "grads"] + names + ["steps", "new_params"] + ["new_" + m for m in names] + ["new_steps"]
                 + ["sizes"] + (["is_scalars"] if has_scalars else []) + ["program_tensor", "first_program", "finished",
                                                                         "hyperparameters"])
        call.launch(kernel, (tables.programs,), *[table[k] for k in order], BLOCK=block, CHUNK=chunk)
    return tuple(outputs)
