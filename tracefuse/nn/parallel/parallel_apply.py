"""`parallel_apply(modules, inputs, kwargs, devices)`: call each module on its inputs, one Python
thread per device, as torch.nn.parallel.parallel_apply.

Each thread makes its device current (so `cuda` means that device inside the replica) and runs in
the caller's grad mode. The results come back in device order; an exception raised in a replica
is raised again in the caller, its message naming the replica and the device and carrying the
original traceback (PyTorch's ExceptionWrapper).
"""
from __future__ import annotations

import sys
import threading
import traceback

from ... import autograd
from ...device import device as _device
from ...tensor import Tensor
from ._utils import available_device_count, device_guard, get_device, get_device_index

__all__ = ["get_a_var", "parallel_apply"]


class KeyErrorMessage(str):
    """A KeyError message shown as is (KeyError would show the repr of its argument)."""

    def __repr__(self):
        return self


class ExceptionWrapper:
    """An exception caught in a worker thread (its type and formatted traceback), to raise again
    in the caller's thread."""

    def __init__(self, exc_info=None, where="in background"):
        # The traceback is formatted now: keeping exc_info would keep the worker's frames alive.
        if exc_info is None:
            exc_info = sys.exc_info()
        self.exc_type = exc_info[0]
        self.exc_msg = "".join(traceback.format_exception(*exc_info)) if exc_info[0] is not None else ""
        self.where = where

    def reraise(self):
        """Raise the wrapped exception in the current thread: "Caught ValueError in replica 1 on
        device 1.\\nOriginal Traceback ..."."""
        if self.exc_type is None:  # nothing was raised: the wrapper only reports where it failed
            raise RuntimeError(f"Error {self.where}")
        msg = f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.exc_msg}"
        if self.exc_type is KeyError:
            msg = KeyErrorMessage(msg)
        elif getattr(self.exc_type, "message", None):
            raise self.exc_type(message=msg)
        try:
            exception = self.exc_type(msg)
        except Exception:
            # An exception that cannot be built from one message: raise a RuntimeError instead.
            raise RuntimeError(msg) from None
        raise exception


def get_a_var(obj):
    """The first tensor found in `obj` (walking lists, tuples and dicts), else None."""
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for result in map(get_a_var, obj):
            if isinstance(result, Tensor):
                return result
    if isinstance(obj, dict):
        for result in map(get_a_var, obj.items()):
            if isinstance(result, Tensor):
                return result
    return None


def parallel_apply(modules, inputs, kwargs_tup=None, devices=None):
    """`[modules[i](*inputs[i], **kwargs_tup[i]) ...]`, each called in its own thread on
    `devices[i]` (default: the device of a tensor among its inputs). An input that is not a list or
    tuple is the module's one argument."""
    if len(modules) != len(inputs):
        raise AssertionError(
            f"The number of modules {len(modules)} is not equal to the number of inputs {len(inputs)}"
        )
    if kwargs_tup is not None:
        if len(modules) != len(kwargs_tup):
            raise AssertionError(
                f"The number of modules {len(modules)} is not equal to the number of kwargs_tup {len(kwargs_tup)}"
            )
    else:
        kwargs_tup = ({},) * len(modules)
    if devices is not None:
        if len(modules) != len(devices):
            raise AssertionError(
                f"The number of modules {len(modules)} is not equal to the number of devices {len(devices)}"
            )
    else:
        devices = [None] * len(modules)
    devices = [get_device_index(x, True) if x is not None else None for x in devices]
    if available_device_count() == 0:
        raise AssertionError("No available accelerator found.")
    lock = threading.Lock()
    results = {}
    grad_enabled = autograd.is_grad_enabled()

    def _worker(i, module, input, kwargs, device=None):
        autograd.set_grad_enabled(grad_enabled)  # grad mode is per thread
        if device is None:
            t = get_a_var(input)
            if t is None:
                with lock:
                    results[i] = ExceptionWrapper(
                        exc_info=(None, None, None),
                        where=f"in replica {i}, no device was provided and no tensor input was found; "
                        "device cannot be resolved",
                    )
                return
            device = get_device(t)
        if isinstance(device, _device):
            device = device.index
        try:
            with device_guard(device):
                # This also avoids slicing `input` by accident when it is a tensor.
                if not isinstance(input, (list, tuple)):
                    input = (input,)
                output = module(*input, **kwargs)
            with lock:
                results[i] = output
        except Exception:
            with lock:
                results[i] = ExceptionWrapper(where=f"in replica {i} on device {device}")

    if len(modules) > 1:
        threads = [threading.Thread(target=_worker, args=(i, module, input, kwargs, device))
                   for i, (module, input, kwargs, device) in enumerate(zip(modules, inputs, kwargs_tup, devices))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        _worker(0, modules[0], inputs[0], kwargs_tup[0], devices[0])

    outputs = []
    for i in range(len(inputs)):
        output = results[i]
        if isinstance(output, ExceptionWrapper):
            output.reraise()
        outputs.append(output)
    return outputs
