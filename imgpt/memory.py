"""GPU memory of one training step, by a model of what it holds, and the micro-batch that fits.

The loss does not depend on how a step is split into micro-batches (loss.py), so the micro-batch is only a speed
and memory knob: on CUDA, train.py picks the largest one whose longest micro-batch fits the free memory by this
model, unless --micro_batch_size is given. A step holds, at its peak (the start of the backward pass):

- fixed, per parameter: fp32 weights 4 B, gradients 4, AdamW's two moments 8, and under autocast the half copy of
  each weight matrix that the forward keeps for backward 2 (18 B in all); DDP's gradient buckets 4 more; the
  --kl_coef reference model 4 more (float32, frozen);
- activations, per token and layer, what backward reads (under bf16 autocast, C = width): the two LayerNorm
  inputs (fp32, 4C each), c_attn's input (2C) and output q, k, v (6C, which attention also keeps), attention's
  output (2C, also c_proj's input), c_fc's input (2C), its output (8C, GELU's input) and GELU's output (8C):
  36C, plus the LayerNorm statistics and attention's log-sum-exp; dropout adds its masks (1 B each, 2C);
- the head, per scored position: the float32 log-softmax over the vocabulary V (4V B) saved for backward, and
  while its backward runs the gradient of the logits in fp32 and bf16 beside it: 14V at the peak. A chunked head
  (--head_chunk) holds that for one chunk of positions only.

tests/test_memory.py checks the activation and head terms against what the step actually saves (saved-tensor
hooks under bf16 autocast on the CPU) at three sizes, within SAVED_TOLERANCE (1%). Not modelled, hence the margin:
the CUDA context and allocator fragmentation, cuBLAS workspaces, kernels' temporary buffers, the transient
gradients of one layer during its backward (counted as one more layer of activations).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from imgpt.cli import UserError
from imgpt.train_config import GPU_MICRO_BATCH  # the most rows per GPU forward: more no longer speed a step up

GiB = 2 ** 30
SAVED_TOLERANCE = 0.01  # |model - measured| / measured of the saved bytes (measured: < 0.06%), tests/test_memory.py
USABLE = 0.9  # of the free memory: the rest for the CUDA context, fragmentation and cuBLAS workspaces


@dataclass(frozen=True)
class StepShape:
    """How the step computes: what changes its memory but not its update."""
    half: bool = True  # bf16/fp16 autocast (else float32 activations)
    dropout: bool = False
    grad_checkpoint: bool = False  # only each block's input is kept; one block is recomputed at a time
    head_chunk: int = 0  # positions per chunk of the head + loss (0: all at once)
    ddp: bool = False
    kl: bool = False  # --kl_coef: a frozen reference model and its logits


def layer_bytes_per_token(n_embd: int, n_head: int, shape: StepShape) -> int:
    """What one block saves for backward per token (see the module docstring): 36C under autocast."""
    h = 2 if shape.half else 4  # bytes of an autocast (half) activation
    C = n_embd
    saved = 2 * 4 * C + h * (C + 3 * C + C + C + 4 * C + 4 * C)  # LN inputs fp32; c_attn in/out, attn out, MLP
    saved += 2 * 2 * 4 + 4 * n_head  # LayerNorm mean and rstd (fp32), attention's log-sum-exp per head
    return saved + (2 * C if shape.dropout else 0)  # dropout masks after attention and MLP (bool)


def head_saved_bytes(n_embd: int, vocab_size: int, shape: StepShape) -> int:
    """What the head and loss save per scored position: ln_f's input (fp32) and statistics, the target and weight;
    then lm_head's half input and the float32 log-softmax, or, chunked, only ln_f's output (fp32), which each
    chunk's recomputation starts from."""
    h = 2 if shape.half else 4
    head = 4 * n_embd if shape.head_chunk else h * n_embd + 4 * vocab_size
    return 4 * n_embd + 8 + head + 8 + 4


def saved_bytes(config, tokens: int, scored: int, shape: StepShape = StepShape()) -> int:
    """The bytes the forward saves for backward, beyond the parameters: activations, head, input ids and
    positions (the half weight copies are counted in fixed_bytes_per_param). config: a GPTConfig."""
    per_layer = layer_bytes_per_token(config.n_embd, config.n_head, shape)
    layers = config.n_layer * (4 * config.n_embd if shape.grad_checkpoint else per_layer)  # checkpointed: inputs
    return tokens * (layers + 16) + scored * head_saved_bytes(config.n_embd, config.vocab_size, shape)


def fixed_bytes_per_param(shape: StepShape) -> int:
    """Weights, gradients and AdamW moments (fp32), the forward's half weight copies, DDP buckets, KL reference."""
    return 16 + (2 if shape.half else 0) + (4 if shape.ddp else 0) + (4 if shape.kl else 0)


def step_peak_bytes(config, n_params: int, tokens: int, scored: int, shape: StepShape = StepShape()) -> int:
    """The peak of one micro-batch's forward and backward: fixed + saved + the head's backward (14V per scored
    position, or per position of one chunk) + one block's transients (its activations once more)."""
    head_rows = min(scored, shape.head_chunk) if shape.head_chunk else scored
    head_peak = head_rows * 14 * config.vocab_size
    if shape.kl:  # the reference's logits and both log-softmaxes in fp32
        head_peak += scored * 12 * config.vocab_size
    transient = tokens * layer_bytes_per_token(config.n_embd, config.n_head, shape)
    return n_params * fixed_bytes_per_param(shape) + saved_bytes(config, tokens, scored, shape) + head_peak + transient


def choose_micro_batch(config, n_params: int, per_rank_batch: int, longest: int, free_bytes: int,
                       shape: StepShape) -> tuple[int, int]:
    """(micro-batch, its peak bytes): the most rows (a divisor of the rank's share of the batch, at most
    GPU_MICRO_BATCH) whose worst micro-batch, rows x the longest example, every position scored (IM), fits
    USABLE of the free memory by step_peak_bytes. 1 if none fits (the caller says so)."""
    budget = int(free_bytes * USABLE)
    peak = lambda rows: step_peak_bytes(config, n_params, rows * longest, rows * longest, shape)  # noqa: E731
    fits = [m for m in range(1, min(per_rank_batch, GPU_MICRO_BATCH) + 1)
            if per_rank_batch % m == 0 and peak(m) <= budget]
    micro = max(fits, default=1)
    return micro, peak(micro)


# ----------------------------------------------------------------------------- a step that ran out of memory

class StepFailed(UserError):
    """A CUDA out-of-memory (or other CUDA) error inside a training step: one line, exit 2, checkpoints as they were."""


def _amount(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1) if found else None


def failure_line(e: BaseException, step: int, micro: int, tokens: int, device: str) -> str:
    """What ran out, in one line: the micro-batch, its tokens, the memory asked and free, and the flag to change."""
    text = str(e)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    where = f"micro-batch of {micro} rows, {tokens} tokens (padded)"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        asked = _amount(text, r"Tried to allocate ([\d.]+ [KMGT]?i?B)") or "?"
        free = _amount(text, r"of which ([\d.]+ [KMGT]?i?B) (?:is )?free")
        if free is None and device.startswith("cuda"):
            with contextlib.suppress(Exception):
                free = f"{torch.cuda.mem_get_info(device)[0] / GiB:.2f} GiB"
        return (f"CUDA out of memory at step {step + 1}: {where} asked {asked} with {free or '?'} free on {device}; "
                f"lower --micro_batch_size (or add --grad_checkpoint / --head_chunk 4096); the last checkpoint is "
                f"as it was")
    return (f"CUDA error at step {step + 1}: {first} ({where} on {device}; rerun with CUDA_LAUNCH_BLOCKING=1 to "
            f"locate it); the last checkpoint is as it was")


def is_device_failure(e: BaseException) -> bool:
    """A CUDA out-of-memory or CUDA error (torch raises these as RuntimeError, or AcceleratorError)."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "CUDA error" in str(e))


@contextlib.contextmanager
def step_failures(step: int, micro: int, tokens: int, device: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory or CUDA error inside the block into StepFailed's one line."""
    try:
        yield
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_device_failure(e):
            raise
        raise StepFailed(failure_line(e, step, micro, tokens, device)) from None


def auto_micro_batch(config, n_params: int, per_rank_batch: int, longest: int, device: str,
                     shape: StepShape) -> tuple[int, str]:
    """(micro-batch, the startup line saying why) for a CUDA run without --micro_batch_size, from the device's
    free memory now (before the model is on it) and the longest example of the training set."""
    free, total = torch.cuda.mem_get_info(device)
    micro, peak = choose_micro_batch(config, n_params, per_rank_batch, longest, free, shape)
    line = (f"micro-batch {micro} per GPU (auto, imgpt/memory.py): its longest, {micro} x {longest} tokens, needs "
            f"~{peak / GiB:.1f} GiB of {free / GiB:.1f} GiB free on {device}; --micro_batch_size sets it")
    if peak > free * USABLE:
        line += " (even 1 row may not fit: add --grad_checkpoint, --head_chunk 4096, or shorten --block_size)"
    return micro, line
