"""The first command on a fresh GPU box (no internet needed): one line per check of what the CPU tests cannot see.

    python -m scripts.tools.gpu_check                  # on a GPU: every check, a few minutes (target < 8 min)
    python -m scripts.tools.gpu_check --smoke          # the same checks on the CPU in seconds (the test suite runs it)

Checks, in order: the environment (torch, CUDA, GPU, free memory, the varlen kernel's signature); packed vs padded
rows giving the same loss and gradients on the same examples under bf16; train.py with IT and with IM --pack; stop
and resume (CUDA: equal up to rounding, see docs/gpu-and-speed.md); host syncs inside every training step and per
generated token (torch.cuda.set_sync_debug_mode); eval.py --generate; torchrun --nproc_per_node=2 when two GPUs are
visible; bench_gpu.py; the peak memory of one default step of each preset against imgpt/memory.py's model;
--compile's graphs and graph breaks over varied batches. Each line: ok | FAIL | skip, the check, what it saw. The exit
status is 1 if any check failed. Paste the output into docs/gpu-and-speed.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch

import eval as ev
import loss as L
import train as T
from data import ASSISTANT, USER, Example, make_example
from imgpt import memory
from imgpt.batching import plan_epoch
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import make_config
from imgpt.device import amp_dtype_for, varlen_problem
from imgpt.distributed import Dist
from imgpt.train_config import resolve
from model import GPT, GPTConfig, expected_shapes

BENCH_MODULE = "scripts.bench.bench_gpu"  # python -m BENCH_MODULE
PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class Skip(Exception):
    """A check that does not apply here (no GPU, one GPU): said, not failed."""


def run_config(out_dir: str, device: str, smoke: bool, **kw) -> T.TrainConfig:
    """A short train.py run on the built-in task: tiny in smoke mode, a 4-layer x 256 model on a GPU."""
    size = dict(n_layer=2, n_head=2, n_embd=32) if smoke else dict(n_layer=4, n_head=4, n_embd=256)
    base = dict(out_dir=out_dir, device=device, synth_examples=40, synth_heldout=6, synth_facts=2, synth_mentions=2,
                batch_size=8, max_steps=2 if smoke else 30, eval_interval=0, train_eval_size=4, eval_examples=4,
                log_interval=1, overwrite=True, threads=1 if smoke else 0, **size)
    return T.TrainConfig(**{**base, **kw})


def examples(lengths: list[tuple[int, int]], vocab: int) -> list[Example]:
    """Random (prompt length, output length) examples weighed as IM's."""
    g = torch.Generator().manual_seed(0)
    return [make_example(torch.randint(1, vocab, (p + o,), generator=g).tolist(), [USER] * p + [ASSISTANT] * o, 1.0)
            for p, o in lengths]


# ----------------------------------------------------------------------------- the checks

def check_environment(device: str, smoke: bool) -> str:
    line = f"torch {torch.__version__}"
    if not device.startswith("cuda"):
        return line + ", no CUDA here (CPU smoke run)"
    free, total = torch.cuda.mem_get_info()
    major, minor = torch.cuda.get_device_capability()
    why = varlen_problem(True, 0.0)
    return (f"{line}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name()} "
            f"(sm {major}.{minor}), {free / memory.GiB:.1f} of {total / memory.GiB:.1f} GiB free; packed rows: "
            f"{'varlen kernel' if why is None else why}")


def check_packed_equals_padded(device: str, smoke: bool) -> str:
    """One model, the same examples as padded rows and as one packed row: loss and gradients agree (bf16 on CUDA,
    float32 on the CPU, where packing is a dense mask)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=512)).to(device).train()
    engine = L.StepLoss(model, skip_zero=True, neftune_alpha=0.0)
    ex = examples([(5, 30), (40, 12), (17, 17), (3, 60)], 512)
    amp = amp_dtype_for("auto", torch.device(device).type)
    results = []
    for pack in (False, True):
        b = L.step_batches(ex, [[0, 1, 2, 3]], pack=pack)[0].to(device)
        model.zero_grad()
        with torch.autocast(torch.device(device).type, dtype=amp) if amp else contextlib.nullcontext():
            ce, _ = engine(b.idx, b.targets, b.weights, b.pos, b.doc, b.select, b.cu_seqlens)
        ce.backward()
        results.append((ce.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()]).float()))
    (ce0, g0), (ce1, g1) = results
    loss_diff = ((ce1 - ce0).abs() / ce0.abs()).item()
    grad_diff = ((g1 - g0).norm() / g0.norm()).item()
    tol = 2e-2 if amp else 1e-5
    if loss_diff > tol or grad_diff > tol:
        raise AssertionError(f"relative loss difference {loss_diff:.2e}, gradient {grad_diff:.2e} (> {tol:g})")
    return f"relative loss difference {loss_diff:.1e}, gradient {grad_diff:.1e} (tolerance {tol:g})"


def check_training(device: str, smoke: bool, work: str) -> str:
    said = []
    for name, kw in (("it", dict(loss="it")), ("im-pack", dict(loss="im", pack=True))):
        summary = T.train(run_config(os.path.join(work, name), device, smoke, **kw))
        said.append(f"{name} {summary['steps']} steps, loss {summary['history'][-1]['val_output_loss']:.3f}, "
                    f"{summary['tokens_per_s']:.0f} tok/s")
    return "; ".join(said)


def check_resume(device: str, smoke: bool, work: str) -> str:
    steps = 4 if smoke else 20
    T.train(run_config(os.path.join(work, "whole"), device, smoke, max_steps=steps, dropout=0.1))
    T.train(run_config(os.path.join(work, "cut"), device, smoke, max_steps=steps, stop_step=steps // 2, dropout=0.1))
    T.train(run_config(os.path.join(work, "cut"), device, smoke, max_steps=steps, dropout=0.1, init_from="resume",
                       overwrite=False))
    a, b = (load_checkpoint(os.path.join(work, run, "ckpt.pt"))["model"] for run in ("whole", "cut"))
    worst = max(((a[k].float() - b[k].float()).abs().max() / a[k].float().abs().max().clamp_min(1e-12)).item()
                for k in a)
    if worst > (0 if not device.startswith("cuda") else 1e-2):
        raise AssertionError(f"resumed weights differ from the straight run's by {worst:.2e} (relative)")
    return f"resumed at step {steps // 2} of {steps}: largest relative weight difference {worst:.1e}"


def check_syncs(device: str, smoke: bool, work: str) -> str:
    """torch.cuda.set_sync_debug_mode('warn') warns at every host sync: none inside a training step, one per
    generated token."""
    if not device.startswith("cuda"):
        raise Skip("set_sync_debug_mode needs CUDA (the CUDA tier counts syncs in the simulator)")
    cfg = run_config(os.path.join(work, "syncs"), device, smoke, pack=True, loss="im")
    s = T.setup(resolve(cfg, "cuda"), Dist(device=device))
    plan = plan_epoch(s.cfg, s.train, 0)
    batches = [T.prepare(s, ids) for ids in plan[:5]]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for ids, b in zip(plan[:5], batches):
                T.train_step(s, ids, b)
            in_steps = len(caught)
            s.model.eval()
            s.model.generate([[1, 2, 3], [4, 5]], max_new_tokens=16)
            per_token = (len(caught) - in_steps) / 16
        finally:
            torch.cuda.set_sync_debug_mode(0)
    if in_steps or per_token > 1:
        raise AssertionError(f"{in_steps} syncs in 5 training steps, {per_token:.2f} per generated token")
    return f"0 syncs in 5 training steps, {per_token:.2f} per generated token"


def check_eval_generate(device: str, smoke: bool, work: str) -> str:
    cfg = dict(ckpt=os.path.join(work, "it"), generate=True, limit=4, max_new_tokens=8, device=device,
               out=os.path.join(work, "eval.json"))
    r = ev.evaluate(make_config(ev.EvalConfig, cfg))
    g = r["metrics"]["generate"]
    return f"{g['examples']} held-out answers generated: exact match {g['exact_match']:.2f}, BLEU {g['bleu']:.1f}"


def check_torchrun(device: str, smoke: bool, work: str) -> str:
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        raise Skip("needs two visible GPUs")
    cfg = run_config(os.path.join(work, "ddp"), "cuda", smoke)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    args += [f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k}={v}"
             for k, v in vars(cfg).items() if v is not None]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise AssertionError(f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return "2 ranks trained and saved"


def check_bench(device: str, smoke: bool, work: str) -> str:
    if smoke:
        raise Skip(f"{BENCH_MODULE} --smoke has its own test (tests/test_gpu_path.py)")
    args = [sys.executable, "-m", BENCH_MODULE, "--device", device, "--out", os.path.join(work, "bench.json"),
            "--mixes", "alpaca,t1024"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    if done.returncode:
        raise AssertionError(f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return f"{BENCH_MODULE}: " + " | ".join(done.stdout.strip().splitlines()[-3:])[:200]


def check_memory_model(device: str, smoke: bool, work: str) -> str:
    """One default step (bf16, IM, rows of 1024 tokens, the micro-batch train.py would pick) of each preset from
    random weights: the peak torch.cuda.max_memory_allocated against the model's prediction."""
    if not device.startswith("cuda"):
        raise Skip("needs CUDA's allocator (tests/test_memory.py checks the saved bytes on the CPU)")
    said = []
    for name in PRESETS:
        c = GPTConfig.preset(name)
        n = sum(s.numel() for s in expected_shapes(c).values())
        free = torch.cuda.mem_get_info()[0]
        micro, predicted = memory.choose_micro_batch(c, n, 128, 1024, free, memory.StepShape())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = GPT(c).to(device).train()
        optimizer = model.configure_optimizers(0.0, 1e-5)
        idx = torch.randint(0, c.vocab_size, (micro, 1024), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ce, _ = model.loss(idx, idx, torch.ones_like(idx, dtype=torch.float32))
        ce.backward()
        optimizer.step()
        measured = torch.cuda.max_memory_allocated()
        said.append(f"{name} {micro} rows {measured / memory.GiB:.1f}/{predicted / memory.GiB:.1f} GiB")
        del model, optimizer, idx, ce
        torch.cuda.empty_cache()
    return "measured/model: " + ", ".join(said)


def check_compile(device: str, smoke: bool, work: str) -> str:
    """Forward and backward over micro-batches of 3, 1 and 2 rows of three lengths: graphs and graph breaks."""
    from torch._dynamo.testing import CompileCounterWithBackend
    backend = "eager" if smoke else "inductor"  # smoke: dynamo's tracing only (the suite's aot_eager test: gpu_path)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = CompileCounterWithBackend(backend)
    model = GPT(GPTConfig(n_layer=1 if smoke else 2, n_head=2, n_embd=64, block_size=64, vocab_size=256))
    model = model.to(device).train()
    compiled = torch.compile(L.StepLoss(model, skip_zero=True, neftune_alpha=0.0), backend=counter)
    ex = examples([(5, 3), (9, 4), (2, 2), (12, 5), (3, 8), (20, 6)], 256)
    amp = amp_dtype_for("auto", torch.device(device).type)
    for b in L.step_batches(ex, [[0, 1, 2], [3], [4, 5]]):
        b = b.to(device)
        L.mark_dynamic(b)
        with torch.autocast(torch.device(device).type, dtype=amp) if amp else contextlib.nullcontext():
            ce, _ = compiled(b.idx, b.targets, b.weights, b.pos, b.doc, b.select, b.cu_seqlens)
        ce.backward()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    if counter.frame_count != 1 or breaks:
        raise AssertionError(f"{counter.frame_count} graphs, {breaks} graph breaks ({backend}); expected 1 and 0")
    return f"1 graph, 0 graph breaks over 3, 1 and 2 rows ({backend})"


CHECKS: list[tuple[str, Callable]] = [
    ("environment", lambda device, smoke, work: check_environment(device, smoke)),
    ("packed = padded", lambda device, smoke, work: check_packed_equals_padded(device, smoke)),
    ("train IT, IM --pack", check_training),
    ("stop and resume", check_resume),
    ("host syncs", check_syncs),
    ("eval.py --generate", check_eval_generate),
    ("torchrun x2", check_torchrun),
    ("bench_gpu", check_bench),
    ("memory model", check_memory_model),
    ("--compile", check_compile),
]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the checks' logic in seconds")
    parser.add_argument("--device", default="", help="default: cuda if available, else cpu")
    parser.add_argument("--only", default="", help="comma-separated check names (prefixes) to run")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    lines, failed, shown = [], False, sys.stdout
    with (tempfile.TemporaryDirectory() as work, open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet),
          contextlib.redirect_stderr(quiet)):  # the programs' own output: only the checks' lines are shown
        for name, check in CHECKS:
            if args.only and not any(name.startswith(p) for p in args.only.split(",")):
                continue
            t0 = time.perf_counter()
            try:
                status, detail = "ok", check(device, args.smoke, work)
            except Skip as e:
                status, detail = "skip", str(e)
            except Exception as e:  # a check that fails says why in its line; the others still run
                status, detail, failed = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0][:200], True
            line = f"{status:<4} {name:<20} {detail} ({time.perf_counter() - t0:.1f} s)"
            lines.append(line)
            print(line, file=shown, flush=True)
    if failed:
        sys.exit(1)
    return lines


if __name__ == "__main__":
    main()
