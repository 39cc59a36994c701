"""The device: which one, its float modes and threads, the autocast dtype, and its peak FLOP/s.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys

import torch

from imgpt.cli import UserError


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


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on `device`'s kind in `dtype` (amp_dtype_for's choice); None: plain float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


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
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return f"torch {torch.__version__} has no varlen attention (torch.nn.attention.varlen: torch >= 2.10)"
    if "window_size" not in inspect.signature(varlen_attn).parameters:  # what model.varlen_attention passes
        return (f"torch {torch.__version__}'s varlen_attn takes no window_size (torch 2.10's took is_causal); "
                f"imgpt calls the later form")
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
        print(f"MFU not logged: no known {precision} peak for {name!r} (device.PEAKS)")
    return peak


# ----------------------------------------------------------------------------- model FLOPs utilization
# Model FLOPs utilization: the FLOPs a training step needed, over what the GPU could have done in that time.
#
# FLOPs are counted from what ran, per example, not as 6 x parameters x tokens. That shortcut counts the tied
# embedding/output matrix as if the head ran on every position (with zero-weight positions skipped it runs on
# few), and it leaves out attention and the frozen reference model of --kl_coef. Padding is not counted: MFU
# measures useful work, so padding shows up as a lower MFU. Only matrix multiplies count (layer norms, GELU and
# softmax are a few percent); a backward pass costs twice its forward.

# Dense (no sparsity) tensor-core peaks in FLOP/s, from NVIDIA's data sheets, by the precision the matmuls ran
# in: bf16 (or fp16) autocast, float32 with TF32 matmuls, plain float32. (name parts, peaks): first match wins.
PEAKS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "NVL"), dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    (("H100", "PCIE"), dict(bf16=756e12, tf32=378e12, fp32=51e12)),
    (("H100", "HBM3"), dict(bf16=989e12, tf32=495e12, fp32=67e12)),  # SXM: "NVIDIA H100 80GB HBM3"
    (("H100", "SXM"), dict(bf16=989e12, tf32=495e12, fp32=67e12)),
    (("H200", "NVL"), dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    (("H200",), dict(bf16=989e12, tf32=495e12, fp32=67e12)),  # SXM: "NVIDIA H200"
    (("B200",), dict(bf16=2250e12, tf32=1100e12, fp32=75e12)),
    (("A100",), dict(bf16=312e12, tf32=156e12, fp32=19.5e12)),  # SXM and PCIe alike
    (("L40S",), dict(bf16=362e12, tf32=183e12, fp32=91.6e12)),
]


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a GPU named like torch.cuda.get_device_name() for precision 'bf16', 'fp16', 'tf32' or
    'fp32'; None for a GPU not in the table (an H100 whose name says neither SXM/HBM3 nor PCIe nor NVL too)."""
    name = device_name.upper()
    precision = "bf16" if precision == "fp16" else precision
    return next((peaks[precision] for parts, peaks in PEAKS if all(p in name for p in parts)), None)


def forward_flops(n_layer: int, n_embd: int, vocab_size: int, lengths: list[int], head_positions: int) -> float:
    """FLOPs of one forward pass over documents of `lengths` tokens, the output head on `head_positions` of them.

    Per token and layer the four weight matrices (qkv 3C^2, projection C^2, MLP 8C^2) cost 2 x 12C^2. Causal
    attention over a document of n tokens computes n(n+1)/2 query-key pairs, each a C-long dot product in
    q k^T and again in attention x v: 2 x 2C per pair. The head costs 2CV per scored position."""
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return n_layer * (24 * n_embd**2 * tokens + 4 * n_embd * pairs) + 2 * n_embd * vocab_size * head_positions


def training_flops(n_layer: int, n_embd: int, vocab_size: int, lengths: list[int], head_positions: int,
                   reference: bool = False) -> float:
    """FLOPs of a training step: forward + backward (2x forward) of the model, plus the forward of a frozen
    reference model (--kl_coef) over the same positions."""
    fwd = forward_flops(n_layer, n_embd, vocab_size, lengths, head_positions)
    return 3 * fwd + (fwd if reference else 0.0)
