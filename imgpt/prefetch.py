"""The next step's batches, made in a background thread while this step runs."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


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
