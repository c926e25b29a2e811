"""CPU benchmark: tracefuse (NumPy backend, compiled and eager) vs PyTorch CPU for nn.LSTM / nn.GRU.

Same shapes, dtype (float32), seeded weights and inputs on every side. Each side is timed in its
own worker process (OpenBLAS's and PyTorch's thread pools fight when they share one), workers
of the sides alternate within one run so drift hits all alike, and the table shows medians and
the ratio compiled tracefuse / torch (lower is better). Shapes follow BENCHMARKS.md's CPU
section. Usage: python benchmarks/cpu_rnn.py [--rounds N] [--repeats N] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

SHAPES = [(128, 32, 256), (128, 8, 512), (64, 64, 512)]  # (T, B, H), input size = H
SIDES = ("compiled", "eager", "torch")


def _weights(kind, hidden):
    gates = {"LSTM": 4, "GRU": 3}[kind] * hidden
    rng = np.random.default_rng(1)
    bound = hidden ** -0.5
    return {name: rng.uniform(-bound, bound, shape).astype(np.float32) for name, shape in
            [("weight_ih_l0", (gates, hidden)), ("weight_hh_l0", (gates, hidden)),
             ("bias_ih_l0", (gates,)), ("bias_hh_l0", (gates,))]}


def _model(side, kind, hidden):
    weights = _weights(kind, hidden)
    if side == "torch":
        import torch

        model = getattr(torch.nn, kind)(hidden, hidden)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return torch, model
    import tracefuse

    model = getattr(tracefuse.nn, kind)(hidden, hidden)
    model.load_state_dict({k: tracefuse.from_numpy(v) for k, v in weights.items()})
    return tracefuse, tracefuse.compile(model) if side == "compiled" else model


def worker(side, kind, mode, T, B, H, repeats):
    """Median seconds of `repeats` timed calls (after warm-up) and a checksum of the output."""
    lib, model = _model(side, kind, H)
    data = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    x = lib.from_numpy(data)

    def step():
        if mode == "forward":
            with lib.no_grad():
                return model(x)[0]
        model.zero_grad()
        out = model(x)[0]
        out.sum().backward()
        return out

    out = step()  # warm-up; the compiled model traces here
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(np.abs(out.detach().numpy()).sum())


def _run_worker(side, case, repeats):
    out = subprocess.run([sys.executable, __file__, "--worker", side, *map(str, case), str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per side and case")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per worker")
    parser.add_argument("--quick", action="store_true", help="first shape only, 2 rounds of 3")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, kind, mode, T, B, H, repeats = args.worker
        seconds, checksum = worker(side, kind, mode, int(T), int(B), int(H), int(repeats))
        print(json.dumps({"seconds": seconds, "checksum": checksum}))
        return
    shapes = SHAPES[:1] if args.quick else SHAPES
    rounds, repeats = (2, 3) if args.quick else (args.rounds, args.repeats)
    import torch

    print(f"float32, torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}; "
          f"median over {rounds} worker processes x {repeats} calls per side")
    print("| model | mode | T | B | H | compiled ms | eager ms | torch ms | compiled / torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in ("LSTM", "GRU"):
        for mode in ("forward", "forward+backward"):
            for T, B, H in shapes:
                case = (kind, mode, T, B, H)
                results = {side: [] for side in SIDES}
                for _ in range(rounds):
                    for side in SIDES:
                        results[side].append(_run_worker(side, case, repeats))
                sums = [r["checksum"] for side in SIDES for r in results[side]]
                if max(sums) - min(sums) > 1e-3 * max(sums):
                    raise SystemExit(f"{case}: outputs differ between sides: {sums}")
                c, e, t = (1e3 * statistics.median(r["seconds"] for r in results[side]) for side in SIDES)
                print(f"| {kind} | {mode} | {T} | {B} | {H} | {c:.1f} | {e:.1f} | {t:.1f} | {c / t:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
