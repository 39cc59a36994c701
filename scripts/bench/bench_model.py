"""Benchmark model.py against the reference (transformers' GPT2LMHeadModel) on the same config and batch.

    python -m scripts.bench.bench_model                          # tiny and 124M, every measurement
    python -m scripts.bench.bench_model --sizes tiny --repeats 3 --parts train,memory

Parts: train (forward + backward + the same fused AdamW step for both, fp32 and bf16 autocast), score (forward
only), generate (greedy, 128 new tokens after a 64-token prompt, batch 1 and 8: ours with the KV cache, the
reference's cached generate, and once, at batch 1, ours without a cache), memory (peak resident memory of
training steps). Timings alternate between the two
models, one repeat at a time, so a busy machine slows both alike; medians are printed with ours/reference ratios
(above 1 = ours faster). Memory (Linux): each model runs in a fresh subprocess that takes one training step
(allocating the optimizer state), resets the kernel's peak-RSS counter (/proc/self/clear_refs), takes one more
and reads the peak (VmHWM): peak_mib is the whole process at its highest (weights, optimizer state, gradients,
activations, the imported libraries), step_mib what a step adds on top of what was resident before it.
Weights are random: speed does not depend on their values. Needs transformers (requirements-dev.txt).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import transformers

from imgpt.cli import opt, parse_config, run_cli
from model import GPT, GPTConfig


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where `-m scripts...` runs
SIZES = {"tiny": "tiny", "124M": "gpt2", "350M": "gpt2-medium"}


@dataclass
class BenchConfig:
    sizes: list[str] = opt(["tiny", "124M"], "model sizes: tiny, 124M, 350M")
    parts: list[str] = opt(["train", "score", "generate", "memory"], "what to measure")
    dtypes: list[str] = opt(["fp32", "bf16"], "training precisions (bf16 = autocast)")
    repeats: int = opt(5, "timed repeats per measurement (after one warm-up); medians are reported")
    batch: int = opt(4, "training / scoring batch size")
    seq: int = opt(256, "training / scoring sequence length")
    gen_batches: list[int] = opt([1, 8], "generation batch sizes")
    prompt_len: int = opt(64, "generation prompt length")
    new_tokens: int = opt(128, "tokens generated per row")
    uncached_batches: list[int] = opt([1], "generation batch sizes at which to also time our uncached path (slow)")
    threads: int = opt(0, "torch threads (0 = all cores)")
    json_out: str = opt("", "also write the results to this JSON file")
    memprobe: str = opt("", "internal: 'ours|ref,size,dtype' = measure one training step's memory and exit")

    def validate(self) -> None:
        from imgpt.cli import UserError
        for s in self.sizes:
            if s not in SIZES:
                raise UserError(f"--sizes: unknown size {s!r} (choose from {', '.join(SIZES)})")


# ----------------------------------------------------------------------------- the two models

def build(which: str, size: str) -> torch.nn.Module:
    cfg = GPTConfig.preset(SIZES[size])
    if which == "ours":
        return GPT(cfg)
    hf = transformers.GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
                                 n_positions=cfg.block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                 bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return transformers.GPT2LMHeadModel(hf)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same optimizer for both models, so the comparison is of the models: our configure_optimizers' fused
    AdamW, which is also what transformers' Trainer uses by default (adamw_torch_fused)."""
    return GPT.configure_optimizers(model, weight_decay=0.1, learning_rate=1e-4)


def train_step(which: str, model, optimizer, idx: torch.Tensor, dtype: str) -> Callable[[], None]:
    """One step predicting idx[:, 1:] from idx[:, :-1] (both models compute the same T - 1 losses)."""
    targets, weights = idx.roll(-1, dims=1), torch.ones(idx.shape)
    weights[:, -1] = 0

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if which == "ours":
                loss_sum, weight_sum = model.loss(idx, targets, weights)
                loss = loss_sum / weight_sum
            else:
                loss = model(input_ids=idx, labels=idx).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run once to warm up and then `repeats` times, taking turns."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- the measurements

def bench_train(cfg: BenchConfig, size: str, dtype: str) -> dict:
    models = {w: build(w, size).train() for w in ("ours", "ref")}
    idx = torch.randint(0, models["ours"].config.vocab_size, (cfg.batch, cfg.seq))
    steps = {w: train_step(w, m, adamw(m), idx, dtype) for w, m in models.items()}
    t = alternate(steps, cfg.repeats)
    tokens = cfg.batch * cfg.seq
    return {"ours_tok_s": tokens / t["ours"], "ref_tok_s": tokens / t["ref"], "ratio": t["ref"] / t["ours"]}


def bench_score(cfg: BenchConfig, size: str) -> dict:
    ours, ref = build("ours", size).eval(), build("ref", size).eval()
    idx = torch.randint(0, ours.config.vocab_size, (cfg.batch, cfg.seq))
    with torch.inference_mode():
        t = alternate({"ours": lambda: ours(idx), "ref": lambda: ref(input_ids=idx).logits}, cfg.repeats)
    tokens = cfg.batch * cfg.seq
    return {"ours_tok_s": tokens / t["ours"], "ref_tok_s": tokens / t["ref"], "ratio": t["ref"] / t["ours"]}


def bench_generate(cfg: BenchConfig, size: str, batch: int) -> dict:
    ours, ref = build("ours", size).eval(), build("ref", size).eval()
    prompt = torch.randint(0, ours.config.vocab_size, (batch, cfg.prompt_len))
    n = cfg.new_tokens
    fns = {"ours": lambda: ours.generate(prompt, n),
           "ref": lambda: ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, use_cache=True)}
    t = alternate(fns, cfg.repeats)
    tokens = batch * n
    result = {"ours_tok_s": tokens / t["ours"], "ref_tok_s": tokens / t["ref"], "ratio": t["ref"] / t["ours"]}
    if batch in cfg.uncached_batches:  # one run: it recomputes the whole sequence for every new token
        uncached = timed(lambda: ours.generate(prompt, n, use_cache=False))
        result |= {"ours_uncached_tok_s": tokens / uncached, "cache_speedup": uncached / t["ours"]}
    return result


def resident_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memprobe(spec: str, cfg: BenchConfig) -> None:
    """In a fresh process: peak resident memory (MiB) of steady-state training steps, printed as JSON."""
    which, size, dtype = spec.split(",")
    model = build(which, size).train()
    idx = torch.randint(0, model.config.vocab_size, (cfg.batch, cfg.seq))
    step = train_step(which, model, adamw(model), idx, dtype)
    step()  # the first step allocates the optimizer state
    before = resident_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak (VmHWM) to the current resident size
    step()
    peak = resident_mib("VmHWM")
    print(json.dumps({"resident_mib": before, "peak_mib": peak, "step_mib": peak - before}))


def bench_memory(cfg: BenchConfig, size: str, dtype: str) -> dict:
    out = {}
    for which in ("ours", "ref"):
        cmd = [sys.executable, "-m", "scripts.bench.bench_model", "--memprobe", f"{which},{size},{dtype}",
               "--batch", str(cfg.batch), "--seq", str(cfg.seq), "--threads", str(cfg.threads)]
        result = json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
                            .splitlines()[-1])
        out[f"{which}_step_mib"], out[f"{which}_peak_mib"] = result["step_mib"], result["peak_mib"]
    out["ratio"] = out["ours_peak_mib"] / out["ref_peak_mib"]
    return out


# ----------------------------------------------------------------------------- report

def show(name: str, r: dict) -> None:
    cells = "  ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
    print(f"{name:<28} {cells}", flush=True)


def main() -> None:
    cfg = parse_config(BenchConfig, description=__doc__)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.set_flush_denormal(True)  # Adam's state for rarely seen tokens decays into slow denormal floats
    transformers.logging.set_verbosity_error()
    if cfg.memprobe:
        return memprobe(cfg.memprobe, cfg)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"train/score batch {cfg.batch}x{cfg.seq}, {cfg.repeats} repeats; ratio = ours / reference speed")
    results = {}
    for size in cfg.sizes:
        torch.manual_seed(0)
        jobs: list[tuple[str, Callable[[], dict]]] = []
        if "train" in cfg.parts:
            jobs += [(f"train {size} {d}", lambda d=d: bench_train(cfg, size, d)) for d in cfg.dtypes]
        if "score" in cfg.parts:
            jobs.append((f"score {size} fp32", lambda: bench_score(cfg, size)))
        if "generate" in cfg.parts:
            jobs += [(f"generate {size} batch {b}", lambda b=b: bench_generate(cfg, size, b)) for b in cfg.gen_batches]
        if "memory" in cfg.parts:
            jobs += [(f"memory {size} {d} (MiB)", lambda d=d: bench_memory(cfg, size, d)) for d in cfg.dtypes]
        for name, job in jobs:
            results[name] = job()
            show(name, results[name])
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    run_cli(main)
