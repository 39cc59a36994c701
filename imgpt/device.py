"""The device: which one, its float modes and threads, the autocast dtype, and its peak FLOP/s.
"""
from __future__ import annotations

import os
import sys

import torch

from imgpt.cli import UserError
from imgpt.mfu import peak_flops


def check_device(device: str) -> None:
    """--device names a kind of device that this torch can use on this machine: checked before any work."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device {device}: {why}; use --device cpu (or auto)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: Apple's MPS is not available here; use --device cpu (or auto)")


def autodetect_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def amp_dtype_for(dtype: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where the GPU has bf16 tensor cores (Ampere and later), else fp16 with
    a gradient scaler (V100, T4: they only emulate bf16, slowly, yet is_bf16_supported() says yes by default);
    None = plain float32."""
    if dtype == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def varlen_problem(half: bool, dropout: float) -> str | None:
    """Why packed rows cannot take CUDA's varlen flash kernel on this torch and GPU (None: they can). Programs
    check before their first step, so a missing kernel is one clear line, not an ImportError or a kernel failure."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no varlen attention (torch.nn.attention.varlen: torch >= 2.10)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"the {torch.cuda.get_device_name()} (compute capability {major}.{minor}) cannot run FlashAttention, "
                f"which needs an Ampere (8.0) or newer GPU")
    if not half:
        return "FlashAttention needs bf16 or fp16 (this run is float32)"
    if dropout > 0:
        return "the varlen kernel runs here without attention dropout (--dropout > 0)"
    return None


def use_tf32() -> None:
    """TF32 for float32 matmuls and convolutions, through the fp32_precision API (torch >= 2.9; the old
    allow_tf32 flags are deprecated, and torch refuses a mix of the two)."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def usable_cores() -> int:
    """The CPU cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_load(proc_loadavg: str = "/proc/loadavg") -> float:
    """How many threads other programs keep running: the last minute's load average, or on Linux the threads
    running right now (less this one) if fewer: a run that just ended, say the quick start's first, still weighs
    on the average for a minute, and must not make the next one think the machine busy."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    try:
        with open(proc_loadavg) as f:  # "0.52 0.58 0.59 3/457 12345": the 4th field is running/existing
            running = int(f.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return load
    return min(load, running)


def cpu_threads(requested: int, processes: int = 1, verbose: bool = True) -> int:
    """--threads: a count given is kept; 0 takes one thread per core this process may use (shared among
    `processes` on the machine), or 1 on a machine already busy: its load above its cores, where threads that
    wait for each other on taken cores made a step 3-5x slower than one thread. That is said in one line."""
    if requested:
        return requested
    cores, load = usable_cores(), machine_load()
    if load > cores > 1:
        if verbose:
            print(f"busy machine: load {load:.1f} on {cores} cores, so 1 thread (--threads N to choose)",
                  file=sys.stderr)  # a note beside the progress bars: stdout may be an answer (sample.py)
        return 1
    return max(1, cores // processes)


def set_up_device(device: str, threads: int, amp_dtype: torch.dtype | None, verbose: bool = True) -> float | None:
    """Threads and float modes for this device; returns its peak FLOP/s at the training precision (for MFU),
    None (said once) where unknown."""
    if device.startswith("cpu"):
        if threads:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(True)  # Adam state of unseen embedding rows decays into slow denormal floats
        return None
    if not device.startswith("cuda"):
        return None
    use_tf32()  # float32 runs: TF32 matmuls
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "tf32"}[amp_dtype]
    name = torch.cuda.get_device_name(device)
    if (peak := peak_flops(name, precision)) is None and verbose:
        print(f"MFU not logged: no known {precision} peak for {name!r} (mfu.PEAKS)")
    return peak
