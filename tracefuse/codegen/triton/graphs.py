"""CUDA graphs for compiled calls (`compile(..., options={"cuda_graphs": True})`): the kernels of a
compiled graph are captured once and replayed, so a call costs one graph launch instead of one
host launch per kernel.

The first call runs normally (it builds and loads every kernel). The second captures the call's
kernels on its device (`backend.capture`: nothing runs while recording; memory allocated
meanwhile belongs to the graph) and replays them. A replay reuses the captured memory, so:
- module state (parameters, buffers, lifted tensors) is read and updated in place where it
  lies; if one of them has moved to new memory since the capture, the call is captured again;
- every other input (the call's arguments, gradients) is copied into a buffer of the graph
  before the replay; an input the graph updates is written back by the runner as usual;
- results are copied out of the graph's memory, since the next replay overwrites it.
Graphs that cannot be replayed faithfully run normally, with the reason kept in `disabled`:
random ops (a replay would draw the same numbers), CPU tensors among the inputs (their values
are baked into the kernels' arguments), and calls that copy to or from the host or between
devices (they cannot be recorded).
"""
from __future__ import annotations

from ...ir import ops
from ...ir.graph import PLACEHOLDER
from ...runtime import devices
from ...runtime.backend import CaptureError
from ...tensor import Tensor
from . import copy_into, executor
from .launch import recording


class GraphReplay:
    """The CUDA graph of one compiled graph, for calls whose module state is `stable`."""

    def __init__(self, graph, stable: set):
        self.graph, self.stable = graph, stable
        self.calls = 0
        self.captured = None  # the backend's graph
        self.kernels: list = []  # the LaunchRecords the graph holds (what explain shows)
        self.static: dict = {}  # input name -> the tensor the captured kernels read
        self.outputs: list = []
        self.disabled = _unreplayable(graph)

    def run(self, inputs: dict, updates: dict):
        self.calls += 1
        if self.disabled or self.calls == 1:
            return executor.run(self.graph, inputs, updates)
        device = _device(inputs)
        if device is None:
            self.disabled = "its inputs are not all on one CUDA device"
            return executor.run(self.graph, inputs, updates)
        if self.captured is None or self._moved(inputs):
            try:
                self._capture(inputs, updates, device)
            except Exception as exc:
                reason = _capture_error(exc)
                if reason is None:
                    raise
                self.disabled, self.captured = str(reason), None
                return executor.run(self.graph, inputs, updates)
        else:
            self._copy_in(inputs, device)
        self.captured.replay()
        return [self._result(o, device) for o in self.outputs]

    def _moved(self, inputs):
        return any(inputs[name] is not None and inputs[name]._data is not self.static[name]._data
                   for name in self.stable if name in inputs)

    def _capture(self, inputs, updates, device):
        self.static = {name: t if (name in self.stable or t is None) else _buffer_like(t, device)
                       for name, t in inputs.items()}
        self._copy_in(inputs, device)
        backend = devices.backend(device)
        with backend.capture(device) as captured, recording() as kernels:
            self.outputs = executor.run(self.graph, self.static, updates)
        self.captured, self.kernels = captured, kernels

    def describe(self) -> str:
        """What explain says of it."""
        if self.disabled:
            return f"CUDA graph not used: {self.disabled}"
        if self.captured is None:
            return "CUDA graph: captured on the next call"
        return f"replayed as one CUDA graph of {len(self.kernels)} kernels"

    def _copy_in(self, inputs, device):
        for name, t in inputs.items():
            if t is not None and name not in self.stable:
                copy_into(device, self.static[name]._data, t._data)

    def _result(self, output, device):
        """A fresh copy of a result in the graph's memory; module state updated in place as is."""
        if not isinstance(output, Tensor) or any(output._data is self.static[n]._data for n in self.stable
                                                 if self.static.get(n) is not None):
            return output
        return Tensor._wrap(output._memory_copy(), output.dtype, device)


def _capture_error(exc):
    """The CaptureError behind `exc` (the graph interpreter wraps what a node raises), or None."""
    while exc is not None and not isinstance(exc, CaptureError):
        exc = exc.__cause__
    return exc


def _buffer_like(t, device):
    return Tensor._wrap(devices.backend(device).empty(t.shape, t._data.dtype, device), t.dtype, device)


def _unreplayable(graph) -> str | None:
    for node in graph.nodes:
        if node.op != PLACEHOLDER and ops.get(node.op).random:
            return f"it draws random numbers ({node.op}), which a replay would repeat"
    return None


def _device(inputs):
    """The one CUDA device of the inputs, or None (CPU tensors among them, or several devices)."""
    found = {t.device for t in inputs.values() if t is not None}
    if len(found) != 1:
        return None
    (device,) = found
    return device if device.type == "cuda" else None
