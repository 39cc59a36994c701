"""Does loss over instructions help? Train IT and IM (and variants) the same way over seeds, evaluate every run
the same way, and say honestly which won.

    python -m scripts.experiments.compare                                   # synthetic task, tiny GPT from scratch, CPU
    python -m scripts.experiments.compare --modes it,im,it+neft,im+neft,it+kl --prompt_loss_weights 0.1,0.3
    python -m scripts.experiments.compare --init_from gpt2 --data alpaca.json --epochs 2 --device cuda --out_dir out/alpaca

Every run of one comparison shares the data, the example order (train.py's order depends only on the seed),
the number of steps and the learning rate; runs differ only in their mode. A mode is `BASE[+EXTRA...]`:
    it          prompt_loss_weight 0: loss on the outputs only (Shi et al. Eq. 3)
    im          prompt_loss_weight 1: loss on the instructions too (Eq. 4)
    plw0.3      any prompt_loss_weight (--prompt_loss_weights 0.1,0.3 adds plw0.1 and plw0.3)
    +neft       NEFTune noise on the embeddings, alpha = --neftune_alpha (paper: 5)
    +kl         a KL penalty towards the initial model, coefficient --kl_coef (paper Table 3)
    +out        the step's loss divided by the output tokens' weight only (--loss_reduction output, loss.py)
Any other flag (--lr, --max_steps, --data, --init_from, --device, ...) goes to train.py unchanged
(`python train.py --help` lists them); the modes and seeds set --prompt_loss_weight and --seed.

Writes out_dir/results.json (one record per run, the paired per-seed gains and the verdict), out_dir/summary.md
(mean ± std per mode and the verdict) and out_dir/curves.png (train and held-out output loss against steps).
--jobs runs that many trainings at once, each in its own process with one thread (the default: a run per core);
every run's numbers are the same whatever --jobs is (--threads N gives each run N threads, and a run per N cores).
Each run's output goes to runs/<mode>-s<seed>/run.log.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import data
import eval as evaluation
import train as training
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import UserError, given_settings, opt, parse_config, run_cli
from imgpt.device import usable_cores
from imgpt.tokenizers import get_tokenizer
from scripts.experiments.report import summary_markdown, write_results

RESERVED = ("seed", "out_dir", "loss", "prompt_loss_weight")  # train settings that the modes and seeds decide


@dataclass
class CompareConfig:
    out_dir: str = opt("out/compare", "where results.json, summary.md, curves.png and runs/<mode>-s<seed>/ go")
    modes: list[str] = opt(["it", "im"], "modes to train, e.g. it,im,it+neft,im+neft,it+kl,plw0.3 (see the top)")
    prompt_loss_weights: list[float] = opt([], "add one mode per prompt-loss weight, e.g. 0,0.1,0.3,1")
    seeds: int = opt(3, "runs per mode, with seeds first_seed, first_seed + 1, ...", low=1)
    first_seed: int = opt(0, "seed of the first run of each mode (init, data split, example order, noise)")
    neftune_alpha: float = opt(5.0, "NEFTune alpha of the +neft modes (paper: 5)")
    kl_coef: float = opt(0.1, "KL coefficient of the +kl modes")
    checkpoint: str = opt("last", "evaluate each run's last checkpoint (same steps for all) or best (held-out)")
    loss_examples: int = opt(1000, "held-out and training examples scored for the output losses (0 = all)")
    gen_examples: int = opt(100, "held-out and training instructions answered per run (exact match, BLEU, "
                                 "memorization; 0 = all)")
    max_new_tokens: int = opt(0, "generation length limit (0 = eval.py's: the longest reference answer + 16 "
                                 "tokens); a prompt is never cut for it")
    eval_batch_size: int = opt(16, "rows per forward pass in the evaluation", low=1)
    train_config: str = opt("", "TOML or JSON file of train.py settings (flags given here win)")
    resume: bool = opt(False, "reuse the runs already in out_dir/results.json with the same settings")
    keep_checkpoints: bool = opt(False, "keep each run's ckpt.pt/best.pt (large for GPT-2)")
    jobs: int = opt(0, "runs trained at once, each in its own process with one thread (0 = a run per core, or per "
                       "--threads cores; 1 = one after another, in this process)")

    def decides(self) -> dict[str, str]:
        """The train settings each run gets from this script, and the flags here that set them."""
        return {k: "--modes, --seeds and --out_dir" for k in RESERVED}

    def validate(self) -> None:
        if not all_modes(self):
            raise UserError("--modes: no mode given (e.g. --modes it,im, or --prompt_loss_weights 0,1)")
        for mode in all_modes(self):
            mode_settings(mode, self.neftune_alpha, self.kl_coef)  # raises on a bad mode name
        counts = (self.seeds, self.max_new_tokens + 1, self.eval_batch_size, self.gen_examples + 1,
                  self.loss_examples + 1)
        if min(counts) < 1:
            raise UserError("--seeds, --eval_batch_size must be >= 1; --max_new_tokens, --*_examples >= 0")
        if self.checkpoint not in ("last", "best"):
            raise UserError(f"--checkpoint must be last or best, got {self.checkpoint!r}")


# ----------------------------------------------------------------------------- modes and settings (pure)

def mode_settings(mode: str, neftune_alpha: float, kl_coef: float) -> dict:
    """The train settings a mode name stands for, e.g. 'im+neft' -> prompt weight 1, NEFTune on, no KL; '+out'
    also sets --loss_reduction output (without it, the comparison's own reduction stays)."""
    base, *extras = mode.split("+")
    weights = {"it": 0.0, "im": 1.0}
    try:
        plw = weights[base] if base in weights else float(base.removeprefix("plw")) if base.startswith("plw") else None
    except ValueError:
        plw = None
    if plw is None or plw < 0 or any(e not in ("neft", "kl", "out") for e in extras):
        raise UserError(f"--modes: bad mode {mode!r}: expected it, im or plw<weight>, then optional +neft, +kl, "
                        "+out")
    return {"prompt_loss_weight": plw, "neftune_alpha": neftune_alpha if "neft" in extras else 0.0,
            "kl_coef": kl_coef if "kl" in extras else 0.0} | ({"loss_reduction": "output"} if "out" in extras else {})


def all_modes(cfg: CompareConfig) -> list[str]:
    """--modes, then one plw<w> mode per --prompt_loss_weights entry, without duplicates."""
    extra = [f"plw{w:g}" for w in cfg.prompt_loss_weights]
    return list(dict.fromkeys(list(cfg.modes) + extra))


def split_argv(argv: list[str], own: type) -> tuple[list[str], list[str]]:
    """Split flags into those of the dataclass `own` (and --config) and the rest (train.py's), keeping values."""
    names = {f.name for f in dataclasses.fields(own)} | {"config"}
    mine, rest, i = [], [], 0
    while i < len(argv):
        flag = argv[i][2:].split("=", 1)[0] if argv[i].startswith("--") else ""
        target = mine if flag in names or flag.removeprefix("no-") in names else rest
        target.append(argv[i])
        i += 1
        if flag and "=" not in argv[i - 1] and i < len(argv) and not argv[i].startswith("--"):
            target.append(argv[i])  # the flag's value (a boolean flag is never followed by a bare word)
            i += 1
    return mine, rest


def parse_args(cls: type, argv: list[str] | None = None):
    """(cls config, base TrainConfig) from one command line: our own flags, the rest go to train.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # the script's story, then its own flags (train.py --help lists the rest)
        print(sys.modules[cls.__module__].__doc__)
        parse_config(cls, ["--help"])
    mine, rest = split_argv(argv, cls)
    cfg = parse_config(cls, mine)
    file_flags = ["--config", cfg.train_config] if cfg.train_config else []
    given = given_settings(training.TrainConfig, file_flags + rest)
    if taken := sorted(given & set(cfg.decides())):  # a typed flag never loses silently to what a run sets
        raise UserError(f"--{taken[0]}: set by {cfg.decides()[taken[0]]} here")
    base = parse_config(training.TrainConfig, file_flags + rest)
    if "threads" not in given:  # one thread per run, and as many runs as cores: the cores fill with whole runs
        base = dataclasses.replace(base, threads=1)
    if cfg.jobs == 0:  # --threads 0 gives each run every core: then one run at a time
        cfg = dataclasses.replace(cfg, jobs=max(1, usable_cores() // base.threads) if base.threads else 1)
    if base.init_from == "resume":
        raise UserError("--init_from resume: compare.py trains every run anew (its --resume reuses finished runs); "
                        "to start every run from a trained model, give its checkpoint: --init_from out/ckpt.pt")
    return cfg, base


def run_train_config(base, cfg: CompareConfig, mode: str, seed: int, run_dir: str):
    """One run's TrainConfig: the shared settings, plus what its mode and seed decide."""
    settings = mode_settings(mode, cfg.neftune_alpha, cfg.kl_coef)
    loss = "im" if settings["prompt_loss_weight"] == 1.0 else "it"  # only a label: the weight above decides
    return dataclasses.replace(base, out_dir=run_dir, seed=seed, loss=loss, **settings)


# ----------------------------------------------------------------------------- one run

def seed_everything(seed: int) -> None:
    """train.py seeds its own streams; this makes anything else in the process start the same for every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def flatten_metrics(report: dict) -> dict:
    """eval.py's nested report -> the flat metric names of report.METRICS."""
    m = report["metrics"]
    flat = {"heldout_loss": m["heldout"]["output_loss"], "heldout_prompt_loss": m["heldout"]["prompt_loss"]}
    if "train" in m:
        flat.update(train_loss=m["train"]["output_loss"], gap=m["heldout"]["output_loss"] - m["train"]["output_loss"],
                    train_prompt_loss=m["train"]["prompt_loss"])
    if "generate" in m:
        flat.update({k: m["generate"][k] for k in ("exact_match", "bleu", "rouge_l")})
    if "probe" in m:  # the pretrained regime: how much of the base's knowledge the tuning left
        flat["knowledge"] = m["probe"]["exact_match"]
    if "memorization" in m:
        flat.update(memorization_bleu=m["memorization"]["bleu"],
                    memorization_exact_match=m["memorization"]["exact_match"])
    return flat


def eval_configs(cfg: CompareConfig, tcfg, run_dir: str) -> tuple:
    """eval.py's settings for one run: losses on loss_examples, generation on gen_examples (of each split)."""
    ckpt = os.path.join(run_dir, "ckpt.pt" if cfg.checkpoint == "last" else "best.pt")
    common = dict(ckpt=ckpt, batch_size=cfg.eval_batch_size, device=tcfg.device, max_new_tokens=cfg.max_new_tokens,
                  threads=tcfg.threads)  # the run's own: one thread each, a run per core
    losses = evaluation.EvalConfig(**common, limit=cfg.loss_examples or None,
                                   out=os.path.join(run_dir, "eval_loss.json"))
    generation = evaluation.EvalConfig(**common, loss=False, generate=True, memorization=True,
                                       limit=cfg.gen_examples or None, out=os.path.join(run_dir, "eval_gen.json"))
    return losses, generation


def evaluate_run(cfg: CompareConfig, tcfg, run_dir: str) -> dict:
    """eval.py's metrics of the run's checkpoint, flattened."""
    reports = [evaluation.evaluate(c) for c in eval_configs(cfg, tcfg, run_dir)]
    return flatten_metrics({"metrics": {k: v for r in reports for k, v in r["metrics"].items()}})


def run_settings(cfg: CompareConfig, base, mode: str, seed: int) -> tuple:
    """(TrainConfig, its resolved settings, eval settings) of one run: what a reused record must match."""
    run_dir = os.path.join(cfg.out_dir, "runs", f"{mode}-s{seed}")
    tcfg = run_train_config(base, cfg, mode, seed, run_dir)
    return tcfg, asdict(training.resolve(tcfg)), [asdict(c) for c in eval_configs(cfg, tcfg, run_dir)]


def run_one(cfg: CompareConfig, base, mode: str, seed: int) -> dict:
    """Train and evaluate one (mode, seed); the record that results.json keeps for it."""
    tcfg, train_settings, eval_settings = run_settings(cfg, base, mode, seed)
    seed_everything(seed)
    t0 = time.perf_counter()
    summary = training.train(dataclasses.replace(tcfg, overwrite=True))  # a rerun replaces its own run folders
    t1 = time.perf_counter()
    metrics = evaluate_run(cfg, tcfg, tcfg.out_dir)
    t2 = time.perf_counter()
    if not cfg.keep_checkpoints:
        for name in ("ckpt.pt", "best.pt"):
            if os.path.exists(os.path.join(tcfg.out_dir, name)):
                os.remove(os.path.join(tcfg.out_dir, name))
    return {"mode": mode, "seed": seed, "metrics": metrics, "steps": summary["steps"],
            "time_s": {"train": t1 - t0, "eval": t2 - t1}, "history": summary["history"],
            "train_settings": train_settings, "eval_settings": eval_settings}


def run_logged(cfg: CompareConfig, base, mode: str, seed: int) -> dict:
    """run_one in a worker process: one thread, its output to the run's run.log (runs side by side stay legible)."""
    torch.set_num_threads(1)
    run_dir = os.path.join(cfg.out_dir, "runs", f"{mode}-s{seed}")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "run.log"), "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        return run_one(cfg, base, mode, seed)


def one_line(r: dict) -> str:
    m = r["metrics"]
    shown = [f"{k} {m[k]:.3f}" for k in ("heldout_loss", "exact_match", "memorization_exact_match") if k in m]
    return f"=== {r['mode']}-s{r['seed']} done in {r['time_s']['train'] + r['time_s']['eval']:.0f} s: " + ", ".join(shown)


def run_all(cfg: CompareConfig, base, modes: list[str], done: list[dict] | None = None,
            on_record=None) -> list[dict]:
    """Every (mode, seed), --jobs at a time; records in `done` with identical settings are reused. Records come
    back in (mode, seed) order whatever order the runs finish in."""
    reuse = {(r["mode"], r["seed"]): r for r in (done or [])}
    plan = [(mode, seed) for mode in modes for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds)]
    results: dict[tuple[str, int], dict] = {}
    todo = []
    for mode, seed in plan:
        old = reuse.get((mode, seed))
        _, train_settings, eval_settings = run_settings(cfg, base, mode, seed)
        if old is not None and [old["train_settings"], old["eval_settings"]] == [train_settings, eval_settings]:
            results[(mode, seed)] = old
            print(f"=== {mode}-s{seed} reused", flush=True)
        else:
            todo.append((mode, seed))

    def finished(key: tuple[str, int], record: dict) -> None:
        results[key] = record
        print(one_line(record), flush=True)
        if on_record is not None:
            on_record([results[k] for k in plan if k in results])

    if cfg.jobs == 1:
        for mode, seed in todo:
            print(f"=== {mode}-s{seed} training", flush=True)
            finished((mode, seed), run_one(cfg, base, mode, seed))
    else:
        print(f"=== training {len(todo)} runs, {cfg.jobs} at a time (logs in {cfg.out_dir}/runs/*/run.log)", flush=True)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or state
        with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_logged, cfg, base, mode, seed): (mode, seed) for mode, seed in todo}
            for future in concurrent.futures.as_completed(futures):
                finished(futures[future], future.result())
    return [results[k] for k in plan]


# ----------------------------------------------------------------------------- data facts, plots, files

def dataset_info(tcfg) -> dict:
    """Size and instruction/output token ratio of one run's training set (ratio before truncation)."""
    cfg = training.resolve(tcfg)
    tok = get_tokenizer(tokenizer_name(cfg))
    train_ex, val_ex, stats = data.build_data(cfg, tok, max_len=1 << 30)
    return {"train_examples": len(train_ex), "heldout_examples": len(val_ex),
            "instruction_tokens": stats["prompt_tokens"] / max(stats["kept"], 1),
            "output_tokens": stats["output_tokens"] / max(stats["kept"], 1),
            "ratio": stats["prompt_tokens"] / max(stats["output_tokens"], 1)}


def tokenizer_name(cfg) -> str:
    """The tokenizer train.py will use: byte from scratch, a directory's own, else GPT-2's."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.init_from == "scratch":
        return "byte"
    if os.path.isfile(os.path.join(cfg.init_from, "vocab.json")):
        return cfg.init_from
    ckpt = os.path.join(cfg.init_from, "ckpt.pt") if os.path.isdir(cfg.init_from) else cfg.init_from
    return load_checkpoint(ckpt)["tokenizer"] if ckpt.endswith(".pt") and os.path.isfile(ckpt) else "gpt2"


RECORD_FIELDS = ("mode", "seed", "metrics", "steps", "time_s", "history", "train_settings", "eval_settings")


def load_records(path: str) -> list[dict]:
    """The runs of an earlier results.json (--resume), each checked to hold every field run_one writes."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            runs = json.load(f)["runs"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise UserError(f"{path}: not a results.json written by compare.py ({type(e).__name__}: {e})") from None
    for i, r in enumerate(runs if isinstance(runs, list) else [runs]):
        if missing := [k for k in RECORD_FIELDS if not isinstance(r, dict) or k not in r]:
            raise UserError(f"{path}: runs[{i}] lacks {', '.join(missing)}: not written by this compare.py; "
                            "move it away or run without --resume")
    return runs


def main(argv: list[str] | None = None) -> list[dict]:
    cfg, base = parse_args(CompareConfig, argv)
    modes, t0 = all_modes(cfg), time.perf_counter()
    done = load_records(os.path.join(cfg.out_dir, "results.json")) if cfg.resume else []
    info = dataset_info(run_train_config(base, cfg, modes[0], cfg.first_seed, cfg.out_dir))
    print(f"comparing {', '.join(modes)} over {cfg.seeds} seeds; data: {info}", flush=True)
    records = run_all(cfg, base, modes, done, on_record=lambda rs: write_results(cfg.out_dir, rs, info))
    wall = time.perf_counter() - t0
    write_results(cfg.out_dir, records, info, wall)
    print(summary_markdown(records, info))
    print(f"wrote {cfg.out_dir}/results.json, summary.md, curves.png in {wall:.0f} s")
    return records


if __name__ == "__main__":
    run_cli(main)
