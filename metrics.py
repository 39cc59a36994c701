"""The held-out numbers that compare IT with IM fairly, shared by train.py (during training) and eval.py.

Whatever loss a model was trained with, it is measured here the same way: the mean cross-entropy of the output
tokens (assistant content and its end-of-text), under the same template and masks as training. A training loss
cannot be compared across loss modes (IM's includes the instruction tokens); this number can.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data import EOT, OUTPUT_SEGMENTS, PROMPT_SEGMENTS, Batch, Example, answer_start, collate
from imgpt.device import autocast
from imgpt.distributed import Dist, all_reduce_sum
from model import head_positions


def is_output(segs: torch.Tensor) -> torch.Tensor:
    """Which targets the output loss scores: the answer's tokens (assistant content and its end-of-text), whatever
    weights the model was trained with. Also --loss_reduction output's N (loss.step_divisor) counts these."""
    return torch.isin(segs, torch.tensor(OUTPUT_SEGMENTS, device=segs.device))


def segment_loss_sums(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """[output loss sum, output tokens, prompt loss sum, prompt tokens, exact answers, answers] of one batch, from
    one forward pass. The batch's training weights play no part: every output and every prompt token counts once.
    An answer is exact when the most likely token is the right one at each of its positions: the greedy answer from
    the example's training prefix is then the answer, stopped at its end-of-text (what exact_match_rate generates,
    without generating; one answer per example, as in the synthetic task, and it scores exact only there)."""
    is_out = is_output(batch.segs)
    is_prompt = torch.isin(batch.segs, torch.tensor(PROMPT_SEGMENTS, device=batch.segs.device))
    select = head_positions(is_out | is_prompt)  # (N,) the scored positions, flat
    logits = model(batch.idx, pos=batch.pos, doc=batch.doc, select=select)  # (N, V): only the scored positions
    targets = batch.targets.flatten()[select]  # (N,)
    losses = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    out = is_out.flatten()[select]  # which of the N scored positions are output tokens
    rows = select // batch.idx.size(1)  # (N,) the example each scored position belongs to
    wrong = torch.zeros(batch.idx.size(0), device=select.device).index_add_(  # (B,) wrong answer tokens per example
        0, rows[out], (logits[out].argmax(-1) != targets[out]).float())
    answered = is_out.any(1)  # (B,) examples with an answer to score
    return torch.stack([losses[out].sum(), out.sum().float(), losses[~out].sum(), (~out).sum().float(),
                        (answered & (wrong == 0)).sum().float(), answered.sum().float()]).double()


@torch.no_grad()
def segment_losses(model: torch.nn.Module, examples: list[Example], batch_size: int, device: str,
                   dist: Dist | None = None, autocast_dtype: torch.dtype | None = None) -> dict:
    """Mean output and prompt loss, and the exact answers' share, over `examples`; each rank scores its share, the
    sums are all-reduced."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = sorted(examples[rank::world], key=lambda e: len(e.ids))  # similar lengths together: little padding
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i:i + batch_size]).to(device)
        with autocast(device, autocast_dtype):
            sums += segment_loss_sums(model, batch)
    all_reduce_sum(sums)
    model.train(was_training)
    out_sum, out_n, prompt_sum, prompt_n, exact, answered = sums.tolist()
    return {
        "output_loss": out_sum / max(out_n, 1.0),
        "prompt_loss": prompt_sum / max(prompt_n, 1.0),
        "output_tokens": int(out_n),
        "prompt_tokens": int(prompt_n),
        "exact_match": exact / max(answered, 1.0),
    }


def is_exact(new: list[int], answer: list[int], answer_segs: list[int]) -> bool:
    """The generated tokens are the answer; an answer that ends with end-of-text must have stopped there."""
    if answer_segs[-1] == EOT:  # generation stops at end-of-text and leaves it out
        return new == answer[:-1]
    return new[:len(answer)] == answer  # training cut the answer's end: its start is all we know


@torch.no_grad()
def exact_match_rate(model: torch.nn.Module, examples: list[Example], batch_size: int, eos_id: int,
                     dist: Dist | None = None) -> float:
    """Fraction of examples whose greedy answer, from the example's own training prefix, is its answer token for
    token. For short answers (the synthetic task); long ones are for eval.py's BLEU and ROUGE."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = sorted(examples[rank::world], key=lambda e: len(e.ids))
    was_training = model.training
    model.eval()
    hits = torch.zeros(2, dtype=torch.float64)  # [exact answers, examples]
    for i in range(0, len(mine), batch_size):
        chunk = mine[i:i + batch_size]
        starts = [answer_start(e.segs) for e in chunk]
        new = model.generate([e.ids[:s] for e, s in zip(chunk, starts)],
                             max(len(e.ids) - s for e, s in zip(chunk, starts)), eos_id=eos_id)
        hits += torch.tensor([sum(is_exact(n, e.ids[s:], e.segs[s:]) for n, e, s in zip(new, chunk, starts)),
                              len(chunk)], dtype=torch.float64)
    model.train(was_training)
    if dist is not None and dist.enabled:
        hits = all_reduce_sum(hits.to(dist.device)).cpu()
    return hits[0].item() / max(hits[1].item(), 1.0)


# ----------------------------------------------------------------------------- what train.py logs at each evaluation

def eval_record(model: torch.nn.Module, val: list[Example], train_sample: list[Example], bs: int, device: str,
                dist: Dist, amp_dtype, eos_id: int | None = None) -> dict:
    """Held-out output and prompt loss, and the output loss on a fixed sample of the training set. With eos_id
    (short answers: the synthetic task), also greedy exact match on both: held-out, and memorization."""
    with torch.random.fork_rng(devices=[]):  # scoring must not shift training's random streams (exact resume)
        v = segment_losses(model, val, bs, device, dist, amp_dtype)
        t = segment_losses(model, train_sample, bs, device, dist, amp_dtype)
        r = {"val_output_loss": v["output_loss"], "val_prompt_loss": v["prompt_loss"],
             "train_output_loss": t["output_loss"], "train_prompt_loss": t["prompt_loss"]}
        if eos_id is not None:  # the greedy answers' exact match, read from the same forward passes
            r["val_exact_match"] = v["exact_match"]
            if any(answer_start(e.segs) for e in train_sample):  # plain text has no prompt to answer
                r["train_exact_match"] = t["exact_match"]
    return r
