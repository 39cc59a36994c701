"""What a training run keeps in its out_dir, and how a run picks up from it.

out_dir holds ckpt.pt (the last state), best.pt, log.jsonl and summary.json. A new run never replaces them
silently; `--init_from resume` continues from ckpt.pt, after checking that the checkpoint holds what resuming reads,
so a damaged or foreign file is one error naming the file and the key, not a traceback from deep inside torch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass

import torch

from checkpoint import CheckpointError, set_rng_state, tokenizer_from_record
from runtime import Dist, UserError, check_output_dir, validate
from train_config import TrainConfig


@dataclass
class Progress:
    """Where the run stands: saved in checkpoints, so a resumed run continues with the same next batch."""
    step: int = 0
    epoch: int = 0
    index: int = 0  # next optimizer step within the epoch's plan
    best_val_loss: float = math.inf
    history: list = dataclasses.field(default_factory=list)


RUN_FILES = ("ckpt.pt", "best.pt", "log.jsonl", "summary.json")


def prepare_out_dir(cfg: TrainConfig) -> None:
    """out_dir is a directory we can write in, and a run already in it is continued (--init_from resume) or
    replaced (--overwrite), never silently: a plain rerun would truncate its log and replace its checkpoints."""
    check_output_dir(cfg.out_dir, "--out_dir")
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out_dir, name))]
    if found and cfg.init_from != "resume" and not cfg.overwrite:
        raise UserError(f"--out_dir {cfg.out_dir} holds a training run ({', '.join(found)}): --init_from resume "
                        "continues it, --overwrite replaces it, or choose another --out_dir")


RUN_CONTROL = ("out_dir", "stop_step", "log_interval", "device", "compile", "save", "threads", "eval_interval")
LENGTH = ("max_steps", "epochs")  # a resumed run may get a new length: extending a finished run is common


def resume_config(saved: dict, given: TrainConfig, path: str, typed: set[str] | None = None) -> TrainConfig:
    """The checkpoint's config (the run's definition) with the settings the user gave now (`typed`: flags and
    --config keys; None = those of `given` that differ from the defaults) that a resumed run can take: run control,
    and a new length. Any other given setting that differs from the checkpoint's stops here, naming it."""
    if unknown := sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}):
        raise CheckpointError(f"{path}: key 'config' has setting(s) this train.py does not know: {', '.join(unknown)}")
    default = TrainConfig()
    if typed is None:
        typed = {k for k, v in asdict(given).items() if v != getattr(default, k)}
    typed = {k for k in typed if getattr(given, k) is not None} - {"init_from", "overwrite"}
    keep = {k: getattr(given, k) for k in ("out_dir", "stop_step", "log_interval", "device", "compile", "save")}
    keep |= {k: getattr(given, k) for k in typed & {"threads", "eval_interval", *LENGTH}}
    if typed & set(LENGTH) == {"epochs"}:  # the length given now replaces the checkpoint's, in its own unit
        keep["max_steps"] = 0
    elif typed & set(LENGTH) == {"max_steps"} or saved.get("max_steps"):
        keep.setdefault("epochs", 0.0)  # older checkpoints kept the recipe's epochs beside max_steps
    if conflict := sorted(k for k in typed - set(RUN_CONTROL) - set(LENGTH) if getattr(given, k) != saved.get(k)):
        k = conflict[0]
        raise UserError(f"--{k} {getattr(given, k)}: the run in {given.out_dir} was trained with {k} {saved.get(k)}, "
                        f"and a resumed run keeps its settings (only its length and run control can change): drop "
                        f"--{k}, or start a new run from its weights with --init_from {path} --out_dir NEW_DIR")
    try:
        return validate(dataclasses.replace(TrainConfig(**saved), **keep))
    except UserError as e:
        raise CheckpointError(f"{path}: key 'config': {e}") from None


def restore(ckpt: dict, path: str, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            d: Dist) -> Progress:
    """Load the optimizer, scaler and random streams of a checkpoint; a value that does not fit names its key."""
    for key, load in (("optimizer", optimizer.load_state_dict), ("scaler", scaler.load_state_dict)):
        try:
            if ckpt[key] or key == "optimizer":
                load(ckpt[key])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: key {key!r} does not fit this model ({type(e).__name__}: {e})") from None
    if len(ckpt["rng"]) == d.world_size:  # else the streams restart from the seed: not bit-exact
        try:
            set_rng_state(ckpt["rng"][d.rank])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{path}: key 'rng' is not a saved random state ({type(e).__name__})") from None
    return Progress(ckpt["step"], ckpt["data_state"]["epoch"], ckpt["data_state"]["index"], ckpt["best_val_loss"],
                    ckpt["history"])


def resume_tokenizer(ckpt: dict, path: str, vocab_size: int):
    """The tokenizer a checkpoint carries (or, from older checkpoints, names), checked to fit its model, as eval.py
    checks it."""
    try:
        tok = tokenizer_from_record(ckpt["tokenizer"], path)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: key 'tokenizer': {e}") from None
    if tok.n_vocab > vocab_size:
        raise CheckpointError(f"{path}: key 'tokenizer': {tok.n_vocab} tokens, the model only {vocab_size}")
    return tok
