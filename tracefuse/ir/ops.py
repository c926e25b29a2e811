"""The op table: every operation tracefuse knows, defined once.

Each `OpDef` names an op, its kind, how its result dtype follows from its inputs and which
attributes it takes. Backends and autograd register their rules against the same name:
`impl` (the NumPy implementation, codegen/numpy), `grad` (the gradient rule written with ops,
tracefuse/derivatives.py). Eager execution, tracing and autodiff all read this table.

dtype rules:
  promote   PyTorch's result_type over tensor and scalar inputs
  float     as promote, but integral/bool results become the default float (exp, div, mean)
  bool      inputs promoted to a common type, result bool (comparisons)
  same      the first input's dtype (movement, indexing)
  sum       as same, but bool/integers accumulate into int64 (sum, prod, cumsum)
  index     int64 (argmax, ...)
  attr      the `dtype` attribute (casts, factories)
  custom    the implementation returns the right dtype itself
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("creation", "elementwise", "reduce", "matmul", "movement", "composite", "collective")
DTYPE_RULES = ("promote", "float", "bool", "same", "sum", "index", "attr", "custom")


@dataclass
class OpDef:
    name: str
    kind: str
    dtype_rule: str
    attrs: tuple = ()
    differentiable: bool = True
    n_outputs: int = 1  # -1: one output per tensor input (multi-tensor ops)
    # Inputs of a promote/float/bool op that keep their own dtype (where's condition). Inputs
    # of other ops are never converted, except that float16/bfloat16 compute in float32.
    keep_inputs: tuple = ()
    # Side outputs (indices, masks, saved workspaces): never differentiable, never cast.
    aux_outputs: tuple = ()
    impl: object = field(default=None, repr=False)
    grad: object = field(default=None, repr=False)


OPS: dict[str, OpDef] = {}


@dataclass(frozen=True)
class TensorSlot:
    """Stands in an indexing key (getitem/index_put `index` attr) for the k-th index tensor input."""

    k: int

    def __repr__(self):
        return f"%idx{self.k}"


def _op(name, kind, dtype_rule, attrs=(), **kw):
    assert kind in KINDS and dtype_rule in DTYPE_RULES, name
    OPS[name] = OpDef(name, kind, dtype_rule, tuple(attrs), **kw)


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op '{name}'") from None


def register_impl(name):
    """Decorator: the NumPy implementation of op `name` (arrays and attrs in, array(s) out)."""
    def deco(fn):
        op = get(name)
        assert op.impl is None, f"two NumPy implementations for '{name}'"
        op.impl = fn
        return fn
    return deco


def register_grad(name):
    """Decorator: the gradient rule of op `name` (ctx and output grads in, input grads out)."""
    def deco(fn):
        op = get(name)
        assert op.grad is None, f"two gradient rules for '{name}'"
        op.grad = fn
        return fn
    return deco


# --- creation: no tensor inputs; `device` and `dtype` are attributes -------------------------
for _name, _attrs in {
    "full": ("shape", "value"),
    "arange": ("start", "end", "step"),
    "linspace": ("start", "end", "steps"),
    "eye": ("n", "m"),
    "rand": ("shape",),
    "randn": ("shape",),
    "randint": ("low", "high", "shape"),
    "randperm": ("n",),
}.items():
    _op(_name, "creation", "attr", _attrs + ("dtype", "device"), differentiable=False)

# --- elementwise ---------------------------------------------------------------------------
for _name in ("neg", "abs", "relu"):
    _op(_name, "elementwise", "promote")
for _name in ("sign", "floor", "ceil", "round", "trunc"):
    _op(_name, "elementwise", "promote")
for _name in ("exp", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "sin", "cos",
              "sigmoid", "tanh", "erf", "reciprocal"):
    _op(_name, "elementwise", "float")
_op("gelu", "elementwise", "float", ("approximate",))
_op("leaky_relu", "elementwise", "promote", ("negative_slope",))
_op("elu", "elementwise", "float", ("alpha",))
_op("softplus", "elementwise", "float", ("beta", "threshold"))
_op("cast", "elementwise", "attr", ("dtype",))
for _name in ("add", "sub", "mul", "maximum", "minimum", "remainder"):
    _op(_name, "elementwise", "promote")
_op("pow", "elementwise", "promote")
_op("div", "elementwise", "float")
_op("div_mode", "elementwise", "promote", ("rounding_mode",))  # 'trunc' / 'floor' division keeps ints
_op("atan2", "elementwise", "float")
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    _op(_name, "elementwise", "bool", differentiable=False)
for _name in ("logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite"):
    _op(_name, "elementwise", "custom", differentiable=False)
_op("where", "elementwise", "promote", keep_inputs=(0,))  # where(cond, x, y): cond stays bool
_op("clamp", "elementwise", "promote", ("min", "max"))
_op("masked_fill", "elementwise", "same", ("value",))
_op("dropout", "elementwise", "same", ("p",), n_outputs=2, aux_outputs=(1,))  # (out, keep-mask)

# --- reductions (dim: tuple of ints or None for all) -----------------------------------------
_op("sum", "reduce", "sum", ("dim", "keepdim"))
_op("prod", "reduce", "sum", ("dim", "keepdim"))
_op("mean", "reduce", "same", ("dim", "keepdim"))
_op("amax", "reduce", "same", ("dim", "keepdim"))
_op("amin", "reduce", "same", ("dim", "keepdim"))
_op("max_dim", "reduce", "custom", ("dim", "keepdim"), n_outputs=2, aux_outputs=(1,))  # (values, indices)
_op("min_dim", "reduce", "custom", ("dim", "keepdim"), n_outputs=2, aux_outputs=(1,))
_op("argmax", "reduce", "index", ("dim", "keepdim"), differentiable=False)
_op("argmin", "reduce", "index", ("dim", "keepdim"), differentiable=False)
_op("var", "reduce", "same", ("dim", "correction", "keepdim"))
_op("norm", "reduce", "same", ("p", "dim", "keepdim"))
_op("logsumexp", "reduce", "same", ("dim", "keepdim"))
_op("cumsum", "reduce", "sum", ("dim",))
_op("all", "reduce", "custom", ("dim", "keepdim"), differentiable=False)
_op("any", "reduce", "custom", ("dim", "keepdim"), differentiable=False)

# --- matmul ----------------------------------------------------------------------------------
_op("matmul", "matmul", "promote")

# --- movement: views where the layout allows, copies otherwise --------------------------------
_op("reshape", "movement", "same", ("shape",))
_op("permute", "movement", "same", ("dims",))
_op("expand", "movement", "same", ("shape",))
_op("flip", "movement", "same", ("dims",))
_op("repeat", "movement", "same", ("repeats",))
_op("clone", "movement", "same")
# Indexing: `index` is the key with every tensor in it replaced by a placeholder; the index
# tensors themselves are the op's trailing inputs, in order.
_op("getitem", "movement", "same", ("index",))
_op("index_put", "movement", "same", ("index", "accumulate"))  # (x, values, *idx)
_op("cat", "movement", "promote", ("dim",))
_op("gather", "movement", "same", ("dim",))
_op("scatter", "movement", "same", ("dim", "reduce"))  # (x, index, src)
_op("index_select", "movement", "same", ("dim",))
_op("pad", "movement", "same", ("pad", "value"))
_op("tril", "movement", "same", ("diagonal",))
_op("triu", "movement", "same", ("diagonal",))

# --- composite: high-level nn ops that passes fuse or lower ----------------------------------
_op("softmax", "composite", "float", ("dim",))
_op("log_softmax", "composite", "float", ("dim",))
_op("layer_norm", "composite", "same", ("normalized_shape", "eps"))  # (x, weight?, bias?)
_op("embedding", "composite", "same", ("padding_idx",))  # (weight, indices)
_op("embedding_backward", "composite", "same", ("num_weights", "padding_idx"))
_op("conv", "composite", "promote", ("stride", "padding", "dilation", "groups"))  # (x, w, b?)
_op("conv_backward", "composite", "same", ("stride", "padding", "dilation", "groups", "has_bias"),
    differentiable=False, n_outputs=3)  # (grad_out, x, w) -> (gx, gw, gb)
_op("max_pool", "composite", "same", ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    n_outputs=2, aux_outputs=(1,))
_op("max_pool_backward", "composite", "same", ("input_shape",))  # (grad_out, indices)
_op("avg_pool", "composite", "same", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"))
_op("avg_pool_backward", "composite", "same",
    ("input_shape", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"))
# Recurrent layers, one op per layer and direction. Inputs:
#   (x[T,B,I], h0[B,H], c0[B,H] (lstm only), w_ih, w_hh, b_ih?, b_hh?, w_hr? (lstm proj), lengths[B]?)
# Outputs: (y[T,B,H], h_n[B,H], c_n (lstm), workspace) where the workspace holds the gate
# activations the backward op reads. `lengths` masks packed batches: steps past a sequence's
# length leave its state unchanged and write zeros to y.
_RNN_ATTRS = ("reverse", "has_bias", "has_proj", "has_lengths")
_op("lstm_layer", "composite", "same", _RNN_ATTRS, n_outputs=4, aux_outputs=(3,))
_op("gru_layer", "composite", "same", _RNN_ATTRS, n_outputs=3, aux_outputs=(2,))
_op("rnn_layer", "composite", "same", _RNN_ATTRS + ("nonlinearity",), n_outputs=3, aux_outputs=(2,))
for _cell in ("lstm", "gru", "rnn"):
    # (grads of the layer's outputs, the layer's inputs and workspace) -> grads of its inputs
    _op(f"{_cell}_layer_backward", "composite", "custom", _RNN_ATTRS + (("nonlinearity",) if _cell == "rnn" else ()),
        differentiable=False, n_outputs=-1)
# Cells: one step. Inputs (x[B,I], h[B,H], c[B,H] (lstm), w_ih, w_hh, b_ih?, b_hh?).
_op("lstm_cell", "composite", "same", ("has_bias",), n_outputs=2)
_op("gru_cell", "composite", "same", ("has_bias",))
_op("rnn_cell", "composite", "same", ("has_bias", "nonlinearity"))

# --- multi-tensor ops (clip_grad_norm, optimizers): one node whatever the tensor count --------
_op("multi_tensor_norm", "collective", "custom", ("p",), differentiable=False)  # (*tensors) -> total norm
_op("multi_tensor_scale", "collective", "custom", (), differentiable=False, n_outputs=-1)  # (coef, *tensors)
