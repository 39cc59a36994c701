"""How many CPU threads `python train.py` should take, measured on this machine, not argued.

    python -m scripts.bench.bench_threads                  # lone run: 1..N threads, eager and --compile; compare's
                                                           # schedules (runs x threads); ratios to today's default
    python -m scripts.bench.bench_threads --no-compile --rounds 5      # quicker

A lone run: one training session of the default scratch recipe (train.setup: the built-in task, the tiny model,
batch 32; the real step: collate, forward, backward, fused AdamW), its steps alternated between thread counts
step by step on the same batches, so a busy machine slows all alike. --compile adds a compiled session per thread
count (inductor builds its kernels for the thread count it compiled under); the first step's compile time is
printed apart, with the steps it takes to earn it back. Ratios are tokens/s over the 1-thread eager step: what
`python train.py` took before it used every core.

compare.py's schedule: `runs` processes side by side, each training with `threads` threads, every way the cores
fill up (and 1 x 1); each process builds its session, warms up, waits until all are ready, then times --steps
steps. Throughput is the sum over the processes; ratios are over 2 runs x 1 thread, compare.py's earlier default.
Medians over --rounds; say where it ran (idle or busy: the load average is printed before and after).
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import train as T
from imgpt.batching import plan_epoch
from imgpt.cli import opt, parse_config, run_cli
from imgpt.device import usable_cores
from imgpt.distributed import Dist

REFERENCE_SCHEDULE = (2, 1)  # compare.py's default before: 2 runs at a time, 1 thread each


@dataclass
class BenchConfig:
    threads: list[int] = opt([], "thread counts of the lone run (empty = 1..the cores this process may use)", low=1)
    rounds: int = opt(10, "timed steps per setting (lone run) or timed repeats (schedules), after a warm-up", low=1)
    steps: int = opt(5, "steps each process times per repeat in the schedule benchmark", low=1)
    compile: bool = opt(True, "also time the --compile step (each thread count compiles once: minutes on a CPU)")
    schedules: bool = opt(True, "also time compare.py's schedules (runs x threads)")
    worker: str = opt("", "internal: 'THREADS,STEPS,REPEATS' runs one schedule process")


def session(threads: int, compile: bool = False) -> T.Session:
    """A real training session of the default scratch recipe, quietly, with no evaluation and no checkpoint."""
    cfg = T.TrainConfig(out_dir=tempfile.mkdtemp(prefix="bench_threads"), eval_interval=0, save=False,
                        threads=threads, compile=compile, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        return T.setup(T.resolve(cfg), Dist(device="cpu"))


def timed_step(s: T.Session, ids: list[int]) -> tuple[float, int]:
    """(seconds, tokens) of one real optimizer step, its loss read back."""
    t = time.perf_counter()
    T.train_step(s, ids, T.prepare(s, ids))
    rec = T.flush(s)[-1]
    return time.perf_counter() - t, rec["tokens"]


def lone_run(cfg: BenchConfig) -> None:
    counts = cfg.threads or list(range(1, usable_cores() + 1))
    settings = [(k, False) for k in counts] + ([(k, True) for k in counts] if cfg.compile else [])
    sessions, compile_s = {}, {}
    for k, compiled in settings:
        torch.set_num_threads(k)
        sessions[(k, compiled)] = session(k, compiled)
    plan = plan_epoch(sessions[settings[0]].cfg, sessions[settings[0]].train, 0)
    speeds: dict = {key: [] for key in settings}
    times: dict = {key: [] for key in settings}
    for r in range(cfg.rounds + 1):
        for key in settings:
            torch.set_num_threads(key[0])
            seconds, tokens = timed_step(sessions[key], plan[r % len(plan)])
            if r == 0 and key[1]:
                compile_s[key] = seconds  # the first compiled step compiles
            elif r > 0:
                speeds[key].append(tokens / seconds)
                times[key].append(seconds)
    ref = statistics.median(speeds[(1, False)]) if (1, False) in speeds else None
    print(f"\nlone run: the default scratch step (batch {sessions[settings[0]].cfg.batch_size}), median of "
          f"{cfg.rounds} steps per setting, interleaved")
    print(f"  {'threads':>7} {'compile':>7} {'tokens/s':>9} {'step ms':>8} {'vs 1 thread eager':>18}")
    for key in settings:
        tps = statistics.median(speeds[key])
        ratio = f"{tps / ref:.2f}x" if ref else "-"
        print(f"  {key[0]:>7} {str(key[1]):>7} {tps:9.0f} {1000 * statistics.median(times[key]):8.1f} {ratio:>18}")
    for key, seconds in compile_s.items():
        saved = statistics.median(times[(key[0], False)]) - statistics.median(times[key])
        pays = f"earned back after {seconds / saved:.0f} steps" if saved > 0 else "never earned back"
        print(f"  compile at {key[0]} thread(s): first step {seconds:.1f} s ({pays})")


def worker(spec: str) -> None:
    """One schedule process: build, warm up, say ready, wait for 'go' on stdin, time the steps; per repeat."""
    threads, steps, repeats = (int(x) for x in spec.split(","))
    torch.set_num_threads(threads)
    s = session(threads)
    plan = plan_epoch(s.cfg, s.train, 0)
    timed_step(s, plan[0])
    for _ in range(repeats):
        print("ready", flush=True)
        sys.stdin.readline()
        seconds = tokens = 0
        for i in range(steps):
            dt, n = timed_step(s, plan[(i + 1) % len(plan)])
            seconds, tokens = seconds + dt, tokens + n
        print(f"{tokens / seconds}", flush=True)


def schedules(cfg: BenchConfig) -> None:
    cores = usable_cores()
    plans = sorted({REFERENCE_SCHEDULE, (1, 1)} | {(max(1, cores // t), t) for t in range(1, cores + 1)})
    totals: dict = {p: [] for p in plans}
    procs = {p: [subprocess.Popen([sys.executable, "-m", "scripts.bench.bench_threads",
                                   f"--worker={p[1]},{cfg.steps},{cfg.rounds}"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(p[0])] for p in plans}
    try:
        for _ in range(cfg.rounds):
            for p in plans:  # one schedule at a time, the others wait: interleaved repeats
                for w in procs[p]:
                    assert w.stdout.readline().strip() == "ready"
                for w in procs[p]:
                    w.stdin.write("go\n")
                    w.stdin.flush()
                totals[p].append(sum(float(w.stdout.readline()) for w in procs[p]))
    finally:
        for ws in procs.values():
            for w in ws:
                w.kill()
                w.wait()
    ref = statistics.median(totals[REFERENCE_SCHEDULE])
    print(f"\ncompare.py's schedule: runs side by side x threads each, {cfg.steps} steps per process, median of "
          f"{cfg.rounds} repeats, interleaved")
    print(f"  {'runs':>4} {'threads':>7} {'total tokens/s':>15} {'vs 2 runs x 1 thread':>21}")
    for p in plans:
        tps = statistics.median(totals[p])
        print(f"  {p[0]:>4} {p[1]:>7} {tps:15.0f} {tps / ref:20.2f}x")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    if cfg.worker:
        return worker(cfg.worker)
    print(f"torch {torch.__version__}, {usable_cores()} usable cores, load average {os.getloadavg()[0]:.1f}")
    lone_run(cfg)
    if cfg.schedules:
        schedules(cfg)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run_cli(main)
