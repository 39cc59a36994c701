"""What train.py tells its user: a few lines on what is about to run, and at the end where everything is, the
final held-out numbers and the commands to run next. Pure functions of the config and the run's summary; the
full config lives in out_dir/summary.json and `python train.py --help`.
"""
from __future__ import annotations

import shlex

from imgpt.gpt_config import GPTConfig
from imgpt.train_config import TrainConfig

NOT_MOVED = ("--loss", "--prompt_loss_weight", "--out_dir", "--init_from")  # flags other_loss_command replaces


def loss_name(prompt_loss_weight: float) -> str:
    if prompt_loss_weight == 0:
        return "IT: loss on the outputs only"
    if prompt_loss_weight == 1:
        return "IM: loss on the instructions too"
    return f"loss on the outputs, and on the instructions with weight {prompt_loss_weight:g}"


def startup_lines(cfg: TrainConfig, mc: GPTConfig, n_params: int, n_train: int, n_val: int, stats: dict,
                  accum: int, world: int, total: int, device: str, resumed_at: int | None,
                  steps_per_epoch: int = 0) -> list[str]:
    """A few readable lines: loss, model, data, schedule (its steps also as epochs: passes over the training set,
    when steps_per_epoch is given), files, and the IT note on the prompt loss."""
    epochs = f", {total / steps_per_epoch:.3g} epochs of {n_train}" if steps_per_epoch else ""
    origin = "from scratch" if cfg.init_from == "scratch" else f"from {cfg.init_from}"
    n = max(stats["examples"], 1)
    ratio = stats["prompt_tokens"] / max(stats["output_tokens"], 1)
    plain = stats["prompt_tokens"] == stats.get("template_tokens", 0) == 0 and stats["output_tokens"] > 0
    lines = [
        "plain text: loss on every token (language modelling; --loss does not apply)" if plain else
        f"{loss_name(cfg.prompt_loss_weight)}",
        f"model: {origin}, {mc.n_layer} layers x {mc.n_embd} wide, {n_params:,} parameters, context {cfg.block_size}",
        f"data: {cfg.data}, {n_train} train / {n_val} held-out examples, {stats['prompt_tokens'] / n:.0f} instruction"
        f" and {stats['output_tokens'] / n:.0f} output tokens each (ratio {ratio:.1f}), {stats['truncated']} "
        f"truncated, {stats['dropped']} dropped",
        f"steps: {total} of {cfg.batch_size} examples{epochs} ({cfg.micro_batch_size} per micro-batch x {accum} "
        f"accumulation x {world} process{'es' if world > 1 else ''}), lr {cfg.lr:g} {cfg.schedule}, on {device}"
        + (f" with {cfg.threads} thread{'s' * (cfg.threads > 1)}" if device.startswith("cpu") and cfg.threads else "")
        + (f", resuming at step {resumed_at}" if resumed_at is not None else ""),
        f"files: {cfg.out_dir}/ (ckpt.pt, best.pt, log.jsonl, summary.json with every setting)",
    ]
    if cfg.prompt_loss_weight == 0 and not plain:
        lines.append("note: IT never trains on the instructions, so the held-out *prompt* loss (val_prompt_loss) "
                     "is not optimized and may rise; compare runs by val_output_loss")
    return lines


def other_loss_command(argv: list[str], cfg: TrainConfig) -> str:
    """The same training command with the other loss, into its own out_dir: the comparison to run next."""
    other = "im" if cfg.prompt_loss_weight == 0 else "it"
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in NOT_MOVED:
            skip = True  # and its value, the next argument
        elif not arg.startswith(tuple(f + "=" for f in NOT_MOVED)):
            kept.append(arg)
    init = [] if cfg.init_from == "scratch" else ["--init_from", cfg.init_from]
    return shlex.join(["python", "train.py", *init, *kept, "--loss", other, "--out_dir", f"{cfg.out_dir}-{other}"])


def summary_lines(summary: dict, cfg: TrainConfig, argv: list[str] | None) -> list[str]:
    """Where the results are, the final held-out numbers (every metric of the last evaluation), what to run next."""
    final, out = summary["final"], cfg.out_dir
    minutes, seconds = divmod(round(summary["time_s"]), 60)
    lines = [f"done: {summary['steps']} of {summary['total_steps']} steps in {minutes}m{seconds:02d}s, "
             f"{summary['tokens_per_s']:,.0f} tokens/s"]
    if final.get("val_output_loss") is not None:
        lines.append(f"held-out output loss {final['val_output_loss']:.4f} (best {summary['best_val_output_loss']:.4f}"
                     f", kept in best.pt), train output loss {final['train_output_loss']:.4f}")
    rest = {k: v for k, v in final.items() if k not in ("step", "val_output_loss", "train_output_loss")}
    if rest:
        lines.append("final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in rest.items()))
    lines.append(f"files: {out}/ckpt.pt (last), {out}/best.pt (best held-out output loss), {out}/summary.json, "
                 f"{out}/log.jsonl")
    if not summary["finished"]:
        lines.append(f"next: python train.py --init_from resume --out_dir {shlex.quote(out)}   # continue the run")
        return lines
    if summary.get("plain_text"):  # a base model: what comes next is instruction tuning
        data = "synthetic-qa --synth_examples 40" if cfg.data == "synthetic-corpus" else "your_instructions.json"
        lines.append(f"next: python scripts/compare.py --init_from {shlex.quote(out)} --data {data}   # tune this "
                     f"base: IT vs IM")
        return lines
    lines.append(f"next: python eval.py --ckpt {shlex.quote(out)} --generate   # exact match, BLEU, ROUGE-L")
    if argv is not None and cfg.init_from != "resume":
        lines.append(f"      {other_loss_command(argv, cfg)}   # the other loss, to compare")
    lines.append(f"      python sample.py --ckpt {shlex.quote(out)}   # talk to the model")
    return lines
