"""CPU benchmark: tracefuse (NumPy backend) vs PyTorch CPU for nn.LSTM / nn.GRU.

Same shapes, dtype, weights and inputs on both sides, measured alternately in one process; the
table shows medians and the ratio tracefuse / torch (lower is better). Shapes follow
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
    T, B, H = shape
    ours, theirs = _pair(kind, H)
    data = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    x_ours, x_theirs = tracefuse.from_numpy(data), torch.from_numpy(data)
    step = _forward if mode == "forward" else _train_step
    np.testing.assert_allclose(step(ours, x_ours, tracefuse).detach().numpy(),
                               step(theirs, x_theirs, torch).detach().numpy(), rtol=1e-3, atol=1e-4)
    ours_t, theirs_t = [], []
    for _ in range(repeats):  # alternate so machine drift hits both sides alike
        ours_t += _time(lambda: step(ours, x_ours, tracefuse), 1)
        theirs_t += _time(lambda: step(theirs, x_theirs, torch), 1)
    a, b = statistics.median(ours_t), statistics.median(theirs_t)
    return a, b


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="first shape only, 3 repeats")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, float32, "
          f"median of {repeats}")
    print("| model | mode | T | B | H | tracefuse ms | torch ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("LSTM", "GRU"):
        for mode in ("forward", "forward+backward"):
            for shape in shapes:
                a, b = bench(kind, shape, mode, repeats)
                print(f"| {kind} | {mode} | {shape[0]} | {shape[1]} | {shape[2]} | {1e3 * a:.1f} | {1e3 * b:.1f} "
                      f"| {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
