"""The op table: every operation tracefuse knows, defined once.

Each `OpDef` names an op, its kind, how its result dtype and output shapes follow from its
inputs (shape rules: ir/shapes.py; elementwise ops broadcast by default) and which attributes it
takes. Backends and autograd register their rules against the same name:
`impl` (the NumPy implementation, codegen/numpy), `grad` (the gradient rule written with ops,
tracefuse/derivatives/). Eager execution, tracing and autodiff all read this table.

dtype rules:
  promote   PyTorch's result_type over tensor and scalar inputs
  float     as promote, but integral/bool results become the default float (exp, div, mean)
  bool      inputs promoted to a common type, result bool (comparisons)
  same      the first input's dtype (movement, indexing)
  sum       as same, but bool/integers accumulate into int64 (sum, prod, cumsum)
  index     int64 (argmax, ...)
  attr      the `dtype` attribute (casts, factories)
  custom    the implementation returns the right dtype itself (`out_dtypes` names it, for inference)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import shapes as S

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
    # Draws from the random generator: never merged by CSE nor folded into a constant.
    random: bool = False
    # Output shapes from input shapes and attrs, without running the op (ir/shapes.py).
    shape: object = field(default=None, repr=False)
    # Dtypes of the outputs the implementation picks itself (custom rule, aux outputs), so that
    # they can be inferred without running it: one name per output (one for all outputs when
    # n_outputs is -1), None where the dtype rule applies. The names are ir/infer.py's.
    out_dtypes: tuple = ()
    impl: object = field(default=None, repr=False)
    grad: object = field(default=None, repr=False)


OPS: dict[str, OpDef] = {}


@dataclass(frozen=True)
class TensorSlot:
    """Stands in an indexing key (getitem/index_put `index` attr) for the k-th index tensor input."""

    k: int

    def __repr__(self):
        return f"%idx{self.k}"


def _op(name, kind, dtype_rule, attrs=(), shape=None, **kw):
    assert kind in KINDS and dtype_rule in DTYPE_RULES, name
    if shape is None and kind == "elementwise":
        shape = S.pointwise
    assert shape is not None, f"op '{name}' needs a shape rule"
    OPS[name] = OpDef(name, kind, dtype_rule, tuple(attrs), shape=shape, **kw)


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op '{name}'") from None


def register_impl(name):
    """Decorator: the NumPy implementation of op `name` (arrays and attrs in, array(s) out).

    Implementations run with NumPy's floating-point warnings off: IEEE arithmetic quietly gives
    inf/nan, as in PyTorch."""
    def deco(fn):
        op = get(name)
        assert op.impl is None, f"two NumPy implementations for '{name}'"

        @functools.wraps(fn)
        def quiet(*args, **kwargs):
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)

        op.impl = quiet
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
for _name, _attrs, _shape in (
    ("full", ("shape", "value"), S.from_shape_attr),
    ("arange", ("start", "end", "step"), S.arange),
    ("linspace", ("start", "end", "steps"), S.linspace),
    ("eye", ("n", "m"), S.eye),
    ("rand", ("shape",), S.from_shape_attr),
    ("randn", ("shape",), S.from_shape_attr),
    ("randint", ("low", "high", "shape"), S.from_shape_attr),
    ("randperm", ("n",), S.randperm),
):
    _op(_name, "creation", "attr", _attrs + ("dtype", "device"), shape=_shape, differentiable=False,
        random=_name.startswith("rand"))

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
    _op(_name, "elementwise", "custom", differentiable=False, out_dtypes=("bool",))
_op("where", "elementwise", "promote", keep_inputs=(0,))  # where(cond, x, y): cond stays bool
_op("clamp", "elementwise", "promote", ("min", "max"))
_op("masked_fill", "elementwise", "same", ("value",))
_op("dropout", "elementwise", "same", ("p",), shape=S.pointwise_and_mask, n_outputs=2, aux_outputs=(1,),
    random=True, out_dtypes=(None, "bool"))  # (out, keep-mask)

# --- reductions (dim: tuple of ints or None for all) -----------------------------------------
_op("sum", "reduce", "sum", ("dim", "keepdim"), shape=S.reduce)
_op("prod", "reduce", "sum", ("dim", "keepdim"), shape=S.reduce)
_op("mean", "reduce", "same", ("dim", "keepdim"), shape=S.reduce)
_op("amax", "reduce", "same", ("dim", "keepdim"), shape=S.reduce)
_op("amin", "reduce", "same", ("dim", "keepdim"), shape=S.reduce)
for _name in ("max_dim", "min_dim"):  # (values, indices)
    _op(_name, "reduce", "custom", ("dim", "keepdim"), shape=S.reduce_with_indices, n_outputs=2, aux_outputs=(1,),
        out_dtypes=("first", "int64"))
_op("argmax", "reduce", "index", ("dim", "keepdim"), shape=S.arg_reduce, differentiable=False)
_op("argmin", "reduce", "index", ("dim", "keepdim"), shape=S.arg_reduce, differentiable=False)
_op("var", "reduce", "same", ("dim", "correction", "keepdim"), shape=S.reduce)
_op("norm", "reduce", "same", ("p", "dim", "keepdim"), shape=S.reduce)
_op("logsumexp", "reduce", "same", ("dim", "keepdim"), shape=S.reduce)
_op("cumsum", "reduce", "sum", ("dim",), shape=S.same)
_op("all", "reduce", "custom", ("dim", "keepdim"), shape=S.reduce, differentiable=False, out_dtypes=("logical",))
_op("any", "reduce", "custom", ("dim", "keepdim"), shape=S.reduce, differentiable=False, out_dtypes=("logical",))

# --- matmul ----------------------------------------------------------------------------------
_op("matmul", "matmul", "promote", shape=S.matmul)

# --- movement: views where the layout allows, copies otherwise --------------------------------
_op("reshape", "movement", "same", ("shape",), shape=S.reshape)
_op("permute", "movement", "same", ("dims",), shape=S.permute)
_op("expand", "movement", "same", ("shape",), shape=S.from_shape_attr)
_op("flip", "movement", "same", ("dims",), shape=S.same)
_op("repeat", "movement", "same", ("repeats",), shape=S.repeat)
_op("clone", "movement", "same", shape=S.same)
_op("to_device", "movement", "same", ("device", "source"), shape=S.same)  # a copy between devices
# Indexing: `index` is the key with every tensor in it replaced by a placeholder; the index
# tensors themselves are the op's trailing inputs, in order.
_op("getitem", "movement", "same", ("index",), shape=S.getitem)
_op("index_put", "movement", "same", ("index", "accumulate"), shape=S.same)  # (x, values, *idx)
_op("cat", "movement", "promote", ("dim",), shape=S.cat)
_op("gather", "movement", "same", ("dim",), shape=S.like_index)
_op("scatter", "movement", "same", ("dim", "reduce"), shape=S.same)  # (x, index, src)
_op("index_select", "movement", "same", ("dim",), shape=S.index_select)
_op("pad", "movement", "same", ("pad", "value"), shape=S.pad)
_op("tril", "movement", "same", ("diagonal",), shape=S.same)
_op("triu", "movement", "same", ("diagonal",), shape=S.same)

# --- composite: high-level nn ops that passes fuse or lower ----------------------------------
_op("softmax", "composite", "float", ("dim",), shape=S.same)
_op("log_softmax", "composite", "float", ("dim",), shape=S.same)
_op("layer_norm", "composite", "same", ("normalized_shape", "eps"), shape=S.same)  # (x, weight?, bias?)
_op("embedding", "composite", "same", ("padding_idx",), shape=S.embedding)  # (weight, indices)
_op("embedding_backward", "composite", "same", ("num_weights", "padding_idx"),
    shape=S.embedding_backward)
_op("conv", "composite", "promote", ("stride", "padding", "dilation", "groups"), shape=S.conv)  # (x, w, b?)
# (grad_out, x, w) -> (gx, gw, gb); output_mask: which of the three to compute (others are zeros).
# Differentiable (its rule is made of conv and conv_backward), so conv has double backward.
_op("conv_backward", "composite", "same", ("stride", "padding", "dilation", "groups", "output_mask"),
    shape=S.conv_backward, n_outputs=3)
# Pooling: the trailing len(kernel_size) dims are spatial. max_pool's indices are flat over them.
_op("max_pool", "composite", "same", ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    shape=S.max_pool, n_outputs=2, aux_outputs=(1,), out_dtypes=(None, "int64"))
_op("max_pool_backward", "composite", "same", ("input_shape", "spatial_ndim"),  # (grad_out, indices)
    shape=S.input_shape_attr)
_POOL_ATTRS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_op("avg_pool", "composite", "same", _POOL_ATTRS, shape=S.avg_pool)
_op("avg_pool_backward", "composite", "same", ("input_shape",) + _POOL_ATTRS, shape=S.input_shape_attr)
# Recurrent layers, one op per layer kind and direction (PyTorch's gate order: lstm i,f,g,o;
# gru r,z,n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn))). Inputs, None where absent:
#   lstm_layer(x[T,B,I], h0[B,P], c0[B,H], w_ih[4H,I], w_hh[4H,P], b_ih[4H]?, b_hh[4H]?, w_hr[P,H]?, lengths[B]?)
#   gru_layer (x[T,B,I], h0[B,H], w_ih[3H,I], w_hh[3H,H], b_ih[3H]?, b_hh[3H]?, lengths[B]?)
#   rnn_layer (x[T,B,I], h0[B,H], w_ih[H,I],  w_hh[H,H],  b_ih[H]?,  b_hh[H]?,  lengths[B]?)
# with P = proj_size if has_proj else H; b_* are None unless has_bias, w_hr unless has_proj,
# lengths (int64) unless has_lengths; rnn_layer's `nonlinearity` is 'tanh' or 'relu'.
# Outputs: (y[T,B,P], h_n[B,P], c_n[B,H] (lstm only), workspace) where the workspace (an aux
# output) is a flat float array in the compute dtype (float32 for float16/bfloat16) holding what
# the backward op reads besides y: gate activations and cell states per step (empty for
# rnn_layer); its layout is private to the forward/backward implementation pair.
# `lengths` masks packed batches: step t is active for sequence b iff t < lengths[b]; inactive
# steps leave its state unchanged and write zeros to y. reverse=True runs t = T-1 .. 0, so each
# sequence's reverse pass starts at its own last valid step. Shapes never change step by step.
_RNN_ATTRS = ("reverse", "has_bias", "has_proj", "has_lengths")
_op("lstm_layer", "composite", "same", _RNN_ATTRS, shape=S.recurrent_layer("lstm"), n_outputs=4, aux_outputs=(3,),
    out_dtypes=(None, None, None, "compute"))
_op("gru_layer", "composite", "same", _RNN_ATTRS, shape=S.recurrent_layer("gru"), n_outputs=3, aux_outputs=(2,),
    out_dtypes=(None, None, "compute"))
_op("rnn_layer", "composite", "same", _RNN_ATTRS + ("nonlinearity",), shape=S.recurrent_layer("rnn"), n_outputs=3,
    aux_outputs=(2,), out_dtypes=(None, None, "compute"))
for _cell in ("lstm", "gru", "rnn"):
    # (grads of the layer's outputs except the workspace, the layer's inputs, y, the workspace)
    #   lstm: (dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, workspace)
    #   gru/rnn: (dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace)
    # -> grads of the present float inputs in order: (dx, dh0, dc0 (lstm), dw_ih, dw_hh,
    #    db_ih, db_hh (if has_bias), dw_hr (if has_proj)), all in dy's dtype.
    _op(f"{_cell}_layer_backward", "composite", "same", _RNN_ATTRS + (("nonlinearity",) if _cell == "rnn" else ()),
        shape=S.recurrent_layer_backward(_cell), differentiable=False, n_outputs=-1)
# Cells: one step, differentiable by rules written with tensor ops (double backward works);
# b_ih/b_hh are None unless has_bias, rnn_cell's nonlinearity is 'tanh' or 'relu'.
#   lstm_cell(x[B,I], h[B,H], c[B,H], w_ih[4H,I], w_hh[4H,H], b_ih?, b_hh?) -> (h', c')
#   gru_cell(x, h, w_ih[3H,I], w_hh[3H,H], b_ih?, b_hh?) -> h';  rnn_cell(x, h, w_ih[H,I], w_hh[H,H], b_ih?, b_hh?) -> h'
_op("lstm_cell", "composite", "same", ("has_bias",), shape=S.recurrent_cell("lstm"), n_outputs=2)
_op("gru_cell", "composite", "same", ("has_bias",), shape=S.recurrent_cell("gru"))
_op("rnn_cell", "composite", "same", ("has_bias", "nonlinearity"), shape=S.recurrent_cell("rnn"))

# --- multi-tensor ops (clip_grad_norm, optimizers): one node whatever the tensor count --------
# multi_tensor_norm(*tensors) -> 0-dim: the p-norm of the per-tensor p-norms (each rounded to its
# tensor's dtype; the result has their promoted dtype), i.e. the norm of all tensors concatenated.
# multi_tensor_scale(coef, *tensors) -> each tensor times the 0-dim coef, in its own dtype; with
# max_norm, the first input is a total norm and the coef is clip_grad_norm_'s
# min(max_norm / (norm + 1e-6), 1), computed inside the op (so clipping is two nodes, two kernels).
_op("multi_tensor_norm", "collective", "custom", ("p",), shape=S.scalar, differentiable=False,
    out_dtypes=("promote_types",))
_op("multi_tensor_scale", "collective", "custom", ("max_norm",), shape=S.each_after_first, differentiable=False, n_outputs=-1,
    out_dtypes=("own",))
# Optimizer steps, one node per parameter group: the new value of every tensor the step updates,
# computed as torch.optim's single-tensor loop does it op by op (each op rounded to the tensor's
# dtype; float16/bfloat16 arithmetic in float32), so the results equal that loop's bit for bit.
#   multi_tensor_sgd(*params, *grads, *momentum_buffers) -> (*new_params, *new_buffers): buffers
#     only when momentum != 0, as inputs only when has_buffers (on the first step the new buffer
#     is the (decayed) gradient, as torch's clone).
#   multi_tensor_adam(*params, *grads, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs, *steps)
#     -> (*new_params, *new_exp_avgs, *new_exp_avg_sqs, *new_max_exp_avg_sqs, *new_steps): the
#     max_exp_avg_sqs only with amsgrad; steps are 0-dim counters, incremented here, and the bias
#     corrections are float64 arithmetic on them (a 0-dim parameter's update is then float64
#     arithmetic rounded once, as float64 0-dim operands promote it).
# `n` is the number of parameters; every output has the dtype and shape of the input it updates,
# so the outputs line up with the trailing inputs (grads stand for the params: same dtype, shape).
_op("multi_tensor_sgd", "collective", "custom",
    ("n", "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "has_buffers"),
    shape=S.optimizer_step, differentiable=False, n_outputs=-1, out_dtypes=("own",))
_op("multi_tensor_adam", "collective", "custom",
    ("n", "lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    shape=S.optimizer_step, differentiable=False, n_outputs=-1, out_dtypes=("own",))
