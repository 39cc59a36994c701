"""The paper's two factors (Shi et al. 2024, Fig. 2): how IM's gain over IT changes with the number of training
examples and with the instruction/output length ratio. Each point is a small IT-vs-IM comparison over seeds.

    python -m scripts.experiments.sweep --factor examples                   # 50,100,200,400 synthetic training examples
    python -m scripts.experiments.sweep --factor ratio                      # 1,2,4,8 stated facts per instruction
    python -m scripts.experiments.sweep --factor examples --points 100,1000,10000 --init_from gpt2 --data alpaca.json
    python -m scripts.experiments.sweep --factor ratio --bins 3 --init_from gpt2 --data alpaca.json  # subsets by ratio

Each knob moves one thing. `examples` sets the synthetic task's training examples; the world, the held-out
questions and how often training instructions state each held-out fact stay fixed (extra examples ask about,
and state, training facts only), so IM's possible gain is not built in by the number of examples. With
--data FILE it takes a random subset of that many. `ratio` sets the facts stated per instruction (the
instruction length) while every question and answer stays the same; the held-out facts are stated in
proportion (a fact per instruction more is a statement more of each fact), because in this task that is what
a longer instruction carries. With --data FILE it splits the data into --bins equal-size subsets by each
example's instruction/output token ratio, as the paper did. Every flag of scripts/experiments/compare.py works here too
(--seeds, --jobs, --max_steps, --device, ...); every point trains the same number of steps.

Writes out_dir/sweep.json, sweep.md (the gain at each point, honest about the seed spread) and sweep.png (the
gain against the factor, ± std over seeds); each point also gets compare.py's files in out_dir/<point>/.
Default runtime: 4 points x 2 modes x 2 seeds = 16 runs, a run per core: about 15 minutes on an idle 2-core machine.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

from data import OUTPUT_SEGMENTS, PROMPT_SEGMENTS, encode_segments
from imgpt.cli import UserError, opt, run_cli
from imgpt.files import write_text_atomic
from imgpt.formats import load_conversations
from imgpt.tokenizers import get_tokenizer
from scripts.experiments import compare, report
from scripts.experiments.compare import CompareConfig
from scripts.experiments.report import mean_std, plt


KNOB_TASKS = ("synthetic", "synthetic-qa")  # built-in tasks whose examples and facts are knobs, not subsets
# the train settings each factor's points set (--synth_mentions stays the user's: mentions at the default 8 facts)
FACTOR_KNOBS = {"examples": ("synth_examples", "num_examples"), "ratio": ("synth_facts",)}
DEFAULT_POINTS = {"examples": [50, 100, 200, 400], "ratio": [1, 2, 4, 8]}
# (metric, title, lower is better); the gain is signed so that a positive gain means IM did better
GAINS = [("heldout_loss", "held-out output loss: IT − IM", True), ("exact_match", "exact match: IM − IT", False),
         ("memorization_exact_match", "memorization exact match: IT − IM", True),
         ("knowledge", "knowledge kept (probe): IM − IT", False)]


@dataclass
class SweepConfig(CompareConfig):
    out_dir: str = opt("out/sweep", "where sweep.json, sweep.md, sweep.png and one folder per point go")
    factor: str = opt("examples", "examples (training set size) or ratio (instruction/output length)")
    points: list[int] = opt([], "values of the factor ('' = examples 50,100,200,400; ratio 1,2,4,8 facts; "
                                "synthetic-qa's ratio may start at 0 facts: the question alone)", low=0)
    bins: int = opt(3, "ratio with --data FILE: number of equal-size subsets by per-example ratio", low=2)
    seeds: int = opt(2, "runs per mode and point", low=1)

    def decides(self) -> dict[str, str]:
        return {**super().decides(), **{k: "--factor and --points" for k in FACTOR_KNOBS[self.factor]}}

    def validate(self) -> None:
        super().validate()
        if self.factor not in DEFAULT_POINTS:
            raise UserError(f"--factor must be examples or ratio, got {self.factor!r}")
        if not {"it", "im"} <= set(compare.all_modes(self)):
            raise UserError("--modes must include it and im: the gain is measured between them")
        if any(p < (self.factor == "examples") for p in self.points) or self.bins < 2:
            raise UserError("--points must be >= 1 (facts: >= 0) and --bins >= 2")


# ----------------------------------------------------------------------------- the points

def point_settings(factor: str, value: int, base) -> dict:
    """The train settings of one synthetic or subsample point; everything else stays as in `base`."""
    if base.data not in KNOB_TASKS:
        return {"num_examples": value}
    if factor == "examples":  # the held-out set and its mentions in training instructions stay as they are
        return {"synth_examples": value}
    if base.data == "synthetic-qa":  # tuning a base: instructions state training facts only
        return {"synth_facts": value}
    # held-out facts stated in proportion to the facts per instruction (default 8 facts: 10 mentions)
    return {"synth_facts": value, "synth_mentions": max(1, round(base.synth_mentions * value / base.synth_facts))}


def example_ratio(messages: list[dict], tok) -> float:
    """Instruction (system + user) tokens over output (assistant + end-of-text) tokens of one conversation."""
    _, segs = encode_segments(messages, tok)
    prompt = sum(s in PROMPT_SEGMENTS for s in segs)
    return prompt / max(1, sum(s in OUTPUT_SEGMENTS for s in segs))


def ratio_bins(convs: list, ratios: list[float], bins: int) -> list[list]:
    """`bins` equal-size subsets, from the lowest per-example ratios to the highest (ties by original order)."""
    order = sorted(range(len(convs)), key=lambda i: ratios[i])
    size = len(convs) // bins
    return [[convs[i] for i in sorted(order[b * size:(b + 1) * size])] for b in range(bins)]


def write_ratio_subsets(base, bins: int, out_dir: str) -> list[str]:
    """Split a real dataset by per-example ratio; each subset becomes a messages JSONL file train.py reads."""
    convs = load_conversations(base.data, base.format or None)
    tok = get_tokenizer(compare.tokenizer_name(compare.training.resolve(base)))
    paths = []
    for b, subset in enumerate(ratio_bins(convs, [example_ratio(c, tok) for c in convs], bins)):
        path = os.path.join(out_dir, "data", f"ratio_bin{b}.jsonl")
        write_text_atomic(path, "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in subset))
        paths.append(path)
    return paths


def plan_points(cfg: SweepConfig, base) -> list[tuple[str, object]]:
    """(label, TrainConfig) of each point."""
    if cfg.factor == "ratio" and base.data not in KNOB_TASKS:
        if cfg.points:
            raise UserError("--points sets synthetic facts per instruction; with --data FILE use --bins")
        paths = write_ratio_subsets(base, cfg.bins, cfg.out_dir)
        return [(f"ratio_bin{b}", dataclasses.replace(base, data=p, format="")) for b, p in enumerate(paths)]
    values = cfg.points or DEFAULT_POINTS[cfg.factor]
    return [(f"{cfg.factor}{v}", dataclasses.replace(base, **point_settings(cfg.factor, v, base))) for v in values]


# ----------------------------------------------------------------------------- the gain (pure)

def paired_gain(records: list[dict], metric: str, lower_is_better: bool) -> dict:
    """IM's gain over IT per seed (same seed = same init, data split and order), then mean ± std over seeds."""
    values = report.by_mode(records, metric)
    it, im = values.get("it", {}), values.get("im", {})
    gains = list(report.paired_gains(records, metric, lower_is_better).values())
    if not gains:
        return {"mean": float("nan"), "std": float("nan"), "seeds": 0, "it": float("nan"), "im": float("nan")}
    m, s = mean_std(gains)
    return {"mean": m, "std": s, "seeds": len(gains), "it": mean_std(list(it.values()))[0],
            "im": mean_std(list(im.values()))[0]}


def call(gain: dict) -> str:
    """A one-word reading of a gain: who won, and whether it exceeds the seed spread of the paired gain."""
    if gain["seeds"] == 0 or gain["mean"] != gain["mean"]:
        return "n/a"
    who = "IM better" if gain["mean"] > 0 else "IT better" if gain["mean"] < 0 else "tie"
    if gain["seeds"] < 2 or who == "tie":
        return who + (" (1 seed)" if gain["seeds"] < 2 else "")
    return who if abs(gain["mean"]) > gain["std"] else f"{who}, within seed spread"


def point_row(label: str, records: list[dict], info: dict) -> dict:
    gains = {metric: paired_gain(records, metric, lower) for metric, _, lower in GAINS}
    return {"point": label, "train_examples": info["train_examples"], "ratio": info["ratio"], "gains": gains}


def sweep_markdown(factor: str, rows: list[dict]) -> str:
    knows = any(r["gains"].get("knowledge", {}).get("seeds") for r in rows)  # tuned from a base: knowledge kept
    head = ("| point | train examples | instr/output ratio | held-out loss IT | IM | gain (IT − IM) | "
            "exact match IT | IM | gain (IM − IT) | memorization EM IT | IM |" + (" knowledge kept IT | IM |" * knows))
    lines = [f"# IM vs IT against {factor}", "",
             "Gain > 0 means IM did better. Gains are paired by seed, mean ± std over seeds; the words say whether "
             "|mean| exceeds that std.", "", head, "|" + "---|" * (13 if knows else 11)]
    for r in rows:
        loss, em = r["gains"]["heldout_loss"], r["gains"]["exact_match"]
        mem = r["gains"].get("memorization_exact_match", {"it": float("nan"), "im": float("nan")})
        know = r["gains"].get("knowledge", {"it": float("nan"), "im": float("nan")})
        lines.append(f"| {r['point']} | {r['train_examples']} | {r['ratio']:.2f} | {loss['it']:.3f} | {loss['im']:.3f} "
                     f"| {loss['mean']:+.3f} ± {loss['std']:.3f} ({call(loss)}) | {em['it']:.3f} | {em['im']:.3f} "
                     f"| {em['mean']:+.3f} ± {em['std']:.3f} ({call(em)}) | {mem['it']:.3f} | {mem['im']:.3f} |"
                     + (f" {know['it']:.3f} | {know['im']:.3f} |" if knows else ""))
    return "\n".join(lines) + "\n"


def plot_gains(factor: str, rows: list[dict], path: str) -> None:
    """IM's gain against the factor (x: training examples or measured ratio), error bars = std over seeds."""
    key = "train_examples" if factor == "examples" else "ratio"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, title, _) in zip(axes, GAINS[:2]):
        xs = [r[key] for r in rows]
        ax.errorbar(xs, [r["gains"][metric]["mean"] for r in rows], yerr=[r["gains"][metric]["std"] for r in rows],
                    marker="o", capsize=4)
        ax.axhline(0, color="gray", lw=1)
        ax.set(title=f"IM gain: {title}", xlabel="training examples" if key == "train_examples"
               else "instruction/output token ratio", ylabel="gain (> 0: IM better)")
        if len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    report.save_figure(fig, path)


# ----------------------------------------------------------------------------- the program

def run_point(cfg: SweepConfig, label: str, base) -> tuple[list[dict], dict]:
    """compare.py's comparison for one point, in out_dir/<label>/ (its own results.json, summary.md, curves.png)."""
    point_cfg = dataclasses.replace(cfg, out_dir=os.path.join(cfg.out_dir, label))
    modes = compare.all_modes(point_cfg)
    info = compare.dataset_info(compare.run_train_config(base, point_cfg, modes[0], cfg.first_seed, point_cfg.out_dir))
    done = compare.load_records(os.path.join(point_cfg.out_dir, "results.json")) if cfg.resume else []
    records = compare.run_all(point_cfg, base, modes, done,
                              on_record=lambda rs: compare.write_results(point_cfg.out_dir, rs, info))
    return records, info


def main(argv: list[str] | None = None) -> list[dict]:
    cfg, base = compare.parse_args(SweepConfig, argv)
    t0, rows, points = time.perf_counter(), [], []
    for label, point_base in plan_points(cfg, base):
        print(f"##### point {label}", flush=True)
        records, info = run_point(cfg, label, point_base)
        rows.append(point_row(label, records, info))
        points.append({**rows[-1], "data": info, "runs": records})
        write_text_atomic(os.path.join(cfg.out_dir, "sweep.json"),
                           json.dumps({"factor": cfg.factor, "points": points}, indent=1) + "\n")
        write_text_atomic(os.path.join(cfg.out_dir, "sweep.md"), sweep_markdown(cfg.factor, rows))
        plot_gains(cfg.factor, rows, os.path.join(cfg.out_dir, "sweep.png"))
    print(sweep_markdown(cfg.factor, rows))
    print(f"wrote {cfg.out_dir}/sweep.json, sweep.md, sweep.png in {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    run_cli(main)
