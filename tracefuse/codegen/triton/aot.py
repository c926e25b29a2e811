"""Ahead-of-time builds: generated kernels compiled to cubin for a GPU target with no GPU present,
with their register, spill and shared-memory counts, cached on disk.

`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))`
builds a cubin on any machine (Triton ships ptxas). Registers and local memory are read from
the cubin with the `cuobjdump` Triton ships; `spills` is Triton's `n_spills` (local memory bytes
/ 4, what its driver reports after loading a kernel); `shared` is the dynamic shared memory the
kernel is launched with (Triton's metadata).

Cache: `cache_dir()/"cubin"`, one entry per sha256 of (kernel source, name, signature,
constexprs, options, target, Triton version): `<name>.sm<arch>.<key>.cubin` and a `.json` with
the counts, Triton's metadata and the cubin's size and sha256. Both files are written to a
temporary name and renamed into place, the JSON last (it commits the entry). An entry whose JSON
does not parse, names another key, or whose cubin is missing, truncated or fails its checksum
is rebuilt, never loaded.

Triton's interpreter is a process-wide mode (TRITON_INTERPRET=1, read when Triton is imported),
so in a process that interprets kernels (the interpret backend, the tests) real compilation runs
in a subprocess: `python -m tracefuse.codegen.triton.aot` reads a JSON list of jobs
({"path", "name", "signature", "constexprs", "arch", "options"}) on stdin (or from a file
argument) and writes a JSON report on stdout. `build_report(records)` runs it for the
`LaunchRecord`s gathered with `recording()`; `compile_for_target` compiles in-process when it
can and through the subprocess otherwise.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...runtime.interpret import interpreting
from .kernel import cache_dir, code_of

DEFAULT_ARCHS = (80, 90)
# Launch options a record may carry among its keyword arguments: not constexprs, compile options.
_OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg", "launch_cooperative_grid", "enable_fp_fusion")


@dataclass
class Build:
    """One kernel compiled for one target."""

    name: str
    arch: int
    registers: int
    spills: int
    shared: int
    cached: bool
    key: str
    cubin_path: Path
    local_bytes: int = 0
    metadata: dict = field(default_factory=dict, repr=False)

    @property
    def cubin(self) -> bytes:
        return Path(self.cubin_path).read_bytes()


@dataclass
class ReportRow:
    """One line of a build report; `error` is set (and the counts are None) when the build failed."""

    kernel: str
    arch: int
    registers: int | None
    spills: int | None
    shared: int | None
    cached: bool
    error: str | None = None
    file: str = ""  # the kernel's source file name (name and source hash)


# --- jobs -------------------------------------------------------------------------------------


def _split_options(constexprs: dict) -> tuple[dict, dict]:
    """(constexprs, launch options): a launch's keyword arguments split into the kernel's
    compile-time arguments and Triton's compile options."""
    constexprs = dict(constexprs)
    return constexprs, {name: constexprs.pop(name) for name in _OPTION_NAMES if name in constexprs}


def _job(record_or_kernel, signature=None, constexprs=None, arch=90, options=None) -> dict:
    """A JSON-ready job from a LaunchRecord (its kernel, signature and constexprs) or a Kernel."""
    kernel = getattr(record_or_kernel, "kernel", record_or_kernel)
    signature = dict(signature if signature is not None else getattr(record_or_kernel, "signature", {}))
    constexprs, launch_options = _split_options(constexprs if constexprs is not None
                                                else getattr(record_or_kernel, "constexprs", {}))
    options = {**(options or {}), **launch_options}
    job = {"path": str(kernel.path), "name": kernel.name, "signature": signature, "constexprs": constexprs,
           "arch": int(arch), "options": options}
    try:
        json.dumps(job)
    except TypeError as e:
        raise TypeError(f"kernel {kernel.name}: constexprs and options must be JSON values for an "
                        f"ahead-of-time build ({e})") from None
    return job


# --- building (in a process where Triton compiles) -----------------------------------------------


def _load_function(path: str, name: str):
    """The `@triton.jit` function `name` of the kernel file `path`, imported as a JITFunction."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    module_name = f"tracefuse_aot_kernels.{Path(path).stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(module, name)


@functools.lru_cache(maxsize=None)
def _triton_version() -> str:
    """Triton's version, from its package metadata where it has some: a cache lookup should not
    import Triton."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # a build installed under another name
        import triton

        return triton.__version__


def _key(source: str, job: dict, version: str) -> str:
    """Kernels that differ only in their provenance header share a build."""
    text = json.dumps({"source": code_of(source), "name": job["name"], "signature": job["signature"],
                       "constexprs": job["constexprs"], "options": job.get("options") or {},
                       "target": ["cuda", job["arch"], 32], "triton": version,
                       **({"attrs": job["attrs"]} if job.get("attrs") else {})}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_paths(name: str, arch: int, key: str):
    base = cache_dir() / "cubin" / f"{name}.sm{arch}.{key[:32]}"
    return base.with_name(base.name + ".cubin"), base.with_name(base.name + ".json")


def _load_entry(key: str, cubin_path: Path, meta_path: Path, counts=True):
    """(metadata, cubin) of the cached entry if it is complete and intact (with its resource
    `counts`, unless not asked for), else None."""
    try:
        meta = json.loads(meta_path.read_text())
        cubin = cubin_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("triton_metadata"), dict):
        return None
    if meta.get("cubin_size") != len(cubin) or meta.get("cubin_sha256") != hashlib.sha256(cubin).hexdigest():
        return None
    if counts and not all(isinstance(meta.get(k), int) for k in ("registers", "spills", "shared", "local_bytes")):
        return None
    return meta, cubin


def _commit_entry(cubin_path: Path, meta_path: Path, cubin: bytes, meta: dict):
    """Write an entry: the cubin first, then the JSON that commits it."""
    meta.update(cubin_size=len(cubin), cubin_sha256=hashlib.sha256(cubin).hexdigest())
    _write_atomic(cubin_path, cubin)
    _write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())


def _write_atomic(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, path)  # a reader sees the old file or the whole new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


_RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _resource_usage(cubin_path: Path, name: str) -> dict:
    """Registers, stack, static shared and local memory of function `name` in a cubin."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    text = subprocess.run([tool, "-res-usage", str(cubin_path)], check=True, capture_output=True, text=True).stdout
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Function "):
            current = line[len("Function "):].rstrip(":")
        match = _RESOURCES.search(line)
        if match and current == name:
            reg, stack, shared, local = (int(g) for g in match.groups())
            return {"registers": reg, "stack": stack, "static_shared": shared, "local_bytes": local}
    raise RuntimeError(f"cuobjdump -res-usage found no function '{name}' in {cubin_path}:\n{text}")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def compile_function(fn, signature: dict, constexprs: dict, arch: int, attrs=None):
    """`triton.compile` of the `@triton.jit` function `fn` for sm_`arch`: `signature` types the
    runtime arguments, `constexprs` holds the compile-time ones and launch options (num_warps,
    num_stages, ...), `attrs` Triton's per-argument hints. Returns Triton's CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs, options = _split_options(constexprs)
    # No a * b + c contracted into one rounding: each operation rounds as NumPy's does, so device
    # results match the CPU's (and the interpreter's) to the bit where the CPU's do.
    options.setdefault("enable_fp_fusion", False)
    missing = [a for a in fn.arg_names if a not in constexprs and a not in signature]
    if missing:
        raise TypeError(f"kernel {fn.__name__}: no signature for argument(s) {', '.join(missing)}")
    # Every argument in order, constexprs marked "constexpr": the form Triton's own launcher
    # builds on 3.6 and 3.9 (both also accept the signature without them).
    full = {a: "constexpr" if a in constexprs else signature[a] for a in fn.arg_names}
    source = ASTSource(fn=fn, signature=full, constexprs=constexprs, attrs=attrs or None)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options or None)


def load_or_compile(kernel, signature: dict, constexprs: dict, arch: int, attrs: dict):
    """(cubin, Triton's metadata as a dict) of `kernel` for sm_`arch` as the CUDA backend launches
    it (`compile_function`'s arguments): from the cubin cache when an earlier process built it, else
    compiled by Triton and cached. A hit reads two files and imports nothing: a warm start skips
    `triton.compile`, which even on a hit of Triton's own cache hashes Triton's sources first
    (about 0.4 s per process)."""
    constexprs, options = _split_options(constexprs)
    job = {"name": kernel.name, "signature": dict(signature), "constexprs": constexprs, "arch": int(arch),
           "options": options, "attrs": sorted([list(k), v] for k, v in (attrs or {}).items())}
    key = _key(kernel.source, job, _triton_version())
    cubin_path, meta_path = _entry_paths(kernel.name, arch, key)
    entry = _load_entry(key, cubin_path, meta_path, counts=False)
    if entry is not None:
        return entry[1], entry[0]["triton_metadata"]
    compiled = compile_function(kernel.fn, signature, {**constexprs, **options}, arch, attrs)
    cubin, triton_meta = compiled.asm["cubin"], _jsonable(compiled.metadata._asdict())
    _commit_entry(cubin_path, meta_path, cubin, {"key": key, "name": kernel.name, "arch": int(arch),
                                                 "triton_version": _triton_version(), "triton_metadata": triton_meta})
    return cubin, triton_meta


def _compile(job: dict):
    """A job built for its target; returns (cubin bytes, Triton metadata dict)."""
    fn = _load_function(job["path"], job["name"])
    compiled = compile_function(fn, job["signature"], {**job["constexprs"], **(job.get("options") or {})}, job["arch"])
    return compiled.asm["cubin"], compiled.metadata._asdict()


def _build(job: dict, force: bool = False) -> Build:
    """Compile one job (or load it from the cache); must run where Triton is not interpreting."""
    source = Path(job["path"]).read_text()
    version = _triton_version()
    key = _key(source, job, version)
    cubin_path, meta_path = _entry_paths(job["name"], job["arch"], key)
    entry = None if force else _load_entry(key, cubin_path, meta_path)
    cached = entry is not None
    if entry is None:
        cubin, triton_meta = _compile(job)
        _write_atomic(cubin_path, cubin)
        usage = _resource_usage(cubin_path, job["name"])
        meta = {
            "key": key, "name": job["name"], "arch": job["arch"], "triton_version": version,
            "signature": [[a, t] for a, t in job["signature"].items()], "constexprs": job["constexprs"],
            "options": job.get("options") or {},
            "registers": usage["registers"], "local_bytes": usage["local_bytes"],
            "spills": usage["local_bytes"] // 4, "stack": usage["stack"],
            "shared": int(triton_meta.get("shared") or 0) + usage["static_shared"],
            "triton_metadata": _jsonable(triton_meta),
        }
        _commit_entry(cubin_path, meta_path, cubin, meta)
    else:
        meta = entry[0]
    return Build(job["name"], job["arch"], meta["registers"], meta["spills"], meta["shared"], cached, key,
                 cubin_path, meta["local_bytes"], meta)


def run_jobs(jobs: list) -> dict:
    """Build every job; a failing build becomes a result with its error, not an exception."""
    results = []
    for job in jobs:
        row = {"name": job.get("name"), "arch": job.get("arch"), "file": Path(job.get("path", "")).stem}
        try:
            build = _build(job)
        except Exception as e:  # reported per kernel
            row.update(error=f"{type(e).__name__}: {e}", registers=None, spills=None, shared=None, cached=False)
        else:
            row.update(error=None, registers=build.registers, spills=build.spills, shared=build.shared,
                       local_bytes=build.local_bytes, cached=build.cached, key=build.key,
                       cubin_path=str(build.cubin_path))
        results.append(row)
    return {"triton_version": _triton_version(), "results": results}


# --- the interface for interpreting processes ----------------------------------------------------


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("TRACEFUSE_CUDA", None)
    env["TRACEFUSE_CACHE_DIR"] = str(cache_dir())
    env.setdefault("TRITON_CACHE_DIR", str(cache_dir() / "triton"))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_in_subprocess(jobs: list, timeout: float | None = None) -> dict:
    """`run_jobs(jobs)` in a fresh Python process without Triton's interpreter."""
    proc = subprocess.run([sys.executable, "-m", "tracefuse.codegen.triton.aot"], input=json.dumps(jobs),
                          capture_output=True, text=True, env=_subprocess_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ahead-of-time build failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def compile_for_target(record_or_kernel, signature=None, constexprs=None, arch=90, options=None) -> Build:
    """Compile a LaunchRecord (or a Kernel with `signature` and `constexprs`) to cubin for
    sm_`arch`; in-process unless this process interprets kernels, then in a subprocess."""
    job = _job(record_or_kernel, signature, constexprs, arch, options)
    if not interpreting():
        return _build(job)
    (row,) = run_in_subprocess([job])["results"]
    if row["error"]:
        raise RuntimeError(f"kernel {job['name']} does not build for sm_{arch}: {row['error']}")
    cubin_path = Path(row["cubin_path"])
    meta = json.loads(cubin_path.with_suffix(".json").read_text())
    return Build(row["name"], row["arch"], row["registers"], row["spills"], row["shared"], row["cached"],
                 row["key"], cubin_path, row["local_bytes"], meta)


def build_report(records, archs=DEFAULT_ARCHS, timeout: float | None = None) -> list[ReportRow]:
    """Compile every distinct kernel launch among `records` for each arch (in a subprocess; launches
    of the same code, signature and constexprs build once) and
    return one row per (kernel, arch): registers, spills, shared bytes, whether it was cached."""
    jobs, seen = [], set()
    for record in records:
        for arch in archs:
            job = _job(record, arch=arch)
            identity = json.dumps(dict(job, path=code_of(record.kernel.source)), sort_keys=True)
            if identity not in seen:
                seen.add(identity)
                jobs.append(job)
    if not jobs:
        return []
    report = run_in_subprocess(jobs, timeout=timeout)
    return [ReportRow(r["name"], r["arch"], r["registers"], r["spills"], r["shared"], r["cached"], r["error"], r["file"])
            for r in report["results"]]


def format_report(rows) -> str:
    """The report as an aligned text table."""
    width = max([len("kernel")] + [len(r.file or r.kernel) for r in rows])
    lines = [f"{'kernel':<{width}} {'arch':>6} {'regs':>5} {'spills':>6} {'shared':>7} {'cached':>6}"]
    for r in rows:
        name = r.file or r.kernel
        if r.error:
            lines.append(f"{name:<{width}} {'sm_' + str(r.arch):>6}  FAILED: {r.error.splitlines()[0]}")
        else:
            lines.append(f"{name:<{width}} {'sm_' + str(r.arch):>6} {r.registers:>5} {r.spills:>6} {r.shared:>7} "
                         f"{'yes' if r.cached else 'no':>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """CLI: jobs as JSON (a file argument, or stdin) -> JSON report on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    text = Path(argv[0]).read_text() if argv else sys.stdin.read()
    jobs = json.loads(text)
    if isinstance(jobs, dict):
        jobs = jobs["jobs"]
    if interpreting():
        print("tracefuse.codegen.triton.aot: unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # anything the compiler prints stays off the report
        report = run_jobs(jobs)
    json.dump(report, out)
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
