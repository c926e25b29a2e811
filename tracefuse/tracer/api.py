"""`tracefuse.compile` and `tracefuse.explain`.

A compiled callable keeps a small cache of captured graphs, each with the guards it was traced
under: argument shapes, dtypes, devices and requires_grad, grad mode, the modules' training
flags and state, non-tensor arguments, and integer arguments whose values the trace read. A call
reuses the first graph whose guards hold; otherwise it traces again, and the failed guard is
kept so `explain()` can say why.

With `dynamic=True` (with `dynamic=None`, from the first trace a shape change caused) an entry's
graphs are symbolic (ir/symbolic.py): the argument shapes are guarded only as far as which dims
are 0, 1 or "2 or more", the guards the trace decided on its symbolic sizes are checked against
the call's, and the graphs are made concrete for the call's sizes (ir/specialize.py; kept per
size on the entry), or, where they cannot be, traced again.

DataParallel's replicas of a compiled module share its cache, from their threads (a lock makes
each guard set trace once). A replica is made anew on every call, so its graph is bound to
names, not to that replica's tensors: its parameters and buffers are graph inputs under the
original's names, bound at each call to the calling replica's own copies (through which the
gradients flow back to the original's parameters), and its guards hold the original's tensor
identities and modules (see capture.py) with the copies' devices. A graph is traced once per
device rather than re-targeted to another: a graph holds its device in more places than its
inputs (factory ops' device attributes, constants made while tracing, the devices passes read
from node metadata), and rewriting all of them would cost more code and risk than one trace
per device on the first call. The recompile limit counts the graphs of each set of devices
apart, so replicas on N devices do not use it up N times faster.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    from numpy import byte_bounds

from .. import autograd
from ..codegen.numpy import random
from ..ir.specialize import SizeMismatch, specialize
from . import dump, pytree, runner
from .capture import capture
from .context import TracingError, WarmupRequired

BACKENDS = ("auto", "numpy", "triton")
FALLBACKS = ("error", "eager")


@dataclass
class Entry:
    guards: dict
    value_guards: dict
    captured: object = None  # None: this signature runs eagerly (fallback="eager")
    reason: str = ""
    devices: frozenset = frozenset()  # of the call's tensors: the recompile limit counts per device set
    sized: dict = field(default_factory=dict)  # dynamic=True: symbol values -> the graphs made concrete
    _sized_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # replicas' threads

    def for_sizes(self, leaves):
        """The captured call for the sizes of the call's tensor `leaves`: itself, or (dynamic=True)
        its graphs made concrete for those sizes (ir/specialize.py; SizeMismatch if they cannot)."""
        c = self.captured
        if c.env is None:
            return c
        values = symbol_values(c, leaves)
        key = tuple(values.values())
        with self._sized_lock:
            sized = self.sized.get(key)
            if sized is None:
                sized = dataclasses.replace(c, forward=specialize(c.forward, values), replay=None, launches=[],
                                            backward=None if c.backward is None else specialize(c.backward, values))
                if len(self.sized) >= _SIZED_LIMIT:  # the oldest size goes
                    self.sized.pop(next(iter(self.sized)))
                self.sized[key] = sized
        return sized


_SIZED_LIMIT = 16  # concrete graphs kept per symbolic entry (each is a copy of the graphs)


def symbol_values(captured, leaves) -> dict:
    """The call's value of each of `captured`'s symbols (the sizes of its tensor `leaves`)."""
    return {name: leaves[i]._data.shape[d] for name, i, d in captured.symbol_dims}


class _SymbolicSize:
    """A dim that dynamic=True made a symbol: any size of 2 or more."""

    def __repr__(self):
        return "n>=2"


SYMBOLIC = _SymbolicSize()


def symbolic_shape(shape) -> tuple:
    """A shape guard as a symbolic entry holds it: which dims are 0, 1 or 2 and more."""
    return tuple(n if n < 2 else SYMBOLIC for n in shape)


@dataclass
class Recompile:
    guard: str
    old: object
    new: object

    def __str__(self):
        return f"guard failed: {self.guard}: {self.old!r} -> {self.new!r}"


@dataclass
class Options:
    backend: str = "auto"
    fullgraph: bool = True
    dynamic: bool | None = False
    fallback: str = "error"
    recompile_limit: int = 8
    extra: dict = field(default_factory=dict)


class CompiledCallable:
    """A function or bound module call with its cache of captured graphs."""

    def __init__(self, fn, module, options: Options, signature_of=None):
        self.fn, self.module, self.options = fn, module, options
        self.replica_of = None  # the compiled module that `module` is a DataParallel replica of
        # Arguments are bound by parameter name (of forward, for modules): graph inputs get the
        # user's names, and keyword and positional calls share a cache entry.
        self.signature = inspect.signature(signature_of or fn)
        self.entries: list[Entry] = []
        self.recompiles: list[Recompile] = []
        self.fallbacks: list[str] = []
        self.warmups = 0  # calls run eagerly to create state (an optimizer's first step)
        self._warned = False
        self._lock = threading.RLock()  # held while a call traces

    def for_replica(self, replica) -> "CompiledCallable":
        """The compiled call of `replica`, a DataParallel copy of this module: it shares this
        callable's graphs (the same entries, recompiles and fallbacks lists, and lock)."""
        from ..nn import Module

        shared = copy.copy(self)
        shared.fn, shared.module, shared.replica_of = functools.partial(Module.__call__, replica), replica, self.module
        return shared

    # --- guards --------------------------------------------------------------------------------
    def _state(self):
        """(name, tensor, kind) of the module's parameters and buffers. A replica's are its copies
        of the original's (plain attributes, not registered), under the original's names."""
        if self.module is None:
            return []
        if self.replica_of is None:
            return _named_state(self.module)
        return [(name, _attribute(self.module, name), kind) for name, _, kind in _named_state(self.replica_of)]

    def guards_for(self, arguments, state=None) -> dict:
        """The guards of a call; `state`: the call's `_state()`, when the caller has it already."""
        leaves, spec, paths = pytree.flatten(arguments)
        guards = {"grad_mode": autograd.is_grad_enabled(), "arguments": spec}
        for path, t in zip(paths, leaves):
            guards[f"{path}.shape"] = t._data.shape
            guards[f"{path}.dtype"] = t.dtype
            guards[f"{path}.device"] = str(t.device)
            guards[f"{path}.requires_grad"] = t.requires_grad
            if t.requires_grad:
                guards[f"{path}.grad is None"] = t._grad is None
        # Arguments that share memory (the same tensor passed twice) trace differently: an
        # in-place update of one is seen through the other.
        guards["argument aliasing"] = _aliasing([t._data for t in leaves])
        if self.module is not None:
            for name, m in self.module.named_modules():
                guards[f"{name or 'self'}.training"] = m.training
            state = self._state() if state is None else state
            # A replica's copies are new on every call: they are guarded as the tensors they copy.
            sources = state if self.replica_of is None else _named_state(self.replica_of)
            for (name, t, _), (_, source, _) in zip(state, sources):
                guards[f"self.{name}"] = (id(source), tuple(t.shape), t.dtype, str(t.device), t.requires_grad)
        return guards

    @staticmethod
    def _devices(arguments, state) -> frozenset:
        leaves, _, _ = pytree.flatten(arguments)
        return frozenset(str(t.device) for t in leaves + [t for _, t, _ in state])

    def _failed_guard(self, entry, guards, arguments):
        return next(self._failed_guards(entry, guards, arguments), None)

    def _failed_guards(self, entry, guards, arguments):
        """The guards of `entry` that fail for this call, in order (lazily)."""
        structure_changed, symbolic_entry = False, entry.captured is not None and entry.captured.env is not None
        for key, old in entry.guards.items():
            new = guards.get(key)
            if symbolic_entry and key.endswith(".shape") and new is not None:
                new = symbolic_shape(new)
            if new != old:
                structure_changed |= key == "arguments"
                yield Recompile(key, old, new)
        if entry.value_guards and not structure_changed:  # else the argument names may not match
            leaves, _, _ = pytree.flatten(arguments)
            live = dict(entry.captured.live_inputs, **dict(zip(entry.captured.arg_names, leaves)))
            for name, values in entry.value_guards.items():
                now = live[name]._host_data().tolist()
                if now != values:
                    yield Recompile(f"values of {name}", values, now)
        for label, read, value in entry.captured.guards if entry.captured else ():
            now = read()
            if now != value:
                yield Recompile(label, value, now)
        if entry.captured is not None and entry.captured.env is not None and not structure_changed:
            yield from _failed_size_guards(entry, arguments)

    # --- calling -------------------------------------------------------------------------------
    def invoke(self, arguments):
        bound = inspect.BoundArguments(self.signature, arguments)
        return self.fn(*bound.args, **bound.kwargs)

    def __call__(self, *args, **kwargs):
        arguments = dict(self.signature.bind(*args, **kwargs).arguments)
        state = self._state()
        guards = self.guards_for(arguments, state)
        entry = self._matching(guards, arguments)
        if entry is None:
            with self._lock:
                entry = self._matching(guards, arguments)  # another replica's thread may have traced it
                if entry is None:
                    return self._trace_and_run(guards, arguments, state)
        return self._run(entry, arguments, state)

    def _matching(self, guards, arguments):
        return next((e for e in list(self.entries) if self._failed_guard(e, guards, arguments) is None), None)

    def _trace_and_run(self, guards, arguments, state):
        devices = self._devices(arguments, state)
        failure = None
        if self.entries:  # explained against the closest entry: fewest failed guards, newest on ties
            failure = min((list(self._failed_guards(e, guards, arguments)) for e in reversed(self.entries)),
                          key=len)[0]
            self.recompiles.append(failure)
        if sum(e.devices == devices for e in self.entries) >= self.options.recompile_limit:
            message = (f"tracefuse.compile: recompile limit ({self.options.recompile_limit}) reached for "
                       f"{self._name()}; last {failure}{self._limit_hint(failure)}")
            return self._fall_back(message, arguments, guards, devices)
        rng_state = random.get_state()
        try:
            dynamic = self._traces_dynamic(failure)
            captured = capture(self.invoke, arguments, state, self._scopes(), self._originals(), dynamic=dynamic)
            self._check_state_kept(state)
        except WarmupRequired:
            random.set_state(rng_state)
            self.warmups += 1
            return self.invoke(arguments)  # creates the state; the next call is traced
        except TracingError as exc:
            random.set_state(rng_state)
            return self._fall_back(str(exc), arguments, guards, devices)
        random.set_state(rng_state)  # tracing drew random numbers; the call itself draws them again
        captured.backend = _backend_for(captured.forward, self.options.backend)
        captured.cuda_graphs = bool(self.options.extra.get("cuda_graphs", False))
        if self.replica_of is not None:  # the graph keeps no copies: each call binds its replica's
            copies = {name for name, _, _ in state}
            captured.live_inputs = {n: t for n, t in captured.live_inputs.items() if n not in copies}
        if dynamic:
            guards = {k: symbolic_shape(v) if k.endswith(".shape") else v for k, v in guards.items()}
        entry = Entry(guards, captured.value_guards, captured, devices=devices)
        self.entries.append(entry)
        result = self._run(entry, arguments, state)
        leaves, _, _ = pytree.flatten(arguments)
        dump.maybe_dump(self, entry, entry.for_sizes(leaves))  # after the first run: its kernels are known
        return result

    def _traces_dynamic(self, failure) -> bool:
        """Whether this trace uses symbolic sizes: always with dynamic=True; with dynamic=None
        (PyTorch's "automatic") once a call has failed a shape guard, so the next new size needs
        no trace of its own."""
        if self.options.dynamic is None:
            return failure is not None and failure.guard.endswith(".shape")
        return self.options.dynamic

    def _name(self) -> str:
        """What the user compiled: the module's class, or the function's qualified name."""
        return type(self.module).__name__ if self.module is not None else _name(self.fn)

    def _limit_hint(self, failure) -> str:
        """What to do about the guard that keeps failing, where there is something to do."""
        if failure.guard.endswith(".shape") and self.options.dynamic is False:
            return " (compile with dynamic=True to serve every size from one graph)"
        if failure.guard.startswith("values of "):
            return (" (each new value of an integer tensor the code reads, such as packed sequence lengths, is a "
                    "new graph: group batches by length, raise options={'recompile_limit': N}, or compile with "
                    "fallback='eager')")
        return ""

    def _check_state_kept(self, state):
        """A call that rebinds a parameter or buffer (instead of updating it in place) cannot be
        replayed: the graph would keep writing to the old tensor."""
        now = {name: t for name, t, _ in self._state()}
        for name, t, kind in state:
            if now.get(name) is not t:
                raise TracingError(
                    f"tracefuse.compile: the call replaced {kind} '{name}' of {type(self.module).__name__} with a new "
                    f"tensor; a compiled graph can only update module state in place (e.g. "
                    f"`self.{name.rsplit('.', 1)[-1]}.copy_(value)`)")

    def _run(self, entry, arguments, state):
        if entry.captured is None:
            return self.invoke(arguments)
        leaves, _, _ = pytree.flatten(arguments)
        return runner.run(_bound(entry.for_sizes(leaves), state), leaves)

    def _fall_back(self, message, arguments, guards, devices):
        if self.options.fallback == "error":
            raise TracingError(message)
        self.fallbacks.append(message)
        if not self._warned:
            warnings.warn(f"{message}\ntracefuse.compile: running {self._name()} eagerly (fallback='eager')",
                          stacklevel=5)  # the user's call
            self._warned = True
        self.entries.append(Entry(guards, {}, None, message, devices))
        return self.invoke(arguments)

    def _scopes(self):
        """id(module) -> qualified name, for the module and, for a replica, the modules it copies."""
        trees = [m for m in (self.module, self.replica_of) if m is not None]
        return {id(m): name for tree in trees for name, m in tree.named_modules(remove_duplicate=False)}

    def _originals(self):
        """id(replica module) -> the module it copies (same tree shape), for a replica's trace."""
        if self.replica_of is None:
            return None
        pairs = zip(self.module.named_modules(remove_duplicate=False),
                    self.replica_of.named_modules(remove_duplicate=False))
        return {id(replica): original for (_, replica), (_, original) in pairs}


def _failed_size_guards(entry, arguments):
    """dynamic=True: the guards the trace decided on its symbolic sizes that this call's sizes
    fail, then whether its graphs can be made concrete for them."""
    leaves, _, _ = pytree.flatten(arguments)
    env = entry.captured.env
    failed = env.failed_guard(symbol_values(entry.captured, leaves))
    if failed is not None:
        source, old, now = failed
        yield Recompile(env.describe(source), old, now)
        return
    try:
        entry.for_sizes(leaves)
    except SizeMismatch as exc:
        yield Recompile("the graph's sizes", "consistent", str(exc))


def _bound(captured, state):
    """`captured` reading the call's parameters and buffers `state`: a graph traced by a replica
    holds none (each call is a new replica), and a replica's call reads its own copies."""
    if all(captured.live_inputs.get(name) is t for name, t, _ in state):
        return captured
    return dataclasses.replace(captured, live_inputs={**captured.live_inputs, **{name: t for name, t, _ in state}})


def _named_state(module):
    params = [(n, t, "param") for n, t in module.named_parameters()]
    return params + [(n, t, "buffer") for n, t in module.named_buffers()]


def _attribute(module, name):
    """The tensor at qualified `name` ('fc1.weight') of `module`."""
    path, _, attribute = name.rpartition(".")
    return getattr(module.get_submodule(path), attribute)


def _aliasing(arrays) -> tuple:
    """The pairs (i, j), j < i, of arrays whose memory may overlap, in order: a sweep over their
    byte ranges sorted by start (a call with 200 tensor arguments is 200 checks, not 20,000)."""
    pairs, open_spans = [], []  # open_spans: (end, index) of ranges that may still overlap
    for start, end, i in sorted((*byte_bounds(a), i) for i, a in enumerate(arrays)):
        open_spans = [(e, j) for e, j in open_spans if e > start]
        pairs += [(max(i, j), min(i, j)) for _, j in open_spans if np.may_share_memory(arrays[i], arrays[j])]
        open_spans.append((end, i))
    return tuple(sorted(pairs))


def _backend_for(graph, requested):
    """'triton' for a graph on CUDA devices, 'numpy' for a CPU graph; a backend that cannot run
    where the tensors are is a clear error."""
    on_cuda = sorted({n.meta["device"] for n in graph.nodes if n.meta.get("device", "cpu") != "cpu"})
    chosen = "triton" if on_cuda else "numpy"
    if requested not in ("auto", chosen):
        where = f"CUDA tensors ({', '.join(on_cuda)})" if on_cuda else "CPU tensors"
        runs = "on CUDA devices" if requested == "triton" else "on the CPU"
        raise ValueError(f"tracefuse.compile: backend={requested!r} runs {runs}, but this call has {where}; "
                         "move the model and its inputs with .to(device), or use backend='auto'")
    return chosen


def _name(fn):
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _options(backend, fullgraph, dynamic, fallback, options):
    if backend not in BACKENDS:
        raise ValueError(f"tracefuse.compile: unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"tracefuse.compile: fallback must be one of {FALLBACKS}, got {fallback!r}")
    if dynamic not in (False, True, None):  # None: PyTorch's "automatic" (CompiledCallable._traces_dynamic)
        raise ValueError(f"tracefuse.compile: dynamic must be True, False or None, got {dynamic!r}")
    extra = dict(options or {})
    limit = extra.pop("recompile_limit", 8)
    return Options(backend, fullgraph, dynamic, fallback, limit, extra)


def compile(obj=None, *, backend="auto", fullgraph=True, dynamic=False, fallback="error", options=None):
    """Compile a module instance, a module class or a function; usable as a decorator with or
    without arguments. Compiled modules share the original's parameters, buffers, state_dict,
    train/eval and hooks (they are the same object's state).

    The code is traced once per guard set (see the module docstring). Like any tracing compiler,
    it records what the Python code did, not how: plain Python values it reads from globals or
    closures (a scale factor, a flag) are baked into the graph and not guarded — pass them as
    arguments, or keep them in a module, whose attributes are guarded."""
    opts = _options(backend, fullgraph, dynamic, fallback, options)
    if obj is None:
        return lambda o: compile(o, backend=backend, fullgraph=fullgraph, dynamic=dynamic, fallback=fallback,
                                 options=options)
    from ..nn import Module

    if isinstance(obj, Module):
        return _compile_module(obj, opts)
    if isinstance(obj, type) and issubclass(obj, Module):
        return _compiled_subclass(obj, opts)
    if callable(obj):
        compiled = CompiledCallable(obj, None, opts)
        wrapper = functools.wraps(obj)(lambda *a, **k: compiled(*a, **k))
        wrapper._tracefuse_compiled = compiled
        return wrapper
    raise TypeError(f"tracefuse.compile expects a Module, a Module class or a function, got {type(obj).__name__}")


_MODULE_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# DataParallel replica -> the compiled module it copies. Its callable is made per call: stored
# here, it would hold the replica and keep it (and its copies) alive.
_REPLICA_OF: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cache_of(module) -> CompiledCallable:
    compiled = _MODULE_CACHES.get(module)
    if compiled is None:
        from ..nn import Module

        compiled = CompiledCallable(functools.partial(Module.__call__, module), module, module._tracefuse_options,
                                    signature_of=module.forward)
        _MODULE_CACHES[module] = compiled
    return compiled


def _compiled_call(self, *args, **kwargs):
    original = _REPLICA_OF.get(self)
    compiled = _cache_of(self) if original is None else _cache_of(original).for_replica(self)
    return compiled(*args, **kwargs)


def _replicate_for_data_parallel(self):
    """DataParallel's replica of a compiled module, sharing its compiled graphs (see the module
    docstring)."""
    from ..nn.parallel.replicate import shallow_replica

    replica = shallow_replica(self)
    _REPLICA_OF[replica] = self
    _cache_of(self)  # made here, in the caller's thread, rather than by the replicas' threads at once
    return replica


def _compiled_subclass(base, opts):
    """`base` with compiled calls (`compile` of a module class, or the class of a compiled view)."""
    return type(base.__name__, (base,), {"__call__": _compiled_call, "_tracefuse_options": opts,
                                         "_replicate_for_data_parallel": _replicate_for_data_parallel,
                                         "__module__": base.__module__, "__qualname__": base.__qualname__})


def _compile_module(module, opts):
    """A view of `module` (same __dict__, so the same state) whose calls run compiled."""
    compiled = object.__new__(_compiled_subclass(type(module), opts))
    object.__setattr__(compiled, "__dict__", module.__dict__)
    return compiled


def compiled_callable(obj) -> CompiledCallable | None:
    """The cache behind a compiled module or function (None before a compiled module's first call)."""
    found = getattr(obj, "_tracefuse_compiled", None)
    if found is not None:
        return found
    try:
        return _MODULE_CACHES.get(obj)
    except TypeError:
        return None
