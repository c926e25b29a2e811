"""Collective copies between devices, as torch.nn.parallel.comm: broadcast a tensor to several
devices, sum tensors from several devices onto one, scatter a tensor in chunks and gather chunks
back into one tensor.

Every copy is a `to(device)`, which autograd records (its gradient is copied back to the source
device), and a gather is a concatenation on the destination: so the results are differentiable,
and a gradient that reaches them flows back to the tensors they came from. The `*_coalesced`
variants copy whole lists; unlike PyTorch, which packs small tensors into one buffer to save
synchronizations, each tensor is copied on its own (the runtime queues them on the same stream).
"""
from __future__ import annotations

import warnings

from ...autograd import no_grad
from ...device import CPU
from ...functions import cat
from ...tensor import Tensor, _normalize_dim
from ._utils import cuda_device, get_device, get_device_index

__all__ = ["broadcast", "broadcast_coalesced", "reduce_add", "reduce_add_coalesced", "scatter", "gather"]


def broadcast(tensor, devices=None, *, out=None):
    """Copies of `tensor` (on the CPU or a GPU) on each of `devices`; the copy for the device the
    tensor is on is the tensor itself. With `out`, the tensors are copied into `out`'s tensors."""
    if not ((devices is None) ^ (out is None)):
        raise RuntimeError(
            f"Exactly one of 'devices' and 'out' must be specified, but got devices={devices} and out={out}"
        )
    if out is not None:
        for i, o in enumerate(out):
            if o.device.type != "cuda":
                raise RuntimeError(f"Expected all output tensors to be CUDA tensors, but output tensor at index {i} "
                                   f"has device '{o.device}'")
            if o.shape != tensor.shape:
                raise RuntimeError(f"Expected all output tensors to have same shape as the source tensor "
                                   f"{list(tensor.shape)}, but output tensor at index {i} has shape {list(o.shape)}")
            o.copy_(tensor)
        return tuple(out)
    devices = [get_device_index(d) for d in devices]
    if tensor.device.type == "cuda" and get_device(tensor) != devices[0]:
        raise RuntimeError("device of broadcasted tensor must appear as the first on devices list")
    return tuple(tensor.to(cuda_device(d)) for d in devices)


def broadcast_coalesced(tensors, devices, buffer_size=10485760):
    """Copies of each of `tensors` (all on `devices[0]`) on each device: a list per device, the
    first holding `tensors` themselves. Like PyTorch's, the copies are detached."""
    devices = [get_device_index(d) for d in devices]
    tensors = list(tensors)
    for t in tensors:
        if get_device(t) != devices[0]:
            raise RuntimeError(f"All tensors must be on devices[0]: {devices[0]}")
    outputs = [tensors]
    with no_grad():
        for d in devices[1:]:
            outputs.append([t.detach().to(cuda_device(d)) for t in tensors])
    return outputs


def reduce_add(inputs, destination=None):
    """The elementwise sum of `inputs` (same shape, each on a GPU), on `destination` (default: the
    current device), which must hold one of them."""
    destination = get_device_index(destination, optional=True)
    input_size = inputs[0].shape
    root_index = None  # the input that already is on the destination
    for i, inp in enumerate(inputs):
        if inp.device.type == "cpu":
            raise AssertionError(f"reduce_add expects all inputs to be on GPUs, but input {i} is on CPU")
        if get_device(inp) == destination:
            root_index = i
        if inp.shape != input_size:
            got = "x".join(str(x) for x in inp.shape)
            expected = "x".join(str(x) for x in input_size)
            raise ValueError(f"input {i} has invalid size: got {got}, but expected {expected}")
    if root_index is None:
        raise RuntimeError("reduce_add expects destination to be on the same GPU with one of the tensors")
    if len(inputs) == 1:
        return inputs[0]
    target = cuda_device(destination)
    nonroot = [t for i, t in enumerate(inputs) if i != root_index]
    result = inputs[root_index] + nonroot[0].to(target)
    for other in nonroot[1:]:
        result = result + other.to(target)
    return result


def reduce_add_coalesced(inputs, destination=None, buffer_size=10485760):
    """`inputs[device][k]` summed over devices for each k, on `destination`: a tuple, one per k."""
    per_tensor = list(zip(*inputs, strict=True))
    return tuple(reduce_add(list(group), destination) for group in per_tensor)


def scatter(tensor, devices=None, chunk_sizes=None, dim=0, streams=None, *, out=None):
    """`tensor` (on the CPU or a GPU) split along `dim` into chunks of `chunk_sizes` (default: equal
    chunks, as `Tensor.chunk`), chunk i copied to `devices[i]` (a chunk already there stays a view).
    A batch smaller than the device count gives fewer chunks. With `out`, the chunks are copied
    into `out`'s tensors and their sizes along `dim` give the split."""
    if out is not None:
        if devices is not None:
            raise RuntimeError(
                f"'devices' must not be specified when 'out' is specified, but got devices={devices}"
            )
        if chunk_sizes is not None:
            raise RuntimeError(
                f"'chunk_sizes' must not be specified when 'out' is specified, but got chunk_sizes={chunk_sizes}"
            )
        if not out:
            raise RuntimeError("Expected at least one output tensor to scatter to")
        for i, o in enumerate(out):
            if o.device.type != "cuda":
                raise RuntimeError(f"Expected all output tensors to be CUDA tensors, but output tensor at index {i} "
                                   f"has device '{o.device}'")
        d = _normalize_dim(dim, tensor.ndim)
        sizes = [o.shape[d] for o in out]
        if sum(sizes) != tensor.shape[d]:
            raise RuntimeError(f"Total size for output tensors along scatter dim ({sum(sizes)}) does not match "
                               f"the size of input tensor ({tensor.shape[d]}).")
        for o, piece in zip(out, tensor.split(sizes, d)):
            o.copy_(piece)
        return tuple(out)
    devices = [get_device_index(x) for x in devices]
    if not devices:
        raise RuntimeError("Expected at least one device to scatter to")
    if chunk_sizes is not None and len(chunk_sizes) != len(devices):
        raise RuntimeError(
            "Expected devices and chunk_sizes to be of same length, but got "
            f"len(devices) = {len(devices)} and len(chunk_sizes) = {len(chunk_sizes)}"
        )
    d = _normalize_dim(dim, tensor.ndim)
    chunks = tensor.split(list(chunk_sizes), d) if chunk_sizes is not None else tensor.chunk(len(devices), d)
    source = get_device(tensor)
    return tuple(c if index == source else c.to(cuda_device(index)) for c, index in zip(chunks, devices))


def gather(tensors, dim=0, destination=None, *, out=None):
    """`tensors` (on GPUs, equal in every dim but `dim`) concatenated along `dim` on `destination`
    (a GPU, or 'cpu'; default: the current device), in the dtype of the first. With `out`, the
    result is written into `out`."""
    tensors = list(tensors)
    if out is not None:
        if destination is not None:
            raise RuntimeError(
                f"'destination' must not be specified when 'out' is specified, but got destination={destination}"
            )
        return out.copy_(_concatenate(tensors, dim, out.device))
    if destination == -1:
        warnings.warn('Using -1 to represent CPU tensor is deprecated. Please use a device object or string '
                      'instead, e.g., "cpu".', FutureWarning, stacklevel=2)
    destination = get_device_index(destination, allow_cpu=True, optional=True)
    target = cuda_device(destination) if destination != -1 else CPU
    return _concatenate(tensors, dim, target)


def _concatenate(tensors, dim, target):
    """PyTorch's checks of a gather, then the pieces moved to `target` (in the first's dtype) and
    concatenated there."""
    if not tensors:
        raise RuntimeError("Expected at least one tensor to gather from")
    first = tensors[0]
    d = _normalize_dim(dim, first.ndim)
    expected = list(first.shape)
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"expected Tensor as element {i} in argument 0, but got {type(t).__name__}")
        if t.device.type != "cuda":
            raise RuntimeError(f"Expected all input tensors to be CUDA tensors, but tensor at index {i} was on "
                               f"{t.device}")
        if t.ndim != len(expected):
            raise RuntimeError(f"Expected all input tensors to have the same number of dimensions, but tensor at "
                               f"index {i}has {t.ndim} dimensions, (expected {len(expected)})")
        expected[d] = t.shape[d]
        if list(t.shape) != expected:
            raise RuntimeError(f"Input tensor at index {i} has invalid shape {list(t.shape)}, but expected {expected}")
    pieces = [t.to(target, first.dtype) for t in tensors]
    if len(pieces) == 1:  # a new tensor, as a gather always returns
        return pieces[0].clone() if pieces[0] is first else pieces[0]
    return cat(pieces, d)
