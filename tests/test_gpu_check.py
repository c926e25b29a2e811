"""Smoke test of benchmarks/gpu_check.py (issue #6): its --quick run on the interpret backend,
with torch on the CPU as the peer, must check and time every section; a failed check or a case
that raises must be reported in its row and make the exit status non-zero."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
BENCHMARK_SECTIONS = ["lstm forward", "input GEMM", "gru forward", "lstm fwd+bwd", "clip_grad_norm_", "launch", "cold compile"]


def _table(stdout):
    """The final table's rows as dicts: the header line starting 'section |', a rule, then rows
    up to the end of the output (the table is printed last)."""
    lines = stdout.rstrip("\n").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("section "))
    columns = [c.strip() for c in lines[start].split("|")]
    return [dict(zip(columns, (c.strip() for c in line.split("|")))) for line in lines[start + 2:]]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, TRACEFUSE_CUDA="interpret", TRITON_INTERPRET="1", PYTHONPATH=str(ROOT),
               TRACEFUSE_CACHE_DIR=str(folder / "cache"))
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--skip-tests", "--out", str(folder / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, folder / "out"


def test_quick_run_exits_zero(quick_run):
    done, _ = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_final_table_has_a_checked_passing_row_per_section(quick_run):
    done, _ = quick_run
    rows = _table(done.stdout)
    assert [r["section"] for r in rows if r["section"] == "tests"] == ["tests"]
    assert next(r for r in rows if r["section"] == "tests")["status"] == "skipped: --skip-tests"
    for section in BENCHMARK_SECTIONS:
        ours = [r for r in rows if r["section"] == section]
        assert ours, f"no row for {section}"
        for row in ours:
            assert row["status"] == "ok", row
            assert float(row["tracefuse"]) > 0, row
    checked = [r for r in rows if r["error"] != "-"]
    assert {r["section"] for r in checked} == set(BENCHMARK_SECTIONS) - {"cold compile"}
    assert all(float(r["error"]) <= 1e-3 and float(r["ratio"]) > 0 for r in checked)


def test_json_holds_the_same_rows_with_errors_under_tolerance(quick_run):
    done, out = quick_run
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["header"]["tracefuse cuda"] == "interpret"
    rows = data["rows"]
    assert [(r["section"], r["case"]) for r in rows] == [(r["section"], r["case"]) for r in _table(done.stdout)]
    for row in rows:
        if row["error"] is not None:
            assert row["error"] <= row["tolerance"], row
            assert row["ratio"] == pytest.approx(row["tracefuse"] / row["peer"])
    assert "lstm forward" in (out / "gpu_check.log").read_text()


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (in-process runs of main() also need the `interpret` fixture's devices)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_failed_check_is_reported_not_timed_and_fails_the_run(gpu_check, interpret, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(gpu_check.TOLERANCE, "fp32", 0.0)
    status = gpu_check.main(["--quick", "--skip-tests", "--sections", "gru forward", "--out", str(tmp_path)])
    row = _table(capsys.readouterr().out)[-1]
    assert status == 1
    assert row["status"].startswith("FAIL: error ") and row["status"].endswith("> 0e+00, not timed")
    assert row["tracefuse"] == row["peer"] == "-"


def test_a_case_that_raises_is_an_error_row_and_the_rest_still_run(gpu_check, interpret, monkeypatch, tmp_path,
                                                                   capsys):
    def broken(*args):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpu_check, "rnn_forward", broken)
    status = gpu_check.main(["--quick", "--skip-tests", "--sections", "gru forward,clip_grad_norm_",
                             "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = _table(out)
    assert status == 1
    assert [r["status"] for r in rows] == ["skipped: --skip-tests", "error: RuntimeError: kernel exploded", "ok", "ok"]
    assert "Traceback" in (tmp_path / "gpu_check.log").read_text()


def test_unknown_section_is_a_usage_error(gpu_check):
    with pytest.raises(SystemExit) as info:
        gpu_check.parse_args(["--sections", "lstm"])
    assert info.value.code == 2


def test_pytest_counts_read_the_summary_or_a_killed_runs_progress(gpu_check):
    finished = ("..F.s\n=== short test summary info ===\nFAILED tests/x.py::t\n"
                "1 failed, 3 passed, 1 skipped, 9 deselected in 2.10s\n")
    killed = "bringing up nodes...\n..........F. [ 40%]\n....Es\n"
    assert gpu_check.pytest_counts(finished) == {"failed": 1, "passed": 3, "skipped": 1}
    assert gpu_check.pytest_counts(killed) == {"passed": 15, "failed": 1, "error": 1, "skipped": 1}
    assert gpu_check.pytest_counts("125 deselected in 1.36s\n") == {}
