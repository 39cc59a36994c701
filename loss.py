"""The loss of one optimizer step, computed so that it does not depend on how the step's batch is split.

The step's loss is  sum over every weighted token of w * CE  /  N, with N counted over the WHOLE step: every
micro-batch on every rank (step_divisor: the sum of w, by default). N is counted from the step's examples before
any forward pass (each example carries its weights from the data build), so each micro-batch can divide its own
weighted sum by it and backpropagate at once (micro_batch_loss); gradients add up over micro-batches
(accumulation) and over ranks. Splitting 8 examples as 8 x 1, 2 x 4 or 2 processes x 2 x 2 then gives the same
update (tests/test_train.py checks it to 1e-6). Dividing each micro-batch by its own weight sum instead, the
common shortcut, weights tokens of short micro-batches more: the update then depends on the split.

Read in this order: step_divisor (N, for each --loss_reduction), micro_batch_loss (one micro-batch's share),
run_micro_batches (the forward and backward of one rank's micro-batches).
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data import Batch, Example, collate
from imgpt.device import autocast
from metrics import is_output
from model import GPT, weighted_cross_entropy


# ----------------------------------------------------------------------------- the step's divisor N

def example_totals(examples: list[Example]) -> np.ndarray:
    """(n, 4) float64: each example's [weight sum, output tokens, weighted positions, positions] over its predicted
    positions (every token but the first), read from the weights it carries. Counted once per dataset (train.py's
    setup), so that a step adds up its rows instead of looping over its examples' tokens."""
    n = torch.tensor([len(e.ids) - 1 for e in examples], dtype=torch.long)
    row = torch.repeat_interleave(torch.arange(len(examples)), n)  # (P,) the example of each predicted position
    w = torch.tensor([x for e in examples for x in e.weights[1:]], dtype=torch.float64)  # (P,)
    out = is_output(torch.tensor([s for e in examples for s in e.segs[1:]], dtype=torch.long))  # (P,)
    totals = torch.zeros(len(examples), 4, dtype=torch.float64)
    for column, x in enumerate((w, out.double(), (w != 0).double(), torch.ones_like(w))):
        totals[:, column].index_add_(0, row, x)
    return totals.numpy()


def step_totals(totals: np.ndarray, ids: list[int]) -> dict:
    """The whole step's sums, from its example ids alone. Every rank knows the step's ids, so it counts them
    itself: no all-reduce, no device sync. Summed in float64 over the rows of `ids` in their order, so every split
    of the step gets the same numbers."""
    weight_sum, output_tokens, weighted, positions = totals[list(ids)].sum(0) if len(ids) else (0.0, 0, 0, 0)
    return {"weight_sum": float(weight_sum), "output_tokens": int(output_tokens), "examples": len(ids),
            "weighted_positions": int(weighted), "positions": int(positions)}


def step_divisor(totals: np.ndarray, ids: list[int], reduction: str) -> float:
    """N, what the step's summed w * CE is divided by, for --loss_reduction `reduction` (lambda: the prompt weight;
    w: each token's weight, 1 on outputs, lambda on instructions):

    token     N = sum of w over the step:        (sum_out CE + lambda sum_prompt CE) / (n_out + lambda n_prompt)
              (template tokens, weight 0 by default, add to both; the paper's code: a mean over every trained
              token, so IM's outputs get n_out / (n_out + n_prompt) of it)
    output    N = the number of output tokens:   (sum_out CE + lambda sum_prompt CE) / n_out
              = IT's loss + lambda x the prompt tokens' summed loss on the same scale: the outputs' gradient does
              not shrink as lambda grows (at lambda 0 and template weight 0 it is exactly token)
    sequence  N = the number of examples, each example's weights rescaled to sum to 1 (per_example_weights, which
              step_batches applies as it builds the micro-batches)

    Each N comes from the step's example ids (step_totals), so each is split-invariant."""
    step = step_totals(totals, ids)
    n = {"token": step["weight_sum"], "output": step["output_tokens"], "sequence": step["examples"]}[reduction]
    return max(n, 1e-12)  # every example has an output token, so N > 0: this only guards a division


def per_example_weights(weights: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """Rescale the weights so that each example's sum to 1: the weighted token sum becomes the sum over examples
    of each example's weighted mean (--loss_reduction sequence). doc: (B, T) example id per row, -1 = padding."""
    B, T = weights.shape
    key = torch.arange(B, device=weights.device)[:, None] * (T + 1) + doc + 1  # (B, T) one id per (row, example)
    sums = torch.zeros(B * (T + 1), dtype=weights.dtype, device=weights.device)
    sums.index_add_(0, key.flatten(), weights.flatten())
    denom = sums[key]  # (B, T) the weight sum of each token's example
    return torch.where(denom > 0, weights / denom.clamp_min(1e-30), torch.zeros_like(weights))


def weighted_kl(logits: torch.Tensor, ref_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * KL(p_model,t || p_ref,t) in float32; logits (N, V), weights (N,)."""
    logp, logq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (weights * (logp.exp() * (logp - logq)).sum(-1)).sum()


class StepLoss(nn.Module):
    """The model and its loss in one forward, so that DDP sees the whole computation and syncs its gradients.
    head_chunk > 0 (--head_chunk): the output head and loss run that many scored positions at a time."""

    def __init__(self, model: GPT, skip_zero: bool, neftune_alpha: float, head_chunk: int = 0):
        super().__init__()
        self.model, self.skip_zero, self.neftune_alpha, self.head_chunk = model, skip_zero, neftune_alpha, head_chunk

    def forward(self, idx, targets, weights, pos, doc, select=None, cu_seqlens=None,
                ref_logits=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of w * cross-entropy, sum of w * KL to the reference model) over one micro-batch."""
        if ref_logits is None:  # no KL term; --no-skip_zero runs the head on every position (bench_train's baseline)
            ce, _ = self.model.loss(idx, targets, weights, pos=pos, doc=doc, neftune_alpha=self.neftune_alpha,
                                    select=select if self.skip_zero else None, cu_seqlens=cu_seqlens,
                                    head_chunk=self.head_chunk)
            return ce, torch.zeros_like(ce)
        logits = self.model(idx, pos, doc, select, self.neftune_alpha, cu_seqlens)  # (N, V), as the reference's
        w = weights.flatten()[select]
        ce, _ = weighted_cross_entropy(logits, targets.flatten()[select], w)
        return ce, weighted_kl(logits, ref_logits, w)


# ----------------------------------------------------------------------------- one optimizer step

def step_batches(examples: list[Example], micro: list[list[int]], pack: bool = False, reduction: str = "token",
                 pin: bool = False) -> list[Batch | None]:
    """This rank's micro-batches (None where empty), on the CPU, in pinned memory if `pin` (for fast copies).

    pack: each micro-batch becomes ONE row holding all its examples back to back, with per-document positions
    and cu_seqlens: no padding at all (attention stays inside each document, see GPT.forward)."""
    batches = []
    for ids in micro:
        if not ids:
            batches.append(None)
            continue
        chosen = [examples[i] for i in ids]
        pack_len = sum(len(e.ids) - 1 for e in chosen) if pack else None
        b = collate(chosen, pack_len=pack_len)
        if reduction == "sequence":
            b = dataclasses.replace(b, weights=per_example_weights(b.weights, b.doc))
        batches.append(b.pin_memory() if pin else b)
    return batches


def mark_dynamic(b: Batch) -> None:
    """Tell torch.compile up front that batch shapes vary, so it does not first build a graph for the first
    step's exact shapes and then throw it away at step 2. Padded rows' count is marked unbacked: a backed size
    is specialized at 1, so a one-row micro-batch (the dummy one, a one-example last chunk) compiled a second
    graph. Packed micro-batches are always one row: nothing to mark."""
    for t in (b.idx, b.targets, b.weights, b.pos, b.doc):
        if b.cu_seqlens is None:
            torch._dynamo.decorators.mark_unbacked(t, 0)
        torch._dynamo.maybe_mark_dynamic(t, 1)
    for t in (b.select, b.cu_seqlens):
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def micro_batch_loss(ce: torch.Tensor, kl: torch.Tensor, kl_coef: float, divisor: float, world: int,
                     dummy: bool) -> torch.Tensor:
    """What one micro-batch backpropagates, from its summed weighted cross-entropy `ce` and KL `kl`.

    `divisor` is the step's N (step_divisor), over every micro-batch of every rank. Gradients SUM over
    micro-batches, so accumulation needs no factor of its own; DDP AVERAGES them over the `world` ranks, which
    this loss must undo. A dummy micro-batch (a rank left with no examples in a short last step, joining the
    final gradient all-reduce) must add nothing to the gradients."""
    return (ce + kl_coef * kl) * (world / divisor) * (0.0 if dummy else 1.0)


def run_micro_batches(step_loss: nn.Module, batches: list[Batch | None], dummy: Batch, divisor: float, world: int,
                      ref: GPT | None, kl_coef: float, amp_dtype: torch.dtype | None, scaler) -> torch.Tensor:
    """Forward and backward of this rank's micro-batches (on the device); returns [cross-entropy, KL] of the
    step on this rank, as a device tensor: reading it would wait for the GPU, so the caller decides when.

    Each micro-batch backpropagates micro_batch_loss: its share of the step's loss, so that the gradients of all
    the micro-batches of all ranks add up to the gradient of the whole step's loss.
    """
    parts = []
    last = len(batches) - 1
    for i, b in enumerate(batches):
        if b is None and (i < last or world == 1):
            continue  # nothing to compute, and no gradient sync is due on this micro-step
        sync = i == last
        x = dummy if b is None else b  # a rank with nothing left still joins the final gradient all-reduce
        with contextlib.nullcontext() if sync or world == 1 else step_loss.no_sync():
            with autocast(x.idx.device, amp_dtype):
                ref_logits = None
                if ref is not None:
                    with torch.no_grad():
                        ref_logits = ref(x.idx, x.pos, x.doc, x.select, 0.0, x.cu_seqlens)
                ce, kl = step_loss(x.idx, x.targets, x.weights, x.pos, x.doc, x.select, x.cu_seqlens, ref_logits)
            loss = micro_batch_loss(ce, kl, kl_coef, divisor, world, dummy=b is None)
            scaler.scale(loss).backward()
        if b is not None:
            parts.append(torch.stack([ce.detach(), kl.detach()]))
    if not parts:
        return torch.zeros(2, dtype=torch.float64, device=dummy.idx.device if dummy is not None else "cpu")
    return torch.stack(parts).double().sum(0) / divisor
