"""python data.py stats|show: look at a dataset before training on it.

`stats` prints a Table-5-like summary (Shi et al. 2024): tokens per instruction and output, their ratio, the share
of tokens each loss trains on, truncation and padding. `show` prints examples token by token, marked by their loss
weight (tokenviz.py draws them). data.py hands its command line here.

Usage: python data.py stats FILE [FILE ...] [--max_len N] [--format F] [--tokenizer gpt2|byte|DIR]
       python data.py show FILE|synthetic [--loss it|im|WEIGHT] [--n N] [--tokenizer T] [--color auto|always|never]
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import tiktoken

from data import (FORMATS, LOSS_PRESETS, collate, encode_dataset, encode_example, epoch_batches, load_conversations,
                  load_split, loss_weights)
from model import get_tokenizer
from runtime import UserError, opt, parse_config, run_cli
from synthetic import synthetic_split
from tokenviz import ShowConfig, legend, render


# ----------------------------------------------------------------------------- python data.py stats FILE

@dataclass
class StatsConfig:
    max_len: int = opt(1024, "context length: examples longer than this are truncated (or dropped)", low=2)
    format: str | None = opt(None, f"input format, detected when not given: {', '.join(FORMATS)}")
    tokenizer: str = opt("gpt2", "gpt2, byte, or a directory with vocab.json+merges.txt (or encoder.json+vocab.bpe)")
    batch_size: int = opt(8, "batch size for measuring padding (length-grouped batches)", low=1)


def dataset_stats(convs: list[list[dict]], tok: tiktoken.Encoding, max_len: int, batch_size: int = 8) -> dict:
    """One row of a Table-5-like summary: lengths before truncation, weight shares and padding after."""
    examples, st = encode_dataset(convs, tok, max_len)
    n, positions = st["examples"], sum(len(e.ids) - 1 for e in examples)
    weighted = {k: sum(sum(loss_weights(e.segs, plw)) for e in examples) / max(positions, 1)
                for k, plw in LOSS_PRESETS.items()}
    lengths = [len(e.ids) for e in examples]
    useful = {}
    for name, pack_len in (("padded", None), ("packed", max_len)):  # length-grouped batches, as in training
        docs = [collate([examples[i] for i in b], 0.0, pack_len=pack_len).doc
                for b in epoch_batches(lengths, batch_size, seed=0, epoch=0)]
        useful[name] = sum(int((d >= 0).sum()) for d in docs) / max(sum(d.numel() for d in docs), 1)
    return {"examples": n, "instruction": st["prompt_tokens"] / n, "output": st["output_tokens"] / n,
            "ratio": st["prompt_tokens"] / max(st["output_tokens"], 1), "IT weighted": weighted["it"],
            "IM weighted": weighted["im"], "truncated": st["truncated"], "dropped": st["dropped"],
            f"useful@{batch_size}": useful["padded"], f"useful@{batch_size} packed": useful["packed"]}


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per dataset."""
    cols = list(next(iter(rows.values())))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) and v < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    return "\n".join(lines + [f"| {name} | " + " | ".join(cell(r[c]) for c in cols) + " |" for name, r in rows.items()])


# ----------------------------------------------------------------------------- python data.py show FILE

def show(source: str, flags: list[str]) -> None:
    """The first examples of a file, or of train.py's default synthetic training split, marked by loss weight."""
    cfg = parse_config(ShowConfig, flags, description="Examples with each token marked by its loss weight")
    weight, color = cfg.prompt_loss_weight(), cfg.use_color(sys.stdout.isatty())
    convs = load_split({})[0] if source == "synthetic" else load_conversations(source, cfg.format)
    tok = get_tokenizer(cfg.tokenizer or ("byte" if source == "synthetic" else "gpt2"))
    print(legend(color))
    for i, conv in enumerate(convs[:cfg.n], 1):
        ids, weights = encode_example(conv, tok, weight, max_len=cfg.max_len)
        text = [tok.decode_single_token_bytes(t).decode("utf-8", errors="replace") for t in ids]
        print(f"example {i}, " + render(list(zip(text, weights)), color))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if argv[:1] == ["show"] and len(argv) > 1 and not argv[1].startswith("-"):
        return show(argv[1], argv[2:])
    if not argv or argv[0] != "stats":
        raise UserError("usage: " + " | ".join(u.strip() for u in __doc__.split("Usage: ")[1].strip().splitlines()))
    rest = argv[1:]
    k = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))  # FILE ... then --flags
    files, flags = rest[:k], rest[k:]
    cfg = parse_config(StatsConfig, flags, description="Token statistics of instruction datasets")
    if not files:
        raise UserError("stats: give at least one data file, a dataset name, or 'synthetic'")
    datasets = {os.path.basename(f): synthetic_split()[0] if f == "synthetic"
                else load_conversations(f, cfg.format) for f in files}  # a bad file fails before any download
    tok = get_tokenizer(cfg.tokenizer)
    rows = {name: dataset_stats(convs, tok, cfg.max_len, cfg.batch_size) for name, convs in datasets.items()}
    print(format_table(rows))
    print(f"tokens per example before truncation; weighted = share of target tokens with weight > 0 (IT: outputs, "
          f"IM: + instructions); truncated/dropped at max_len={cfg.max_len}; useful = real / computed tokens")


if __name__ == "__main__":
    run_cli(main)
