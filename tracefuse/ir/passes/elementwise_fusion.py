"""Elementwise fusion: group connected elementwise nodes that codegen turns into one kernel each.

The pass only annotates: each member of a group of two or more nodes gets `meta["group"] =
"fused_N"`; the node structure is unchanged, so every backend can still run node by node.
A group has one iteration shape. Producers of exactly that shape join it; a group of smaller
shape whose results are read only inside one bigger group joins that group when its shape
broadcasts to the bigger one (a bias computed per column, recomputed per element: never
written to memory). Random and multi-output elementwise ops (dropout) stay on their own. A
merge that would put a non-member between two members (a -> sum -> b with a, b fused) is
refused: the group could not run as one kernel.
"""
from __future__ import annotations

from .. import ops, shapes
from ..graph import PLACEHOLDER, Graph, Ref
from ..rewrite import PassLog
from ..symbolic import matches


def _fusible(node) -> bool:
    if node.op == PLACEHOLDER:
        return False
    op = ops.get(node.op)
    return op.kind == "elementwise" and not op.random and len(node.meta["outputs"]) == 1


def _broadcasts_to(small, big) -> bool:
    try:
        return shapes.broadcast(small, big) == tuple(big)
    except RuntimeError:
        return False


class _Groups:
    """Union-find over fusible nodes, with each group's shape and the legality check."""

    def __init__(self, graph, fusible):
        self.graph = graph
        self.pos = {n.name: i for i, n in enumerate(graph.nodes)}
        self.parent = {n.name: n.name for n in fusible}
        self.members = {n.name: [n.name] for n in fusible}
        self.node_shape = {n.name: tuple(n.meta["outputs"][0][0]) for n in fusible}
        self.shape = dict(self.node_shape)  # per group root: the iteration shape

    def find(self, name):
        while self.parent[name] != name:
            self.parent[name] = name = self.parent[self.parent[name]]
        return name

    def merge(self, a, b, shape) -> bool:
        """Merge the groups of `a` and `b` (with iteration shape `shape`) if they can be one kernel."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        union = set(self.members[ra]) | set(self.members[rb])
        if self._detours(union):
            return False
        self.parent[rb] = ra
        self.members[ra] += self.members.pop(rb)
        self.shape[ra] = shape
        return True

    def _detours(self, members) -> bool:
        """Does a path leave `members` and come back? Such a path only runs through nodes placed
        before the last member, so the search stops there."""
        last = max(self.pos[m] for m in members)
        frontier = [u for m in members for u in self.graph.nx.successors(m) if u not in members]
        seen = set()
        while frontier:
            name = frontier.pop()
            if name in seen or self.pos[name] > last:
                continue
            seen.add(name)
            for user in self.graph.nx.successors(name):
                if user in members:
                    return True
                frontier.append(user)
        return False

    def external_users(self, root):
        members = set(self.members[root])
        return {u for m in members for u in self.graph.nx.successors(m) if u not in members}


def elementwise_fusion(graph: Graph, log: PassLog | None = None) -> Graph:
    """Annotate fusion groups in place (any earlier annotation is replaced); returns `graph`."""
    log = log if log is not None else PassLog()
    fusible = [n for n in graph.nodes if _fusible(n)]
    groups = _Groups(graph, fusible)
    shape = groups.node_shape
    for node in fusible:  # producers of the same shape
        for ref in node.refs:
            if ref.node in shape and matches(shape[ref.node], shape[node.name]):
                groups.merge(node.name, ref.node, shape[node.name])
    outputs = {r.node for r in graph.outputs if isinstance(r, Ref)}
    seen = set()
    for node in reversed(fusible):  # smaller groups read only by one bigger group
        root = groups.find(node.name)
        if root in seen:
            continue
        seen.add(root)
        readers = {groups.find(u) if u in groups.parent else None for u in groups.external_users(root)}
        if len(readers) != 1 or None in readers or outputs & set(groups.members[root]):
            continue
        (target,) = readers
        small, big = groups.shape[root], groups.shape[target]
        if not matches(big, small) and _broadcasts_to(small, big):
            groups.merge(target, root, groups.shape[target])
    for node in graph.nodes:
        node.meta.pop("group", None)
    roots = [r for r in dict.fromkeys(groups.find(n.name) for n in fusible) if len(groups.members[r]) > 1]
    for i, root in enumerate(roots, start=1):
        label = f"fused_{i}"
        names = sorted(groups.members[root], key=groups.pos.get)
        for name in names:
            graph.node(name).meta["group"] = label
        log.record("elementwise_fusion", "fuse_elementwise", names,
                   f"{label}: {len(names)} nodes over [{','.join(map(repr, groups.shape[root]))}]")
    return graph


def groups(graph: Graph) -> dict:
    """Fusion group label -> member node names in graph order (for `graph.to_dot(groups=...)`)."""
    found: dict = {}
    for node in graph.nodes:
        if "group" in node.meta:
            found.setdefault(node.meta["group"], []).append(node.name)
    return found


def schedule(graph: Graph) -> list:
    """The order a fusing backend runs `graph` in: a list of node names and lists of group members,
    each group at one place (the group graph is acyclic: `_detours` refuses cycles), otherwise
    in graph order."""
    import networkx as nx

    pos = {n.name: i for i, n in enumerate(graph.nodes)}
    key = {n.name: n.meta.get("group", n.name) for n in graph.nodes}
    members: dict = {}
    for node in graph.nodes:
        members.setdefault(key[node.name], []).append(node.name)
    condensed = nx.DiGraph()
    condensed.add_nodes_from(members)
    condensed.add_edges_from((key[u], key[v]) for u, v in graph.nx.edges() if key[u] != key[v])
    first = {k: pos[names[0]] for k, names in members.items()}
    grouped = groups(graph)
    return [grouped[k] if k in grouped else k for k in nx.lexicographical_topological_sort(condensed, key=first.get)]


_VIEWS = ("permute", "expand")


def _is_view(graph, node, contiguous) -> bool:
    """Does `node` only re-describe memory (no kernel)? permute/expand and basic indexing always;
    reshape when its input is contiguous (a placeholder, a kernel's result or a view-free reshape)."""
    if node.op in _VIEWS or (node.op == "getitem" and not node.refs[1:]):
        return True
    if node.op == "reshape":
        src = node.inputs[0]
        return isinstance(src, Ref) and contiguous.get(src.node, True)
    return False


def kernel_count(graph: Graph) -> int:
    """Estimated kernel launches per call: one per fusion group, one per other node that computes
    (placeholders and pure views are free)."""
    contiguous, launches, seen_groups = {}, 0, set()
    for node in graph.nodes:
        if node.op == PLACEHOLDER:
            continue
        if "group" in node.meta:
            launches += node.meta["group"] not in seen_groups
            seen_groups.add(node.meta["group"])
        elif _is_view(graph, node, contiguous):
            contiguous[node.name] = node.op == "reshape"
            continue
        else:
            launches += 1
        contiguous[node.name] = True
    return launches
