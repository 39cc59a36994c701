"""IT vs IM at the paper's budgets: how many passes over how many examples, in the pretrained regime.

    python train.py --data synthetic-corpus --out_dir out/base            # the base, once
    python -m scripts.experiments.budget --init_from out/base --data synthetic-qa --out_dir out/budget

The paper tuned for 2, 3 or 10 epochs (Shi et al. 2024, Table 6); this project's recipe for synthetic-qa is 300
steps of 16, 120 epochs over 40 examples. Each budget is EXAMPLESxEPOCHS (the steps follow from the epochs) or
EXAMPLES@STEPS (a fixed number of steps); 40@300 is README's 300-step comparison, with the recipe's settings. The
default modes are it, im (the step's loss a mean over every trained token, as the paper's code) and im+out (the
same loss divided by the output tokens' weight only: IT's loss + the prompt's summed loss on the same scale,
--loss_reduction output). it+out needs no run: at prompt weight 0 it is `it` exactly (tests/test_train.py).
Every budget sets the training examples and steps itself (--max_steps 0 --epochs E, or --max_steps S), so no
--max_steps, --epochs or --synth_examples of the command line decides them.

Writes out_dir/budget.json (every run's record), budget.md (mean ± std over seeds of held-out exact match,
held-out output loss, memorization exact match, knowledge kept and the train/held-out prompt loss, per budget
and mode) and budget.png; each budget also gets compare.py's files in out_dir/<budget>/. --jobs runs go at once
over all budgets, longest first. Default: 7 budgets x 3 modes x 3 seeds = 63 runs, 42 minutes on 2 cores shared
with other jobs (README "At the paper's budgets"; not yet measured on an idle machine).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import re
import time
from dataclasses import dataclass

import data
import train as training
from imgpt.batching import plan_epoch
from imgpt.cli import UserError, opt, run_cli
from imgpt.files import write_text_atomic
from imgpt.tokenizers import get_tokenizer
from scripts.experiments import compare, report, sweep
from scripts.experiments.compare import CompareConfig
from scripts.experiments.report import mean_std, plt


DEFAULT_BUDGETS = ["40x2", "40x3", "40x10", "200x2", "200x3", "200x10", "40@300"]
# (metric key, column title); the table's columns in order
COLUMNS = [("exact_match", "held-out exact match ↑"), ("heldout_loss", "held-out output loss ↓"),
           ("memorization_exact_match", "memorization exact match"), ("knowledge", "knowledge kept (probe) ↑"),
           ("train_prompt_loss", "train prompt loss"), ("heldout_prompt_loss", "held-out prompt loss")]


@dataclass
class BudgetConfig(CompareConfig):
    out_dir: str = opt("out/budget", "where budget.json, budget.md, budget.png and one folder per budget go")
    modes: list[str] = opt(["it", "im", "im+out"], "modes to train (compare.py's names; +out: --loss_reduction "
                                                   "output)")
    budgets: list[str] = opt(DEFAULT_BUDGETS, "EXAMPLESxEPOCHS or EXAMPLES@STEPS, e.g. 40x2,200x10,40@300")

    def validate(self) -> None:
        super().validate()
        for b in self.budgets:
            parse_budget(b)


# ----------------------------------------------------------------------------- budgets (pure)

def parse_budget(text: str) -> tuple[int, float | None, int | None]:
    """'40x10' -> (40 examples, 10 epochs, None); '40@300' -> (40, None, 300 steps)."""
    m = re.fullmatch(r"(\d+)(?:x(\d+(?:\.\d+)?)|@(\d+))", text.strip())
    if not m or int(m[1]) < 1 or (m[2] and float(m[2]) <= 0) or (m[3] and int(m[3]) < 1):
        raise UserError(f"--budgets: bad budget {text!r}: expected EXAMPLESxEPOCHS (40x10) or EXAMPLES@STEPS (40@300)")
    return int(m[1]), float(m[2]) if m[2] else None, int(m[3]) if m[3] else None


def budget_settings(text: str, base) -> dict:
    """The train settings of one budget: its examples, and its epochs (max_steps 0) or its steps."""
    examples, epochs, steps = parse_budget(text)
    size = sweep.point_settings("examples", examples, base)
    return {**size, "max_steps": 0, "epochs": epochs} if steps is None else {**size, "max_steps": steps}


def check_base(base) -> None:
    """The budgets decide the examples and the steps: a command line that sets them too would be silently lost."""
    if base.max_steps is not None or base.epochs is not None:
        raise UserError("--max_steps/--epochs: set by --budgets here (EXAMPLESxEPOCHS or EXAMPLES@STEPS)")


def budget_row(label: str, records: list[dict], steps: int, epochs: float) -> list[dict]:
    """One row per mode: mean ± std over seeds of every column's metric."""
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in records):
        cells = {}
        for key, _ in COLUMNS:
            values = [r["metrics"][key] for r in records if r["mode"] == mode and key in r["metrics"]]
            cells[key] = mean_std(values) if values else (math.nan, math.nan)
        rows.append({"budget": label, "steps": steps, "epochs": epochs, "mode": mode,
                     "seeds": sum(r["mode"] == mode for r in records), "cells": cells})
    return rows


def budget_markdown(rows: list[dict]) -> str:
    head = "| budget | steps | epochs | mode | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = ["# IT vs IM against the tuning budget", "",
             "Mean ± std over seeds. Budget: training examples x epochs, or @ steps (batch 16).", "",
             head, "|" + "---|" * (4 + len(COLUMNS))]
    last = None
    for r in rows:
        first = r["budget"] != last
        last = r["budget"]
        where = [r["budget"], str(r["steps"]), f"{r['epochs']:.3g}"] if first else ["", "", ""]
        cells = [f"{m:.3f} ± {s:.3f}" if m == m else "n/a" for m, s in r["cells"].values()]
        lines.append("| " + " | ".join(where + [r["mode"]] + cells) + " |")
    return "\n".join(lines) + "\n"


def plot_budgets(rows: list[dict], path: str) -> None:
    """Four metrics against the steps (log scale), one line per (mode, training examples)."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    sizes = sorted({int(r["budget"].split("x")[0].split("@")[0]) for r in rows})
    styles = ["-", "--", ":", "-."]
    for ax, (key, title) in zip(axes, COLUMNS[:4]):
        for c, mode in enumerate(dict.fromkeys(r["mode"] for r in rows)):
            for k, size in enumerate(sizes):
                pts = sorted((r["steps"], *r["cells"][key]) for r in rows if r["mode"] == mode
                             and int(r["budget"].split("x")[0].split("@")[0]) == size)
                if pts:
                    xs, ms, ss = zip(*pts)
                    ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=f"C{c}", ls=styles[k % 4],
                                label=f"{mode}, {size} examples")
        ax.set(title=title, xlabel="optimizer steps (batch 16)", xscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, path)


# ----------------------------------------------------------------------------- the program

def run_budgets(cfg: BudgetConfig, points: list[tuple[str, CompareConfig, object]]) -> dict[str, list[dict]]:
    """Every (budget, mode, seed) run, --jobs at a time across budgets, longest first; records per budget."""
    modes = compare.all_modes(cfg)
    seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
    steps = {label: run_length(b)[0] for label, _, b in points}
    todo = sorted(((label, pcfg, pbase, m, s) for label, pcfg, pbase in points for m in modes for s in seeds),
                  key=lambda t: -steps[t[0]])
    done: dict[tuple[str, str, int], dict] = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or state
    with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context) as pool:
        futures = {pool.submit(compare.run_logged, pcfg, pbase, m, s): (label, m, s)
                   for label, pcfg, pbase, m, s in todo}
        for future in concurrent.futures.as_completed(futures):
            done[futures[future]] = record = future.result()
            print(f"[{futures[future][0]}] {compare.one_line(record)}", flush=True)
    return {label: [done[(label, m, s)] for m in modes for s in seeds] for label, _, _ in points}


def run_length(tcfg) -> tuple[int, float]:
    """(optimizer steps, epochs) of a run, as train.py counts them: an epoch is one pass over the training set,
    its last step short (40 examples in steps of 16: 3 steps an epoch, so 300 steps are 100 epochs)."""
    cfg = training.resolve(tcfg)
    train_ex, _, _ = data.build_data(cfg, get_tokenizer(compare.tokenizer_name(cfg)), max_len=1 << 30)
    per_epoch = len(plan_epoch(cfg, train_ex, 0))
    steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    return steps, steps / per_epoch


def main(argv: list[str] | None = None) -> list[dict]:
    cfg, base = compare.parse_args(BudgetConfig, argv)
    check_base(base)
    t0 = time.perf_counter()
    points = [(b, dataclasses.replace(cfg, out_dir=os.path.join(cfg.out_dir, b.replace("@", "at"))),
               dataclasses.replace(base, **budget_settings(b, base))) for b in cfg.budgets]
    results = run_budgets(cfg, points) if cfg.jobs > 1 else {
        label: compare.run_all(pcfg, pbase, compare.all_modes(cfg)) for label, pcfg, pbase in points}
    rows, dump = [], []
    for label, pcfg, pbase in points:
        info = compare.dataset_info(compare.run_train_config(pbase, pcfg, "it", cfg.first_seed, pcfg.out_dir))
        compare.write_results(pcfg.out_dir, results[label], info)
        steps, epochs = run_length(pbase)
        rows += budget_row(label, results[label], steps, epochs)
        dump.append({"budget": label, "steps": steps, "data": info, "runs": results[label]})
    wall = time.perf_counter() - t0
    write_text_atomic(os.path.join(cfg.out_dir, "budget.json"),
                      json.dumps({"wall_s": wall, "budgets": dump}, indent=1) + "\n")
    write_text_atomic(os.path.join(cfg.out_dir, "budget.md"), budget_markdown(rows))
    plot_budgets(rows, os.path.join(cfg.out_dir, "budget.png"))
    print(budget_markdown(rows))
    print(f"wrote {cfg.out_dir}/budget.json, budget.md, budget.png in {wall:.0f} s")
    return rows


if __name__ == "__main__":
    run_cli(main)
