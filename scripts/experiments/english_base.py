"""A small English base: a byte-level GPT pretrained on real English text, one command.

    python -m scripts.experiments.english_base --data_dir ../shared/data --out_dir out/english-base

(800 steps: 5 min 52 s on this project's idle 2-core AMD EPYC, 2 threads; docs/real-text.md.)

The text is two public sets of everyday and school English, each document one paragraph:
- HellaSwag's validation contexts, each with its correct ending ("Roof shingle removal: A man is sitting on a
  roof. he starts pulling up roofing on a roof."), 10,042 documents (klosax/hellaswag_text_data, MIT);
- GSM8K's grade-school word problems with their worked solutions (train and test, 8,792 documents; openai/
  grade-school-math, MIT), the calculator annotations <<48/2=24>> taken out.
Files are read from --data_dir (the layout of shared/data: hellaswag/..., gsm8k/...); a file not there is
downloaded once from its public URL into the cache, as train.py's --data does. None of the instruction sets the
base is tuned on (scripts/experiments/real_text.py: MMLU-Redux, the LLaMA-Factory Alpaca demo, LIMA) is in this
text.

The corpus is written to out_dir/corpus.txt and trained with train.py's plain-text path (every token learned;
documents cut into windows of block_size bytes). A held-out set of documents gives the loss per byte, and a few
greedy continuations show what the base knows (both in out_dir/base_report.json).
"""
from __future__ import annotations

import argparse
import bz2
import json
import os
import re
import time

import torch

import train
from data import encode_dataset
from imgpt.cli import UserError, run_cli
from imgpt.files import cache_dir, download, write_text_atomic
from imgpt.formats import load_split
from imgpt.train_config import TrainConfig
from metrics import segment_losses
from model import load_model
from sample import SampleConfig, stream

# name -> (path under --data_dir, public URL of the same file)
SOURCES = {
    "hellaswag": ("hellaswag/hellaswag_val_full.txt.bz2",
                  "https://raw.githubusercontent.com/klosax/hellaswag_text_data/main/hellaswag_val_full.txt.bz2"),
    "gsm8k-train": ("gsm8k/train.jsonl", "https://raw.githubusercontent.com/openai/grade-school-math/master/"
                    "grade_school_math/data/train.jsonl"),
    "gsm8k-test": ("gsm8k/test.jsonl", "https://raw.githubusercontent.com/openai/grade-school-math/master/"
                   "grade_school_math/data/test.jsonl"),
}
PROMPTS = ["Cutting the grass: A man", "Natalia sold clips to 48 of her friends", "Making a cake: She",
           "Tom has 3 apples. He buys"]
CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: not English


def source_path(name: str, data_dir: str) -> str:
    """The local copy of a source: under data_dir if it is there, else the cached download."""
    rel, url = SOURCES[name]
    local = os.path.join(data_dir, rel)
    if os.path.exists(local):
        return local
    cached = os.path.join(cache_dir(), "english-base", rel.replace("/", "-"))
    if not os.path.exists(cached):
        try:
            download(url, cached)
        except OSError as e:
            raise UserError(f"{local}: not found, and cannot download {url} ({e}); pass --data_dir") from None
    return cached


def hellaswag_documents(path: str) -> list[str]:
    """Each task's context with its correct ending. The file holds 6 lines per task: context, label, 4 endings."""
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) % 6:
        raise UserError(f"{path}: {len(lines)} lines, expected 6 per task")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, label = lines[i], lines[i + 1]
        if not label.strip().isdigit() or not 0 <= int(label) <= 3:
            raise UserError(f"{path}:{i + 2}: label {label!r}, expected 0-3")
        docs.append(f"{ctx.strip()} {lines[i + 2 + int(label)].strip()}")
    return docs


def gsm8k_documents(path: str) -> list[str]:
    """Each problem followed by its worked solution, calculator annotations removed."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    docs.append(f"{rec['question'].strip()}\n{CALCULATOR.sub('', rec['answer']).strip()}")
                except (json.JSONDecodeError, KeyError, AttributeError) as e:
                    raise UserError(f"{path}:{n}: not a GSM8K record ({e})") from None
    return docs


def corpus_documents(data_dir: str, limit: int = 0) -> list[str]:
    """All documents in a fixed order (train.py's --seed shuffles and splits them); limit: the first N per source."""
    docs = []
    for name in SOURCES:
        path = source_path(name, data_dir)
        part = hellaswag_documents(path) if name == "hellaswag" else gsm8k_documents(path)
        docs += part[:limit] if limit else part
    return [d.replace("\n\n", "\n") for d in docs]  # a blank line would split a document in two


def base_config(out_dir: str, corpus: str, max_steps: int, seed: int, val_size: int, threads: int = 0) -> TrainConfig:
    """train.py's settings for the base: the tiny byte-level GPT (4 layers, width 128, 0.8M parameters) on
    windows of 256 bytes, 32 a step, the from-scratch recipe's learning rate and cosine schedule."""
    return TrainConfig(out_dir=out_dir, overwrite=True, data=corpus, val_size=val_size, max_steps=max_steps,
                       block_size=256, batch_size=32, eval_interval=max(1, max_steps // 4), eval_examples=0,
                       seed=seed, threads=threads)


def held_out_loss(ckpt: str, cfg: TrainConfig) -> tuple[float, int]:
    """Mean loss per byte over every held-out document (nats) and the byte count: the base's knowledge measure."""
    model, tok = load_model(ckpt)
    _, val = load_split(vars(cfg))
    examples, _ = encode_dataset(val, tok, cfg.block_size + 1, prompt_loss_weight=0.0)  # scored by segment
    sums = segment_losses(model, examples, 16, "cpu")
    return sums["output_loss"], sums["output_tokens"]


def greedy_samples(ckpt: str, prompts: list[str], max_new: int) -> list[dict]:
    model, tok = load_model(ckpt)
    cfg = SampleConfig(max_new_tokens=max_new)
    with torch.no_grad():
        return [{"prompt": p,
                 "continuation": tok.decode(list(stream(model, tok.encode_ordinary(p), cfg, tok.eot_token)))}
                for p in prompts]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="../shared/data", help="folder with hellaswag/ and gsm8k/ (else download)")
    ap.add_argument("--out_dir", default="out/english-base")
    ap.add_argument("--max_steps", type=int, default=800, help="optimizer steps of 32 windows of 256 bytes")
    ap.add_argument("--seed", type=int, default=1337, help="initialization, held-out split and data order")
    ap.add_argument("--val_size", type=int, default=300, help="held-out documents")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0: train.py's choice, one per core on an idle machine); a base is reproduced "
                         "bit for bit with the thread count its report names")
    ap.add_argument("--smoke", action="store_true", help="20 documents per source, 4 steps: seconds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    docs = corpus_documents(args.data_dir, limit=20 if args.smoke else 0)
    os.makedirs(args.out_dir, exist_ok=True)
    corpus = os.path.join(args.out_dir, "corpus.txt")
    write_text_atomic(corpus, "\n\n".join(docs) + "\n")
    steps, val = (4, 5) if args.smoke else (args.max_steps, args.val_size)
    cfg = base_config(args.out_dir, corpus, steps, args.seed, val, args.threads)
    summary = train.train(cfg)
    ckpt = os.path.join(args.out_dir, "ckpt.pt")
    loss, n = held_out_loss(ckpt, cfg)
    report = {"sources": {k: v[1] for k, v in SOURCES.items()}, "documents": len(docs),
              "corpus_bytes": os.path.getsize(corpus), "steps": summary["steps"], "seed": args.seed,
              "threads": summary["config"]["threads"],
              "held_out_documents": val, "held_out_bytes": n, "held_out_loss_per_byte": loss,
              "held_out_bits_per_byte": loss / 0.6931471805599453, "train_time_s": summary["time_s"],
              "samples": greedy_samples(ckpt, PROMPTS, 8 if args.smoke else 120),
              "wall_s": time.perf_counter() - t0}
    write_text_atomic(os.path.join(args.out_dir, "base_report.json"), json.dumps(report, indent=1))
    print(f"held-out loss {loss:.4f} nats per byte ({report['held_out_bits_per_byte']:.3f} bits) over {n} bytes "
          f"of {val} documents; {summary['steps']} steps in {summary['time_s']:.0f} s")
    for s in report["samples"]:
        print(f"  {s['prompt']!r} -> {s['continuation']!r}")
    return report


if __name__ == "__main__":
    run_cli(main)
