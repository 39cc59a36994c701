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
from runtime import Dist, UserError, check_output_dir, remove_stale_temps, validate
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
    remove_stale_temps(cfg.out_dir)  # half-written files of a run killed with -9: the whole ones stayed in place


def resume_config(saved: dict, given: TrainConfig, path: str) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's config (the run's definition) with the run-control flags given now; and the names of
    other settings given now that differ from the checkpoint's, which are ignored."""
    if unknown := sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}):
        raise CheckpointError(f"{path}: key 'config' has setting(s) this train.py does not know: {', '.join(unknown)}")
    cfg, default = TrainConfig(**saved), TrainConfig(init_from="resume")
    keep = {k: getattr(given, k) for k in ("out_dir", "stop_step", "log_interval", "device", "compile", "save")}
    if given.threads is not None:
        keep["threads"] = given.threads
    if given.eval_interval is not None:
        keep["eval_interval"] = given.eval_interval
    ignored = [f"--{k}" for k, v in asdict(given).items() if k not in keep and k not in ("init_from", "overwrite")
               and v != getattr(default, k) and v != saved.get(k)]
    try:
        return validate(dataclasses.replace(cfg, **keep)), ignored
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
    check_moments(optimizer, path)
    if len(ckpt["rng"]) == d.world_size:  # else the streams restart from the seed: not bit-exact
        try:
            set_rng_state(ckpt["rng"][d.rank])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{path}: key 'rng' is not a saved random state ({type(e).__name__})") from None
    return Progress(ckpt["step"], ckpt["data_state"]["epoch"], ckpt["data_state"]["index"], ckpt["best_val_loss"],
                    ckpt["history"])


def check_moments(optimizer: torch.optim.Optimizer, path: str) -> None:
    """Each loaded moment has its parameter's shape: load_state_dict does not check, and the fused AdamW kernel,
    given a moment of the wrong size, writes outside it (seen here: the process died of heap corruption)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != p.shape):
                    shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                    raise CheckpointError(f"{path}: key 'optimizer' does not fit this model (a moment {name!r} of "
                                          f"{shape} for a parameter of {tuple(p.shape)})")


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
