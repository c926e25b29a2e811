"""CPU benchmark: tracefuse (NumPy backend, compiled and eager) vs PyTorch CPU for nn.LSTM / nn.GRU.

Same shapes, dtype, weights and inputs on all sides, measured in turn in one process; the table
shows medians and the ratio compiled tracefuse / torch (lower is better). Shapes follow
BENCHMARKS.md's CPU section. Usage: python benchmarks/cpu_rnn.py [--repeats N] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import tracefuse
from tracefuse import nn

SHAPES = [(128, 32, 256), (128, 8, 512), (64, 64, 512)]  # (T, B, H), input size = H


def _pair(kind, hidden):
    ours = getattr(nn, kind)(hidden, hidden)
    theirs = getattr(torch.nn, kind)(hidden, hidden)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            getattr(theirs, name).copy_(torch.from_numpy(p.detach().numpy()))
    return ours, theirs


def _forward(model, x, lib):
    with lib.no_grad():
        return model(x)[0]


def _train_step(model, x, lib):
    model.zero_grad()
    out = model(x)[0]
    out.sum().backward()
    return out


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench(kind, shape, mode, repeats):
    """Median seconds of (compiled tracefuse, eager tracefuse, torch)."""
    T, B, H = shape
    eager, theirs = _pair(kind, H)
    compiled = tracefuse.compile(eager)
    data = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    x_ours, x_theirs = tracefuse.from_numpy(data), torch.from_numpy(data)
    step = _forward if mode == "forward" else _train_step
    expected = step(theirs, x_theirs, torch).detach().numpy()
    for model in (compiled, eager):  # also warms up: the compiled model traces here
        np.testing.assert_allclose(step(model, x_ours, tracefuse).detach().numpy(), expected, rtol=1e-3, atol=1e-4)
    runs = {"compiled": [], "eager": [], "torch": []}
    for _ in range(repeats):  # in turn, so machine drift hits every side alike
        runs["compiled"] += _time(lambda: step(compiled, x_ours, tracefuse), 1)
        runs["eager"] += _time(lambda: step(eager, x_ours, tracefuse), 1)
        runs["torch"] += _time(lambda: step(theirs, x_theirs, torch), 1)
    return [statistics.median(runs[k]) for k in ("compiled", "eager", "torch")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="first shape only, 3 repeats")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, float32, "
          f"median of {repeats}")
    print("| model | mode | T | B | H | compiled ms | eager ms | torch ms | compiled / torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("LSTM", "GRU"):
        for mode in ("forward", "forward+backward"):
            for shape in shapes:
                c, e, t = bench(kind, shape, mode, repeats)
                print(f"| {kind} | {mode} | {shape[0]} | {shape[1]} | {shape[2]} | {1e3 * c:.1f} | {1e3 * e:.1f} "
                      f"| {1e3 * t:.1f} | {c / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
