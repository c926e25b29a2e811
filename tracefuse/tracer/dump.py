"""`tracefuse.explain` and the TRACEFUSE_DUMP debug dump: what a compiled call became."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..ir import pipeline
from . import pytree

DUMP_KINDS = ("graph", "optimized", "kernels", "guards")


@dataclass
class ExplainReport:
    graph: object  # the forward graph as traced
    optimized: object  # after the pass pipeline
    backward: object | None
    kernels: dict = field(default_factory=dict)  # kernel name -> generated source (none for NumPy)
    backend: str = "numpy"
    guards: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    recompiles: list = field(default_factory=list)
    passes: object = None  # the PassLog: which rewrite rule fired on which nodes
    kernel_count: int = 0  # launches per call of the forward
    cuda_graph: str = ""  # compile option cuda_graphs: how the forward replays, or why it does not
    symbols: dict = field(default_factory=dict)  # dynamic=True: symbol -> the size it stands for

    def __str__(self):
        kernels = (f"{len(self.kernels)} generated Triton kernels" if self.backend == "triton"
                   else "NumPy backend: no generated kernels")
        parts = [f"tracefuse.explain: {len(self.optimized.nodes)} nodes after passes, "
                 f"{self.kernel_count} kernel launches per call ({kernels})"
                 + (f"; {self.cuda_graph}" if self.cuda_graph else ""),
                 "", "== graph (as traced) ==", str(self.graph),
                 "", "== optimized ==", str(self.optimized)]
        if self.backward is not None:
            parts += ["", "== backward ==", str(self.backward)]
        if self.symbols:
            parts += ["", "== symbols ==", *(f"{k} = {v}" for k, v in self.symbols.items())]
        parts += ["", "== passes ==", str(self.passes) or "(no rewrite fired)",
                  "", "== guards ==", *(f"{k} == {v!r}" for k, v in self.guards.items())]
        if self.recompiles:
            parts += ["", "== recompiles ==", *map(str, self.recompiles)]
        if self.fallbacks:
            parts += ["", "== fallbacks ==", *self.fallbacks]
        return "\n".join(parts)


def report(compiled, entry, sized=None) -> ExplainReport:
    """The Triton backend reports the kernels the latest call launched (their count is measured);
    the NumPy backend the launches a fusing backend would make (pipeline.kernel_count). A
    symbolic entry (dynamic=True) shows its symbolic graphs, its size guards, and the kernels of
    `sized`: its graphs made concrete for the call explained."""
    c = sized or entry.captured
    if c.backend == "triton":
        # a replayed CUDA graph: its kernels, and the call's own launches (copies in and out)
        launches = (c.replay.kernels + c.launches) if c.replay is not None and c.replay.captured else c.launches
        kernels, count = _kernel_sources(launches), len(launches)
    else:
        kernels, count = {}, pipeline.kernel_count(c.forward)
    graph = c.replay.describe() if c.replay is not None else ""
    symbolic, guards, symbols = entry.captured, dict(entry.guards), {}
    if symbolic.env is not None:
        env = symbolic.env
        guards.update({env.describe(source): value for source, value in env.guards.items()})
        symbols = {name: f"{label} (traced at {value})" for name, (label, value) in env.symbols.items()}
    return ExplainReport(c.traced, symbolic.forward, symbolic.backward, kernels, c.backend, guards,
                         list(compiled.fallbacks), list(compiled.recompiles), c.log, count, graph, symbols)


def _kernel_sources(launches) -> dict:
    """Kernel name -> source, in launch order; a name built twice with different text gets _2, _3."""
    sources: dict = {}
    for record in launches:
        kernel = record.kernel
        name, n = kernel.name, 1
        while name in sources and sources[name] != kernel.source:
            n += 1
            name = f"{kernel.name}_{n}"
        sources[name] = kernel.source
    return sources


def explain(obj, *args, **kwargs) -> ExplainReport:
    """Compile `obj` if needed, call it on the arguments and report the graph that call used."""
    from .api import compile, compiled_callable

    target = obj if compiled_callable(obj) is not None or getattr(obj, "_tracefuse_options", None) else compile(obj)
    target(*args, **kwargs)
    compiled = compiled_callable(target)
    arguments = dict(compiled.signature.bind(*args, **kwargs).arguments)
    guards = compiled.guards_for(arguments)
    for entry in compiled.entries:
        if compiled._failed_guard(entry, guards, arguments) is None:
            if entry.captured is None:
                raise RuntimeError(f"tracefuse.explain: this call ran eagerly: {entry.reason}")
            leaves, _, _ = pytree.flatten(arguments)
            return report(compiled, entry, entry.for_sizes(leaves))
    raise RuntimeError("tracefuse.explain: no compiled graph matches this call")


def maybe_dump(compiled, entry, sized=None) -> None:
    """Write the dump TRACEFUSE_DUMP asks for (e.g. 'graph,optimized,guards') into TRACEFUSE_DUMP_DIR;
    `sized`: the entry's graphs made concrete for the call just run (dynamic=True)."""
    wanted = [k.strip() for k in os.environ.get("TRACEFUSE_DUMP", "").split(",") if k.strip()]
    if not wanted:
        return
    unknown = set(wanted) - set(DUMP_KINDS) - {"all"}
    if unknown:
        raise ValueError(f"TRACEFUSE_DUMP: unknown kind(s) {sorted(unknown)}; choose from {', '.join(DUMP_KINDS)}")
    if "all" in wanted:
        wanted = list(DUMP_KINDS)
    rep = report(compiled, entry, sized)
    name = type(compiled.module).__name__ if compiled.module is not None else compiled.fn.__qualname__
    folder = Path(os.environ.get("TRACEFUSE_DUMP_DIR", "tracefuse_dump")) / f"{name}_{len(compiled.entries)}"
    folder.mkdir(parents=True, exist_ok=True)
    if "graph" in wanted:
        (folder / "graph.txt").write_text(str(rep.graph) + "\n")
        (folder / "graph.dot").write_text(rep.graph.to_dot() + "\n")
    if "optimized" in wanted:
        (folder / "optimized.txt").write_text(str(rep.optimized) + "\n")
        (folder / "optimized.dot").write_text(rep.optimized.to_dot(groups=pipeline.groups(rep.optimized)) + "\n")
        (folder / "optimized.json").write_text(rep.optimized.to_json() + "\n")
        (folder / "passes.txt").write_text(str(rep.passes) + "\n")
        if rep.backward is not None:
            (folder / "backward.txt").write_text(str(rep.backward) + "\n")
    if "kernels" in wanted:
        header = "" if rep.kernels else "# NumPy backend: no generated kernels\n"
        (folder / "kernels.txt").write_text(header + "".join(f"# --- {k}\n{src}\n" for k, src in rep.kernels.items()))
        for k, src in rep.kernels.items():
            (folder / f"{k}.py").write_text(src)
    if "guards" in wanted:
        (folder / "guards.txt").write_text("".join(f"{k} == {v!r}\n" for k, v in rep.guards.items()) +
                                           "".join(f"recompiled: {r}\n" for r in rep.recompiles))
