"""The report of a comparison (pure, no training): mean ± std per mode, IM's paired gain per seed, one honest
verdict sentence per metric, the markdown summary, the loss curves, and results.json. compare.py and sweep.py
write their files with it; a reader of results.json finds the same numbers under the same names.
"""
from __future__ import annotations

import json
import math
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # draw to files; no display needed (before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np

from imgpt.files import write_atomic, write_text_atomic

# (key in a record's "metrics", column title, True if lower is better); the summary table's columns in order
METRICS = [("heldout_loss", "held-out output loss ↓", True), ("train_loss", "train output loss", True),
           ("gap", "gap (held-out − train)", True), ("exact_match", "held-out exact match ↑", False),
           ("memorization_exact_match", "memorization exact match", False),
           ("knowledge", "knowledge kept (probe exact match) ↑", False),
           ("bleu", "BLEU ↑", False), ("rouge_l", "ROUGE-L ↑", False),
           ("memorization_bleu", "memorization BLEU", False)]
LONG_ONLY = ("bleu", "rouge_l", "memorization_bleu")  # n-gram overlap says nothing about one-word answers
SHORT_ANSWER_TOKENS = 16  # answers up to this long (on average, end-of-text included) are scored by exact match


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def by_mode(records: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{mode: {seed: value}} for one metric, modes in first-seen order (records without the metric left out)."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if metric in r["metrics"]:
            out.setdefault(r["mode"], {})[r["seed"]] = r["metrics"][metric]
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def paired_gains(records: list[dict], metric: str, lower_is_better: bool, a: str = "it", b: str = "im") -> dict:
    """{seed: how much better b did than a} for the seeds both ran (same seed: same init and example order)."""
    values = by_mode(records, metric)
    va, vb = values.get(a, {}), values.get(b, {})
    return {s: (va[s] - vb[s]) if lower_is_better else (vb[s] - va[s]) for s in va if s in vb}


def verdict(records: list[dict], metric: str, label: str, lower_is_better: bool, a: str = "it", b: str = "im") -> str:
    """One honest sentence: did mode b beat mode a on this metric, by how much, and is that beyond the seed spread?"""
    values = by_mode(records, metric)
    A, B = a.upper(), b.upper()
    if a not in values or b not in values:
        return f"{label}: no {A}/{B} pair to compare."
    (ma, sa), (mb, sb) = mean_std(list(values[a].values())), mean_std(list(values[b].values()))
    diff = mb - ma
    gains = paired_gains(records, metric, lower_is_better, a, b)
    wins = sum(g > 0 for g in gains.values())
    if diff == 0:
        return f"{label}: {B} and {A} tie at {ma:.4g} (over {plural(len(gains), 'seed')})."
    spread = sa + sb  # the two modes' seed standard deviations added: a difference beyond this is not seed luck
    if min(len(values[a]), len(values[b])) < 2:
        beyond = "one seed only, so no seed spread to compare with"
    else:
        beyond = f"{'beyond' if abs(diff) > spread else 'within'} the seed spread (std {A} + std {B} = {spread:.3g})"
    won = "beat" if (diff < 0) == lower_is_better else "did NOT beat"
    per_seed = ", ".join(f"{g:+.3g}" for g in gains.values())
    return (f"{label}: {B} {won} {A}: {ma:.4g} → {mb:.4g} (difference {diff:+.4g}, {beyond}; "
            f"{B} better on {wins} of {plural(len(gains), 'seed')}; {B}'s gain per seed {per_seed}).")


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


def summary_table(records: list[dict], short_answers: bool = False) -> str:
    """Markdown: one row per mode, mean ± std over seeds of each metric, plus training time. With short answers
    the n-gram scores (BLEU, ROUGE-L) are left out: exact match says it all."""
    modes = list(dict.fromkeys(r["mode"] for r in records))
    metrics = [(k, title) for k, title, _ in METRICS if any(k in r["metrics"] for r in records)
               and not (short_answers and k in LONG_ONLY)]
    head = ["mode", "seeds"] + [title for _, title in metrics] + ["train time (s)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode in modes:
        mine = [r for r in records if r["mode"] == mode]
        cells = [cell([r["metrics"][k] for r in mine if k in r["metrics"]]) for k, _ in metrics]
        seconds = mean_std([r["time_s"]["train"] for r in mine])[0]
        rows.append("| " + " | ".join([mode, str(len(mine))] + cells + [f"{seconds:.1f}"]) + " |")
    return "\n".join(rows)


def describe_setup(records: list[dict], d: dict) -> str:
    """The data (dataset_info's facts) and the training settings that all runs shared, in two lines."""
    r = records[0]
    t = r["train_settings"]
    data = {"synthetic": f"synthetic ({t['synth_facts']} stated facts per instruction; each held-out fact stated "
                         f"{t['synth_mentions']} times in training instructions, never asked in training)",
            "synthetic-qa": f"synthetic-qa (questions about facts the base learned from text; {t['synth_facts']} "
                            f"training facts stated per instruction; held-out questions ask facts no training "
                            f"example asked or stated)"}.get(t["data"], t["data"])
    sizes = ", ".join(f"{k} {t[k]}" for k in ("n_layer", "n_head", "n_embd", "block_size") if t[k])
    model = t["init_from"] if t["init_from"] != "scratch" else f"{t['model']} from scratch ({sizes or 'preset'})"
    which = "best (lowest held-out loss)" if r["eval_settings"][0]["ckpt"].endswith("best.pt") else "last"
    return (f"- Data: {data}; {d['train_examples']} training and {d['heldout_examples']} held-out examples; "
            f"instruction/output token ratio {d['ratio']:.2f}.\n"
            f"- Model: {model}; {r['steps']} steps, lr {t['lr']}, batch {t['batch_size']}; every run evaluated at "
            f"its {which} checkpoint.")


VERDICT_METRICS = (("heldout_loss", "held-out output loss", True), ("exact_match", "held-out exact match", False),
                   ("memorization_exact_match", "memorization exact match (lower: less copying)", True),
                   ("knowledge", "knowledge kept (statement probe exact match)", False))


def verdict_lines(records: list[dict]) -> list[str]:
    """Every other mode against IT (IM first: the paper's question), one line per metric that both have."""
    others = [m for m in dict.fromkeys(r["mode"] for r in records) if m != "it"]
    return [verdict(records, metric, f"{mode.upper()} vs IT, {label}", lower, "it", mode)
            for mode in sorted(others, key=lambda m: m != "im") for metric, label, lower in VERDICT_METRICS
            if mode in by_mode(records, metric)]


def summary_markdown(records: list[dict], info: dict) -> str:
    short = info.get("output_tokens", 0) <= SHORT_ANSWER_TOKENS
    lines = ["# IM vs IT", "", describe_setup(records, info), "", summary_table(records, short), "",
             "Mean ± sample std over seeds. Losses are the output-token cross-entropy (nats) whatever the training "
             "loss; exact match in [0, 1] (memorization: on training instructions, greedy)"
             + ("." if short else "; BLEU, ROUGE-L in [0, 100]."), "", "## Verdict", ""]
    return "\n".join(lines + ["- " + v for v in verdict_lines(records)]) + "\n"


# ----------------------------------------------------------------------------- plots and files

CURVES = (("train_output_loss", "train output loss", "log"), ("val_output_loss", "held-out output loss", "log"),
          ("val_exact_match", "held-out exact match", "linear"))  # the last one only where runs measured it


def mean_curve(records: list[dict], mode: str, key: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Steps every seed of `mode` evaluated, and the mean and std over seeds of history[key] there."""
    runs = [{h["step"]: h[key] for h in r["history"] if h.get(key) is not None} for r in records if r["mode"] == mode]
    steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
    values = np.array([[run[s] for s in steps] for run in runs])  # (seeds, steps)
    if not steps:
        return [], np.zeros(0), np.zeros(0)
    return steps, values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))


def plot_curves(records: list[dict], path: str) -> None:
    """Train and held-out output loss (and held-out exact match) against steps: per mode the mean over seeds,
    shaded ± std. IT overfitting shows as its held-out loss turning up while its train loss keeps falling."""
    modes = list(dict.fromkeys(r["mode"] for r in records))
    panels = [p for p in CURVES if any(h.get(p[0]) is not None for r in records for h in r["history"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    for ax, (key, title, scale) in zip(axes[0], panels):
        for i, mode in enumerate(modes):
            steps, mean, std = mean_curve(records, mode, key)
            if steps:
                n = sum(r["mode"] == mode for r in records)
                ax.plot(steps, mean, color=f"C{i}", marker=".", label=f"{mode} ({plural(n, 'seed')})")
                ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        ylabel = "fraction of answers" if scale == "linear" else "output-token cross-entropy (nats)"
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel, yscale=scale)
        if scale == "log":  # labels at 1, 2, 5 x 10^k, written 0.05 rather than 5x10^-2
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][-1].legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """A PNG written atomically, like every other file the scripts write."""
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def paired_summary(records: list[dict]) -> dict:
    """{mode: {metric: {"per_seed": {seed: gain over IT}, "min", "mean"}}}: what a reader checks first."""
    out: dict = {}
    for mode in dict.fromkeys(r["mode"] for r in records):
        for metric, _, lower in VERDICT_METRICS[:2]:
            gains = paired_gains(records, metric, lower, "it", mode) if mode != "it" else {}
            if gains:
                out.setdefault(mode, {})[metric] = {"per_seed": gains, "min": min(gains.values()),
                                                    "mean": mean_std(list(gains.values()))[0]}
    return out


def write_results(out_dir: str, records: list[dict], info: dict, wall_s: float | None = None) -> None:
    """results.json, summary.md and curves.png from the records so far (called after every run)."""
    results = {"data": info, "gains_over_it": paired_summary(records), "verdict": verdict_lines(records),
               "wall_s": wall_s, "runs": records}
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1) + "\n")
    write_text_atomic(os.path.join(out_dir, "summary.md"), summary_markdown(records, info))
    plot_curves(records, os.path.join(out_dir, "curves.png"))
