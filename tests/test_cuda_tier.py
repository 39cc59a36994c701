"""The CUDA-faithful tier: the real programs' GPU paths, run on the CPU under tests/cuda_sim.py, where a tensor on
"cuda" behaves as CUDA's do for placement (mixing it with a CPU tensor raises) and host syncs are counted. Each
test here would fail on a device bug that the CPU-only tests cannot see (the flush of issue 18 was one)."""
import json

import pytest
import torch

import train as T
from cuda_sim import CudaSim, CudaTensor
from test_gpu_path import tiny_run


@pytest.fixture
def sim(monkeypatch):
    with CudaSim(monkeypatch) as s:
        yield s


def log_records(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "log.jsonl")]


def test_training_on_cuda_logs_at_every_interval(tmp_path, sim):
    """Steps, the flush at each log interval (losses and gradient norms read from the device in one go), the
    evaluations and every checkpoint, on "cuda" with bf16 autocast: the path of torchrun train.py on a GPU."""
    summary = T.train(tiny_run(tmp_path, device="cuda", max_steps=4, log_interval=2, eval_interval=2))
    steps = [r for r in log_records(tmp_path / "out") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in steps)
    assert summary["steps"] == 4 and summary["config"]["dtype"] in ("auto", "bfloat16")
