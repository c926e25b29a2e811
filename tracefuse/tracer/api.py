"""`tracefuse.compile` and `tracefuse.explain`.

A compiled callable keeps a small cache of captured graphs, each with the guards it was traced
under: argument shapes, dtypes, devices and requires_grad, grad mode, the modules' training
flags and state, non-tensor arguments, and integer arguments whose values the trace read. A call
reuses the first graph whose guards hold; otherwise it traces again, and the failed guard is
kept so `explain()` can say why.
"""
from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from .. import autograd
from ..codegen.numpy import random
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
    dynamic: bool = False
    fallback: str = "error"
    recompile_limit: int = 8
    extra: dict = field(default_factory=dict)


class CompiledCallable:
    """A function or bound module call with its cache of captured graphs."""

    def __init__(self, fn, module, options: Options, signature_of=None):
        self.fn, self.module, self.options = fn, module, options
        # Arguments are bound by parameter name (of forward, for modules): graph inputs get the
        # user's names, and keyword and positional calls share a cache entry.
        self.signature = inspect.signature(signature_of or fn)
        self.entries: list[Entry] = []
        self.recompiles: list[Recompile] = []
        self.fallbacks: list[str] = []
        self.warmups = 0  # calls run eagerly to create state (an optimizer's first step)
        self._warned = False

    # --- guards --------------------------------------------------------------------------------
    def _state(self):
        if self.module is None:
            return []
        params = [(n, t, "param") for n, t in self.module.named_parameters()]
        return params + [(n, t, "buffer") for n, t in self.module.named_buffers()]

    def guards_for(self, arguments) -> dict:
        leaves, spec, paths = pytree.flatten(arguments)
        guards = {"grad_mode": autograd.is_grad_enabled(), "arguments": spec}
        for path, t in zip(paths, leaves):
            guards[f"{path}.shape"] = tuple(t.shape)
            guards[f"{path}.dtype"] = t.dtype
            guards[f"{path}.device"] = str(t.device)
            guards[f"{path}.requires_grad"] = t.requires_grad
            if t.requires_grad:
                guards[f"{path}.grad is None"] = t._grad is None
        # Arguments that share memory (the same tensor passed twice) trace differently: an
        # in-place update of one is seen through the other.
        guards["argument aliasing"] = tuple((i, j) for i in range(len(leaves)) for j in range(i)
                                             if np.may_share_memory(leaves[i]._data, leaves[j]._data))
        if self.module is not None:
            for name, m in self.module.named_modules():
                guards[f"{name or 'self'}.training"] = m.training
            for name, t, _ in self._state():
                guards[f"self.{name}"] = (id(t), tuple(t.shape), t.dtype, str(t.device), t.requires_grad)
        return guards

    def _failed_guard(self, entry, guards, arguments):
        return next(self._failed_guards(entry, guards, arguments), None)

    def _failed_guards(self, entry, guards, arguments):
        """The guards of `entry` that fail for this call, in order (lazily)."""
        structure_changed = False
        for key, old in entry.guards.items():
            new = guards.get(key)
            if new != old:
                structure_changed |= key == "arguments"
                yield Recompile(key, old, new)
        if entry.value_guards and not structure_changed:  # else the argument names may not match
            leaves, _, _ = pytree.flatten(arguments)
            live = dict(entry.captured.live_inputs, **dict(zip(entry.captured.arg_names, leaves)))
            for name, values in entry.value_guards.items():
                now = live[name]._data.tolist()
                if now != values:
                    yield Recompile(f"values of {name}", values, now)
        for label, read, value in entry.captured.guards if entry.captured else ():
            now = read()
            if now != value:
                yield Recompile(label, value, now)

    # --- calling -------------------------------------------------------------------------------
    def invoke(self, arguments):
        bound = inspect.BoundArguments(self.signature, arguments)
        return self.fn(*bound.args, **bound.kwargs)

    def __call__(self, *args, **kwargs):
        arguments = dict(self.signature.bind(*args, **kwargs).arguments)
        guards = self.guards_for(arguments)
        for entry in self.entries:
            if self._failed_guard(entry, guards, arguments) is None:
                return self._run(entry, arguments)
        failure = None
        if self.entries:  # explained against the closest entry: fewest failed guards, newest on ties
            failure = min((list(self._failed_guards(e, guards, arguments)) for e in reversed(self.entries)),
                          key=len)[0]
            self.recompiles.append(failure)
        if len(self.entries) >= self.options.recompile_limit:
            message = (f"tracefuse.compile: recompile limit ({self.options.recompile_limit}) reached for "
                       f"{_name(self.fn)}; last {failure}")
            return self._fall_back(message, arguments, guards)
        rng_state = random.get_state()
        try:
            state = self._state()
            captured = capture(self.invoke, arguments, state, self._scopes())
            self._check_state_kept(state)
        except WarmupRequired:
            random.set_state(rng_state)
            self.warmups += 1
            return self.invoke(arguments)  # creates the state; the next call is traced
        except TracingError as exc:
            random.set_state(rng_state)
            return self._fall_back(str(exc), arguments, guards)
        random.set_state(rng_state)  # tracing drew random numbers; the call itself draws them again
        captured.backend = _backend_for(captured.forward, self.options.backend)
        entry = Entry(guards, captured.value_guards, captured)
        self.entries.append(entry)
        result = self._run(entry, arguments)
        dump.maybe_dump(self, entry)  # after the first run: the kernels it generated are known
        return result

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

    def _run(self, entry, arguments):
        if entry.captured is None:
            return self.invoke(arguments)
        leaves, _, _ = pytree.flatten(arguments)
        return runner.run(entry.captured, leaves)

    def _fall_back(self, message, arguments, guards):
        if self.options.fallback == "error":
            raise TracingError(message)
        self.fallbacks.append(message)
        if not self._warned:
            warnings.warn(f"{message}\ntracefuse.compile: running {_name(self.fn)} eagerly (fallback='eager')",
                          stacklevel=3)
            self._warned = True
        self.entries.append(Entry(guards, {}, None, message))
        return self.invoke(arguments)

    def _scopes(self):
        if self.module is None:
            return {}
        return {id(m): name for name, m in self.module.named_modules(remove_duplicate=False)}


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
    if dynamic:
        raise ValueError("tracefuse.compile: dynamic=True (symbolic batch and sequence sizes) is not supported "
                         "yet; each new shape is traced once and cached")
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
        return _compile_module_class(obj, opts)
    if callable(obj):
        compiled = CompiledCallable(obj, None, opts)
        wrapper = functools.wraps(obj)(lambda *a, **k: compiled(*a, **k))
        wrapper._tracefuse_compiled = compiled
        return wrapper
    raise TypeError(f"tracefuse.compile expects a Module, a Module class or a function, got {type(obj).__name__}")


_MODULE_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_call(self, *args, **kwargs):
    compiled = _MODULE_CACHES.get(self)
    if compiled is None:
        from ..nn import Module

        compiled = CompiledCallable(functools.partial(Module.__call__, self), self, self._tracefuse_options,
                                    signature_of=self.forward)
        _MODULE_CACHES[self] = compiled
    return compiled(*args, **kwargs)


def _compile_module(module, opts):
    """A view of `module` (same __dict__, so the same state) whose calls run compiled."""
    base = type(module)
    cls = type(base.__name__, (base,), {"__call__": _compiled_call, "_tracefuse_options": opts,
                                        "__module__": base.__module__, "__qualname__": base.__qualname__})
    compiled = object.__new__(cls)
    object.__setattr__(compiled, "__dict__", module.__dict__)
    return compiled


def _compile_module_class(cls, opts):
    return type(cls.__name__, (cls,), {"__call__": _compiled_call, "_tracefuse_options": opts,
                                        "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def compiled_callable(obj) -> CompiledCallable | None:
    """The cache behind a compiled module or function (None before a compiled module's first call)."""
    found = getattr(obj, "_tracefuse_compiled", None)
    if found is not None:
        return found
    try:
        return _MODULE_CACHES.get(obj)
    except TypeError:
        return None
