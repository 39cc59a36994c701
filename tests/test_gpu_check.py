"""scripts/tools/gpu_check.py, the first command on a GPU box: its smoke mode on the CPU (every check that can run
here passes, one line each), and its CUDA branches that the simulator can run."""
import pytest

from cuda_sim import CudaSim
from scripts.tools import gpu_check


def test_the_gpu_check_smoke_mode_runs_every_check_on_the_cpu(capsys):
    """One line per check; those that need CUDA or two GPUs skip and say why; the rest pass (exit 0)."""
    lines = gpu_check.main(["--smoke"])
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok", "ok", "skip", "ok", "skip", "skip", "skip", "ok"]
    assert [line[5:25].strip() for line in lines] == [name for name, _ in gpu_check.CHECKS]
    assert "largest relative weight difference 0.0e+00" in lines[3] and "1 graph, 0 graph breaks" in lines[-1]
    assert capsys.readouterr().out.splitlines() == lines  # nothing but the checks' lines


def test_the_gpu_check_cuda_branches_under_the_simulator(monkeypatch, capsys):
    """On "cuda" (an H100 with 79 GiB free, simulated): the environment line reads the GPU, its memory and the
    varlen kernel; packed and padded rows agree under bf16 autocast through the (simulated) varlen kernel."""
    with CudaSim(monkeypatch):
        lines = gpu_check.main(["--only", "environment,packed"])
    assert lines[0].startswith("ok   environment") and "1 x NVIDIA H100 80GB HBM3 (sm 9.0), 79.0 of 80.0 GiB free" \
        in lines[0] and "packed rows: varlen kernel" in lines[0]
    assert lines[1].startswith("ok   packed = padded") and "(tolerance 0.02)" in lines[1]


def test_a_failing_check_fails_the_run_with_its_line(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "CHECKS", [("environment", lambda *a: 1 / 0)])
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--smoke"])
    assert e.value.code == 1 and capsys.readouterr().out.startswith("FAIL environment          ZeroDivisionError")
