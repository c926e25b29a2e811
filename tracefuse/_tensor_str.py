"""Tensor `repr` text, reproducing PyTorch's torch/_tensor_str.py character for character.

Users compare printed tensors with PyTorch's, so this follows PyTorch's algorithm (with its
default print options) rather than NumPy's printer. Only numpy, ml_dtypes and the stdlib are used.
"""
from __future__ import annotations

import math

import numpy as np

PRECISION = 4
THRESHOLD = 1000
EDGEITEMS = 3
LINEWIDTH = 80

_FLOAT_NAMES = frozenset({"float16", "bfloat16", "float32", "float64"})


class _Formatter:
    """Chooses one number format and width for every element, as PyTorch's `_Formatter` does."""

    def __init__(self, values: np.ndarray, floating: bool):
        self.floating = floating
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = values.reshape(-1)
        if not floating:
            self.max_width = max([1] + [len(str(v)) for v in flat.tolist()])
            return
        nonzero_finite = flat[np.isfinite(flat) & (flat != 0)]
        if nonzero_finite.size == 0:
            return
        magnitude = np.abs(nonzero_finite)
        # Python floats, so that hi / lo overflows quietly to inf as in PyTorch.
        lo, hi = float(magnitude.min()), float(magnitude.max())
        self.int_mode = bool(np.all(nonzero_finite == np.ceil(nonzero_finite)))
        self.sci_mode = bool(hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4)
        if self.sci_mode:
            spec, extra = f".{PRECISION}e", 0
        elif self.int_mode:
            spec, extra = ".0f", 1  # room for the trailing "." that marks a float
        else:
            spec, extra = f".{PRECISION}f", 0
        self.max_width = max(len(format(v, spec)) + extra for v in nonzero_finite.tolist())

    def format(self, value) -> str:
        if not self.floating:
            text = str(value)
        elif self.sci_mode:
            text = format(value, f"{self.max_width}.{PRECISION}e")
        elif self.int_mode:
            text = format(value, ".0f")
            if math.isfinite(value):
                text += "."
        else:
            text = format(value, f".{PRECISION}f")
        return text.rjust(self.max_width)


def _summarized(values: np.ndarray) -> np.ndarray:
    """Keep only the edge items of every long axis: the formatter must ignore hidden elements."""
    for axis, size in enumerate(values.shape):
        if size > 2 * EDGEITEMS:
            keep = np.r_[0:EDGEITEMS, size - EDGEITEMS:size]
            values = np.take(values, keep, axis=axis)
    return values


def _vector_str(values: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    """One bracketed row, wrapped so that each line fits in LINEWIDTH."""
    per_line = max(1, (LINEWIDTH - indent) // (fmt.max_width + 2))
    if summarize and values.shape[0] > 2 * EDGEITEMS:
        data = ([fmt.format(v) for v in values[:EDGEITEMS].tolist()] + [" ..."]
                + [fmt.format(v) for v in values[-EDGEITEMS:].tolist()])
    else:
        data = [fmt.format(v) for v in values.tolist()]
    lines = [", ".join(data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_str(values: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    """Recursive bracketed text; sub-blocks of an n-d tensor are separated by n - 2 blank lines."""
    if values.ndim == 0:
        return fmt.format(values.item())
    if values.ndim == 1:
        return _vector_str(values, indent, summarize, fmt)
    size = values.shape[0]
    if summarize and size > 2 * EDGEITEMS:
        rows = list(range(EDGEITEMS)) + [None] + list(range(size - EDGEITEMS, size))
    else:
        rows = list(range(size))
    slices = ["..." if i is None else _nested_str(values[i], indent + 1, summarize, fmt)
              for i in rows]
    return "[" + ("," + "\n" * (values.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def _body_str(values: np.ndarray, floating: bool, indent: int) -> str:
    summarize = values.size > THRESHOLD
    fmt = _Formatter(_summarized(values) if summarize else values, floating)
    return _nested_str(values, indent, summarize, fmt)


def _torch_len(suffix: str) -> int:
    """Width of the suffix as PyTorch spells it, so line breaks fall where PyTorch puts them."""
    return len(suffix.replace("tracefuse.", "torch."))


def _add_suffixes(text: str, suffixes: list[str], indent: int) -> str:
    """Append `, key=value` parts, moving one to a new line when it would pass LINEWIDTH.

    The "+ 1" (not "- 1") in the last-line length is PyTorch's own arithmetic, kept for exactness.
    """
    parts = [text]
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        width = _torch_len(suffix)
        if last_line_len + width + 2 > LINEWIDTH:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + width
        else:
            parts.append(", " + suffix)
            last_line_len += width + 2
    parts.append(")")
    return "".join(parts)


def tensor_repr(array: np.ndarray, dtype_name: str, *, default_float: str = "float32",
                device: str = "cpu", requires_grad: bool = False, grad_fn_name: str | None = None,
                prefix: str = "tensor") -> str:
    """PyTorch's `repr(tensor)` for the values in `array`, spelling dtypes `tracefuse.<name>`.

    `prefix` is the text before the opening bracket; continuation lines are indented to just
    past the "(" on its last line, so `"Parameter containing:\\ntensor"` also works.
    """
    array = np.asarray(array)
    floating = dtype_name in _FLOAT_NAMES
    # Half and bfloat16 are printed through exactly widened values, as PyTorch's item() does.
    values = array.astype(np.float64) if floating else array
    indent = len(prefix.rsplit("\n", 1)[-1]) + 1
    suffixes = []
    if device != "cpu":
        suffixes.append(f"device='{device}'")
    dtype_suffix = f"dtype=tracefuse.{dtype_name}"
    if values.size == 0:
        if values.ndim != 1:
            suffixes.append(f"size={tuple(values.shape)}")
        # With no elements to look at, only the default float dtype goes without saying.
        if dtype_name != default_float:
            suffixes.append(dtype_suffix)
        body = "[]"
    else:
        if dtype_name not in (default_float, "int64", "bool"):
            suffixes.append(dtype_suffix)
        body = _body_str(values, floating, indent)
    if grad_fn_name is not None:
        suffixes.append(f"grad_fn=<{grad_fn_name}>")
    elif requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + "(" + body, suffixes, indent)
