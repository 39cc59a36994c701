"""What a training run is built from: the model and tokenizer, the encoded data and each epoch's plan, the
learning-rate schedule, and the device's settings. Pure setup, shared by train.py and the scripts; the loop
itself is train.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import nn

from data import Example, encode_dataset, epoch_batches, load_split
from mfu import peak_flops
from model import GPT, get_tokenizer, load_model
from runtime import Dist, UserError
from train_config import TrainConfig, scratch_config


def build_model(cfg: TrainConfig) -> tuple[GPT, object]:
    """The initial model and its tokenizer; the same on every rank."""
    if cfg.init_from == "scratch":
        tok = get_tokenizer(cfg.tokenizer or "byte")
        torch.manual_seed(cfg.seed)
        return GPT(scratch_config(cfg, tok.n_vocab)), tok
    model, tok = load_model(cfg.init_from)
    if cfg.tokenizer:
        tok = get_tokenizer(cfg.tokenizer)
    for m in model.modules():  # a pretrained config carries its own dropout; the flag decides here
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
        elif isinstance(getattr(m, "dropout", None), float):  # attention's dropout probability
            m.dropout = cfg.dropout
    model.config.dropout = cfg.dropout
    return model, tok


def build_data(cfg: TrainConfig, tok, max_len: int | None = None) -> tuple[list[Example], list[Example], dict]:
    """Encoded training and held-out examples (deterministic for the seed), plus statistics. Examples are cut to
    block_size + 1 tokens by default: block_size inputs, each predicting the next token."""
    max_len = max_len or cfg.block_size + 1
    train_convs, val_convs = load_split(asdict(cfg))
    train_ex, stats = encode_dataset(train_convs, tok, max_len)
    val_ex, _ = encode_dataset(val_convs, tok, max_len)
    if not train_ex:
        raise UserError(f"{cfg.data}: no training examples left (stats: {stats})")
    return train_ex, val_ex, stats


def lr_at(step: int, total: int, lr: float, min_lr: float, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total`: linear warmup, then the decay."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)  # never 0: a first step at lr 0 would be wasted
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 over the decay
    coeff = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (lr - min_lr)



# ----------------------------------------------------------------------------- batches and the device

def split_sizes(batch: int, micro: int, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) of a batch of `batch` examples over `world` processes."""
    micro = micro or batch // world
    if micro == 0 or batch % (micro * world):
        raise UserError(f"--batch_size {batch} must be divisible by --micro_batch_size {micro} x {world} processes")
    return micro, batch // (micro * world)


def plan_epoch(cfg: TrainConfig, train_ex: list[Example], epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of `epoch`: the same for any rank count, and after a resume."""
    return epoch_batches([len(e.ids) for e in train_ex], cfg.batch_size, cfg.seed, epoch,
                         batch_tokens=cfg.batch_tokens or None)


def use_tf32() -> None:
    """TF32 for float32 matmuls and convolutions, through the fp32_precision API (torch >= 2.9; the old
    allow_tf32 flags are deprecated, and torch refuses a mix of the two)."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def set_up_device(cfg: TrainConfig, d: Dist, amp_dtype: torch.dtype | None) -> float | None:
    """Threads and float modes for this device; returns its peak FLOP/s at the training precision (for MFU),
    None (said once) where unknown."""
    device = d.device
    if device.startswith("cpu"):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # Adam state of unseen embedding rows decays into slow denormal floats
        return None
    if not device.startswith("cuda"):
        return None
    use_tf32()  # float32 runs: TF32 matmuls
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "tf32"}[amp_dtype]
    name = torch.cuda.get_device_name(device)
    if (peak := peak_flops(name, precision)) is None and d.is_main:
        print(f"MFU not logged: no known {precision} peak for {name!r} (mfu.PEAKS)")
    return peak
