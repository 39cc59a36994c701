"""The held-out numbers that compare IT with IM fairly, shared by train.py (during training) and eval.py.

Whatever loss a model was trained with, it is measured here the same way: the mean cross-entropy of the output
tokens (assistant content and its end-of-text), under the same template and masks as training. A training loss
cannot be compared across loss modes (IM's includes the instruction tokens); this number can.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from data import ASSISTANT, EOT, SYSTEM, USER, Batch, Example, collate
from runtime import Dist, all_reduce_sum

OUTPUT_SEGMENTS = (ASSISTANT, EOT)
PROMPT_SEGMENTS = (SYSTEM, USER)


def segment_loss_sums(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """[output loss sum, output tokens, prompt loss sum, prompt tokens] of one batch, from one forward pass."""
    is_out = torch.isin(batch.segs, torch.tensor(OUTPUT_SEGMENTS, device=batch.segs.device))
    is_prompt = torch.isin(batch.segs, torch.tensor(PROMPT_SEGMENTS, device=batch.segs.device))
    select = is_out | is_prompt
    logits = model(batch.idx, pos=batch.pos, doc=batch.doc, select=select)  # (N, V): only the scored positions
    losses = F.cross_entropy(logits.float(), batch.targets[select], reduction="none")  # (N,)
    out = is_out[select]  # which of the N scored positions are output tokens
    return torch.stack([losses[out].sum(), out.sum().float(), losses[~out].sum(), (~out).sum().float()]).double()


@torch.no_grad()
def segment_losses(model: torch.nn.Module, examples: list[Example], batch_size: int, device: str,
                   dist: Dist | None = None, autocast_dtype: torch.dtype | None = None) -> dict:
    """Mean output and prompt loss over `examples`; each rank scores its share, the sums are all-reduced."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = sorted(examples[rank::world], key=lambda e: len(e.ids))  # similar lengths together: little padding
    was_training = model.training
    model.eval()
    device_type = torch.device(device).type
    amp = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i:i + batch_size], prompt_loss_weight=0.0).to(device)
        with amp:
            sums += segment_loss_sums(model, batch)
    all_reduce_sum(sums)
    model.train(was_training)
    out_sum, out_n, prompt_sum, prompt_n = sums.tolist()
    return {
        "output_loss": out_sum / max(out_n, 1.0),
        "prompt_loss": prompt_sum / max(prompt_n, 1.0),
        "output_tokens": int(out_n),
        "prompt_tokens": int(prompt_n),
    }
