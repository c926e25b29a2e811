"""The ``tracefuse`` command line: ``tracefuse doctor``, ``tracefuse demo`` and ``tracefuse dump``.

Everything heavy (numpy, triton, cuda-python, rich) is imported inside the command that
needs it, so the CLI starts fast. PyTorch is never imported: ``doctor`` only looks it up.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys


def version() -> str:
    """The installed tracefuse version, or ``0.1.0+local`` when run from a plain checkout."""
    try:
        return importlib.metadata.version("tracefuse")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0+local"


def _one_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` -- errors in the doctor table stay on one row."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe_import(module: str, dist: str) -> str:
    """Import ``module`` and return its version, or the import error on one line."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 -- any failure is what doctor reports
        return f"not importable ({_one_line(exc)})"
    return getattr(mod, "__version__", None) or _dist_version(dist) or "version unknown"


def _probe_cuda_python() -> str:
    """cuda-python 12.6+ lives in ``cuda.bindings``; older releases in ``cuda``."""
    errors = []
    for module in ("cuda.bindings", "cuda"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{module}: {_one_line(exc)}")
            continue
        found = _dist_version("cuda-python") or _dist_version("cuda-bindings") or "version unknown"
        return f"{found} (import {module})"
    return "not importable (" + "; ".join(errors) + ")"


def _probe_cuda_driver() -> str:
    """Ask the CUDA driver API (through cuda-python) for the visible GPUs."""
    from .runtime.devices import cuda_gpus

    try:
        version, names = cuda_gpus()
    except ImportError as exc:
        return f"unknown: cuda-python not importable ({_one_line(exc)})"
    except RuntimeError as exc:
        return f"no CUDA driver ({_one_line(exc)})"
    summary = f"driver {version // 1000}.{version % 1000 // 10}, {len(names)} GPU(s)"
    gpus = [f"cuda:{i} {name}" for i, name in enumerate(names)]
    return "; ".join([summary, *gpus]) if gpus else f"{summary}: no GPU visible"


def _probe_torch() -> str:
    """Whether torch is installed, found without importing it."""
    if importlib.util.find_spec("torch") is None:
        return "not installed (needed only as the test oracle)"
    return f"{_dist_version('torch') or 'version unknown'} installed (test oracle; never imported)"


def _probe_backend() -> str:
    """What `cuda:N` tensors run on in this environment (TRACEFUSE_CUDA)."""
    spec = os.environ.get("TRACEFUSE_CUDA") or "cuda"
    try:
        from .runtime import devices

        found = devices.active_backend()
    except Exception as exc:  # noqa: BLE001 -- any failure is what doctor reports
        return _one_line(exc)
    if found is None:
        return "none: no GPU visible (TRACEFUSE_CUDA=interpret[:N] runs them on Triton's interpreter)"
    if found.name == "interpret":
        return f"{found.device_count()} logical devices, kernels run by Triton's interpreter ({spec})"
    return f"the CUDA backend: {found.describe()} (TRACEFUSE_CUDA={spec})"


def doctor_report() -> list[tuple[str, str]]:
    """The rows ``tracefuse doctor`` prints, as (component, status) pairs."""
    return [
        ("tracefuse", version()),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("numpy", _probe_import("numpy", "numpy")),
        ("networkx", _probe_import("networkx", "networkx")),
        ("ml_dtypes", _probe_import("ml_dtypes", "ml_dtypes")),
        ("cuda devices", _probe_backend()),  # before triton: the interpret backend must import it
        ("triton", _probe_import("triton", "triton")),
        ("cuda-python", _probe_cuda_python()),
        ("cuda driver", _probe_cuda_driver()),
        ("torch", _probe_torch()),
    ]


def _print_table(rows: list[tuple[str, str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(name) for name, _ in rows)
        for name, status in rows:
            print(f"{name:<{width}}  {status}")
        return
    table = Table(title="tracefuse doctor")
    table.add_column("component", style="bold")
    table.add_column("status", overflow="fold")
    for name, status in rows:
        table.add_row(name, status)
    Console().print(table)


def _cmd_doctor(args: argparse.Namespace) -> int:
    _print_table(doctor_report())
    return 0


def _cmd_dump(args: argparse.Namespace) -> int:
    """Run a script with TRACEFUSE_DUMP on, so every graph it compiles is written out."""
    import os
    import runpy
    from pathlib import Path

    os.environ["TRACEFUSE_DUMP"] = args.kinds
    os.environ["TRACEFUSE_DUMP_DIR"] = str(args.out)
    before = set(Path(args.out).glob("*")) if Path(args.out).exists() else set()
    sys.argv = [str(args.script), *args.script_args]
    runpy.run_path(str(args.script), run_name="__main__")
    written = sorted(set(Path(args.out).glob("*")) - before)
    if not written:
        print(f"tracefuse dump: {args.script} compiled nothing (use tracefuse.compile on a model or function)")
        return 1
    for folder in written:
        print(f"{folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracefuse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tracefuse {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doctor = commands.add_parser("doctor", help="report versions, Triton/CUDA availability and GPUs")
    doctor.set_defaults(func=_cmd_doctor)

    from . import demo

    demo_parser = commands.add_parser("demo", help="train a character-level LSTM language model and sample from it")
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.run)

    dump = commands.add_parser("dump", help="run a script and write the IR graphs, guards and kernels it compiles")
    dump.add_argument("script", type=str, help="a Python script that calls tracefuse.compile")
    dump.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    dump.add_argument("--out", default="tracefuse_dump", help="dump folder (default: ./tracefuse_dump)")
    dump.add_argument("--kinds", default="all", help="comma-separated: graph,optimized,kernels,guards (default all)")
    dump.set_defaults(func=_cmd_dump)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
