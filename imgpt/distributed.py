"""Processes: torchrun's process group, sums over ranks, one download per node, and a Ctrl-C
that waits for the step to end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import threading

import torch
import torch.distributed as dist

from imgpt.device import autodetect_device

# How long the other ranks wait for local rank 0's download (gpt2-xl is 6 GB): their own barrier, in a gloo group
# with this timeout, not the NCCL group's default of 10 minutes, which a slow download would exceed and kill the job.
DOWNLOAD_TIMEOUT = datetime.timedelta(hours=2)
# How long the other ranks wait while rank 0 writes a checkpoint (ckpt.pt is ~19 GB at 1.5B parameters, fsynced: 30
# minutes is ~11 MB/s, slow network storage): at a barrier of a gloo group with this timeout, on the CPU, instead of
# in the next NCCL collective, whose watchdog (COLLECTIVE_TIMEOUT) would kill the job first.
CHECKPOINT_TIMEOUT = datetime.timedelta(minutes=30)
# The process group's own timeout, stated (torch's default for NCCL): the longest a collective waits for a healthy
# rank. Downloads and checkpoint writes wait in their own groups, above; a step or an evaluation takes far less.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@contextlib.contextmanager
def local_rank_zero_first(d: "Dist"):
    """Run the block on each node's local rank 0 first (it downloads), then on the other ranks (they find
    the files in the cache): one download per node instead of one per process. The ranks wait for each other in
    a gloo group made for it, with DOWNLOAD_TIMEOUT (every rank must enter: new_group is a collective), and
    destroyed after the wait so that a program calling this twice (eval after train) holds no stale group."""
    group = dist.new_group(backend="gloo", timeout=DOWNLOAD_TIMEOUT) if d.enabled else None
    if d.enabled and d.local_rank != 0:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if d.enabled and d.local_rank == 0:
            dist.barrier(group=group)
        if group is not None:
            dist.destroy_process_group(group)


@contextlib.contextmanager
def others_wait_for_rank_zero(d: "Dist", timeout: datetime.timedelta = CHECKPOINT_TIMEOUT):
    """Every rank enters the block (rank 0 writes a file in it); at its end all meet at a barrier of a gloo group
    made with `timeout`, so the other ranks wait for the write there, not in the next collective. The group is
    made by every rank (new_group is a collective) and destroyed after the wait."""
    group = dist.new_group(backend="gloo", timeout=timeout) if d.enabled else None
    try:
        yield
    finally:
        if group is not None:
            dist.barrier(group=group)
            dist.destroy_process_group(group)


class StopAtStepBoundary:
    """While active, Ctrl-C (SIGINT) and SIGTERM only set `requested`: the training loop finishes the step it is in
    and then stops. A signal handled mid-step would tear it: the weights moved by the fused optimizer kernel but
    the step counter not, or the random streams advanced by this step's dropout and noise draws. A second Ctrl-C
    quits at once. Handlers can only be set in the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: the user wants out now
        self.requested = True

    def __enter__(self) -> "StopAtStepBoundary":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class Dist:
    """Where this process stands: rank 0 of 1 without torchrun."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (NCCL on CUDA, gloo on CPU); otherwise a single process."""
    device = autodetect_device() if device == "auto" else device
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if device.startswith("cuda:"):  # else the capability check and the saved CUDA random state are GPU 0's
            torch.cuda.set_device(device)
        return Dist(device=device)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device), timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def join_distributed(device: str) -> tuple[Dist, bool]:
    """Join torchrun's process group; or use one the caller set up (then the caller also destroys it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return init_distributed(device), True
    device = autodetect_device() if device == "auto" else device
    if device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
    rank = dist.get_rank()
    return Dist(rank, int(os.environ.get("LOCAL_RANK", rank)), dist.get_world_size(), device), False


def sum_over_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks, on this rank's device (NCCL only takes GPU tensors, gloo CPU ones); the result stays there,
    so the caller reads it together with the other device numbers, in one wait."""
    return all_reduce_sum(t.to(d.device, non_blocking=True))


def stop_requested(signals: StopAtStepBoundary, d: Dist, step: int, interval: int) -> bool:
    """Whether any rank got the signal: all ranks then stop at the same step (a rank that stopped alone would
    leave the others waiting in a collective). Under torchrun the ranks agree by an all-reduce, which waits for
    the device: only every `interval` steps (the log interval, where flush waits anyway), so a signal stops the
    run within `interval` steps and no other step syncs. A single process checks its flag at every step."""
    if not d.enabled:
        return signals.requested
    if step % interval:
        return False
    return sum_over_ranks(torch.tensor([float(signals.requested)]), d).item() > 0
