"""GPU check (issue #6): the gpu tests, then tracefuse against PyTorch/cuDNN on the tables of
BENCHMARKS.md, in one call on a GPU machine. It installs nothing and runs from the checkout:

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT

Without a GPU (the CI smoke test) it runs tiny shapes on the interpret backend, torch on the CPU:

    TRACEFUSE_CUDA=interpret TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/gpu_check.py --quick --skip-tests

Protocol (BENCHMARKS.md, device/METHOD.md): both sides get the same weights and random inputs;
tracefuse's result is checked against torch's before anything is timed (a failed check is
reported, not timed); a warm-up call keeps compilation out; each side is timed with its own
CUDA events (launch costs: host time per call), the two alternating in this process; the numbers
are medians. ratio = tracefuse / torch (lower is better). Without torch only tracefuse's times
are printed.

Every section has a share of the --budget; cases past it are reported as skipped. A case that
raises is reported with its traceback in the log and does not stop the others, and a watchdog
prints what was measured if the device hangs. The table comes last; --out (default $OUT) gets
gpu_check.json, gpu_check.log and pytest.log. The exit status is 1 when a check or case failed.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2, "fp16": 2e-2}  # relative error ||ours - torch|| / ||torch||
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TINY = (4, 8, 2)  # --quick's (T, H, B) for every recurrent case


@dataclass
class Row:
    section: str
    case: str
    unit: str = ""
    tracefuse: float | None = None
    peer: float | None = None
    error: float | None = None
    tolerance: float | None = None
    status: str = "ok"  # ok | FAIL: <check> | error: <exception> | skipped: <why>
    note: str = ""

    @property
    def ratio(self):
        return self.tracefuse / self.peer if self.tracefuse is not None and self.peer else None

    @property
    def failed(self):
        return self.status.startswith(("FAIL", "error"))

    def cells(self):
        return [self.section, self.case, self.unit, _number(self.tracefuse), _number(self.peer),
                _number(self.ratio),
                "-" if self.error is None else f"{self.error:.1e}", self.status[:70]]


def _number(value):
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


class Report:
    """The rows measured so far, printed as they come and saved after each one (a device call
    that runs out of time still returns the files), and the final table."""

    COLUMNS = ["section", "case", "unit", "tracefuse", "peer", "ratio", "error", "status"]

    def __init__(self, out_dir):
        self.out = Path(out_dir) if out_dir else None
        self.header: dict = {}
        self.rows: list[Row] = []
        self.running = ""  # the section and case now running, for the watchdog's row
        self.lock = threading.RLock()
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "gpu_check.log").write_text("")

    def log(self, text):
        with self.lock:
            print(text, flush=True)
            if self.out:
                with open(self.out / "gpu_check.log", "a") as f:
                    f.write(text + "\n")

    def save_text(self, name, text):
        if self.out:
            (self.out / name).write_text(text)

    def add(self, row):
        with self.lock:
            self.rows.append(row)
            self.log("  " + " | ".join(row.cells()) + (f"  ({row.note})" if row.note else ""))
            if self.out:
                data = {"header": self.header, "rows": [dict(asdict(r), ratio=r.ratio) for r in self.rows]}
                (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1) + "\n")

    def header_line(self):
        return " | ".join(f"{k}: {v}" for k, v in self.header.items())

    def table(self):
        lines = [self.COLUMNS] + [r.cells() for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.COLUMNS))]
        text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        return "\n".join([text[0], "-+-".join("-" * w for w in widths)] + text[1:])

    def finish(self) -> int:
        """Print the header and the table last; 1 when any row failed."""
        with self.lock:
            self.log("\n" + self.header_line() + "\n" + self.table())
            return int(any(r.failed for r in self.rows))


# --- timing -----------------------------------------------------------------------------------
class EventClock:
    """Device time of one call between two CUDA events of its framework (tracefuse.cuda or
    torch.cuda), so host gaps between the call's launches count too."""

    def __init__(self, cuda):
        self.cuda = cuda

    def time_ms(self, fn):
        start, end = self.cuda.Event(enable_timing=True), self.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def synchronize(self):
        self.cuda.synchronize()


class HostClock:
    """Wall time of one call: torch on the CPU (--quick without a GPU)."""

    def time_ms(self, fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    def synchronize(self):
        pass


def _repeats(budget_s, seconds_each, low, high):
    return max(low, min(high, int(budget_s / max(seconds_each, 1e-9))))


class Bench:
    """What every case needs: both libraries, where each runs, a clock for each, and the checks."""

    def __init__(self, tf, torch, quick, torch_compile=False):
        self.tf, self.torch, self.quick, self.torch_compile = tf, torch, quick, torch_compile
        self.device = "cuda:0"
        self.tf_clock = EventClock(tf.cuda)
        self.torch_device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
        self.torch_clock = EventClock(torch.cuda) if self.torch_device == "cuda" else HostClock()
        self.min_repeats, self.max_repeats = (2, 3) if quick else (5, 50)
        self.rng = np.random.default_rng(0)

    # --- building the two sides ---
    def dtypes(self, name):
        return getattr(self.tf, DTYPE_NAMES[name]), self.torch and getattr(self.torch, DTYPE_NAMES[name])

    def twins(self, build, dtype):
        """build(tf.nn) and build(torch.nn) with tracefuse's initial weights copied into torch's,
        both moved to their device and `dtype` (torch's is None without torch)."""
        ours = build(self.tf.nn)
        theirs = None
        if self.torch is not None:
            theirs = build(self.torch.nn)
            theirs.load_state_dict({k: self.torch.from_numpy(v.detach().numpy().copy())
                                    for k, v in ours.state_dict().items()})
        tf_dtype, torch_dtype = self.dtypes(dtype)
        ours = ours.to(self.device, tf_dtype)
        return ours, theirs and theirs.to(device=self.torch_device, dtype=torch_dtype)

    def pair(self, data, dtype="fp32", requires_grad=False):
        """Copies of the NumPy array `data` on both sides (torch's is None without torch)."""
        tf_dtype, torch_dtype = self.dtypes(dtype)
        ours = self.tf.from_numpy(data).to(self.device, tf_dtype).requires_grad_(requires_grad)
        if self.torch is None:
            return ours, None
        theirs = self.torch.from_numpy(data).to(self.torch_device, torch_dtype, copy=True)
        return ours, theirs.requires_grad_(requires_grad)

    def inputs(self, shape, dtype, requires_grad=False):
        """The same random (standard normal) input on both sides."""
        return self.pair(self.rng.standard_normal(shape).astype(np.float32), dtype, requires_grad)

    # --- checking and timing ---
    def check(self, row, run_ours, run_theirs, dtype) -> bool:
        """Run both once (tracefuse compiles here) and compare; False (and the row says why)
        when the results differ by more than the dtype's tolerance."""
        start = time.perf_counter()
        ours = run_ours()
        self.tf_clock.synchronize()
        row.note = f"first call {time.perf_counter() - start:.2f} s"
        if self.torch is None:
            row.status = "ok: unchecked (no torch)"
            return True
        row.error, row.tolerance = relative_error(ours, run_theirs()), TOLERANCE[dtype]
        if not row.error <= row.tolerance:  # NaN fails too
            row.status = f"FAIL: error {row.error:.1e} > {row.tolerance:.0e}, not timed"
        return not row.failed

    def time_device(self, row, run_ours, run_theirs, budget_s, scale=1.0):
        """Medians of event-timed calls, the sides alternating, after one warm-up call each;
        ms per call times `scale`. Timing takes about half of the case's budget: the rest is
        for compiling the cases after it."""
        sides = [(self.tf_clock, run_ours)] + ([(self.torch_clock, run_theirs)] if self.torch else [])
        first = [clock.time_ms(fn) for clock, fn in sides]
        repeats = _repeats(budget_s / 2, sum(first) / 1e3, self.min_repeats, self.max_repeats)
        samples = [[] for _ in sides]
        for _ in range(repeats):
            for times, (clock, fn) in zip(samples, sides):
                times.append(clock.time_ms(fn))
        medians = [statistics.median(times) * scale for times in samples]
        row.tracefuse, row.peer = medians[0], medians[1] if self.torch else None
        row.note += f", {repeats} repeats"

    def time_host(self, row, run_ours, run_theirs, budget_s):
        """Host microseconds per call: back-to-back calls, one synchronize at the end; the median
        of 5 rounds, the sides alternating, in about half of the case's budget."""
        sides = [(self.tf_clock, run_ours)] + ([(self.torch_clock, run_theirs)] if self.torch else [])

        def per_call_us(clock, fn, calls):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            clock.synchronize()
            return (time.perf_counter() - start) / calls * 1e6

        first = [per_call_us(clock, fn, 3) for clock, fn in sides]
        calls = _repeats(budget_s / 10, sum(first) / 1e6, 3, 2000)
        rounds = [[per_call_us(clock, fn, calls) for clock, fn in sides] for _ in range(5)]
        medians = [statistics.median(r[i] for r in rounds) for i in range(len(sides))]
        row.tracefuse, row.peer = medians[0], medians[1] if self.torch else None
        row.note += f", 5 x {calls} calls"


def _leaves(value):
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [] if value is None else [value]


def relative_error(ours, theirs):
    """The largest ||a - b|| / ||b|| over the tensors of two (nested) results, in float64."""
    pairs = list(zip(_leaves(ours), _leaves(theirs), strict=True))
    errors = []
    for a, b in pairs:
        a, b = (np.asarray(t.detach().float().cpu().numpy(), dtype=np.float64) for t in (a, b))
        if a.shape != b.shape:
            raise AssertionError(f"shapes differ: tracefuse {a.shape}, torch {b.shape}")
        errors.append(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return float(max(errors))


# --- sections: each returns its cases, (name, fn(row, budget_s)) ---------------------------------
def rnn_forward(b, kind, T, H, B, dtype, row, budget_s):
    """One layer, input = hidden, whole sequence under no_grad: microseconds per time step."""
    ours, theirs = b.twins(lambda nn: getattr(nn, kind)(H, H).eval(), dtype)
    compiled = b.tf.compile(ours)
    x_ours, x_theirs = b.inputs((T, B, H), dtype)

    def run_ours():
        with b.tf.no_grad():
            return compiled(x_ours)

    def run_theirs():
        with b.torch.no_grad():
            return theirs(x_theirs)

    row.unit = "us/step"
    if b.check(row, run_ours, run_theirs, dtype):
        b.time_device(row, run_ours, run_theirs, budget_s, scale=1e3 / T)


def rnn_forward_cases(b, kind, grid):
    return [(f"{dtype} T={T} H={H} B={B}", functools.partial(rnn_forward, b, kind, T, H, B, dtype))
            for T, H, B, dtype in ([(*TINY, "fp32")] if b.quick else grid)]


def lstm_forward_cases(b):
    grid = [(256, H, B, dtype) for H in (256, 1024) for B in (16, 64) for dtype in ("fp32", "bf16", "fp16")]
    return rnn_forward_cases(b, "LSTM", grid + [(1024, 768, 16, dtype) for dtype in ("fp16", "fp32")])


def gru_forward_cases(b):
    return rnn_forward_cases(b, "GRU", [(256, H, 16, dtype) for H in (256, 1024) for dtype in ("fp32", "bf16")])


def lstm_backward(b, T, H, B, dtype, row, budget_s):
    """Forward and backward through the whole sequence; loss = <output, random weights>."""
    ours, theirs = b.twins(lambda nn: nn.LSTM(H, H), dtype)
    compiled = b.tf.compile(ours)
    x_ours, x_theirs = b.inputs((T, B, H), dtype, requires_grad=True)
    w_ours, w_theirs = b.inputs((T, B, H), dtype)

    def step(model, parameters, x, w):
        model.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = model(x)
        (y * w).sum().backward()
        return [y, x.grad] + [p.grad for p in parameters]

    run_ours = functools.partial(step, compiled, list(ours.parameters()), x_ours, w_ours)
    run_theirs = theirs and functools.partial(step, theirs, list(theirs.parameters()), x_theirs, w_theirs)
    row.unit = "ms"
    if b.check(row, run_ours, run_theirs, dtype):
        b.time_device(row, run_ours, run_theirs, budget_s)


def lstm_backward_cases(b):
    grid = [(*TINY, "fp32")] if b.quick else [(256, 768, 16, dtype) for dtype in ("fp32", "bf16")]
    return [(f"{dtype} T={T} H={H} B={B}", functools.partial(lstm_backward, b, T, H, B, dtype))
            for T, H, B, dtype in grid]


def clip_cases(b):
    """200 gradients of 13 M elements in all (BENCHMARKS.md's launch-bound case), clipped to
    norm 1, against torch's foreach path; eager, and compiled with its launch count."""
    tf, torch = b.tf, b.torch
    shapes = [(3, 4)] * 4 if b.quick else [(64 * (1 + i % 8), 224) for i in range(200)]
    originals = [b.inputs(shape, "fp32") for shape in shapes]  # (ours, theirs) per gradient

    def parameter(lib, grad):
        p = lib.nn.Parameter(grad.clone())
        p.grad = grad.clone()
        return p

    ours = [parameter(tf, grad) for grad, _ in originals]
    theirs = torch and [parameter(torch, grad) for _, grad in originals]

    def reset_grads():
        """Put the unclipped gradients back, in place (a compiled graph keeps reading the same tensors)."""
        for i, (grad_ours, grad_theirs) in enumerate(originals):
            ours[i].grad.copy_(grad_ours)
            if theirs:
                theirs[i].grad.copy_(grad_theirs)

    def clip_ours(params):
        return tf.nn.utils.clip_grad_norm_(params, 1.0)

    def run_theirs():
        return [torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=True)] + [p.grad for p in theirs]

    def case(clip, row, budget_s):
        if clip is not clip_ours:
            row.case += f" ({tf.explain(clip, ours).kernel_count} launches)"
        reset_grads()
        row.unit = "ms"

        def run_ours():
            return [clip(ours)] + [p.grad for p in ours]

        if b.check(row, run_ours, torch and run_theirs, "fp32"):
            b.time_device(row, run_ours, torch and run_theirs, budget_s)

    elements = sum(int(np.prod(shape)) for shape in shapes)
    name = f"{len(shapes)} tensors, " + (f"{elements / 1e6:.3g} M" if elements >= 1e6 else str(elements)) + " elements"
    return [(f"{name}, eager", functools.partial(case, clip_ours)),
            (f"{name}, compiled", functools.partial(case, tf.compile(clip_ours)))]


def launch_cases(b):
    """Host cost per call: an eager elementwise op, and a compiled small MLP with and without
    CUDA-graph replay (torch eager is the peer of all three)."""
    tf, torch = b.tf, b.torch
    x_ours, x_theirs = b.inputs((1024,), "fp32")
    width, batch = TINY[1:] if b.quick else (512, 64)
    mlp_ours, mlp_theirs = b.twins(lambda nn: nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                                            nn.Linear(width, width)).eval(), "fp32")
    h_ours, h_theirs = b.inputs((batch, width), "fp32")

    def eager_add(row, budget_s):
        row.unit = "us/call"
        if b.check(row, lambda: x_ours + 1, lambda: x_theirs + 1, "fp32"):
            b.time_host(row, lambda: x_ours + 1, lambda: x_theirs + 1, budget_s)

    def mlp(options, row, budget_s):
        row.unit = "us/call"
        compiled = tf.compile(mlp_ours, options=options)

        def run_ours():
            with tf.no_grad():
                return compiled(h_ours)

        def run_theirs():
            with torch.no_grad():
                return mlp_theirs(h_theirs)

        if b.check(row, run_ours, run_theirs, "fp32"):
            b.time_host(row, run_ours, run_theirs, budget_s)

    return [("eager x + 1, 1024 fp32", eager_add),
            (f"compiled MLP {width}x2", functools.partial(mlp, None)),
            (f"compiled MLP {width}x2, cuda_graphs", functools.partial(mlp, {"cuda_graphs": True}))]


def language_model(nn, vocab, hidden):
    """Embedding, a 2-layer LSTM and a linear head, written once for tracefuse.nn and torch.nn."""
    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, hidden)
            self.lstm = nn.LSTM(hidden, hidden, num_layers=2)
            self.head = nn.Linear(hidden, vocab)

        def forward(self, tokens):
            output, _ = self.lstm(self.embedding(tokens))
            return self.head(output)

    return LanguageModel()


def lm_shape(quick):
    return dict(vocab=16, hidden=8, T=4, B=2) if quick else dict(vocab=1000, hidden=256, T=32, B=8)


def compile_worker(side, quick):
    """In a fresh process: seconds from compiling the language model to its first result."""
    shape = lm_shape(quick)
    started = time.perf_counter()
    if side == "tracefuse":
        import tracefuse as lib
        device = "cuda:0"
    else:
        import torch as lib
        device = "cuda" if lib.cuda.is_available() else "cpu"
    imported = time.perf_counter()
    lib.manual_seed(0)
    model = language_model(lib.nn, shape["vocab"], shape["hidden"]).to(device).eval()
    tokens = lib.from_numpy(np.random.default_rng(0).integers(0, shape["vocab"], (shape["T"], shape["B"]))).to(device)
    start = time.perf_counter()
    with lib.no_grad():
        output = lib.compile(model)(tokens).float().cpu().numpy()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "import_seconds": imported - started,
                      "checksum": float(np.abs(output).sum())}))


def compile_cases(b):
    """Cold compile in a fresh process with empty caches, then a warm start from those caches."""
    caches = Path(tempfile.mkdtemp(prefix="gpu_check_cache_"))
    sides = ["tracefuse"] + (["torch"] if b.torch_compile and b.torch else [])
    cache_env = {"tracefuse": {"TRACEFUSE_CACHE_DIR": caches / "tracefuse", "TRITON_CACHE_DIR": caches / "triton"},
                 "torch": {"TORCHINDUCTOR_CACHE_DIR": caches / "inductor", "TRITON_CACHE_DIR": caches / "triton-torch"}}
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    checksums = {}

    def run_worker(side, budget_s):
        command = [sys.executable, __file__, "--compile-worker", side] + (["--quick"] if b.quick else [])
        environment = dict(os.environ, PYTHONPATH=python_path, **{k: str(v) for k, v in cache_env[side].items()})
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=max(budget_s, 20))
        if done.returncode:
            raise RuntimeError(f"{side} compile worker exited {done.returncode}:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def case(warm, row, budget_s):
        row.unit = "s"
        results = {side: run_worker(side, budget_s / len(sides)) for side in sides}
        row.tracefuse = results["tracefuse"]["seconds"]
        row.peer = results["torch"]["seconds"] if "torch" in results else None
        row.note = f"import {results['tracefuse']['import_seconds']:.2f} s, caches in {caches}"
        checksums[warm] = results["tracefuse"]["checksum"]
        if warm and False in checksums:
            cold = checksums[False]
            if not abs(checksums[True] - cold) <= 1e-6 * abs(cold):
                row.status = f"FAIL: warm result {checksums[True]!r} differs from cold {cold!r}"

    name = "2-layer LSTM LM V={vocab} H={hidden} T={T} B={B}".format(**lm_shape(b.quick))
    return [(f"cold: {name}", functools.partial(case, False)), (f"warm: {name}", functools.partial(case, True))]


def input_projection(b, T, H, B, dtype, row, budget_s):
    """An LSTM layer's input GEMM alone, [T * B, H] @ [H, 4H]: how much of the forward it is
    (the scan is the rest)."""
    x_ours, x_theirs = b.inputs((T * B, H), dtype)
    w_ours, w_theirs = b.inputs((H, 4 * H), dtype)
    row.unit = "ms"
    if b.check(row, lambda: x_ours @ w_ours, lambda: x_theirs @ w_theirs, dtype):
        b.time_device(row, lambda: x_ours @ w_ours, lambda: x_theirs @ w_theirs, budget_s)


def input_projection_cases(b):
    grid = [(*TINY, "fp32")] if b.quick else [(256, 1024, B, dtype) for B in (16, 64) for dtype in ("fp32", "bf16")]
    return [(f"{dtype} [T*B, H] @ [H, 4H], T={T} H={H} B={B}", functools.partial(input_projection, b, T, H, B, dtype))
            for T, H, B, dtype in grid]


SECTIONS = [  # name, share of the benchmark budget, its cases
    ("lstm forward", 0.33, lstm_forward_cases),
    ("input GEMM", 0.03, input_projection_cases),
    ("gru forward", 0.10, gru_forward_cases),
    ("lstm fwd+bwd", 0.14, lstm_backward_cases),
    ("clip_grad_norm_", 0.06, clip_cases),
    ("launch", 0.08, launch_cases),
    ("cold compile", 0.26, compile_cases),
]


def run_cases(report, section, cases, budget_s):
    """Each case in turn while the section's budget lasts; a case that raises becomes an error row."""
    deadline = time.perf_counter() + budget_s
    for i, (case, fn) in enumerate(cases):
        row = Row(section, case)
        report.running = f"{section} / {case}"
        left = deadline - time.perf_counter()
        if left <= 0:
            row.status = f"skipped: section budget ({budget_s:.0f} s) spent"
        else:
            try:
                fn(row, left / (len(cases) - i))
            except Exception as exc:
                report.log(f"{section} / {case} failed:\n{traceback.format_exc()}")
                row.status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report.add(row)


def run_gpu_tests(report, timeout_s):
    """`pytest -m gpu` in a subprocess (xdist workers when installed), killed after timeout_s."""
    # Compiling kernels is what takes the time: one worker per two cores; a hung test prints its stack.
    workers = ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))] if importlib.util.find_spec("xdist") else []
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--tb=short",
               "-o", "faulthandler_timeout=90", *workers, "tests"]
    report.log("$ " + " ".join(command))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, timed_out = process.communicate(timeout=timeout_s)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, timed_out = process.communicate()[0], True
    report.save_text("pytest.log", output)
    report.log("\n".join(output.splitlines()[-15:]))
    counts = ", ".join(f"{n} {outcome}" for outcome, n in pytest_counts(output).items()) or "nothing ran"
    row = Row("tests", f"pytest -m gpu: {counts}", "s", tracefuse=time.perf_counter() - start)
    if timed_out:
        row.status = f"error: timed out after {timeout_s:.0f} s"
    elif process.returncode == 5:
        row.status = "skipped: no test is marked gpu"
    elif process.returncode:
        row.status = f"FAIL: pytest exited {process.returncode}"
    report.add(row)


PROGRESS = {".": "passed", "F": "failed", "E": "error", "s": "skipped", "x": "xfailed", "X": "xpassed"}


def pytest_counts(output) -> dict:
    """{outcome: count} from pytest -q's final summary line or, when the run was killed before
    printing one, from its progress characters."""
    lines = output.splitlines()
    outcome = r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)"
    for line in reversed(lines):
        if re.search(r" in [\d.]+s", line):
            return {what: int(n) for n, what in re.findall(outcome, line)}
    progress = "".join(line.split("[")[0].strip() for line in lines
                       if re.fullmatch(r"[.FEsxX]+(\s+\[\s*\d+%\])?", line.strip()))
    return {PROGRESS[c]: progress.count(c) for c in PROGRESS if c in progress}


def header(tf, torch, quick):
    import triton
    from tracefuse.runtime import devices

    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    if gpu is None:
        try:
            gpu = ", ".join(devices.cuda_gpus()[1]) or "none"
        except (ImportError, RuntimeError):
            gpu = "none"
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "gpu": gpu, "tracefuse cuda": devices.active_backend().name,
            "triton": triton.__version__, "numpy": np.__version__}
    if torch is not None:
        cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        info["torch"] = f"{torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}" + (
            f", cuDNN {cudnn} (tf32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'})" if cudnn else "")
    else:
        info["torch"] = "not used (absent, or without CUDA): tracefuse times only"
    if quick:
        info["mode"] = "--quick (tiny shapes)"
    return info


def git_commit():
    try:
        run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def import_torch(quick):
    """torch as the peer: on CUDA, or on the CPU in --quick mode; None when absent or unusable."""
    try:
        import torch
    except ImportError:
        return None
    return torch if quick or torch.cuda.is_available() else None


def start_watchdog(report, seconds):
    """If the benchmarks are still running after `seconds` (a hung kernel blocks forever), print
    what was measured and exit: the rows so far are worth more than a killed call."""
    def give_up():
        report.add(Row("watchdog", report.running, status=f"error: benchmarks still running after {seconds:.0f} s"))
        report.finish()
        os._exit(2)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON and logs (default: $OUT)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one dtype (CI smoke test)")
    parser.add_argument("--skip-tests", action="store_true", help="skip `pytest -m gpu`")
    parser.add_argument("--test-timeout", type=float, default=240, help="seconds for the gpu tests (default 240)")
    parser.add_argument("--budget", type=float, help="seconds for all benchmarks (default 150, --quick 40)")
    parser.add_argument("--sections", help="comma-separated section names to run (default: all)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile's cold and warm start")
    parser.add_argument("--compile-worker", choices=["tracefuse", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [name for name, _, _ in SECTIONS]
    args.sections = args.sections.split(",") if args.sections else names
    if set(args.sections) - set(names):
        parser.error(f"unknown sections {sorted(set(args.sections) - set(names))}; choose from {', '.join(names)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.compile_worker:
        return compile_worker(args.compile_worker, args.quick)
    import tracefuse as tf

    if not tf.cuda.is_available():
        sys.exit("gpu_check: tracefuse sees no CUDA device; run on a GPU, or with TRACEFUSE_CUDA=interpret "
                 "TRITON_INTERPRET=1 and --quick")
    torch = import_torch(args.quick)  # after tracefuse chose its backend (interpret mode needs Triton unloaded)
    report = Report(args.out)
    report.header = header(tf, torch, args.quick)
    report.log(report.header_line())
    if args.skip_tests:
        report.add(Row("tests", "pytest -m gpu", status="skipped: --skip-tests"))
    else:
        run_gpu_tests(report, args.test_timeout)
    budget = args.budget or (40 if args.quick else 150)
    watchdog = start_watchdog(report, 1.5 * budget + 30)
    try:
        run_benchmarks(report, Bench(tf, torch, args.quick, args.torch_compile),
                       [s for s in SECTIONS if s[0] in args.sections], budget)
    finally:
        watchdog.cancel()
    return report.finish()


def run_benchmarks(report, bench, sections, budget_s):
    """The sections in order, each with its share of what is left of the budget."""
    deadline = time.perf_counter() + budget_s
    for i, (name, share, cases_of) in enumerate(sections):
        section_budget = (deadline - time.perf_counter()) * share / sum(s[1] for s in sections[i:])
        report.log(f"== {name} ({section_budget:.0f} s)")
        try:
            cases = cases_of(bench)
        except Exception as exc:
            report.log(traceback.format_exc())
            report.add(Row(name, "(setup)", status=f"error: {type(exc).__name__}: {exc}"))
            continue
        run_cases(report, name, cases, section_budget)


if __name__ == "__main__":
    sys.exit(main())
