"""Ahead-of-time builds: kernels recorded on the interpret backend compile to cubin for sm_80 and
sm_90 with no GPU present (in a subprocess: this process runs Triton's interpreter), report
registers, spills and shared memory, and come from the on-disk cache the second time; a corrupt
cache entry is rebuilt. A few kernels only, so the file stays fast."""
import json
import math

import pytest

import tracefuse as tf
from tracefuse.codegen.triton import aot, recording
from tracefuse.dispatch import dispatch

pytestmark = pytest.mark.usefixtures("interpret")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cubin (and Triton) cache, so that the first build really compiles."""
    monkeypatch.setenv("TRACEFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    return tmp_path / "cubin"


def _records():
    with recording() as records:
        x, y = tf.randn(5, 7).cuda(), tf.randn(7).cuda()
        x + y
        grads = [tf.randn(n).to(d).cuda() for n, d in [(9, tf.float32), (40, tf.float16), (3, tf.float32)]]
        total = dispatch("multi_tensor_norm", *grads, p=2.0)
        dispatch("multi_tensor_norm", *grads, p=math.inf)
        dispatch("multi_tensor_scale", total, *grads, max_norm=1.0)
    return records


def test_recorded_kernels_build_for_sm80_and_sm90_then_come_from_the_cache(cache):
    records = _records()
    names = {r.kernel.name for r in records}
    assert {"add_kernel", "multi_tensor_norm_kernel", "multi_tensor_scale_kernel"} <= names
    rows = aot.build_report(records, archs=(80, 90))
    assert len(rows) == 2 * len(records)
    assert {(r.kernel, r.arch) for r in rows} == {(n, a) for n in names for a in (80, 90)}
    for r in rows:
        assert r.error is None, r.error
        assert r.registers > 0 and r.spills == 0 and r.shared >= 0 and not r.cached, r
    assert "multi_tensor_norm_kernel" in aot.format_report(rows)
    again = aot.build_report(records, archs=(80, 90))
    assert [(r.file, r.arch, r.registers, r.spills, r.shared) for r in again] == \
        [(r.file, r.arch, r.registers, r.spills, r.shared) for r in rows]
    assert all(r.cached for r in again)


def _corrupt(entry_json, how):
    cubin = entry_json.with_suffix(".cubin")
    if how == "bad json":
        entry_json.write_text(entry_json.read_text()[:40])
    elif how == "truncated cubin":
        cubin.write_bytes(cubin.read_bytes()[:100])
    elif how == "checksum mismatch":  # same size, one byte changed
        data = bytearray(cubin.read_bytes())
        data[len(data) // 2] ^= 0xFF
        cubin.write_bytes(bytes(data))
    elif how == "missing cubin":
        cubin.unlink()


def test_corrupt_or_partial_cache_entries_are_rebuilt(cache):
    records = _records()
    first = aot.build_report(records, archs=(80,))
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == len(first) == len(records)
    damages = ["bad json", "truncated cubin", "checksum mismatch", "missing cubin"]
    for entry, how in zip(entries, damages):
        _corrupt(entry, how)
    rebuilt = aot.build_report(records, archs=(80,))
    for row in rebuilt:
        assert row.error is None, row.error
    # exactly the damaged entries were compiled again, in place, and now load
    assert sum(not r.cached for r in rebuilt) == len(damages)
    assert sorted(cache.glob("*.json")) == entries
    for entry in entries:
        meta = json.loads(entry.read_text())
        assert meta["cubin_size"] == entry.with_suffix(".cubin").stat().st_size
    assert all(r.cached for r in aot.build_report(records, archs=(80,)))


def test_compile_for_target_returns_the_cubin_and_its_counts(cache):
    record = _records()[0]
    build = aot.compile_for_target(record, arch=90)
    assert build.cubin[:4] == b"\x7fELF" and build.registers > 0 and build.spills == 0
    assert build.metadata["key"] == build.key and build.arch == 90 and build.name == record.kernel.name
    # A Kernel with an explicit signature and constexprs: the same build, from the cache.
    same = aot.compile_for_target(record.kernel, record.signature, record.constexprs, arch=90)
    assert same.cached and same.key == build.key


def test_a_kernel_that_does_not_build_is_reported_not_raised(cache):
    record = _records()[0]
    job = aot._job(record, arch=80)
    job["signature"] = {}  # no argument types
    (row,) = aot.run_in_subprocess([job])["results"]
    assert row["error"] and "no signature" in row["error"]


def test_the_builder_refuses_to_run_under_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("[]"))
    assert aot.main([]) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().err
