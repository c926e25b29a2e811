"""Cold compile and warm start of a compiled model's first call, host side, with no GPU.

The embedding + 2-layer LSTM language model of gpu_check.py (V=1000, H=256, T=32, B=8, eval,
forward) is compiled and called once in a fresh process on the CUDA backend over the fake
cuda-python driver of the tests (tests/runtime/fake_driver.py): kernels are really compiled for
sm_90 by Triton, loaded and launched through the backend, but the fake runs none of them. So the
seconds are tracefuse's and Triton's host work from `compile(model)(tokens)` to the result:
tracing, the passes, code generation, compiling (cold: empty caches) or finding the cubins
(warm: the caches the cold process filled). gpu_check.py times the same on a real GPU.

    PYTHONPATH=. python benchmarks/start_time.py [--warm-runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker():
    """In a fresh process: seconds from compiling the model to its first result."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    import numpy as np

    import tracefuse as tf
    from gpu_check import language_model
    from tests.runtime.fake_driver import FakeDriver
    from tracefuse.runtime import devices
    from tracefuse.runtime.cuda import CudaBackend, Driver

    devices._backend = CudaBackend(virtual=1, driver=Driver(FakeDriver(gpus=1)))
    tf.manual_seed(0)
    model = language_model(tf.nn, 1000, 256).to("cuda:0").eval()
    tokens = tf.from_numpy(np.random.default_rng(0).integers(0, 1000, (32, 8))).to("cuda:0")
    start = time.perf_counter()
    with tf.no_grad():
        tf.compile(model)(tokens)
        tf.cuda.synchronize()
    print(json.dumps({"seconds": time.perf_counter() - start, "triton_imported": "triton" in sys.modules}))


def run(caches: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRACEFUSE_CUDA")}
    env.update(PYTHONPATH=str(ROOT), TRACEFUSE_CACHE_DIR=str(caches), TRITON_CACHE_DIR=str(caches / "triton"))
    done = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    with tempfile.TemporaryDirectory(prefix="start_time_") as caches:
        cold = run(Path(caches))
        warm = [run(Path(caches)) for _ in range(args.warm_runs)]
    print("| start | seconds | Triton imported |\n| --- | --- | --- |")
    print(f"| cold (empty caches) | {cold['seconds']:.3f} | {cold['triton_imported']} |")
    print(f"| warm (median of {len(warm)}) | {statistics.median(w['seconds'] for w in warm):.3f} | "
          f"{any(w['triton_imported'] for w in warm)} |")


if __name__ == "__main__":
    main()
