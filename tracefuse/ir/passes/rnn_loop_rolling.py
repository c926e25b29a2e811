"""RNN loop rolling: a Python loop over a cell becomes one layer node (a scan over time).

A traced `for t in range(T): h, c = cell(x[t], (h, c))` is a chain of `lstm_cell` (`gru_cell`,
`rnn_cell`) nodes with the same weights, each reading the previous step's state and row t of
one input tensor (`x[t]`, `x.select(0, t)` and `x.unbind(0)` all trace as `getitem(x, (t,))`).
The rule replaces the chain by one `lstm_layer` (`gru_layer`, `rnn_layer`) node, which the fused
scan kernels run, plus `getitem(y, (t,))` for each intermediate hidden state read elsewhere;
the last step's states become the layer's h_n (and c_n). A second rule turns a stack of every
step's hidden state (`torch.stack(outputs)`) into the layer's output sequence y itself.

Steps t, t+1, ... roll forward and t, t-1, ... with reverse=True; a run of steps shorter than x
reads a slice of x. An intermediate LSTM cell state read outside the loop ends the chain there
(the layer returns only the last one). Only float32/float64 chains roll: a float16 chain rounds
its state every step, the layer does not.
"""
from __future__ import annotations

from ... import dtypes
from ..graph import Graph, Ref
from ..rewrite import PassLog, Rule, apply_rules, infer_outputs, inherited_meta, replace_node

_LAYERS = {"lstm_cell": ("lstm_layer", 2), "gru_cell": ("gru_layer", 1), "rnn_cell": ("rnn_layer", 1)}  # (op, states)
_LAYER_OPS = {layer for layer, _ in _LAYERS.values()}


def _shape(graph, ref):
    return graph.node(ref.node).meta["outputs"][ref.index][0]


def _time_step(graph, x):
    """(X, t) if `x` is row t of dim 0 of a [T, B, I] tensor X (getitem(X, (t, ...))), else None."""
    node = graph.node(x.node) if isinstance(x, Ref) else None
    if node is None or node.op != "getitem":
        return None
    index, src = node.attrs["index"], node.inputs[0]
    if len(node.inputs) != 1 or not index or type(index[0]) is not int or len(_shape(graph, src)) != 3:
        return None
    if not all(item is Ellipsis or item == slice(None) for item in index[1:]):
        return None
    return src, index[0] % _shape(graph, src)[0]


def _readers(graph, ref):
    """(node name, input position) of every use of `ref`, graph outputs as (None, i)."""
    uses = [(u.name, i) for u in graph.users(ref.node) for i, x in enumerate(u.inputs) if x == ref]
    return uses + [(None, i) for i, x in enumerate(graph.outputs) if x == ref]


def _next_step(graph, cell, n_state):
    """The one cell of the same kind, attrs and weights that continues from `cell`'s state."""
    states = tuple(Ref(cell.name, i) for i in range(n_state))
    found = [u for u in graph.users(cell.name)
             if u.op == cell.op and u.attrs == cell.attrs and u.inputs[1:1 + n_state] == states
             and u.inputs[1 + n_state:] == cell.inputs[1 + n_state:]]
    return found[0] if len(found) == 1 else None


def _match_loop(graph, head):
    """A chain of >= 2 steps starting at `head` -> (chain, X, times)."""
    if head.op not in _LAYERS or head.meta["outputs"][0][1] not in (dtypes.float32, dtypes.float64):
        return None
    n_state = _LAYERS[head.op][1]
    first = _time_step(graph, head.inputs[0])
    if first is None or not all(isinstance(s, Ref) for s in head.inputs[1:1 + n_state]):
        return None
    x, t = first
    chain, times = [head], [t]
    while True:
        cell = chain[-1]
        nxt = _next_step(graph, cell, n_state)
        if nxt is None or (n_state == 2 and _readers(graph, Ref(cell.name, 1)) != [(nxt.name, 2)]):
            break  # no unique next step, or this cell state is needed outside the loop
        step = _time_step(graph, nxt.inputs[0])
        direction = times[1] - times[0] if len(times) > 1 else None
        if step is None or step[0] != x or step[1] - times[-1] not in ((direction,) if direction else (1, -1)):
            break
        chain.append(nxt)
        times.append(step[1])
    return (chain, x, times) if len(chain) > 1 else None


def _roll(graph, found):
    chain, x, times = found
    head, last = chain[0], chain[-1]
    layer_op, n_state = _LAYERS[head.op]
    where = inherited_meta(head)
    start, n = min(times), len(times)
    if n != _shape(graph, x)[0]:
        x_shape, x_dtype = graph.node(x.node).meta["outputs"][x.index]
        x = Ref(graph.add_node("getitem", (x,), {"index": (slice(start, start + n),)},
                               {"outputs": [((n,) + tuple(x_shape[1:]), x_dtype)], **where}, before=head.name).name)
    inputs = (x,) + head.inputs[1:] + (None,) * (2 if layer_op == "lstm_layer" else 1)  # w_hr, lengths
    attrs = {"reverse": times[1] < times[0], "has_bias": head.attrs["has_bias"], "has_proj": False,
             "has_lengths": False, **({"nonlinearity": head.attrs["nonlinearity"]} if layer_op == "rnn_layer" else {})}
    layer = graph.add_node(layer_op, inputs, attrs,
                           {"outputs": infer_outputs(graph, layer_op, inputs, attrs), **where}, before=head.name)
    new_states = {last.name: [Ref(layer.name, 1 + i) for i in range(n_state)]}  # h_n (, c_n)
    in_chain = {c.name for c in chain}
    for cell, t in zip(chain[:-1], times):
        if any(reader not in in_chain for reader, _ in _readers(graph, Ref(cell.name))):
            select = graph.add_node("getitem", (Ref(layer.name),), {"index": (t - start,)},
                                    {"outputs": [cell.meta["outputs"][0]], **where}, before=head.name)
            new_states[cell.name] = [Ref(select.name)]
    for cell in reversed(chain):
        replace_node(graph, cell.name, new_states.get(cell.name, []))
    direction = "reverse" if attrs["reverse"] else "forward"
    return [c.name for c in chain], f"-> %{layer.name} ({direction}, {n} steps, {len(new_states) - 1} hidden states read)"


def _step_output(graph, x):
    """(layer node, t) if `x` is the layer's hidden state at step t: getitem(y, (t,)), or h_n for the
    layer's last step (which equals y there when no lengths mask it)."""
    if not isinstance(x, Ref):
        return None
    node = graph.node(x.node)
    if node.op == "getitem" and len(node.inputs) == 1 and node.inputs[0].index == 0 \
            and len(node.attrs["index"]) == 1 and type(node.attrs["index"][0]) is int:
        layer = graph.node(node.inputs[0].node)
        return layer, node.attrs["index"][0] % _shape(graph, node.inputs[0])[0]
    if node.op in _LAYER_OPS and x.index == 1 and not node.attrs["has_lengths"]:
        return node, 0 if node.attrs["reverse"] else _shape(graph, Ref(node.name))[0] - 1
    return None


def _match_stacked_steps(graph, cat):
    """cat([reshape(h_t, [1, B, H]) for t in 0..T-1], 0) of one layer's steps -> (cat, layer)."""
    if cat.op != "cat" or cat.attrs["dim"] != 0:
        return None
    steps = []
    for x in cat.inputs:
        unsqueeze = graph.node(x.node) if isinstance(x, Ref) else None
        if unsqueeze is None or unsqueeze.op != "reshape" \
                or tuple(unsqueeze.attrs["shape"]) != (1,) + tuple(_shape(graph, unsqueeze.inputs[0])):
            return None
        steps.append(_step_output(graph, unsqueeze.inputs[0]))
    if any(s is None for s in steps):
        return None
    layer = steps[0][0]
    if layer.op not in _LAYER_OPS or any(other is not layer for other, _ in steps):
        return None
    if Ref(cat.name) in graph.outputs and Ref(layer.name) in graph.outputs:
        return None  # both returned (y and h_n of a one-step layer): the call must return two tensors
    return (cat, layer) if [t for _, t in steps] == list(range(_shape(graph, Ref(layer.name))[0])) else None


def _use_sequence_output(graph, found):
    cat, layer = found
    replace_node(graph, cat.name, [Ref(layer.name)])
    return [cat.name, layer.name], f"stack of all steps = %{layer.name}'s output sequence"


RULES = [Rule("cell_loop_to_layer", _match_loop, _roll),
         Rule("stacked_steps_to_sequence", _match_stacked_steps, _use_sequence_output)]


def rnn_loop_rolling(graph: Graph, log: PassLog | None = None) -> Graph:
    """Roll in place; returns `graph`. The getitem(x, t) nodes left unused go in dead-code elimination."""
    return apply_rules(graph, RULES, "rnn_loop_rolling", log)
