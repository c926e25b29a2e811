"""tracefuse.save / tracefuse.load: safetensors files (no pickle), round trips of every dtype and of
nested optimizer state, interoperability with the safetensors package, and corrupted files."""
from __future__ import annotations

import collections
import io
import json
import math
import re
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

import tracefuse
from tests.conftest import assert_same, to_torch

DTYPES = [tracefuse.bool, tracefuse.uint8, tracefuse.int8, tracefuse.int16, tracefuse.int32, tracefuse.int64,
          tracefuse.float16, tracefuse.bfloat16, tracefuse.float32, tracefuse.float64]


def _round_trip(obj, **kwargs):
    buffer = io.BytesIO()
    tracefuse.save(obj, buffer)
    buffer.seek(0)
    return tracefuse.load(buffer, **kwargs)


def _assert_equal(a, b):
    assert a.dtype is b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.numpy().reshape(-1).view(np.uint8), b.numpy().reshape(-1).view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3), (), (0, 4), (3, 1, 2)])
def test_every_dtype_round_trips_bit_for_bit(rng, dtype, shape):
    value = tracefuse.tensor(np.asarray(rng.standard_normal(shape) * 50).reshape(shape)).to(dtype)
    loaded = _round_trip({"x": value})
    assert list(loaded) == ["x"]
    _assert_equal(loaded["x"], value)
    assert loaded["x"]._data is not value._data


def test_paths_and_file_objects(tmp_path, rng):
    sd = {"w": tracefuse.randn(3, 2), "b": tracefuse.zeros(2, dtype=tracefuse.bfloat16)}
    for target in (tmp_path / "a.safetensors", str(tmp_path / "b.safetensors")):
        tracefuse.save(sd, target)
        for loaded in (tracefuse.load(target), tracefuse.load(open(target, "rb"))):
            assert list(loaded) == ["w", "b"]
            for k in sd:
                _assert_equal(loaded[k], sd[k])
    with open(tmp_path / "c.safetensors", "wb") as f:
        tracefuse.save(sd, f)
        assert not f.closed  # a caller's file object is left open


def test_loaded_tensors_are_writable_and_independent(rng):
    loaded = _round_trip({"a": tracefuse.ones(3), "b": tracefuse.ones(2)})
    loaded["a"].add_(1.0)
    np.testing.assert_array_equal(loaded["a"].numpy(), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(loaded["b"].numpy(), [1.0, 1.0])


def test_nested_optimizer_state_round_trips(rng):
    p = tracefuse.randn(3, 2, requires_grad=True)
    opt = tracefuse.optim.Adam([p], lr=0.01, amsgrad=True)
    p.grad = tracefuse.randn(3, 2)
    opt.step()
    state = {"model": collections.OrderedDict(w=p.detach()), "optim": opt.state_dict(),
             "epoch": 3, "best": -math.inf, "note": "ok", "flags": [True, None, 2.5], "lr_steps": (1, 2)}
    loaded = _round_trip(state)
    assert type(loaded["model"]) is collections.OrderedDict
    assert loaded["optim"]["param_groups"] == opt.state_dict()["param_groups"]
    assert loaded["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples
    assert list(loaded["optim"]["state"]) == [0]  # integer keys stay integers
    for name, value in opt.state_dict()["state"][0].items():
        _assert_equal(loaded["optim"]["state"][0][name], value)
    assert {k: loaded[k] for k in ("epoch", "best", "note", "flags", "lr_steps")} == \
        {"epoch": 3, "best": -math.inf, "note": "ok", "flags": [True, None, 2.5], "lr_steps": (1, 2)}


def test_shared_tensors_are_stored_once_and_stay_shared():
    t = tracefuse.arange(4.0)
    loaded = _round_trip({"encoder": {"embedding": t}, "decoder": {"embedding": t}})
    assert loaded["encoder"]["embedding"] is loaded["decoder"]["embedding"]


def test_non_contiguous_tensors_and_requires_grad():
    base = tracefuse.arange(12.0).reshape(3, 4)
    leaf = tracefuse.ones(2, requires_grad=True)
    loaded = _round_trip({"t": base.t(), "leaf": leaf, "top": [base[:, 1]]})
    _assert_equal(loaded["t"], base.t().contiguous())
    _assert_equal(loaded["top"][0], base[:, 1].contiguous())
    assert loaded["leaf"].requires_grad and loaded["leaf"].is_leaf and not loaded["t"].requires_grad


def test_a_single_tensor_and_map_location(rng):
    t = tracefuse.randn(2, 2)
    _assert_equal(_round_trip(t), t)
    _assert_equal(_round_trip({"t": t}, map_location="cpu")["t"], t)
    _assert_equal(_round_trip([t], map_location=tracefuse.device("cpu"))[0], t)


def test_files_are_standard_safetensors(rng):
    sd = {"layer.weight": tracefuse.randn(4, 3), "layer.bias": tracefuse.randn(4).bfloat16(),
          "steps": tracefuse.tensor([1, 2], dtype=tracefuse.int64)}
    buffer = io.BytesIO()
    tracefuse.save(sd, buffer)
    theirs = safetensors.torch.load(buffer.getvalue())
    assert set(theirs) == set(sd)
    for k, v in sd.items():
        assert_same(v, theirs[k], rtol=0, atol=0)
    nested = io.BytesIO()
    tracefuse.save({"state": {0: {"exp_avg": sd["layer.bias"]}}}, nested)
    assert list(safetensors.torch.load(nested.getvalue())) == ["state.0.exp_avg"]


def test_loads_files_written_by_safetensors(tmp_path, rng):
    theirs = {"a": torch.randn(2, 3, dtype=torch.float64), "b": torch.randn(5).bfloat16(),
              "c": torch.tensor([True, False]), "d": torch.zeros(0, 2, dtype=torch.int16)}
    safetensors.torch.save_file(theirs, tmp_path / "t.safetensors", metadata={"format": "pt"})
    ours = tracefuse.load(tmp_path / "t.safetensors")
    assert set(ours) == set(theirs)
    for k in theirs:
        assert_same(ours[k], theirs[k], rtol=0, atol=0)


def test_colliding_flat_names_stay_distinct():
    a, b = tracefuse.ones(1), tracefuse.zeros(1)
    loaded = _round_trip({"x.y": a, "x": {"y": b}})
    _assert_equal(loaded["x.y"], a)
    _assert_equal(loaded["x"]["y"], b)


@pytest.mark.parametrize("obj,type_name", [
    ({"a": object()}, "object"),
    ({"a": np.zeros(3)}, "numpy.ndarray"),
    ([{1, 2}], "set"),
    ({"a": np.float32(1.0)}, "numpy.float32"),
])
def test_unsupported_objects_raise_type_error(obj, type_name):
    with pytest.raises(TypeError, match=rf"tracefuse\.save: cannot save an object of type {re.escape(type_name)};"):
        tracefuse.save(obj, io.BytesIO())


def test_unsupported_dict_keys_raise_type_error():
    with pytest.raises(TypeError, match=re.escape("dict keys must be str, int, float, bool or None, got a key of "
                                                  "type tuple")):
        tracefuse.save({(1, 2): tracefuse.ones(1)}, io.BytesIO())


# --- corrupted files ---------------------------------------------------------------------------
def _file_bytes():
    buffer = io.BytesIO()
    tracefuse.save({"model": {"w": tracefuse.randn(3, 4), "b": tracefuse.ones(4, dtype=tracefuse.bfloat16)},
                    "optim": {"state": {0: {"step": tracefuse.tensor(2.0)}}, "param_groups": [{"lr": 0.1}]}},
                   buffer)
    return buffer.getvalue()


def _split(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header, data):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _assert_invalid(blob, reason, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    prefix = f"tracefuse.load: {str(path)!r} is not a valid tracefuse/safetensors file: "
    with pytest.raises(RuntimeError, match=re.escape(prefix) + ".*" + reason):
        tracefuse.load(path)
    with pytest.raises(RuntimeError, match="is not a valid tracefuse/safetensors file: .*" + reason):
        tracefuse.load(io.BytesIO(blob))


def test_truncated_files(tmp_path):
    blob = _file_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    for size in (0, 5, 8, 9, 8 + n // 2, 8 + n - 1):
        _assert_invalid(blob[:size], "(the file is|the header length)", tmp_path)
    for size in (8 + n, 8 + n + 7, len(blob) - 1):
        _assert_invalid(blob[:size], "the tensors cover", tmp_path)
    _assert_invalid(blob + b"\0", "the tensors cover", tmp_path)


@pytest.mark.parametrize("length", [2 ** 64 - 1, 2 ** 40, 10 ** 8 + 1])
def test_huge_header_length(tmp_path, length):
    blob = _file_bytes()
    _assert_invalid(struct.pack("<Q", length) + blob[8:], "the header length", tmp_path)


def test_every_flipped_header_byte_is_detected(tmp_path):
    blob = _file_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    for i in range(8, 8 + n, 7):
        flipped = bytearray(blob)
        flipped[i] ^= 0xFF
        _assert_invalid(bytes(flipped), "the header is not valid JSON", tmp_path)


def _tampered(edit):
    """The test file after `edit(header, data)`, which changes the header in place and may return new data."""
    header, data = _split(_file_bytes())
    data = edit(header, data) or data
    return _join(header, data)


def _drop_shape(header, data):
    del header[_first(header)]["shape"]


def _add_unused_tensor(header, data):
    header["extra"] = {"dtype": "U8", "shape": [8], "data_offsets": [len(data), len(data) + 8]}
    return data + bytes(8)


def _first(header):
    return next(k for k in header if k != "__metadata__")


TAMPERING = {
    "bad dtype": (lambda h, d: h[_first(h)].update(dtype="F128"), "has unsupported dtype 'F128'"),
    "shape and bytes disagree": (lambda h, d: h[_first(h)].update(shape=[99]), "needs 396 bytes"),
    "negative shape": (lambda h, d: h[_first(h)].update(shape=[-3, -4]), "invalid shape"),
    "offsets reversed": (lambda h, d: h[_first(h)].update(data_offsets=[48, 0]), "invalid data_offsets"),
    "offsets overlap": (lambda h, d: h["model.b"].update(data_offsets=[40, 48]), "starts at byte 40"),
    "missing field": (_drop_shape, "must have exactly"),
    "extra field": (lambda h, d: h[_first(h)].update(crc=1), "must have exactly"),
    "extra data": (lambda h, d: d + b"\0" * 8, "the tensors cover"),
    "metadata not strings": (lambda h, d: h["__metadata__"].update(format=1), "__metadata__ must map"),
    "structure not JSON": (lambda h, d: h["__metadata__"].update(tracefuse="{oops"), "the container structure"),
    "structure refers to a missing tensor": (
        lambda h, d: h["__metadata__"].update(tracefuse=h["__metadata__"]["tracefuse"].replace("model.w", "nope")),
        "refers to a tensor 'nope'"),
    "unused tensor": (_add_unused_tensor, "does not use: \\['extra'\\]"),
    "malformed node": (lambda h, d: h["__metadata__"].update(tracefuse='{"pickle": "os.system"}'), "malformed"),
    "requires_grad not a bool": (lambda h, d: h["__metadata__"].update(
        tracefuse='{"tensor": "model.w", "requires_grad": "yes"}'), "invalid requires_grad"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_headers(tmp_path, case):
    edit, reason = TAMPERING[case]
    _assert_invalid(_tampered(edit), reason, tmp_path)


def test_malformed_header_json(tmp_path):
    for text, reason in [(b"[1, 2]", "the header is not a JSON object"), (b"{\"a\": 1", "not valid JSON"),
                         (b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "a": 1}', "more than once")]:
        _assert_invalid(struct.pack("<Q", len(text)) + text, reason, tmp_path)


def test_torch_oracle_helper_round_trip(rng):
    """A loaded state dict feeds torch unchanged (the layout users move between the libraries)."""
    w = tracefuse.tensor(rng.standard_normal((2, 3)))
    loaded = _round_trip({"w": w})
    assert_same(loaded["w"], to_torch(w), rtol=0, atol=0)
