"""The command line: `python -m tracefuse doctor` runs anywhere, and the CLI never imports torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import ON_GPU

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run_python(*args: str, **environ) -> subprocess.CompletedProcess:
    env = dict(os.environ, **environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_doctor_runs_and_reports_the_stack():
    proc = _run_python("-m", "tracefuse", "doctor")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.lower()
    for word in ("tracefuse", "numpy", "triton", "cuda", "torch"):
        assert word in out, f"{word!r} missing from doctor output:\n{proc.stdout}"


@pytest.mark.parametrize("spec, says", [("interpret:3", "3 logical devices"),
                                        ("", "the CUDA backend: " if ON_GPU else "none: no GPU visible")])
def test_doctor_says_what_cuda_tensors_run_on(spec, says):
    proc = _run_python("-m", "tracefuse", "doctor", TRACEFUSE_CUDA=spec, COLUMNS="200")
    assert proc.returncode == 0, proc.stderr
    assert says in proc.stdout, proc.stdout


def test_importing_the_cli_does_not_import_torch():
    proc = _run_python(
        "-c",
        "import sys, tracefuse, tracefuse.cli; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))",
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", [["--version"], ["doctor", "--help"]])
def test_parser_basics(argv, capsys):
    from tracefuse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "tracefuse" in capsys.readouterr().out


def test_demo_subcommand_exists():
    from tracefuse.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.command == "demo"


def test_dump_writes_the_graphs_a_script_compiles(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(
        "import tracefuse\nfrom tracefuse import nn\n"
        "model = tracefuse.compile(nn.LSTM(4, 8, num_layers=2))\n"
        "model(tracefuse.randn(5, 3, 4))\n"
    )
    out = tmp_path / "dump"
    proc = _run_python("-m", "tracefuse", "dump", "--out", str(out), str(script))
    assert proc.returncode == 0, proc.stderr
    folder = out / "LSTM_1"
    assert {"graph.txt", "optimized.txt", "optimized.dot", "guards.txt", "kernels.txt"} <= {
        p.name for p in folder.iterdir()}
    assert (folder / "optimized.txt").read_text().count("= lstm_layer(") == 2
    assert "L['input'].shape == (5, 3, 4)" in (folder / "guards.txt").read_text()


def test_dump_of_a_script_that_compiles_nothing_fails(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text("print('hello')\n")
    proc = _run_python("-m", "tracefuse", "dump", "--out", str(tmp_path / "d"), str(script))
    assert proc.returncode == 1
    assert "compiled nothing" in proc.stdout


def test_demo_quick_run_learns_without_importing_torch():
    proc = _run_python(
        "-c",
        "import sys; from tracefuse.cli import main; rc = main(['demo', '--quick', '--steps', '30', "
        "'--generate', '20']); assert 'torch' not in sys.modules; sys.exit(rc)",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # 0 means the held-out loss fell
    assert "held-out loss:" in proc.stdout and "--- generated ---" in proc.stdout
