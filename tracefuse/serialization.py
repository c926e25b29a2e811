"""`tracefuse.save` / `tracefuse.load`: state dicts in the safetensors format, never pickle.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw tensor bytes. Nested containers (an optimizer's state dict)
are flattened to one tensor per dotted path; the container tree itself, with the plain values
in it (learning rates, step counts, betas), is stored as JSON in the header's `__metadata__`.
Loading validates the whole header against the file before reading any tensor, so a truncated
or tampered file raises one clear error and loads nothing. Files written by other safetensors
writers load as a flat dict of tensors, and tracefuse's files load in any safetensors reader.
"""
from __future__ import annotations

import collections
import io
import json
import math
import os
import struct
import sys

import numpy as np

from . import dtypes
from .creation import from_numpy
from .device import as_device
from .tensor import Tensor

__all__ = ["load", "save"]

_CODES = {dtypes.bool_: "BOOL", dtypes.uint8: "U8", dtypes.int8: "I8", dtypes.int16: "I16",
          dtypes.int32: "I32", dtypes.int64: "I64", dtypes.float16: "F16", dtypes.bfloat16: "BF16",
          dtypes.float32: "F32", dtypes.float64: "F64"}
_DTYPES = {code: d for d, code in _CODES.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit
_META_KEY = "tracefuse"
_SCALARS = (str, int, float, bool, type(None))


# --- save -----------------------------------------------------------------------------------
def save(obj, f):
    """Write `obj` (tensors in dicts, lists and tuples, with str/int/float/bool/None values) to `f`,
    a path or a binary file object. A tensor that appears twice is stored once."""
    tensors = {}  # key -> array
    keys_by_id = {}
    tree = _encode(obj, (), tensors, keys_by_id)
    header, offset = {}, 0
    for key, array in tensors.items():
        header[key] = {"dtype": _CODES[dtypes.from_numpy_dtype(array.dtype)], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = {"format": "tracefuse", _META_KEY: json.dumps(tree, separators=(",", ":"))}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # pad so the tensor data starts 8-byte aligned
    with _open(f, "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            out.write(_little_endian(array).reshape(-1).view(np.uint8).data)


def _encode(obj, path, tensors, keys_by_id):
    """The JSON tree of `obj`; its tensors go into `tensors` under unique dotted-path keys."""
    if isinstance(obj, Tensor):
        key = keys_by_id.get(id(obj))
        if key is None:
            key = _unique(".".join(path) or "tensor", tensors)
            tensors[key] = np.asarray(obj.detach().cpu().numpy(), order="C")  # keeps 0-dim (ascontiguousarray doesn't)
            keys_by_id[id(obj)] = key
        return {"tensor": key, "requires_grad": True} if obj.requires_grad else {"tensor": key}
    if isinstance(obj, collections.abc.Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, _SCALARS):
                raise TypeError(f"tracefuse.save: dict keys must be str, int, float, bool or None, "
                                f"got a key of type {_qualname(k)}")
            items.append([k, _encode(v, path + (str(k),), tensors, keys_by_id)])
        return {"odict" if isinstance(obj, collections.OrderedDict) else "dict": items}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_encode(v, path + (str(i),), tensors, keys_by_id) for i, v in enumerate(obj)]}
    if isinstance(obj, _SCALARS):
        return {"value": obj}
    raise TypeError(f"tracefuse.save: cannot save an object of type {_qualname(obj)}; the safetensors format "
                    "holds tensors in dicts, lists and tuples, with str, int, float, bool and None values")


def _unique(key, taken):
    candidate, n = key, 1
    while candidate in taken:
        candidate, n = f"{key}#{n}", n + 1
    return candidate


def _qualname(obj):
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _little_endian(array):
    return array.byteswap() if sys.byteorder == "big" else array


# --- load -----------------------------------------------------------------------------------
class _Invalid(Exception):
    """Raised inside the loader; `load` turns it into one RuntimeError naming the file."""


def load(f, map_location=None):
    """Read what `save` wrote (or any safetensors file) from a path or binary file object.

    Tensors are read into host memory; `map_location` (a device or its name) moves them there.
    """
    device = as_device(map_location) if map_location is not None else None
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
    with _open(f, "rb") as src:
        try:
            entries, tree = _read_header(src)
            arrays = {key: _read_tensor(src, *entry) for key, entry in entries}
            result = _decode(tree, arrays) if tree is not None else arrays
        except _Invalid as e:
            raise RuntimeError(f"tracefuse.load: {name!r} is not a valid tracefuse/safetensors file: {e}") from None
    return result if device is None else _to_device(result, device)


def _read_header(src):
    """Validated (key, (dtype, shape, nbytes)) entries in data order, and the container tree."""
    start = src.tell()
    size = src.seek(0, io.SEEK_END) - start
    src.seek(start)
    if size < 8:
        raise _Invalid(f"the file is {size} bytes long, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", src.read(8))
    if n > size - 8:
        raise _Invalid(f"the header length {n} exceeds the {size - 8} bytes that follow it")
    if n > _MAX_HEADER:
        raise _Invalid(f"the header length {n} exceeds the safetensors limit of {_MAX_HEADER} bytes")
    try:
        header = json.loads(src.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise _Invalid(f"the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _Invalid("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Invalid("__metadata__ must map names to strings")
    entries = sorted((_check_entry(key, info) for key, info in header.items()), key=lambda e: e[1])
    end = 0
    for key, begin, stop, entry in entries:
        if begin != end:
            raise _Invalid(f"tensor {key!r} starts at byte {begin} of the data, expected {end} "
                           "(tensors must tile the data without gaps or overlaps)")
        end = stop
    if end != size - 8 - n:
        raise _Invalid(f"the tensors cover {end} bytes but the file holds {size - 8 - n} bytes of data")
    tree = None
    if _META_KEY in metadata:
        try:
            tree = json.loads(metadata[_META_KEY])
        except ValueError as e:
            raise _Invalid(f"the container structure is not valid JSON ({e})") from None
    return [(key, entry) for key, _, _, entry in entries], tree


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Invalid(f"the header names {sorted(k for k in set(keys) if keys.count(k) > 1)} more than once")
    return dict(pairs)


def _check_entry(key, info):
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _Invalid(f"tensor {key!r} must have exactly 'dtype', 'shape' and 'data_offsets'")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise _Invalid(f"tensor {key!r} has unsupported dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise _Invalid(f"tensor {key!r} has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise _Invalid(f"tensor {key!r} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise _Invalid(f"tensor {key!r} of dtype {info['dtype']} and shape {shape} needs {nbytes} bytes, "
                       f"but its data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return key, offsets[0], offsets[1], (dtype, tuple(shape), nbytes)


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read_tensor(src, dtype, shape, nbytes):
    array = np.empty(shape, dtype=dtype.np_type)
    if nbytes and src.readinto(array.reshape(-1).view(np.uint8)) != nbytes:
        raise _Invalid("the file ended while reading tensor data")
    return from_numpy(_little_endian(array))


def _decode(node, arrays):
    """Rebuild the container tree; every stored tensor must be used and every reference must exist."""
    unused = set(arrays)

    def walk(node):
        if isinstance(node, dict) and "tensor" in node and set(node) <= {"tensor", "requires_grad"}:
            return tensor(node["tensor"], node.get("requires_grad", False))
        if not isinstance(node, dict) or len(node) != 1:
            raise _Invalid(f"malformed container structure node {node!r}")
        kind, value = next(iter(node.items()))
        if kind == "value" and isinstance(value, _SCALARS):
            return value
        if kind in ("list", "tuple") and isinstance(value, list):
            items = [walk(v) for v in value]
            return items if kind == "list" else tuple(items)
        if kind in ("dict", "odict") and isinstance(value, list):
            if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], _SCALARS) for kv in value):
                raise _Invalid("malformed dict items in the container structure")
            return (collections.OrderedDict if kind == "odict" else dict)((k, walk(v)) for k, v in value)
        raise _Invalid(f"malformed container structure node {node!r}")

    def tensor(key, requires_grad):
        if not isinstance(key, str) or key not in arrays:
            raise _Invalid(f"the structure refers to a tensor {key!r} that the file does not hold")
        unused.discard(key)
        t = arrays[key]
        if requires_grad is not False and not (requires_grad is True and t.is_floating_point()):
            raise _Invalid(f"invalid requires_grad {requires_grad!r} for tensor {key!r}")
        return t.requires_grad_() if requires_grad else t

    result = walk(node)
    if unused:
        raise _Invalid(f"the file holds tensors the structure does not use: {sorted(unused)}")
    return result


def _to_device(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class _open:
    """A path opened for the duration of a `with`, or a caller's file object left open."""

    def __init__(self, f, mode):
        self.f, self.mode, self.owned = f, mode, isinstance(f, (str, os.PathLike))

    def __enter__(self):
        if self.owned:
            self.file = open(self.f, self.mode)
        else:
            self.file = self.f if self.mode == "wb" or self.f.seekable() else io.BytesIO(self.f.read())
        return self.file

    def __exit__(self, *exc):
        if self.owned:
            self.file.close()
