"""Which examples go in each optimizer step: length-grouped batches (or a token budget), the
same plan for any process count and after a resume, cut into micro-batches per rank, the next step's made ahead.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from imgpt.cli import UserError
from imgpt.train_config import TrainConfig


def first_fit(lengths: list[int], order: list[int], cap: int) -> list[list[int]]:
    """Each item (in `order`) into the first row with room left; a new row when none has."""
    rows: list[list[int]] = []
    load: list[int] = []
    for i in order:
        r = next((r for r, used in enumerate(load) if used + lengths[i] <= cap), len(rows))
        if r == len(rows):
            rows.append([])
            load.append(0)
        rows[r].append(i)
        load[r] += lengths[i]
    return rows


def _cut(order: list[int], lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of `order`: at most batch_size examples and (if set) batch_tokens padded tokens."""
    batches: list[list[int]] = []
    for i in order:
        b = batches[-1] if batches else None
        if b is None or len(b) == batch_size or (
                batch_tokens and (len(b) + 1) * max(lengths[j] for j in b + [i]) > batch_tokens):
            batches.append([i])
        else:
            b.append(i)
    return batches


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  batch_tokens: int | None = None, megabatch: int = 50) -> list[list[int]]:
    """The optimizer steps of one epoch (lists of example indices), a pure function of (seed, epoch).

    Grouping (as in Hugging Face's length-grouped sampler): shuffle, sort each run of megabatch * batch_size
    examples by length, cut into batches, shuffle the batches: little padding, yet a random order.
    The last batch may be short. Ranks and micro-batch sizes do not enter, so training resumes exactly.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return _cut(order, lengths, batch_size, batch_tokens)
    size = megabatch * batch_size
    batches = []
    for i in range(0, len(order), size):
        batches += _cut(sorted(order[i:i + size], key=lambda j: -lengths[j]), lengths, batch_size, batch_tokens)
    return [batches[k] for k in rng.permutation(len(batches))]


def micro_batches(batch: list[int], rank: int, world_size: int, accum: int) -> list[list[int]]:
    """This rank's `accum` micro-batches of one step; together over ranks and micro-steps: exactly `batch`.

    Always `accum` lists (some empty when the batch is short), so every rank runs the same number of
    forward/backward passes and DDP cannot deadlock. Chunk j*world_size + rank: at each micro-step the
    ranks hold neighbouring chunks of the length-sorted batch, so they finish at about the same time.
    """
    k = world_size * accum
    bounds = [len(batch) * i // k for i in range(k + 1)]  # chunk sizes differ by at most one
    return [batch[bounds[c]:bounds[c + 1]] for c in (j * world_size + rank for j in range(accum))]


def split_sizes(batch: int, micro: int, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) of a batch of `batch` examples over `world` processes."""
    micro = micro or batch // world
    if micro == 0 or batch % (micro * world):
        raise UserError(f"--batch_size {batch} must be divisible by --micro_batch_size {micro} x {world} processes")
    return micro, batch // (micro * world)


def plan_epoch(cfg: TrainConfig, train_ex: list, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of `epoch`: the same for any rank count, and after a resume."""
    return epoch_batches([len(e.ids) for e in train_ex], cfg.batch_size, cfg.seed, epoch,
                         batch_tokens=cfg.batch_tokens or None)


class Prefetcher:
    """Makes the next step's micro-batches in a background thread while the current step runs on the GPU (the
    plan says which step comes next): `prepare(ids)` must be a pure function of a step's example ids."""

    def __init__(self, prepare: Callable[[list[int]], Any]):
        self.prepare, self.pool, self.ahead = prepare, ThreadPoolExecutor(max_workers=1), None

    def batches(self, plan: list[list[int]], epoch: int, index: int) -> Any:
        """prepare(plan[index]), made ahead if it was; starts making step index + 1's."""
        ready = self.ahead is not None and self.ahead[0] == (epoch, index)
        batches = self.ahead[1].result() if ready else self.prepare(plan[index])
        self.ahead = None
        if index + 1 < len(plan):
            self.ahead = ((epoch, index + 1), self.pool.submit(self.prepare, plan[index + 1]))
        return batches

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
