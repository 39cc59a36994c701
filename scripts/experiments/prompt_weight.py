"""Where between IT (prompt-loss weight 0) and IM (weight 1) is the held-out output loss lowest? (exercise 8)

    python -m scripts.experiments.compare --modes it,im --prompt_loss_weights 0.1,0.3 --seeds 1 --max_steps 200 \
        --gen_examples 1 --out_dir out/weight                   # 4 weights x 1 seed, ~3 CPU-minutes
    python -m scripts.experiments.prompt_weight out/weight/results.json

Prints the mean held-out output loss of each weight (over seeds) and the weight where a parabola through the
best measured weight and its two neighbours is lowest: a finer answer than the grid, from runs already made.
Only the plain modes count (it, im, plw<w>); runs with +neft or +kl are left out.
"""
from __future__ import annotations

import os
import statistics
import sys

from imgpt.cli import UserError, run_cli
from scripts.experiments import compare


def mean_loss_by_weight(records: list[dict]) -> dict[float, float]:
    """{prompt-loss weight: mean held-out output loss over its seeds}, in increasing weight, plain modes only."""
    losses: dict[float, list[float]] = {}
    for r in records:
        if "+" in r["mode"] or "heldout_loss" not in r["metrics"]:
            continue
        weight = compare.mode_settings(r["mode"], 0.0, 0.0)["prompt_loss_weight"]
        losses.setdefault(weight, []).append(r["metrics"]["heldout_loss"])
    return {w: statistics.mean(losses[w]) for w in sorted(losses)}


def best_weight(weights: list[float], losses: list[float]) -> float:
    """The weight in [weights[0], weights[-1]] where the loss is lowest, as far as the points tell.

    weights increase strictly (and need not be evenly spaced); losses[i] was measured at weights[i]. If the lowest
    measured loss is at an end of the grid, that end; otherwise the vertex of the parabola through the lowest
    point and its two neighbours (which lies between those neighbours).
    """
    i = min(range(len(losses)), key=losses.__getitem__)
    if i == 0 or i == len(losses) - 1:
        return weights[i]  # no bracket around the minimum: the grid cannot say more
    (a, fa), (b, fb), (c, fc) = zip(weights[i - 1:i + 2], losses[i - 1:i + 2])
    p, q = (b - a) * (fb - fc), (b - c) * (fb - fa)
    if p == q:
        return b  # three equal losses: a flat parabola
    return b - ((b - a) * p - (b - c) * q) / (2 * (p - q))  # parabolic interpolation (Brent's step)


def report(means: dict[float, float]) -> str:
    lines = ["| prompt-loss weight | held-out output loss |", "|---|---|"]
    lines += [f"| {w:g} | {loss:.3f} |" for w, loss in means.items()]
    if len(means) < 3:
        raise UserError(f"need runs at 3 or more prompt-loss weights to interpolate, got {sorted(means)}")
    best = best_weight(list(means), list(means.values()))
    return "\n".join(lines) + f"\n\nlowest held-out output loss near prompt-loss weight {best:.2f}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\nusage: python -m scripts.experiments.prompt_weight OUT_DIR/results.json")
        return
    if len(argv) != 1:
        raise UserError("usage: python -m scripts.experiments.prompt_weight OUT_DIR/results.json (written by scripts/experiments/compare.py)")
    if not os.path.isfile(argv[0]):
        raise UserError(f"{argv[0]}: no such file (run scripts/experiments/compare.py first, as the top of this script shows)")
    print(report(mean_loss_by_weight(compare.load_records(argv[0]))))


if __name__ == "__main__":
    run_cli(main)
