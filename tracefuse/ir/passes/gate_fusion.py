"""LSTM/GRU/RNN gate fusion: a hand-written recurrent step becomes one cell node.

Users write cells by hand the way PyTorch's documentation defines them, e.g.

    gates = x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh     # or F.linear(x, w_ih, b_ih) + ...
    i, f, g, o = gates.chunk(4, 1)                        # or split(H, 1), narrow, gates[:, :H], ...
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    h = o.sigmoid() * c.tanh()

Traced, such a step is some twenty nodes. One rule per cell kind replaces them by one
`lstm_cell` (`gru_cell`, `rnn_cell`) node and points the uses of h' (and c') at it, so that
rnn_loop_rolling, next in the pipeline, rolls a Python loop of steps into one scan node:

  lstm_gates_to_cell  h' = sigmoid(o) * tanh(c'),  c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
                      where i, f, g, o are the column blocks, in this order, of
                      x W_ih^T + h W_hh^T + biases
  gru_gates_to_cell   r = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z),  n = tanh(x_n + r * h_n),
                      h' = (1 - z) * n + z * h  or  n + z * (h - n), where x_r, x_z, x_n are the
                      blocks of x W_ih^T + b_ih and h_r, h_z, h_n those of h W_hh^T + b_hh
  rnn_gates_to_cell   h' = tanh or relu of x W_ih^T + h W_hh^T + biases

Operands of add and mul may come in either order; biases may be absent (a missing one of a
pair becomes a zero constant); a weight is read through its transpose (`w.t()`, F.linear) as
the cell's [G, K] weight, or, laid out [K, G] (`x @ w`), through a permute that feeds the cell.

A step is left alone, and so stays exact, when one of its inner values (a gate, the pre-
activations, tanh(c')) is read outside it or returned, when its tensors differ in dtype or
device, or when they are not float32/float64 (float16 rounds after every op, a cell once).
"""
from __future__ import annotations

from dataclasses import dataclass

from ... import dtypes
from ..graph import Graph, Ref
from ..rewrite import PassLog, Rule, apply_rules, inherited_meta
from ..symbolic import matches


# --- a small matcher of expression patterns ----------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """An `op` node whose inputs match `args`, in either order for add and mul. A `name` binds the
    node's value; once bound, the pattern matches that value only (a gate read twice)."""

    op: str
    args: tuple
    name: str | None = None


@dataclass(frozen=True)
class Var:
    """Any value, bound to `name`; a name met twice must be the same value both times."""

    name: str


ONE = object()  # the Python scalar 1, as in `1 - z`
_COMMUTATIVE = ("add", "mul")


def _op(op, *args, name=None):
    return Op(op, args, name)


def _matches(graph, pattern, x, env, nodes):
    """Yield (bindings, matched node names) for every way `x` matches `pattern`, extending `env`, `nodes`."""
    name = getattr(pattern, "name", None)
    if name is not None and (isinstance(pattern, Var) or name in env):
        if name not in env:
            yield {**env, name: x}, nodes
        elif env[name] == x:
            yield env, nodes
        return
    if pattern is ONE:
        if type(x) in (int, float) and x == 1:
            yield env, nodes
        return
    if not isinstance(x, Ref) or x.index != 0:
        return
    node = graph.node(x.node)
    if node.op != pattern.op or len(node.inputs) != len(pattern.args):
        return
    env = {**env, name: x} if name is not None else env
    orders = [node.inputs]
    if node.op in _COMMUTATIVE and node.inputs[0] != node.inputs[1]:
        orders.append(node.inputs[::-1])
    for inputs in orders:
        yield from _match_all(graph, pattern.args, inputs, env, nodes + (node.name,))


def _match_all(graph, patterns, xs, env, nodes):
    if not patterns:
        yield env, nodes
        return
    for env_1, nodes_1 in _matches(graph, patterns[0], xs[0], env, nodes):
        yield from _match_all(graph, patterns[1:], xs[1:], env_1, nodes_1)


_LSTM = _op("mul", _op("sigmoid", Var("o")), _op("tanh", _op(
    "add", _op("mul", _op("sigmoid", Var("f")), Var("c")), _op("mul", _op("sigmoid", Var("i")), _op("tanh", Var("g"))),
    name="c_next")))

_R = _op("sigmoid", _op("add", Var("x_r"), Var("h_r")))
_Z = _op("sigmoid", _op("add", Var("x_z"), Var("h_z")), name="z")
_N = _op("tanh", _op("add", Var("x_n"), _op("mul", _R, Var("h_n"))), name="n")
_GRU_UPDATES = (
    _op("add", _op("mul", _op("sub", ONE, _Z), _N), _op("mul", _Z, Var("h"))),  # (1 - z) * n + z * h
    _op("add", _N, _op("mul", _Z, _op("sub", Var("h"), _N))),  # n + z * (h - n)
)


# --- the parts of a step: gate blocks and affine pre-activations --------------------------------------

def _shape(graph, ref):
    return graph.node(ref.node).meta["outputs"][ref.index][0]


def _column_block(graph, x):
    """(source, start, stop) if `x` is x[:, start:stop] of a 2-D tensor (chunk, split and narrow trace so)."""
    node = graph.node(x.node) if isinstance(x, Ref) else None
    if node is None or node.op != "getitem" or len(node.inputs) != 1:
        return None
    index, source = node.attrs["index"], node.inputs[0]
    if len(_shape(graph, source)) != 2 or len(index) != 2 or type(index[1]) is not slice \
            or not (index[0] is Ellipsis or index[0] == slice(None)):
        return None
    start, stop, step = index[1].indices(_shape(graph, source)[1])
    return (source, start, stop) if step == 1 else None


def _gate_blocks(graph, gates):
    """The [B, n*H] tensor whose n column blocks of width H are `gates`, in this order; else None."""
    blocks = [_column_block(graph, g) for g in gates]
    if None in blocks or len({b[0] for b in blocks}) != 1:
        return None
    source, n = blocks[0][0], len(gates)
    H, rest = divmod(_shape(graph, source)[1], n)
    return source if not rest and [b[1:] for b in blocks] == [(k * H, (k + 1) * H) for k in range(n)] else None


@dataclass(frozen=True)
class Projection:
    """One `input @ weight` term of a pre-activation: input [B, K], weight [K, G]."""

    input: Ref
    weight: Ref
    node: str


def _affine(graph, total):
    """`total` [B, G] as a sum of projections and 1-D [G] biases: (projections, biases, the sum's add and
    matmul nodes), each in the order written; None if it is anything else. A 1-D add (b_ih + b_hh
    computed once before a loop) is one bias, not part of the step."""
    full = _shape(graph, total)
    projections, biases, nodes = [], [], []

    def visit(x):
        if not isinstance(x, Ref):
            return False
        node, shape = graph.node(x.node), _shape(graph, x)
        if node.op == "add" and matches(shape, full):
            nodes.append(node.name)
            return visit(node.inputs[0]) and visit(node.inputs[1])
        if node.op == "matmul" and matches(shape, full) and all(isinstance(a, Ref) and len(_shape(graph, a)) == 2
                                                        for a in node.inputs):
            nodes.append(node.name)
            projections.append(Projection(node.inputs[0], node.inputs[1], node.name))
            return True
        biases.append(x)
        return matches(shape, full[-1:])

    return (projections, biases, nodes) if len(full) == 2 and visit(total) else None


def _is_time_row(graph, x):
    """Is `x` a row x[t] of a [T, B, I] sequence (what a loop over time reads)?"""
    node = graph.node(x.node)
    return node.op == "getitem" and len(node.inputs) == 1 and len(_shape(graph, node.inputs[0])) == 3 \
        and type((node.attrs["index"] or (None,))[0]) is int


def _input_and_hidden(graph, projections, cell_op, H):
    """(input projection, hidden projection) of an LSTM or RNN pre-activation. The sum is symmetric,
    but a loop rolls only when h is the state: prefer as h the previous step's cell output, then
    as x a row x[t] of a sequence, then the order written (x first). None if no order fits."""
    if len(projections) != 2:
        return None
    orders = [p for p in (tuple(projections), tuple(projections[::-1])) if matches(_shape(graph, p[1].input)[1], H)]

    def preference(order):
        x, h = order
        return graph.node(h.input.node).op == cell_op and h.input.index == 0, _is_time_row(graph, x.input)

    return max(orders, key=preference) if orders else None


# --- what a rule found, and the replacement ---------------------------------------------------------

@dataclass(frozen=True)
class Transposed:
    """A weight laid out [K, G] (`x @ w`): the cell reads its transpose, which the replacement makes."""

    weight: Ref
    source: str  # the matmul that read it: the permute takes its scope and source line


@dataclass(frozen=True)
class ZeroBias:
    """The missing bias of a pair: a zero constant shaped like `like`, made by the replacement."""

    like: Ref


@dataclass
class Fusion:
    """What a rule matched: the cell to build and the step it replaces."""

    op: str
    inputs: list  # Ref | None | Transposed | ZeroBias, in the cell op's input order
    attrs: dict
    outputs: list  # the step's h' (and c'), in the cell's output order
    nodes: list  # the step's inner nodes, replaced by the cell


def _cell_weight(graph, projection):
    """The [G, K] weight of `input @ weight`: the source of a transpose, or the weight to transpose."""
    w = projection.weight
    node = graph.node(w.node)
    if node.op == "permute" and tuple(d % 2 for d in node.attrs["dims"]) == (1, 0):
        return node.inputs[0]
    return Transposed(w, projection.node)


def _bias_pair(biases):
    """(b_ih, b_hh) of an LSTM or RNN sum with up to two biases (which is which does not matter)."""
    if len(biases) == 1:
        return biases[0], ZeroBias(biases[0])
    return tuple(biases) or (None, None)


def _private(graph, nodes, exported):
    """Are `nodes` read only by one another (the `exported` ones may be read anywhere)?"""
    inner = set(nodes)
    returned = {r.node for r in graph.outputs if isinstance(r, Ref)}
    return all(n in exported or (n not in returned and all(u.name in inner for u in graph.users(n))) for n in inner)


def _checked(graph, fusion):
    """`fusion` if it replaces the step exactly, else None (see the module docstring)."""
    root = graph.node(fusion.outputs[0].node)
    (_, dtype), device = root.meta["outputs"][0], root.meta.get("device")
    if dtype not in (dtypes.float32, dtypes.float64):
        return None
    inner = set(fusion.nodes)
    for x in fusion.inputs:
        x = x.weight if isinstance(x, Transposed) else x.like if isinstance(x, ZeroBias) else x
        if x is None:
            continue
        if not isinstance(x, Ref) or x.node in inner:
            return None
        meta = graph.node(x.node).meta
        if meta["outputs"][x.index][1] != dtype or meta.get("device") != device:
            return None
    return fusion if _private(graph, fusion.nodes, {r.node for r in fusion.outputs}) else None


def _match_lstm(graph, root):
    if root.op != "mul":
        return None
    for env, nodes in _matches(graph, _LSTM, Ref(root.name), {}, ()):
        gates = _gate_blocks(graph, [env[k] for k in "ifgo"])
        affine = _affine(graph, gates) if gates is not None else None
        if affine is None or len(affine[1]) > 2:
            continue
        projections, biases, sum_nodes = affine
        H = _shape(graph, gates)[1] // 4
        order = _input_and_hidden(graph, projections, "lstm_cell", H)
        c = env["c"]
        if order is None or not isinstance(c, Ref) or not matches(_shape(graph, c), _shape(graph, order[1].input)):
            continue
        x, h = order
        inputs = [x.input, h.input, c, _cell_weight(graph, x), _cell_weight(graph, h), *_bias_pair(biases)]
        found = _checked(graph, Fusion("lstm_cell", inputs, {"has_bias": bool(biases)}, [Ref(root.name), env["c_next"]],
                                       [*nodes, *(env[k].node for k in "ifgo"), *sum_nodes]))
        if found is not None:
            return found
    return None


def _match_gru(graph, root):
    if root.op != "add":
        return None
    for update in _GRU_UPDATES:
        for env, nodes in _matches(graph, update, Ref(root.name), {}, ()):
            gi = _gate_blocks(graph, [env["x_r"], env["x_z"], env["x_n"]])
            gh = _gate_blocks(graph, [env["h_r"], env["h_z"], env["h_n"]])
            if gi is None or gh is None or not matches(_shape(graph, gi), _shape(graph, gh)):
                continue
            affine_i, affine_h, h = _affine(graph, gi), _affine(graph, gh), env["h"]
            if affine_i is None or affine_h is None:
                continue
            (pi, bi, ni), (ph, bh, nh) = affine_i, affine_h
            if len(pi) != 1 or len(ph) != 1 or len(bi) > 1 or len(bh) > 1 or ph[0].input != h \
                    or not matches(_shape(graph, h)[1], _shape(graph, gi)[1] // 3):
                continue
            b_ih = bi[0] if bi else ZeroBias(bh[0]) if bh else None
            b_hh = bh[0] if bh else ZeroBias(bi[0]) if bi else None
            inputs = [pi[0].input, h, _cell_weight(graph, pi[0]), _cell_weight(graph, ph[0]), b_ih, b_hh]
            gates = [env[k].node for k in ("x_r", "x_z", "x_n", "h_r", "h_z", "h_n")]
            found = _checked(graph, Fusion("gru_cell", inputs, {"has_bias": bool(bi or bh)}, [Ref(root.name)],
                                           list(dict.fromkeys([*nodes, *gates, *ni, *nh]))))
            if found is not None:
                return found
    return None


def _match_rnn(graph, root):
    if root.op not in ("tanh", "relu") or not isinstance(root.inputs[0], Ref):
        return None
    affine = _affine(graph, root.inputs[0])
    if affine is None or len(affine[1]) > 2:
        return None
    projections, biases, sum_nodes = affine
    order = _input_and_hidden(graph, projections, "rnn_cell", _shape(graph, root.inputs[0])[1])
    if order is None:
        return None
    x, h = order
    inputs = [x.input, h.input, _cell_weight(graph, x), _cell_weight(graph, h), *_bias_pair(biases)]
    return _checked(graph, Fusion("rnn_cell", inputs, {"has_bias": bool(biases), "nonlinearity": root.op},
                                  [Ref(root.name)], [root.name, *sum_nodes]))


def _transpose(graph, w, source, before):
    """permute(w, (1, 0)) defined before node `before`: an existing one (so every step of a loop reads
    the same weight and the loop rolls), else a new one."""
    for user in graph.users(w.node):
        if user.op == "permute" and user.inputs == (w,) and user.attrs["dims"] == (1, 0) \
                and graph.position(user.name) < graph.position(before):
            return Ref(user.name)
    shape, dtype = graph.node(w.node).meta["outputs"][w.index]
    node = graph.add_node("permute", (w,), {"dims": (1, 0)}, {"outputs": [(tuple(shape[::-1]), dtype)],
                                                            **inherited_meta(graph.node(source))}, before=before)
    return Ref(node.name)


def _zeros(graph, like, before):
    """A zero const shaped like `like` defined before node `before`: an existing one, else a new one."""
    from ...creation import zeros  # imported here: tensors import the IR stage

    meta = graph.node(like.node).meta
    shape, dtype = meta["outputs"][like.index]
    value = zeros(shape, dtype=dtype, device=meta.get("device"))
    for node in graph.inputs():
        if node.attrs["kind"] == "const" and node.meta["outputs"] == [(shape, dtype)] \
                and node.meta.get("device") == str(value.device) and not node.meta["value"].numpy().any() \
                and graph.position(node.name) < graph.position(before):
            return Ref(node.name)
    return graph.add_constant(value, before=before)


def _fuse(graph, fusion):
    root = fusion.outputs[0].node
    inputs = [_transpose(graph, x.weight, x.source, root) if isinstance(x, Transposed)
              else _zeros(graph, x.like, root) if isinstance(x, ZeroBias) else x for x in fusion.inputs]
    cell = graph.add_node(fusion.op, inputs, fusion.attrs,
                          {"outputs": [graph.node(r.node).meta["outputs"][r.index] for r in fusion.outputs],
                           **inherited_meta(graph.node(root))}, before=root)
    for i, old in enumerate(fusion.outputs):
        graph.replace_uses(old, Ref(cell.name, i))
    replaced = sorted(set(fusion.nodes), key=graph.position)
    for name in reversed(replaced):
        graph.remove_node(name)
    return replaced, f"-> %{cell.name}(x={inputs[0]}, h={inputs[1]})"


RULES = [Rule("lstm_gates_to_cell", _match_lstm, _fuse),
         Rule("gru_gates_to_cell", _match_gru, _fuse),
         Rule("rnn_gates_to_cell", _match_rnn, _fuse)]


def gate_fusion(graph: Graph, log: PassLog | None = None) -> Graph:
    """Fuse in place; returns `graph`. Transposes left unused go in dead-code elimination."""
    return apply_rules(graph, RULES, "gate_fusion", log)
