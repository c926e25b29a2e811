"""Host time of compiled calls on a CUDA device, without a GPU: the interpret backend's memory
with kernel launches stubbed out, so what is timed is tracefuse's own Python per call (guards,
the graph executor, emitters, argument packing) — the part a GPU cannot hide without CUDA graphs.

    PYTHONPATH=. python benchmarks/host_overhead.py

Prints microseconds per call (median of 5 rounds) for a compiled Linear-Tanh-Linear forward, a
compiled 2-layer LSTM forward and a compiled clip_grad_norm_ over 200 tensors.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ["TRACEFUSE_CUDA"] = "interpret:1"  # before tracefuse (and Triton) are imported
os.environ["TRITON_INTERPRET"] = "1"

import tracefuse as tf  # noqa: E402
from tracefuse import nn  # noqa: E402
from tracefuse.runtime import devices  # noqa: E402


def per_call_us(fn, calls=50, rounds=5) -> float:
    for _ in range(3):
        fn()  # traces, builds kernels
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def cases():
    mlp = tf.compile(nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 512)).cuda())
    x = tf.randn(64, 512).cuda()
    lstm = tf.compile(nn.LSTM(256, 256, num_layers=2).cuda())
    seq = tf.randn(32, 16, 256).cuda()
    params = [tf.randn(64 + k).cuda().requires_grad_() for k in range(200)]
    for p in params:
        p.grad = tf.randn(*p.shape).cuda()
    clip = tf.compile(lambda ps: nn.utils.clip_grad_norm_(ps, max_norm=0.5))
    with tf.no_grad():
        yield "compiled Linear-Tanh-Linear forward", lambda: mlp(x)
        yield "compiled 2-layer LSTM forward", lambda: lstm(seq)
    yield "compiled clip_grad_norm_, 200 tensors", lambda: clip(params)


def main() -> int:
    devices.active_backend().launch = lambda *args, **kwargs: None  # host work only
    print(f"{'compiled call':<40} {'host us/call':>12}")
    for name, fn in cases():
        print(f"{name:<40} {per_call_us(fn):>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
