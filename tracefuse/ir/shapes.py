"""Shape rules: each op's output shapes from its inputs' shapes and attributes, without running it.

A rule is `rule(input_shapes, attrs) -> tuple of output shapes`, where `input_shapes` holds a
tuple per tensor input and None for an absent optional input or a Python scalar. The op table
(ops.py) names each op's rule; `infer` (ir/infer.py) joins it with the dtype rule.

Rules compute with + - * // and comparisons on the dims only (never NumPy on data), so that they
work unchanged when dims are symbolic integers. They follow the NumPy implementations exactly
(codegen/numpy), which the test suite checks op by op. Argument checks that the Tensor layer
makes before dispatching (matching dims for cat, gather and conv, matmul's inner sizes, index
bounds) are assumed to have passed; rules raise PyTorch's or NumPy's error only where the eager
path raises it from the implementation itself (broadcasting, indexing arrays).
"""
from __future__ import annotations

import math
import numbers

# --- helpers ---------------------------------------------------------------------------------------


def numel(shape):
    n = 1
    for s in shape:
        n = n * s
    return n


def present(shapes):
    """The shapes of the tensor inputs that are there (not None)."""
    return [s for s in shapes if s is not None]


def broadcast(*shapes):
    """PyTorch's broadcast of `shapes`, with its error when they don't broadcast (trailing dims first)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i in reversed(range(ndim - len(shape), ndim)):
            n = shape[i - ndim + len(shape)]
            if n != 1:
                if out[i] != 1 and out[i] != n:
                    raise RuntimeError(f"The size of tensor a ({out[i]}) must match the size of tensor b ({n}) "
                                       f"at non-singleton dimension {i}")
                out[i] = n
    return tuple(out)


def reduced(shape, dim, keepdim):
    """`shape` reduced over `dim` (an axis, a tuple of axes, None for all), reduced dims kept as 1
    if keepdim. A 0-dim shape stays 0-dim whatever the dim (PyTorch accepts dim 0 and -1 there)."""
    axes = range(len(shape)) if dim is None else (dim,) if isinstance(dim, int) else dim
    if keepdim:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def slice_length(size, s):
    """len(range(size)[s]) for a slice with a positive step (the Tensor layer refuses others)."""
    step = 1 if s.step is None else s.step

    def clip(v, default):
        if v is None:
            return default
        v = v + size if v < 0 else v
        return 0 if v < 0 else size if v > size else v

    start, stop = clip(s.start, 0), clip(s.stop, size)
    return (stop - start + step - 1) // step if stop > start else 0


def indexed(x, key, index_shapes):
    """Shape of `x[key]` under NumPy's rules (the implementation's), where `key` is the indexing
    attr: ints, slices, None, Ellipsis, Python bools and TensorSlot placeholders (anything else),
    the k-th standing for an integer index tensor of shape `index_shapes[k]`. Integer tensors,
    ints and bools are advanced indices: their shapes broadcast (a bool counts as (1,) or (0,),
    an int as ()), and the result goes where the first of them stood if they are adjacent in the
    key, else in front. Boolean mask tensors are not covered: their result's length is data."""
    fill = len(x) - sum(1 for item in key if item is not None and item is not Ellipsis
                        and not isinstance(item, bool))
    if not any(item is Ellipsis for item in key):
        key = tuple(key) + (Ellipsis,)
    out, advanced, listed = [], [], []
    dim, position, last, adjacent = 0, 0, None, True
    for i, item in enumerate(key):
        if item is Ellipsis:
            out.extend(x[dim:dim + fill])
            dim += fill
            continue
        if item is None:
            out.append(1)
            continue
        if isinstance(item, slice):
            out.append(slice_length(x[dim], item))
            dim += 1
            continue
        if isinstance(item, bool):
            shape = (1,) if item else (0,)
        elif isinstance(item, numbers.Integral):  # an int, or a symbolic size (dynamic=True)
            shape = ()
            dim += 1
        else:
            shape = tuple(index_shapes[item.k])
            dim += 1
        if not advanced:
            position = len(out)
        elif last != i - 1:
            adjacent = False
        advanced.append(shape)
        if not isinstance(item, numbers.Integral) or isinstance(item, bool):
            listed.append(shape)  # NumPy's error lists the array-like indices only
        last = i
    if not advanced:
        return tuple(out)
    try:
        b = broadcast(*advanced)
    except RuntimeError:
        raise IndexError("shape mismatch: indexing arrays could not be broadcast together with shapes "
                         + "".join(f"{s} " for s in listed)) from None
    at = position if adjacent else 0
    return tuple(out[:at]) + b + tuple(out[at:])


def windows(shape, kernel, stride, padding, dilation, ceil_mode=False):
    """`shape` with its trailing len(kernel) dims replaced by the number of window positions."""
    nd = len(kernel)
    return tuple(shape[:len(shape) - nd]) + tuple(
        window_output_size(n, k, s, p, d, ceil_mode)
        for n, k, s, p, d in zip(shape[len(shape) - nd:], kernel, stride, padding, dilation))


def window_output_size(size, kernel, stride, padding, dilation, ceil_mode=False):
    """Output length of one spatial dim of a convolution or pooling window (PyTorch's
    pooling_output_shape; convolutions use ceil_mode=False)."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


# --- rules: creation -------------------------------------------------------------------------------


def from_shape_attr(shapes, attrs):
    return (tuple(attrs["shape"]),)


def arange(shapes, attrs):
    """As the implementation: the exact count for ints, ceil((end - start) / step) in double otherwise."""
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if all(isinstance(v, numbers.Integral) for v in (start, end, step)):
        n = -((start - end) // step)
    else:
        n = math.ceil((end - start) / step)
    return ((n if n > 0 else 0,),)


def linspace(shapes, attrs):
    return ((attrs["steps"],),)


def eye(shapes, attrs):
    return ((attrs["n"], attrs["m"]),)


def randperm(shapes, attrs):
    return ((attrs["n"],),)


# --- rules: elementwise and reductions ------------------------------------------------------------


def pointwise(shapes, attrs):
    """The broadcast of the tensor inputs (scalars and absent inputs take no part)."""
    return (broadcast(*present(shapes)),)


def pointwise_and_mask(shapes, attrs):
    """dropout: the output and its keep-mask, both of the input's shape."""
    return pointwise(shapes, attrs) * 2


def reduce(shapes, attrs):
    return (reduced(shapes[0], attrs["dim"], attrs["keepdim"]),)


def reduce_with_indices(shapes, attrs):
    """max_dim/min_dim: the values and their indices."""
    return reduce(shapes, attrs) * 2


def arg_reduce(shapes, attrs):
    """argmax/argmin: with dim=None, the flat index of the whole tensor (0-dim; keepdim ignored)."""
    return ((),) if attrs["dim"] is None else reduce(shapes, attrs)


def same(shapes, attrs):
    """One output of the first input's shape (unary maps, scans, in-place-style writes)."""
    return (tuple(shapes[0]),)


def matmul(shapes, attrs):
    """NumPy's matmul: 1-dim operands lose the dim they were promoted with; batch dims broadcast."""
    a, b = shapes
    batch = broadcast(tuple(a[:-2]), tuple(b[:-2]))
    return (batch + (tuple(a[-2:-1]) if len(a) > 1 else ()) + (tuple(b[-1:]) if len(b) > 1 else ()),)


# --- rules: movement -------------------------------------------------------------------------------


def reshape(shapes, attrs):
    """The target shape, a -1 in it (if any) solved from the element count; NumPy's error when the
    counts differ (a graph made concrete for new sizes is checked by this rule)."""
    target = tuple(attrs["shape"])
    if not any(n == -1 for n in target):
        if numel(target) != numel(shapes[0]):
            raise ValueError(f"cannot reshape array of size {numel(shapes[0])} into shape {target}")
        return (target,)
    known = numel(n for n in target if n != -1)
    return (tuple(numel(shapes[0]) // known if n == -1 else n for n in target),)


def permute(shapes, attrs):
    return (tuple(shapes[0][d] for d in attrs["dims"]),)


def repeat(shapes, attrs):
    reps = attrs["repeats"]
    x = (1,) * (len(reps) - len(shapes[0])) + tuple(shapes[0])
    return (tuple(n * r for n, r in zip(x, reps)),)


def getitem(shapes, attrs):
    return (indexed(shapes[0], attrs["index"], shapes[1:]),)


def cat(shapes, attrs):
    d = attrs["dim"]
    first = tuple(shapes[0])
    return (first[:d] + (sum(s[d] for s in shapes[1:]) + first[d],) + first[d + 1:],)


def like_index(shapes, attrs):
    """gather: the index's shape."""
    return (tuple(shapes[1]),)


def index_select(shapes, attrs):
    x, d = shapes[0], attrs["dim"]
    return (tuple(x[:d]) + tuple(shapes[1]) + tuple(x[d + 1:]),)


def pad(shapes, attrs):
    """Widths come in (left, right) pairs from the last dim backwards; negative widths crop."""
    out, widths = list(shapes[0]), attrs["pad"]
    for i in range(len(widths) // 2):
        out[len(out) - 1 - i] = out[len(out) - 1 - i] + widths[2 * i] + widths[2 * i + 1]
    return (tuple(out),)


# --- rules: nn composites --------------------------------------------------------------------------


def embedding(shapes, attrs):
    weight, indices = shapes
    return (tuple(indices) + tuple(weight[1:]),)


def embedding_backward(shapes, attrs):
    return ((attrs["num_weights"], shapes[0][-1]),)


def conv(shapes, attrs):
    """x [N, C, *spatial], w [O, C/groups, *kernel] -> [N, O, *windows]."""
    x, w = shapes[0], shapes[1]
    out = windows(x, tuple(w[2:]), attrs["stride"], attrs["padding"], attrs["dilation"])
    return ((x[0], w[0]) + out[2:],)


def conv_backward(shapes, attrs):
    """(grad_out, x, w) -> grads of x, w and the bias [O]."""
    _, x, w = shapes
    return (tuple(x), tuple(w), (w[0],))


def max_pool(shapes, attrs):
    """The maxima and their flat spatial indices."""
    out = windows(shapes[0], attrs["kernel_size"], attrs["stride"], attrs["padding"], attrs["dilation"],
                  attrs["ceil_mode"])
    return (out, out)


def avg_pool(shapes, attrs):
    kernel = attrs["kernel_size"]
    return (windows(shapes[0], kernel, attrs["stride"], attrs["padding"], (1,) * len(kernel), attrs["ceil_mode"]),)


def input_shape_attr(shapes, attrs):
    """Pooling backward ops: the forward input's shape, an attribute."""
    return (tuple(attrs["input_shape"]),)


# Recurrent layers. The workspace is [T, B, k*H] blocks, by name and k: lstm gates (4H) and cell
# states (H), gru gates (3H) and W_hn h + b_hn (H), nothing for rnn. Defined here once, for the
# shape rule and for the NumPy implementation (codegen/numpy/rnn.py).
WORKSPACE_LAYOUT = {"lstm": (("gates", 4), ("c", 1)), "gru": (("gates", 3), ("hn", 1)), "rnn": ()}
WORKSPACE_WIDTH = {kind: sum(k for _, k in blocks) for kind, blocks in WORKSPACE_LAYOUT.items()}
N_STATES = {"lstm": 2, "gru": 1, "rnn": 1}  # (h, c) or h


def recurrent_layer(kind):
    """lstm/gru/rnn_layer(x[T,B,I], h0[B,P], (c0[B,H],) ...) -> (y[T,B,P], h_n[B,P], (c_n[B,H],) workspace)."""
    def rule(shapes, attrs):
        (steps, batch, _), states = shapes[0], tuple(tuple(s) for s in shapes[1:1 + N_STATES[kind]])
        hidden = states[-1][1]
        return ((steps, batch, states[0][1]),) + states + ((steps * batch * WORKSPACE_WIDTH[kind] * hidden,),)
    rule.__name__ = f"{kind}_layer"
    return rule


def recurrent_layer_backward(kind):
    """(grads of y and the states, the layer's inputs, y, workspace) -> grads of the present float
    inputs, each of its input's shape (lengths, the last layer input, has none)."""
    def rule(shapes, attrs):
        layer_inputs = shapes[1 + N_STATES[kind]:-3]  # without lengths, y and the workspace
        return tuple(tuple(s) for s in layer_inputs if s is not None)
    rule.__name__ = f"{kind}_layer_backward"
    return rule


def recurrent_cell(kind):
    """lstm_cell(x, h, c, ...) -> (h', c'); gru_cell/rnn_cell(x, h, ...) -> h': the states' shapes."""
    def rule(shapes, attrs):
        return tuple(tuple(s) for s in shapes[1:1 + N_STATES[kind]])
    rule.__name__ = f"{kind}_cell"
    return rule


# --- rules: multi-tensor ---------------------------------------------------------------------------


def scalar(shapes, attrs):
    """multi_tensor_norm: one 0-dim total."""
    return ((),)


def each_after_first(shapes, attrs):
    """multi_tensor_scale(coef, *tensors): one output per tensor, of its shape."""
    return tuple(tuple(s) for s in shapes[1:])


def optimizer_step(shapes, attrs):
    """multi_tensor_sgd / multi_tensor_adam: one output per updated tensor (params, then each kind
    of state), shaped like the trailing inputs: n params and n momentum buffers (SGD, when
    momentum != 0), or n params, 2 or 3 (amsgrad) moments and n 0-dim steps (Adam)."""
    n = attrs["n"]
    if "amsgrad" in attrs:
        count = n * (5 if attrs["amsgrad"] else 4)
    else:
        count = n * (1 if attrs["momentum"] == 0 else 2)
    return tuple(tuple(s) for s in shapes[len(shapes) - count:])
