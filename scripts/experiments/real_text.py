"""IT vs IM on real instruction data, from the small English base (scripts/experiments/english_base.py).

    python -m scripts.experiments.real_text --base out/english-base --data_dir ../shared/data --out_dir out/real-text

Three instruction sets at the two ends of the paper's first factor (instruction length / output length):
- `mmlu`: long instructions, short outputs. MMLU-Redux questions (those its annotators marked ok) with their
  four choices as the instruction, the correct choice's text as the output;
- `alpaca`: short instructions, long outputs. The LLaMA-Factory Alpaca demo's examples whose instruction (and
  input) is at most 60 bytes; their long answers are cut at the end to fit --max_len bytes (train.py's
  truncation: the answer keeps its start);
- `lima`: the same from LIMA (the paper's own few-examples set), its single-turn examples.
Only examples that fit --max_len whole (mmlu) or whose instruction fits (alpaca, lima) are kept: a length filter,
said. `--examples all` (the default) trains on every example kept but the --val_size held out: 452 (mmlu), 297
(alpaca) and 252 (lima) from ../shared/data's files.
For each set, seed and prompt-loss weight (IT 0, 0.1, IM 1), one run tunes the base for the largest budget at a
constant learning rate, and is scored at the end of each budget's epochs (2, 3, 10): with no decay and no warmup,
the model after 2 of 10 epochs is the model a 2-epoch run ends with (same data order, same updates), so one run
gives the three budgets at the cost of the longest. The seed draws the held-out split and the training subset,
and orders the data; IT and IM with the same seed see the same examples in the same order (pairs by seed).

Measured at each budget (and for the base before tuning):
- held-out and training output loss (per byte) and their gap: the overfitting signature;
- held-out and training prompt loss: memorization of instructions;
- greedy answers to training and held-out instructions against their reference outputs (ROUGE-L, BLEU, exact
  match): copying of training answers (the paper's Table 2 idea) and held-out quality;
- knowledge kept: loss per byte on the base's held-out documents.
Everything goes into out_dir/results.json (and a plot, out_dir/real_text.png). Runs go --jobs at a time (one
per core), each in its own process with one thread: every run's numbers are the same whatever --jobs is.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import csv
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import statistics
import sys
import time

import torch

import train
from data import Example, answer_start, encode_dataset
from eval import text_metrics
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import UserError, run_cli, validate
from imgpt.device import usable_cores
from imgpt.distributed import join_distributed
from imgpt.files import write_text_atomic
from imgpt.formats import load_split
from imgpt.tokenizers import tokenizer_from_record
from imgpt.train_config import TrainConfig
from metrics import eval_record, segment_losses

MODES = {"it": 0.0, "plw0.1": 0.1, "im": 1.0}  # name -> prompt loss weight
MMLU_OK = "ok"  # MMLU-Redux's error_type of a question its annotators found sound


def mmlu_records(data_dir: str, max_len: int) -> list[dict]:
    """Alpaca records from MMLU-Redux: question and lettered choices -> the correct choice's text. The CSVs differ
    in delimiter (',' or ';': the choices hold commas, so the header decides) and column order, and one holds a
    non-UTF-8 byte: each is read by its header, errors replaced."""
    files = sorted(glob.glob(os.path.join(data_dir, "mmlu-redux", "mmlu_*.csv")))
    if not files:
        raise UserError(f"{data_dir}/mmlu-redux: no mmlu_*.csv files")
    records = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        header = text.split("\n", 1)[0]  # the header names the columns: its separators are the delimiter
        for row in csv.DictReader(io.StringIO(text), delimiter=";" if header.count(";") > header.count(",") else ","):
            if (row.get("error_type") or "").strip().lower() != MMLU_OK:
                continue
            try:
                choices, answer = ast.literal_eval(row["choices"]), int(row["answer"])
            except (ValueError, SyntaxError, KeyError, TypeError):
                continue  # a malformed row: left out, as the ones not marked ok are
            if not isinstance(choices, list) or len(choices) != 4 or not 0 <= answer < 4:
                continue
            question = row["question"].strip() + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices))
            records.append({"instruction": question, "input": "", "output": str(choices[answer]).strip()})
    return [r for r in records if r["output"] and fits(r, max_len)]


def short_prompt_records(path: str, max_prompt: int) -> list[dict]:
    """An Alpaca-format file's single-turn examples whose instruction (and input) is at most max_prompt bytes."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    return [r for r in records if len((r["instruction"] + r.get("input", "")).encode()) <= max_prompt
            and r["output"] and not r.get("history")]


def alpaca_records(data_dir: str, max_prompt: int = 60) -> list[dict]:
    """The LLaMA-Factory Alpaca demo's short instructions with their long answers."""
    return short_prompt_records(os.path.join(data_dir, "llamafactory-alpaca-demo", "alpaca_en_demo.json"), max_prompt)


def lima_records(data_dir: str, max_prompt: int = 60) -> list[dict]:
    """LIMA's (the paper's SAH set) short single-turn instructions with their long answers; the 29 multi-turn
    examples are left out."""
    return short_prompt_records(os.path.join(data_dir, "lima", "lima.json"), max_prompt)


TEMPLATE_BYTES = len("<|user|>\n\n<|assistant|>\n\n") + 1  # the chat template around one turn, and end-of-text


def fits(rec: dict, max_len: int) -> bool:
    """The whole example (instruction, input, output and template) fits max_len bytes."""
    return len((rec["instruction"] + rec["input"] + rec["output"]).encode()) + TEMPLATE_BYTES <= max_len


def set_stats(recs: list[dict], max_len: int) -> dict:
    """Mean instruction and output bytes of a set's examples, the output as trained: cut to the room max_len
    leaves after the template and the instruction (these instructions are short enough to be kept whole)."""
    prompts = [len((r["instruction"] + r["input"]).encode()) for r in recs]
    outputs = [min(len(r["output"].encode()), max_len - TEMPLATE_BYTES - p) for r, p in zip(recs, prompts)]
    prompt, output = statistics.fmean(prompts), statistics.fmean(outputs)
    full = [len(r["output"].encode()) for r in recs]
    return {"available": len(recs), "prompt_bytes": prompt, "output_bytes": statistics.fmean(full),
            "output_bytes_after_cut": output, "cut": sum(f > o for f, o in zip(full, outputs)),
            "output_over_prompt": output / prompt}


SETS = {"mmlu": mmlu_records, "alpaca": lambda data_dir, max_len: alpaca_records(data_dir),
        "lima": lambda data_dir, max_len: lima_records(data_dir)}  # (data_dir, max_len) -> records


def tune_config(base: str, data: str, out_dir: str, weight: float, seed: int, args, examples: int) -> TrainConfig:
    """The tuning run: the longest budget's epochs at a constant rate (no warmup, no decay), scored only where
    the study stops it. No checkpoints are written: the study scores the model in memory."""
    return TrainConfig(out_dir=out_dir, overwrite=True, init_from=base, data=data, val_size=args.val_size,
                       num_examples=examples, block_size=args.max_len - 1, prompt_loss_weight=weight,
                       batch_size=args.batch_size, micro_batch_size=args.batch_size, epochs=float(max(args.epochs)),
                       lr=args.lr, min_lr=args.lr, schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                       eval_interval=0, eval_examples=0, train_eval_size=args.train_eval, threads=1, seed=seed,
                       save=False, log_interval=1000)


def knowledge_examples(base: str, n: int) -> list[Example]:
    """The first n of the base's held-out documents, in windows as it was trained: what it knew."""
    ckpt = load_checkpoint(os.path.join(base, "ckpt.pt") if os.path.isdir(base) else base)
    cfg = ckpt["config"]
    _, val = load_split(cfg)
    examples, _ = encode_dataset(val[:n], tokenizer_from_record(ckpt["tokenizer"]), cfg["block_size"] + 1,
                                 prompt_loss_weight=0.0)  # plain text: every token is an output token
    return examples


@torch.no_grad()
def answers(model, tok, examples: list[Example], max_new: int) -> tuple[list[str], list[str]]:
    """Greedy answers of at most max_new tokens to each example's instruction, and the example's own output cut
    to the same max_new tokens (a long answer is compared on its start, on both sides)."""
    was_training = model.training
    model.eval()
    starts = [answer_start(e.segs) for e in examples]
    refs = [tok.decode([t for t in e.ids[s:s + max_new] if t != tok.eot_token]) for e, s in zip(examples, starts)]
    outs: list[str] = []
    for i in range(0, len(examples), 25):
        chunk = list(range(i, min(i + 25, len(examples))))
        room = model.config.block_size + 1 - max(starts[j] for j in chunk)
        new = model.generate([examples[j].ids[:starts[j]] for j in chunk], min(max_new, room), eos_id=tok.eot_token)
        outs += [tok.decode(t) for t in new]
    model.train(was_training)
    return outs, refs


def score(s, know: list[Example], losses: dict, args) -> dict:
    """One point of the study: the losses train.py scored, and the answers and knowledge scored here."""
    n = args.gen_examples
    max_new = min(args.max_new, max(len(e.ids) - answer_start(e.segs) for e in s.val[:n] + s.train_sample[:n]))
    held_out, held_out_refs = answers(s.model, s.tok, s.val[:n], max_new)
    trained, trained_refs = answers(s.model, s.tok, s.train_sample[:n], max_new)
    return {"val_output_loss": losses["val_output_loss"], "train_output_loss": losses["train_output_loss"],
            "gap": losses["val_output_loss"] - losses["train_output_loss"],
            "val_prompt_loss": losses["val_prompt_loss"], "train_prompt_loss": losses["train_prompt_loss"],
            "held_out": text_metrics(held_out, held_out_refs), "copying": text_metrics(trained, trained_refs),
            "knowledge_loss": segment_losses(s.model, know, 16, "cpu")["output_loss"],
            "examples": {"held_out": [{"answer": a, "reference": r} for a, r in zip(held_out[:3], held_out_refs)],
                         "trained": [{"answer": a, "reference": r} for a, r in zip(trained[:3], trained_refs)]}}


def tune(cfg: TrainConfig, know: list[Example], args, with_base: bool) -> list[dict]:
    """One run scored at the end of each budget (epochs), and the base itself first if with_base."""
    validate(cfg)
    d, _ = join_distributed(cfg.device)
    s = train.setup(cfg, d)
    steps_per_epoch = s.total // max(args.epochs)
    points, t0 = [], time.perf_counter()
    if with_base:
        losses = eval_record(s.model, s.val, s.train_sample, 16, "cpu", d, None)
        points.append({"epochs": 0, "steps": 0, "mode": "base", **score(s, know, losses, args)})
    for epochs in sorted(args.epochs):
        s.cfg = dataclasses.replace(s.cfg, stop_step=epochs * steps_per_epoch)
        summary = train.run(s)
        points.append({"epochs": epochs, "steps": summary["steps"], **score(s, know, summary["final"], args),
                       "wall_s": time.perf_counter() - t0})
    return points


def tune_logged(cfg: TrainConfig, know: list[Example], args, with_base: bool) -> list[dict]:
    """tune in a worker process of its own (one thread), its output to the run's run.log: runs side by side stay
    legible, and each run's numbers are the same whatever --jobs is."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "run.log"), "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        return tune(cfg, know, args, with_base)


def check_learned(records: list[dict]) -> list[str]:
    """Warnings for runs that learned nothing: held-out output loss not below the base's at the longest budget."""
    base = {(r["set"], r["seed"]): r["val_output_loss"] for r in records if r["mode"] == "base"}
    last = max(r["epochs"] for r in records)
    return [f"{r['set']} {r['mode']} seed {r['seed']}: held-out output loss {r['val_output_loss']:.3f} is not below "
            f"the base's {base[r['set'], r['seed']]:.3f}" for r in records
            if r["mode"] != "base" and r["epochs"] == last and r["val_output_loss"] >= base[r["set"], r["seed"]]]


METRICS = {"val_output_loss": lambda r: r["val_output_loss"], "gap": lambda r: r["gap"],
           "train_prompt_loss": lambda r: r["train_prompt_loss"], "val_prompt_loss": lambda r: r["val_prompt_loss"],
           "held_out_rouge_l": lambda r: r["held_out"]["rouge_l"],
           "held_out_exact": lambda r: r["held_out"]["exact_match"],
           "copying_rouge_l": lambda r: r["copying"]["rouge_l"], "copying_bleu": lambda r: r["copying"]["bleu"],
           "knowledge_loss": lambda r: r["knowledge_loss"]}


def mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarize(records: list[dict]) -> list[dict]:
    """Mean and std over seeds per (set, epochs, mode), and each mode's difference from IT paired by seed."""
    rows = []
    keys = sorted({(r["set"], r["epochs"], r["mode"]) for r in records}, key=lambda k: (k[0], k[1], list(
        ["base", *MODES]).index(k[2])))
    for set_name, epochs, mode in keys:
        group = sorted((r for r in records if (r["set"], r["epochs"], r["mode"]) == (set_name, epochs, mode)),
                       key=lambda r: r["seed"])
        row = {"set": set_name, "epochs": epochs, "mode": mode, "seeds": [r["seed"] for r in group],
               **{m: mean_std([f(r) for r in group]) for m, f in METRICS.items()}}
        it = {r["seed"]: r for r in records if (r["set"], r["epochs"], r["mode"]) == (set_name, epochs, "it")}
        if mode not in ("base", "it") and all(r["seed"] in it for r in group):
            row["minus_it"] = {m: [f(r) - f(it[r["seed"]]) for r in group] for m, f in METRICS.items()}
        rows.append(row)
    return rows


COLUMNS = [("val_output_loss", "held-out output loss ↓", 3), ("gap", "gap (held-out − train)", 3),
           ("train_prompt_loss", "train prompt loss", 3), ("val_prompt_loss", "held-out prompt loss", 3),
           ("held_out_rouge_l", "held-out ROUGE-L ↑", 1), ("held_out_exact", "held-out exact match ↑", 2),
           ("copying_rouge_l", "copying ROUGE-L", 1), ("copying_bleu", "copying BLEU", 1),
           ("knowledge_loss", "knowledge loss ↓", 3)]


def markdown(rows: list[dict]) -> str:
    """One table per set (mean ± std over seeds), then each mode's per-seed difference from IT."""
    out = []
    for set_name in sorted({r["set"] for r in rows}):
        out += [f"**{set_name}**", "", "| epochs | mode | " + " | ".join(c[1] for c in COLUMNS) + " |",
                "|---|---|" + "---|" * len(COLUMNS)]
        for r in (r for r in rows if r["set"] == set_name):
            out.append(f"| {r['epochs']} | {r['mode']} | " + " | ".join(
                f"{r[m][0]:.{d}f} ± {r[m][1]:.{d}f}" for m, _, d in COLUMNS) + " |")
        out += ["", "| epochs | mode | per seed minus IT: held-out output loss | gap | copying ROUGE-L | "
                "knowledge loss |",
                "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["set"] == set_name and "minus_it" in r):
            out.append(f"| {r['epochs']} | {r['mode']} | " + " | ".join(
                ", ".join(f"{v:+.{d}f}" for v in r["minus_it"][m]) for m, d in
                (("val_output_loss", 3), ("gap", 3), ("copying_rouge_l", 1), ("knowledge_loss", 3))) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("val_output_loss", "held-out output loss (nats/byte)"), ("gap", "held-out − train output loss"),
              ("copying_rouge_l", "ROUGE-L of answers to training instructions"),
              ("knowledge_loss", "loss on the base's held-out text")]
    sets = sorted({r["set"] for r in rows})
    fig, axes = plt.subplots(len(sets), len(panels), figsize=(4 * len(panels), 3.2 * len(sets)), squeeze=False)
    for i, set_name in enumerate(sets):
        for j, (metric, title) in enumerate(panels):
            ax = axes[i][j]
            base = [r for r in rows if r["set"] == set_name and r["mode"] == "base"]
            for mode in MODES:
                pts = [r for r in rows if r["set"] == set_name and r["mode"] == mode]
                xs = [0] + [r["epochs"] for r in pts]
                ys = [base[0][metric][0] if base else float("nan")] + [r[metric][0] for r in pts]
                es = [base[0][metric][1] if base else 0.0] + [r[metric][1] for r in pts]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=mode)
            ax.set_title(f"{set_name}: {title}", fontsize=9)
            ax.set_xlabel("epochs")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="out/english-base", help="the base: an out_dir with ckpt.pt, or a checkpoint")
    ap.add_argument("--data_dir", default="../shared/data",
                    help="folder with mmlu-redux/, llamafactory-alpaca-demo/ and lima/")
    ap.add_argument("--out_dir", default="out/real-text")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", default="2,3,10", help="budgets: epochs at which the run is scored")
    ap.add_argument("--examples", default=None,
                    help="training examples per set: a number, or all (every example that fits, less --val_size; "
                         "the default, or 8 with --smoke)")
    ap.add_argument("--val_size", type=int, default=100, help="held-out examples per set")
    ap.add_argument("--max_len", type=int, default=160, help="bytes per example, template included")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gen_examples", type=int, default=20, help="training and held-out instructions answered")
    ap.add_argument("--train_eval", type=int, default=100, help="training examples whose output loss gives the gap")
    ap.add_argument("--max_new", type=int, default=64, help="longest answer generated, in bytes")
    ap.add_argument("--knowledge_docs", type=int, default=50, help="base's held-out documents scored")
    ap.add_argument("--jobs", type=int, default=usable_cores(),
                    help="runs at once, each in its own process with one thread (default: one per core)")
    ap.add_argument("--smoke", action="store_true", help="a few examples, 1 seed, 1 and 2 epochs: seconds")
    ap.add_argument("--tables", default="", help="print the tables of a results.json written earlier, and exit")
    args = ap.parse_args(argv)
    if args.tables:
        with open(args.tables) as f:
            recorded = json.load(f)
        print(markdown(recorded["rows"]))
        at = recorded["settings"]
        for name in recorded["sets"]:
            print(name, set_stats(SETS[name](at["data_dir"], at["max_len"]), at["max_len"]))
        return {}
    args.epochs = sorted({int(e) for e in args.epochs.split(",")})
    if args.smoke:
        args.seeds, args.epochs, args.val_size = 1, [1, 2], 4
        args.gen_examples, args.train_eval, args.knowledge_docs = 4, 4, 4
    args.examples = args.examples or ("8" if args.smoke else "all")
    if args.examples != "all" and not (args.examples.isdigit() and int(args.examples) > 0):
        raise UserError(f"--examples: {args.examples!r} is neither a positive number nor all")
    if args.jobs < 1:
        raise UserError(f"--jobs: {args.jobs}; give 1 or more")
    modes = args.modes.split(",")
    if bad := [m for m in modes if m not in MODES]:
        raise UserError(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    t0 = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    know = knowledge_examples(args.base, args.knowledge_docs)
    sets, plan = {}, []  # plan: (set, seed, mode, its TrainConfig, scores the base too), in results order
    for set_name in args.sets.split(","):
        if set_name not in SETS:
            raise UserError(f"--sets: unknown {set_name!r}; choose from {', '.join(SETS)}")
        recs = SETS[set_name](args.data_dir, args.max_len)
        n = len(recs) - args.val_size if args.examples == "all" else int(args.examples)
        if n < 1 or len(recs) < n + args.val_size:
            raise UserError(f"{set_name}: {len(recs)} examples fit, need {args.examples} + {args.val_size}")
        path = os.path.join(args.out_dir, f"{set_name}.json")
        write_text_atomic(path, json.dumps(recs))
        sets[set_name] = {**set_stats(recs, args.max_len), "train_examples": n}
        for seed in range(args.seeds):
            for i, mode in enumerate(modes):
                run_dir = os.path.join(args.out_dir, "runs", f"{set_name}-{mode}-s{seed}")
                plan.append((set_name, seed, mode, tune_config(args.base, path, run_dir, MODES[mode], seed, args, n),
                             i == 0))
    print(f"{len(plan)} runs, {args.jobs} at a time, one thread each (logs in {args.out_dir}/runs/*/run.log)",
          flush=True)
    points: dict[int, list[dict]] = {}

    def finished(k: int, run_points: list[dict]) -> None:
        points[k] = run_points
        set_name, seed, mode = plan[k][:3]
        print(f"{set_name} {mode} seed {seed}: " + ", ".join(
            f"{p['epochs']} ep held-out {p['val_output_loss']:.3f} gap {p['gap']:.3f} copy "
            f"{p['copying']['rouge_l']:.1f} know {p['knowledge_loss']:.3f}"
            for p in run_points if p.get("mode") != "base"), flush=True)

    if args.jobs == 1:
        for k, (_, _, _, cfg, with_base) in enumerate(plan):
            finished(k, tune_logged(cfg, know, args, with_base))
    else:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or state
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(tune_logged, cfg, know, args, with_base): k
                       for k, (_, _, _, cfg, with_base) in enumerate(plan)}
            for future in concurrent.futures.as_completed(futures):
                finished(futures[future], future.result())
    records = [{"set": set_name, "seed": seed, **p, "mode": p.get("mode", mode)}
               for k, (set_name, seed, mode, _, _) in enumerate(plan) for p in points[k]]
    rows = summarize(records)
    result = {"command": "python -m scripts.experiments.real_text " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {k: v for k, v in vars(args).items()}, "sets": sets, "rows": rows, "records": records,
              "not_learned": check_learned(records), "wall_s": time.perf_counter() - t0}
    write_text_atomic(os.path.join(args.out_dir, "results.json"), json.dumps(result, indent=1))
    plot(rows, os.path.join(args.out_dir, "real_text.png"))
    print(markdown(rows))
    for w in result["not_learned"]:
        print("warning:", w)
    print(f"{len(records)} points in {result['wall_s']:.0f} s: {args.out_dir}/results.json, "
          f"{args.out_dir}/real_text.png")
    return result


if __name__ == "__main__":
    run_cli(main)
