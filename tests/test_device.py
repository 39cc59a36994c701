"""imgpt/device.py's CPU side: how many threads a run takes, and the one line that says a busy machine cut them
(the CUDA side is tested in test_gpu_path.py and test_cuda_tier.py)."""
import os

import pytest

from imgpt import device
from imgpt.device import cpu_threads, machine_load, usable_cores


@pytest.fixture
def machine(monkeypatch):
    """A 4-core machine whose load the test sets."""
    def at_load(load: float) -> None:
        monkeypatch.setattr(device, "machine_load", lambda: load)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    return at_load


def test_an_idle_machine_gives_a_lone_run_every_core_and_says_nothing(machine, capsys):
    machine(3.9)  # busy, but a core's worth short of full
    assert usable_cores() == 4
    assert cpu_threads(0) == 4
    assert cpu_threads(0, processes=2) == 2  # ranks of one machine share its cores
    assert capsys.readouterr() == ("", "")


def test_a_busy_machine_gives_one_thread_in_one_line(machine, capsys):
    machine(5.25)
    assert cpu_threads(0) == 1
    assert capsys.readouterr() == ("", "busy machine: load 5.2 on 4 cores, so 1 thread (--threads N to choose)\n")
    assert cpu_threads(0, verbose=False) == 1  # other ranks than the first stay quiet
    assert capsys.readouterr() == ("", "")


def test_a_count_given_is_kept_busy_or_not(machine, capsys):
    machine(40.0)
    assert cpu_threads(3) == 3
    machine(0.0)
    assert cpu_threads(1) == 1
    assert capsys.readouterr() == ("", "")


def test_the_load_is_the_minute_average_unless_fewer_threads_run_now(monkeypatch, tmp_path):
    """A run that just ended (the quick start's first) leaves the average near 2 on 2 cores for a minute; the
    threads running now (less this one) show it gone. Without /proc/loadavg the average alone decides."""
    monkeypatch.setattr(os, "getloadavg", lambda: (2.3, 1.0, 0.5))
    proc = tmp_path / "loadavg"
    proc.write_text("2.30 1.00 0.50 1/300 4242\n")  # only this process runs
    assert machine_load(str(proc)) == 0
    proc.write_text("2.30 1.00 0.50 9/300 4242\n")  # 8 others run now: the average is the smaller
    assert machine_load(str(proc)) == 2.3
    proc.write_text("2.30 1.00 0.50 3/300 4242\n")
    assert machine_load(str(proc)) == 2
    assert machine_load(str(tmp_path / "absent")) == 2.3
