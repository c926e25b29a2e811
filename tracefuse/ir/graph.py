"""The IR graph: op-table nodes held in a networkx MultiDiGraph.

Each node keeps an ordered `inputs` tuple of `Ref`s (which output of which node), its op
attributes and `meta` (per-output shape and dtype, the device, the module scope such as
`encoder.lstm`, the user's source line). The networkx edges are derived from `inputs`, so
networkx's algorithms (topological order, reachability, exports) see the same graph that
`str(graph)` prints one line per node:

    %lstm_1 : f32[32,8,256] = lstm_layer(%x, %w_ih, ...) {reverse=False} # encoder.lstm
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import networkx as nx

from . import ops as _ops
from .symbolic import SymInt, pretty

PLACEHOLDER = "input"  # graph inputs: user arguments, parameters and buffers (named in attrs)


@dataclass(frozen=True)
class Ref:
    """One output of one node."""

    node: str
    index: int = 0

    def __str__(self):
        return f"%{self.node}" if self.index == 0 else f"%{self.node}.{self.index}"


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple  # Ref | None (an absent optional input) | a Python scalar
    attrs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # outputs: [(shape, dtype)], device, scope, source

    @property
    def refs(self):
        return [x for x in self.inputs if isinstance(x, Ref)]


_DTYPE_SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int64": "i64",
                "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "b8"}


def _type_str(shape, dtype):
    name = getattr(dtype, "name", str(dtype))
    return f"{_DTYPE_SHORT.get(name, name)}[{','.join(_attr_str(s) for s in shape)}]"


def _attr_str(value):
    if isinstance(value, tuple):
        return "(" + ", ".join(_attr_str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, slice):
        start, stop, step = ("" if v is None else _attr_str(v) for v in (value.start, value.stop, value.step))
        return f"{start}:{stop}" + (f":{step}" if step else "")
    if value is Ellipsis:
        return "..."
    if isinstance(value, SymInt):
        return pretty(value.expr)  # a symbolic size (dynamic=True): its expression, s0 * s1
    return repr(value)


class Graph:
    """A dataflow graph of op-table nodes in a deterministic (insertion, topological) order."""

    def __init__(self):
        self.nx = nx.MultiDiGraph()
        self._order: list[str] = []
        self.outputs: list = []
        self._used_names: dict[str, int] = {}

    # --- building ------------------------------------------------------------------------------
    def _fresh_name(self, base):
        n = self._used_names.get(base, 0) + 1
        while f"{base}_{n}" in self.nx:  # skip names given explicitly
            n += 1
        self._used_names[base] = n
        return f"{base}_{n}"

    def add_node(self, op, inputs=(), attrs=None, meta=None, name=None, before=None) -> Node:
        """Append a node after all existing ones, or insert it just before node `before` (how
        passes put a replacement where the nodes it replaces were); its inputs must be in the graph."""
        node = Node(name or self._fresh_name(op), op, tuple(inputs), dict(attrs or {}), dict(meta or {}))
        if node.name in self.nx:
            raise ValueError(f"node name %{node.name} is already used")
        self.nx.add_node(node.name, node=node)
        if before is None:
            self._order.append(node.name)
        else:
            self._order.insert(self._order.index(before), node.name)
        for pos, ref in enumerate(node.inputs):
            if isinstance(ref, Ref):
                self.nx.add_edge(ref.node, node.name, key=pos, index=ref.index)
        return node

    def add_input(self, name, shape, dtype, kind="arg", **meta) -> Ref:
        """A graph input: `kind` is 'arg' (a call argument), 'param' or 'buffer' (named module state)."""
        self.add_node(PLACEHOLDER, (), {"kind": kind}, {"outputs": [(tuple(shape), dtype)], **meta}, name=name)
        return Ref(name)

    def add_constant(self, value, name=None, before=None, **meta) -> Ref:
        """A graph input whose value (a tracefuse Tensor) is known when compiling: lifted or folded
        constants. It is a placeholder so that every backend reads it the same way."""
        node = self.add_node(PLACEHOLDER, (), {"kind": "const"},
                             {"outputs": [(tuple(value.shape), value.dtype)], "value": value,
                              "device": str(value.device), **meta},
                             name=name or self._fresh_name("const"), before=before)
        return Ref(node.name)

    def copy(self) -> "Graph":
        """An independent copy (nodes, inputs, attrs and meta dicts); tensors in meta are shared."""
        g = Graph()
        for n in self.nodes:
            meta = {k: list(v) if isinstance(v, list) else v for k, v in n.meta.items()}
            g.add_node(n.op, n.inputs, n.attrs, meta, name=n.name)
        g.outputs = list(self.outputs)
        g._used_names = dict(self._used_names)
        return g

    # --- queries -------------------------------------------------------------------------------
    def node(self, name) -> Node:
        return self.nx.nodes[name]["node"]

    def __contains__(self, name) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return len(self._order)

    def position(self, name) -> int:
        """The node's index in graph order (a topological order)."""
        return self._order.index(name)

    @property
    def nodes(self) -> list[Node]:
        return [self.node(n) for n in self._order]

    def users(self, name) -> list[Node]:
        return [self.node(n) for n in dict.fromkeys(self.nx.successors(name))]

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == PLACEHOLDER]

    # --- rewriting -----------------------------------------------------------------------------
    def replace_uses(self, old: Ref, new) -> None:
        """Point every use of `old` (and graph outputs) at `new`."""
        for user in self.users(old.node):
            user.inputs = tuple(new if x == old else x for x in user.inputs)
            self._reconnect(user)
        self.outputs = [new if x == old else x for x in self.outputs]

    def remove_node(self, name) -> None:
        if any(True for _ in self.nx.successors(name)):
            raise ValueError(f"%{name} still has users")
        self.nx.remove_node(name)
        self._order.remove(name)

    def _reconnect(self, node: Node) -> None:
        self.nx.remove_edges_from([(u, node.name, k) for u, _, k in self.nx.in_edges(node.name, keys=True)])
        for pos, ref in enumerate(node.inputs):
            if isinstance(ref, Ref):
                self.nx.add_edge(ref.node, node.name, key=pos, index=ref.index)

    # --- printing and export -------------------------------------------------------------------
    def format_node(self, node: Node) -> str:
        outs = node.meta.get("outputs", [])
        types = ", ".join(_type_str(s, d) for s, d in outs)
        lhs = f"%{node.name}" + (f" : {types}" if types else "")
        args = ", ".join("_" if x is None else str(x) if isinstance(x, Ref) else _attr_str(x) for x in node.inputs)
        attrs = ", ".join(f"{k}={_attr_str(v)}" for k, v in node.attrs.items())
        line = f"{lhs} = {node.op}({args})" + (f" {{{attrs}}}" if attrs else "")
        notes = [s for s in (node.meta.get("scope"), node.meta.get("source")) if s]
        return line + (f"  # {' '.join(notes)}" if notes else "")

    def __str__(self):
        lines = [self.format_node(n) for n in self.nodes]
        lines.append("return (" + ", ".join(str(r) for r in self.outputs) + ")")
        return "\n".join(lines)

    def to_json(self) -> str:
        def encode(x):
            if isinstance(x, Ref):
                return {"ref": x.node, "index": x.index}
            if isinstance(x, (tuple, list)):
                return [encode(v) for v in x]
            if isinstance(x, (int, float, str, bool)) or x is None:
                return x
            return _attr_str(x) if isinstance(x, (slice, SymInt)) or x is Ellipsis else str(x)

        nodes = [{"name": n.name, "op": n.op, "inputs": encode(n.inputs),
                  "attrs": {k: encode(v) for k, v in n.attrs.items()},
                  "outputs": [{"shape": encode(s), "dtype": getattr(d, "name", str(d))}  # symbolic sizes as text
                              for s, d in n.meta.get("outputs", [])],
                  "scope": n.meta.get("scope"), "source": n.meta.get("source"),
                  **({"value": _const_json(n)} if n.attrs.get("kind") == "const" else {})} for n in self.nodes]
        return json.dumps({"nodes": nodes, "outputs": encode(self.outputs)}, indent=1)

    def to_networkx_strings(self) -> nx.MultiDiGraph:
        """A copy whose attributes are all strings, as GraphML and DOT writers need."""
        g = nx.MultiDiGraph()
        for n in self.nodes:
            g.add_node(n.name, op=n.op, label=self.format_node(n), scope=n.meta.get("scope") or "")
        for u, v, k, data in self.nx.edges(keys=True, data=True):
            g.add_edge(u, v, key=k, input=str(k), output=str(data["index"]))
        return g

    def to_graphml(self, path) -> None:
        nx.write_graphml(self.to_networkx_strings(), path)

    def to_dot(self, groups: dict | None = None) -> str:
        """Graphviz DOT text; `groups` maps a cluster label to node names drawn inside one box
        (the fused groups of the optimized graph)."""
        def quote(s):
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["digraph tracefuse {", "  node [shape=box, fontname=monospace];"]
        grouped = set()
        for i, (label, members) in enumerate((groups or {}).items()):
            lines.append(f"  subgraph cluster_{i} {{ label={quote(label)}; style=rounded;")
            lines += [f"    {quote(m)};" for m in members]
            lines.append("  }")
            grouped.update(members)
        for n in self.nodes:
            lines.append(f"  {quote(n.name)} [label={quote(self.format_node(n))}];")
        for u, v, k in self.nx.edges(keys=True):
            lines.append(f"  {quote(u)} -> {quote(v)} [label={quote(str(k))}];")
        lines.append("}")
        return "\n".join(lines)

    # --- checking ------------------------------------------------------------------------------
    def verify(self) -> None:
        """Raise ValueError if the graph is malformed: unknown ops or attrs, dangling or
        forward references, edges out of sync with inputs, missing output metadata, cycles."""
        seen = set()
        for node in self.nodes:
            where = f"%{node.name} ({node.op})"
            if node.op == PLACEHOLDER:
                _verify_placeholder(node, where)
            else:
                if node.op not in _ops.OPS:
                    raise ValueError(f"{where}: unknown op")
                expected = set(_ops.OPS[node.op].attrs)
                if set(node.attrs) != expected:
                    raise ValueError(f"{where}: attrs {sorted(node.attrs)} != op table's {sorted(expected)}")
            for ref in node.refs:
                if ref.node not in seen:
                    raise ValueError(f"{where}: input {ref} is not defined before it")
                produced = len(self.node(ref.node).meta.get("outputs", [])) or 1
                if ref.index >= produced:
                    raise ValueError(f"{where}: input {ref} names output {ref.index} of a node with {produced}")
            in_edges = sorted((k, u) for u, _, k in self.nx.in_edges(node.name, keys=True))
            if in_edges != sorted((pos, r.node) for pos, r in enumerate(node.inputs) if isinstance(r, Ref)):
                raise ValueError(f"{where}: networkx edges out of sync with inputs")
            if "outputs" not in node.meta:
                raise ValueError(f"{where}: no output metadata")
            seen.add(node.name)
        for ref in self.outputs:
            if isinstance(ref, Ref) and ref.node not in seen:
                raise ValueError(f"graph output {ref} is not defined")
        if not nx.is_directed_acyclic_graph(self.nx):
            raise ValueError("graph has a cycle")


def _verify_placeholder(node, where):
    """Every input says what it is (the tracer's vocabulary: 'arg', 'param', 'buffer', ...); a
    'const' carries its value, a tracefuse Tensor, in meta['value']."""
    kind = node.attrs.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"{where}: input has no kind")
    if kind == "const":
        value = node.meta.get("value")
        if value is None:
            raise ValueError(f"{where}: const input has no meta['value']")
        if node.meta.get("outputs") != [(tuple(value.shape), value.dtype)]:
            raise ValueError(f"{where}: const value {_type_str(value.shape, value.dtype)} does not match its "
                             f"output metadata")


_JSON_CONST_LIMIT = 64  # constants up to this many elements are written out in to_json()


def _const_json(node):
    value = node.meta["value"]
    return value.tolist() if value.numel() <= _JSON_CONST_LIMIT else None
