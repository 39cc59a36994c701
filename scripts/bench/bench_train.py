"""Benchmark train.py's optimizer step for IT and IM, with and without skipping the zero-weight positions.

    python -m scripts.bench.bench_train                          # tiny (byte vocab), tiny-bpe, 124M on this machine
    python -m scripts.bench.bench_train --sizes tiny-bpe         # one size, its default batch and rounds
    python -m scripts.bench.bench_train --sizes tiny --rounds 20 --no-memory

Data: the built-in synthetic task with long instructions (--facts stated facts per instruction; the printed
instruction/output ratio is >= 3). Under IT only the outputs (~1/8 of the tokens here) carry weight, so with
skip_zero the other positions never reach ln_f, the output head and the cross-entropy. What that saves depends
on the head's share of the step: small with the byte vocabulary (257 x 128), large with GPT-2's (50257 x d).
Sizes: tiny = the tiny preset with the byte tokenizer (what `python train.py` trains); tiny-bpe = the same
model with the GPT-2 tokenizer and vocabulary; 124M = the gpt2 preset from scratch with the GPT-2 tokenizer.
The GPT-2 BPE comes from ../shared/data/gpt2 or tiktoken's cache; sizes that need it are skipped without it.

Each size builds ONE training session through train.setup (the real step: collate, forward, backward, AdamW)
and alternates the four settings (IT/IM x skip on/off) step by step on the same batches, so a busy machine
slows all alike; medians are printed with ratios. On a shared machine --threads 1 gives steadier numbers.
Peak memory: on CUDA the allocator's peak per setting; on CPU (Linux) each setting runs in a fresh subprocess
that resets the peak resident size after setup and reads it after two steps: what a step needs beyond the
weights (activations, gradients, optimizer state). The weights keep training while timed: speed does not
depend on their values.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import loss as L
import train as T
from data import collate, make_example, useful_fraction
from imgpt.batching import plan_epoch
from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.device import autodetect_device
from imgpt.distributed import Dist
from imgpt.tokenizers import get_tokenizer
from imgpt.train_config import resolve


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2_BPE = os.path.join(os.path.dirname(ROOT), "shared", "data", "gpt2")
SIZES = {"tiny": ("tiny", "byte"), "tiny-bpe": ("tiny", "gpt2"), "124M": ("gpt2", "gpt2")}
SETTINGS = [(loss, skip) for loss in ("it", "im") for skip in (True, False)]
DEFAULT_BATCH = {"tiny": 8, "tiny-bpe": 8, "124M": 8}
DEFAULT_ROUNDS = {"tiny": 12, "tiny-bpe": 12, "124M": 3}  # the 124M step takes seconds on a CPU


@dataclass
class BenchConfig:
    sizes: list[str] = opt(["tiny", "tiny-bpe", "124M"], "model sizes: tiny, tiny-bpe, 124M")
    facts: int = opt(6, "facts stated per instruction (the instruction/output length ratio)")
    batch: list[int] = opt([], "examples per step: one value for all sizes, or one per size "
                               "(empty = 8 for each)")
    rounds: list[int] = opt([], "timed steps per setting after one warm-up step: one value, or one per size "
                                "(empty = 12, and 3 for 124M)")
    device: str = opt("auto", "auto | cpu | cuda")
    threads: int = opt(0, "CPU threads (0 = torch's default)")
    dtype: str = opt("auto", "auto (bf16 on CUDA) | float32 | bfloat16")
    memory: bool = opt(True, "measure peak memory")
    probe: str = opt("", "internal: 'size,loss,skip' runs one memory probe and prints its result")

    def validate(self) -> None:
        if unknown := [s for s in self.sizes if s not in SIZES]:
            raise UserError(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(SIZES)}")
        for name in ("batch", "rounds"):
            if len(getattr(self, name)) not in (0, 1, len(self.sizes)):
                raise UserError(f"--{name}: give one value, or one per size ({len(self.sizes)} sizes), "
                                f"got {len(getattr(self, name))}")

    def for_size(self, name: str, size: str) -> int:
        """--batch or --rounds of one size: its own value, the one value given for all, or its default."""
        given = getattr(self, name)
        if not given:
            return (DEFAULT_BATCH if name == "batch" else DEFAULT_ROUNDS)[size]
        return given[0] if len(given) == 1 else given[self.sizes.index(size)]


def tokenizer_for(kind: str) -> str | None:
    """'byte', or a GPT-2 BPE source that works offline (None when there is none)."""
    if kind == "byte":
        return "byte"
    if os.path.isfile(os.path.join(GPT2_BPE, "encoder.json")):
        return GPT2_BPE
    try:
        get_tokenizer("gpt2")
        return "gpt2"
    except UserError:
        return None


def session(cfg: BenchConfig, size: str) -> T.Session | None:
    """A real training session (train.setup) for this size, quietly; None if its tokenizer is unavailable."""
    preset, kind = SIZES[size]
    tok = tokenizer_for(kind)
    if tok is None:
        return None
    batch = cfg.for_size("batch", size)
    tcfg = T.TrainConfig(out_dir=tempfile.mkdtemp(prefix="bench_train"), model=preset, tokenizer=tok,
                         synth_examples=200, val_size=8, synth_facts=cfg.facts, batch_size=batch,
                         micro_batch_size=batch, max_steps=10_000, eval_interval=0, save=False,
                         block_size=256, device=autodetect_device() if cfg.device == "auto" else cfg.device,
                         dtype=cfg.dtype, threads=cfg.threads)
    with contextlib.redirect_stdout(io.StringIO()):
        return T.setup(resolve(tcfg), Dist(device=tcfg.device))


def use(s: T.Session, loss: str, skip: bool) -> None:
    """Switch the session between the four settings: the weights of the batch, and the seam in the model."""
    s.cfg = dataclasses.replace(s.cfg, loss=loss, prompt_loss_weight=1.0 if loss == "im" else 0.0)
    s.train = [make_example(e.ids, e.segs, s.cfg.prompt_loss_weight, s.cfg.template_loss_weight) for e in s.train]
    s.totals = L.example_totals(s.train)  # the step's sums, from the weights the examples now carry
    s.step_loss.skip_zero = skip


def data_stats(s: T.Session, plan: list[list[int]]) -> dict:
    """Instruction/output token ratio, useful (non-padding) fraction, weighted fraction under IT and IM."""
    batches = [collate([s.train[i] for i in ids]) for ids in plan]
    segs = torch.cat([b.segs.flatten() for b in batches])
    prompt, output = ((segs == 1) | (segs == 2)).sum().item(), ((segs == 3) | (segs == 4)).sum().item()
    real = sum((b.doc >= 0).sum().item() for b in batches)
    return {"ratio": prompt / output, "useful": statistics.mean(useful_fraction(b) for b in batches),
            "weighted_it": output / real, "weighted_im": (prompt + output) / real}


def timed_step(s: T.Session, ids: list[int]) -> dict:
    """One real optimizer step (collate, forward, backward, AdamW), read back at once: its log record."""
    s.clock = time.perf_counter()
    T.train_step(s, ids, T.prepare(s, ids))
    return T.flush(s)[-1]  # waits for the device, so the step's time is all in


def timings(s: T.Session, plan: list[list[int]], rounds: int) -> dict:
    """Median tokens/s and step time per setting, alternating settings step by step; CUDA peak memory."""
    speeds: dict = {k: [] for k in SETTINGS}
    peaks: dict = {k: 0 for k in SETTINGS}
    cuda = s.dist.device.startswith("cuda")
    for r in range(rounds + 1):
        for loss, skip in SETTINGS:
            use(s, loss, skip)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            rec = timed_step(s, plan[r % len(plan)])
            if cuda:
                peaks[(loss, skip)] = max(peaks[(loss, skip)], torch.cuda.max_memory_allocated() / 2**20)
            if r > 0:  # the first round warms up (allocations, optimizer state)
                speeds[(loss, skip)].append((rec["tokens_per_s"], rec["step_time"]))
    return {k: {"tokens_per_s": statistics.median(t for t, _ in v), "peak_mb": peaks[k] if cuda else None,
                "step_ms": 1000 * statistics.median(d for _, d in v)} for k, v in speeds.items()}


def resident_kib() -> dict[str, int]:
    status = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def probe(cfg: BenchConfig) -> None:
    """In a fresh process: peak resident memory over two steps of one setting, above the memory before them."""
    size, loss, skip = cfg.probe.split(",")
    s = session(cfg, size)
    use(s, loss, skip == "True")
    plan = plan_epoch(s.cfg, s.train, 0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident size (VmHWM) to the current one
    before = resident_kib()["VmRSS"]
    for ids in plan[:2]:
        timed_step(s, ids)
    print((resident_kib()["VmHWM"] - before) / 1024)


def cpu_peaks(cfg: BenchConfig, size: str) -> dict:
    args = [f"--facts={cfg.facts}", f"--sizes={size}", f"--batch={cfg.for_size('batch', size)}", "--rounds=1",
            f"--device={cfg.device}", f"--dtype={cfg.dtype}", f"--threads={cfg.threads}"]
    probe = [sys.executable, "-m", "scripts.bench.bench_train", *args]
    return {(loss, skip): float(subprocess.run(probe + [f"--probe={size},{loss},{skip}"], cwd=ROOT,
                                               capture_output=True, text=True, check=True).stdout.split()[-1])
            for loss, skip in SETTINGS}


def bench(cfg: BenchConfig, size: str) -> None:
    s = session(cfg, size)
    if s is None:
        print(f"\n{size}: skipped (no GPT-2 BPE offline: ../shared/data/gpt2 or tiktoken's cache)")
        return
    plan = plan_epoch(s.cfg, s.train, 0)
    d = data_stats(s, plan)
    r = timings(s, plan, cfg.for_size("rounds", size))
    if cfg.memory and not s.dist.device.startswith("cuda") and os.path.exists("/proc/self/clear_refs"):
        for k, mb in cpu_peaks(cfg, size).items():
            r[k]["peak_mb"] = mb
    print(f"\n{size}: {s.model.num_params() / 1e6:.1f}M parameters, vocab {s.model.config.vocab_size}, "
          f"batch {s.cfg.batch_size}, {s.dist.device}, dtype {s.cfg.dtype}; instruction/output ratio {d['ratio']:.1f}, "
          f"useful (non-padding) fraction {d['useful']:.3f}, weighted fraction IT {d['weighted_it']:.3f} / "
          f"IM {d['weighted_im']:.3f}")
    print(f"  {'loss':4} {'skip_zero':9} {'tokens/s':>10} {'step ms':>9} {'peak MiB':>9}")
    for (loss, skip), v in r.items():
        peak = f"{v['peak_mb']:9.0f}" if v["peak_mb"] is not None else f"{'-':>9}"
        print(f"  {loss:4} {str(skip):9} {v['tokens_per_s']:10.0f} {v['step_ms']:9.1f} {peak}")
    tps = {k: v["tokens_per_s"] for k, v in r.items()}
    print(f"  IT skip / IT no-skip {tps[('it', True)] / tps[('it', False)]:.2f}x   "
          f"IM skip / IM no-skip {tps[('im', True)] / tps[('im', False)]:.2f}x   "
          f"IT skip / IM skip {tps[('it', True)] / tps[('im', True)]:.2f}x")


def main() -> None:
    cfg = parse_config(BenchConfig, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.probe:
        return probe(cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in cfg.sizes:
        bench(cfg, size)


if __name__ == "__main__":
    run_cli(main)
