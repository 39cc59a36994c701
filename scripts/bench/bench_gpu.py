"""The GPU benchmark: training-step throughput, MFU and peak memory of our real step against transformers.

    python -m scripts.bench.bench_gpu                          # one GPU: GPT-2 124M, bf16, every variant (< 5 min)
    python -m scripts.bench.bench_gpu --device cpu --smoke     # the same logic on a tiny model in seconds (tested)

Random GPT-2 124M weights, random tokens with realistic loss weights (IT: output tokens only) in three length
mixes: `alpaca` (~20 instruction + ~150 output tokens), `lima` (~60 + ~600, cut at 1024: very uneven) and
`t1024` (every example 1024 tokens), batched as training batches them (length-grouped; the median step). Each mix runs as padded rows (`unpacked`) and as one padding-free row
per micro-batch (`packed`: varlen attention on CUDA, the dense mask on CPU), eager and torch.compile'd: the
step is train.py's (loss.step_batches, StepLoss, run_micro_batches, fused AdamW, bf16 autocast). The reference
is transformers' GPT2LMHeadModel (attn_implementation sdpa, and flash_attention_2 when flash-attn is
installed) on the same padded rows with labels -100 at weight 0 and the same fused AdamW, in this process.
Two ratios against it: end to end (ours as train.py runs it, skipping weight-0 positions in the head, vs the
reference as users call it, with a padding mask) and like for like (`same-work` variants: ours with logits at every
position vs the reference without the mask: the same work). Neither side's collation is timed; both copy their rows
to the device inside the step, from pinned memory on CUDA. The compiled variants' compiler counters are read: one
that compiled no graph ran eager, and fails the run (after the results are written).

MFU divides the FLOPs of the useful work (device.training_flops: real tokens, causal attention per example, the
head on the weighted positions) by the step time and the GPU's bf16 peak; every variant is credited with the
same work, so MFU ratios are speed ratios. Targets (issue 9, one H100/H200): MFU >= 40% on t1024 packed;
ours >= 1.3x the sdpa reference on alpaca; packed >= 1.5x unpacked on lima. --out writes the results as JSON.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

import loss as L
from data import ASSISTANT, USER, Example, make_example
from imgpt.batching import epoch_batches
from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.device import autocast, autodetect_device, peak_flops, training_flops, use_tf32, varlen_problem
from model import GPT, GPTConfig


# (prompt tokens mean, output tokens mean, examples per micro-batch); lengths are drawn log-normal around them
MIXES = {"alpaca": (20, 150, 32), "lima": (60, 600, 8), "t1024": (None, None, 8)}
# Variants doing the same work as each other: ours with logits at every position (--no-skip_zero), the reference
# without an attention mask (causal attention is exact for every real token of a right-padded row, as ours runs).
LIKE = " same-work"


@dataclass
class BenchGPUConfig:
    device: str = opt("auto", "auto | cuda | cpu")
    smoke: bool = opt(False, "tiny model, short lengths, 2 steps: checks the script end to end in seconds")
    mixes: list[str] = opt(list(MIXES), "length mixes: alpaca, lima, t1024")
    steps: int = opt(10, "timed steps per variant (after --warmup untimed ones); the median is reported")
    warmup: int = opt(3, "untimed steps per variant (compilation, allocator, optimizer state)")
    compile: bool = opt(True, "also time the torch.compile'd step")
    reference: bool = opt(True, "also time transformers' GPT2LMHeadModel (sdpa; flash_attention_2 if installed)")
    dtype: str = opt("bfloat16", "bfloat16 | float32 (autocast dtype of every variant)")
    threads: int = opt(0, "CPU threads (0 = torch's default)")
    out: str = opt("", "write the results to this JSON file")

    def validate(self) -> None:
        if unknown := [m for m in self.mixes if m not in MIXES]:
            raise UserError(f"--mixes: unknown {', '.join(unknown)} (choose from {', '.join(MIXES)})")
        if self.dtype not in ("bfloat16", "float32"):
            raise UserError(f"--dtype must be bfloat16 or float32, got {self.dtype!r}")
        if self.steps < 1 or self.warmup < 0:
            raise UserError("--steps must be >= 1 and --warmup >= 0")


# ----------------------------------------------------------------------------- data and models

def model_config(smoke: bool) -> GPTConfig:
    if smoke:
        return GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=128)
    return GPTConfig.preset("gpt2")


def mix_examples(mix: str, config: GPTConfig, n: int, seed: int = 0) -> list[Example]:
    """n examples of one length mix, random token ids, prompt then output segments; at most block_size + 1."""
    rng = np.random.default_rng(seed)
    prompt_mean, output_mean, _ = MIXES[mix]
    top, scale = config.block_size + 1, config.block_size / 1024  # smoke: lengths shrink with the context
    out = []
    for _ in range(n):
        if prompt_mean is None:
            p, o = top // 4, top - top // 4
        else:
            p = max(1, int(rng.lognormal(np.log(prompt_mean * scale), 0.6)))
            o = max(1, int(rng.lognormal(np.log(output_mean * scale), 0.8)))
            p, o = min(p, top // 2), min(o, top - min(p, top // 2))
        ids = rng.integers(0, config.vocab_size, p + o).tolist()
        out.append(make_example(ids, [USER] * p + [ASSISTANT] * o, prompt_loss_weight=0.0))
    return out


def typical_step(ex: list[Example], batch: int) -> list[int]:
    """The example ids of one optimizer step as training groups them (imgpt.batching.epoch_batches: similar lengths
    together), the step with the median token count of an epoch's plan."""
    plan = epoch_batches([len(e.ids) for e in ex], batch, seed=0, epoch=0)
    plan = sorted((b for b in plan if len(b) == batch), key=lambda b: sum(len(ex[i].ids) for i in b))
    return plan[len(plan) // 2]


def reference_models(config: GPTConfig) -> dict[str, torch.nn.Module]:
    """transformers' GPT-2 with sdpa, and with flash_attention_2 where flash-attn is installed."""
    try:
        import transformers
    except ImportError:
        print("reference skipped: transformers is not installed (requirements-dev.txt)")
        return {}
    def gpt2(attention: str):
        hf = transformers.GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                     vocab_size=config.vocab_size, n_positions=config.block_size, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                     attn_implementation=attention)
        return transformers.GPT2LMHeadModel(hf)

    models = {"hf-sdpa": gpt2("sdpa")}
    try:
        import flash_attn  # noqa: F401
        models["hf-flash2"] = gpt2("flash_attention_2")
    except Exception as e:  # not installed, or no supported GPU
        print(f"reference flash_attention_2 skipped ({type(e).__name__})")
    return models


# ----------------------------------------------------------------------------- one training step each

def our_step(engine, model: GPT, optimizer, batches: list, divisor: float, amp_dtype, device: str,
             dynamic: bool = False):
    """train.py's step: the micro-batches' copy to the device (from pinned memory on CUDA, as train.py's), forward
    and backward, then AdamW; their collation is not timed, as the reference's is not. dynamic (compiled engines):
    mark the lengths dynamic on the device copies, as train.py does; .to() makes new tensors, without the marks."""
    def step() -> None:
        on_device = [b.to(device) for b in batches]
        for b in on_device if dynamic else []:
            L.mark_dynamic(b)
        L.run_micro_batches(engine, on_device, None, divisor, 1, None, 0.0, amp_dtype, _NO_SCALER)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


class _NoScaler:  # bf16 and float32 need no loss scaling
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss


_NO_SCALER = _NoScaler()


def reference_step(model, optimizer, batches: list, amp, device: str, masked: bool = True):
    """The same padded rows through GPT2LMHeadModel, labels -100 at weight 0, copied to the device inside the step
    from pinned memory as ours are. masked: an attention_mask for the padding, as users call it (end to end);
    without it the work is ours with --no-skip_zero (logits at every position, causal attention, exact for every
    real token of a right-padded row): like for like."""
    pin = device.startswith("cuda")
    rows = []
    for b in batches:
        labels = torch.where(b.weights > 0, b.targets, -100)
        row = (b.idx, (b.doc >= 0).long(), labels)
        rows.append(tuple(t.pin_memory() for t in row) if pin else row)

    def step() -> None:
        for idx, mask, labels in ((t.to(device, non_blocking=True) for t in row) for row in rows):
            mask = mask if masked else None
            with amp:
                logits = model(input_ids=idx, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                     ignore_index=-100, reduction="sum")
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timed(step, steps: int, warmup: int, device: str) -> tuple[float, float | None]:
    """(median seconds per step, GiB on CUDA or None): the peak of this variant's timed steps above the memory
    resident before them (every engine's weights and optimizer state stay resident across variants; without the
    subtraction, and the reset per variant, the peak would be the largest of all variants run so far)."""
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    resident = 0
    if cuda:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - resident) / 2**30 if cuda else None


# ----------------------------------------------------------------------------- the table

def bench_mix(cfg: BenchGPUConfig, mix: str, config: GPTConfig, device: str, peak: float | None,
              engines: dict) -> list[dict]:
    """Every variant on one length mix: the same examples, one optimizer step of 2 micro-batches each."""
    per_micro = 2 if cfg.smoke else MIXES[mix][2]
    ex = mix_examples(mix, config, 50 * 2 * per_micro)
    ids = typical_step(ex, 2 * per_micro)
    micro = [ids[:per_micro], ids[per_micro:]]
    step_sums = L.step_totals(L.example_totals(ex), ids)
    weight_sum, tokens = step_sums["weight_sum"], step_sums["positions"]
    flops = training_flops(config.n_layer, config.n_embd, config.vocab_size, [len(ex[i].ids) - 1 for i in ids],
                           step_sums["weighted_positions"])
    amp_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    amp = autocast(device, amp_dtype)
    padded = L.step_batches(ex, micro)
    rows = []
    for name, (engine, model, optimizer, counter) in engines.items():
        if name.startswith("hf-"):
            step = reference_step(model, optimizer, padded, amp, device, masked=not name.endswith(LIKE))
        else:
            batches = L.step_batches(ex, micro, pack=name.startswith("packed"), pin=device.startswith("cuda"))
            step = our_step(engine, model, optimizer, batches, weight_sum, amp_dtype, device,
                            dynamic="compiled" in name)
        graphs, breaks = compiler_counts(counter)  # compiled engines: the graphs and breaks this variant adds
        seconds, mem = timed(step, cfg.steps, cfg.warmup, device)
        rows.append({"mix": mix, "variant": name, "tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds,
                     "mfu": flops / seconds / peak if peak else None, "peak_gib": mem, "tokens": tokens,
                     "useful_fraction": tokens / sum(b.idx.numel() for b in padded)})
        if counter is not None:
            now = compiler_counts(counter)
            rows[-1].update(graphs=now[0] - graphs, graph_breaks=now[1] - breaks, compiled=counter.frame_count > 0)
    return rows


def compiler_counts(counter) -> tuple[int, int]:
    """(graphs the compiled engine has compiled, graph breaks dynamo has counted) so far."""
    if counter is None:
        return 0, 0
    return counter.frame_count, sum(torch._dynamo.utils.counters["graph_break"].values())


def build_engines(cfg: BenchGPUConfig, config: GPTConfig, device: str) -> dict:
    """name -> (callable step engine, model, optimizer, compile counter or None): ours eager/compiled x
    unpacked/packed and the same-work variant, and the references as users call them and doing the same work."""
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    optimizer = model.configure_optimizers(0.0, 1e-5)
    eager = L.StepLoss(model, skip_zero=True, neftune_alpha=0.0)
    engines = {"unpacked": (eager, model, optimizer, None), "packed": (eager, model, optimizer, None),
               f"unpacked{LIKE}": (L.StepLoss(model, skip_zero=False, neftune_alpha=0.0), model, optimizer, None)}
    why = varlen_problem(cfg.dtype == "bfloat16", 0.0) if device.startswith("cuda") else None
    if why:
        print(f"packed variants left out: {why}")
        del engines["packed"]
    if cfg.compile:
        # one dynamic graph per attention kind, reused by every mix; --smoke traces it (graph capture, dynamic
        # shapes) without inductor's code generation, which takes minutes on a CPU
        from torch._dynamo.testing import CompileCounterWithBackend
        counter = CompileCounterWithBackend("eager" if cfg.smoke else "inductor")
        compiled = torch.compile(eager, backend=counter)  # read after each variant: none compiled = fell back
        engines["unpacked compiled"] = (compiled, model, optimizer, counter)
        if not why:
            engines["packed compiled"] = (compiled, model, optimizer, counter)
    if cfg.reference:
        for name, ref in reference_models(config).items():
            ref = ref.to(device).train()
            engines[name] = (None, ref, GPT.configure_optimizers(ref, 0.0, 1e-5), None)
            engines[name + LIKE] = engines[name]
    return engines


def targets(rows: list[dict]) -> list[str]:
    """The issue's three targets, each met / missed / not measured."""
    get = {(r["mix"], r["variant"]): r for r in rows}

    def best(mix: str, prefix: str) -> dict | None:  # what a user gets: the same-work variants left out
        found = [r for (m, v), r in get.items() if m == mix and v.startswith(prefix) and not v.endswith(LIKE)]
        return max(found, key=lambda r: r["tokens_per_s"]) if found else None

    lines = []
    t = best("t1024", "packed")
    if t is not None and t["mfu"] is not None:
        lines.append(f"MFU on t1024 packed: {t['mfu']:.1%} (target 40%): {'met' if t['mfu'] >= 0.40 else 'missed'}")
    ours, ref = best("alpaca", "unpacked"), get.get(("alpaca", "hf-sdpa"))
    packed_alpaca = best("alpaca", "packed")
    if ref is not None and ours is not None:
        ours = max([ours, packed_alpaca], key=lambda r: r["tokens_per_s"])
        x = ours["tokens_per_s"] / ref["tokens_per_s"]
        lines.append(f"alpaca, ours ({ours['variant']}) vs hf-sdpa: {x:.2f}x (target 1.3x): "
                     f"{'met' if x >= 1.3 else 'missed'}")
    same, ref_same = get.get(("alpaca", "unpacked" + LIKE)), get.get(("alpaca", "hf-sdpa" + LIKE))
    if same is not None and ref_same is not None:
        x = same["tokens_per_s"] / ref_same["tokens_per_s"]
        lines.append(f"alpaca, like for like (every position's logits, no attention mask, both): {x:.2f}x")
    p, u = best("lima", "packed"), best("lima", "unpacked")
    if p is not None and u is not None:
        x = p["tokens_per_s"] / u["tokens_per_s"]
        lines.append(f"lima, packed vs unpacked: {x:.2f}x (target 1.5x): {'met' if x >= 1.5 else 'missed'}")
    if fell := sorted({f"{r['mix']} {r['variant']}" for r in rows if r.get("compiled") is False}):
        lines.append(f"compiled variants that fell back to eager (no graph compiled): {', '.join(fell)}: FAILED")
    return lines


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(BenchGPUConfig, argv, description=__doc__)
    if cfg.smoke:
        cfg.steps, cfg.warmup = min(cfg.steps, 2), min(cfg.warmup, 1)
    device = autodetect_device() if cfg.device == "auto" else cfg.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config = model_config(cfg.smoke)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = peak_flops(name, "bf16" if cfg.dtype == "bfloat16" else "tf32") if device.startswith("cuda") else None
    if device.startswith("cuda"):
        use_tf32()
    print(f"torch {torch.__version__}, {name}, peak {peak / 1e12 if peak else '-'} TFLOP/s, "
          f"{sum(p.numel() for p in GPT(config).parameters()) / 1e6:.1f}M parameters, {cfg.dtype}")
    engines = build_engines(cfg, config, device)
    rows = [r for mix in cfg.mixes for r in bench_mix(cfg, mix, config, device, peak, engines)]
    print(f"{'mix':7} {'variant':18} {'tokens/s':>10} {'step ms':>9} {'MFU':>6} {'peak GiB':>9} {'useful':>7}")
    for r in rows:
        mfu_cell = f"{r['mfu']:6.1%}" if r["mfu"] is not None else f"{'-':>6}"
        mem = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'-':>9}"
        print(f"{r['mix']:7} {r['variant']:18} {r['tokens_per_s']:10.0f} {r['step_ms']:9.1f} {mfu_cell} {mem} "
              f"{r['useful_fraction']:7.3f}")
    verdicts = targets(rows)
    for line in verdicts:
        print(line)
    result = {"device": name, "torch": torch.__version__, "dtype": cfg.dtype, "smoke": cfg.smoke, "rows": rows,
              "targets": verdicts}
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=1)
    if any(line.endswith("FAILED") for line in verdicts):
        raise UserError("a compiled variant ran eager: its numbers are not the compiler's (see above)")
    return result


if __name__ == "__main__":
    run_cli(main)
