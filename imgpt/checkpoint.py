"""imgpt's training checkpoints: saved atomically and never when non-finite, loaded with weights_only=True, and
checked for what resuming reads; each rank's random streams.

This file only turns files into plain dicts and tensors (and back): model.py builds the network from them. Every
way a file can be wrong ends in one CheckpointError that names it. A file is written to `<name>.<host>.<pid>.tmp`
(imgpt.files.temp_path), fsynced and renamed when complete: a checkpoint on disk is always a whole file.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from typing import Any

import torch
import torch.distributed as torch_dist

from imgpt.cli import UserError
from imgpt.distributed import Dist
from imgpt.files import write_atomic


class CheckpointError(UserError):
    """A checkpoint or tokenizer that cannot be found, downloaded or read: the message says which and why."""


# ----------------------------------------------------------------------------- downloading from the hub


# ----------------------------------------------------------------------------- Hugging Face checkpoint -> tensors


# ----------------------------------------------------------------------------- tokenizers


# ----------------------------------------------------------------------------- our own checkpoints

class KeepWriteErrors:
    """A file whose write errors are remembered: torch's zip writer replaces them by an opaque RuntimeError
    ("unexpected pos 704 vs 598" on a full disk), so save_checkpoint re-raises the real one."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str, payload: dict) -> None:
    """torch.save, atomically (runtime.write_atomic): a crash, a full disk or a power loss mid-write leaves the
    previous checkpoint intact and no temp file behind."""
    def write(f) -> None:
        out = KeepWriteErrors(f)
        try:
            torch.save(payload, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
    write_atomic(path, write)


def load_error(path: str, e: Exception, what: str) -> CheckpointError:
    """One line for a file torch.load could not read: code refused as such (refuse_code), anything else as what the
    file is not, with torch's reason in a few words, never its advice to retry with weights_only=False (which would
    run whatever code the file holds)."""
    refuse_code(path, e)
    text = str(e).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line
             and "torch.load" not in line and "file an issue" not in line]
    reason = f"{type(e).__name__}: {lines[0].split('. ')[0][:100]}" if lines else type(e).__name__
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return CheckpointError(f"{path}: not {what} (an empty file)")
    return CheckpointError(f"{path}: not {what} (damaged, or another kind of file: {reason})")


def torch_load(path: str, **kw) -> Any:
    """torch.load with weights_only=True (tensors and plain values: no code runs), quiet about a foreign pickle's
    protocol: what cannot be read is load_error's one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True, **kw)


def refuse_code(path: str, e: Exception) -> None:
    """A file whose pickle names a callable (`posix.system`, a class) holds code, which weights_only refused to run:
    say so in one line, without torch's advice to retry with weights_only=False."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and found:
        raise CheckpointError(f"{path}: refused: the file holds Python code ({found.group(1)}), not only tensors "
                              f"and plain values; imgpt never runs code from a file") from None


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by save_checkpoint, read with weights_only=True (tensors and plain Python only) and
    memory-mapped: tensors are read from the page cache as they are used, so 8 ranks resuming a 19 GB ckpt.pt on
    one machine share one copy instead of holding 8. A legacy (non-zip) file cannot be mapped: read whole."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch_load(path, mmap=True)
    except Exception:  # pickle, zip and weights_only errors have no common base class
        try:
            payload = torch_load(path)
        except Exception as e:
            raise load_error(path, e, "a PyTorch checkpoint") from None
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), dict) for k in ("model", "model_config")):
        raise CheckpointError(f"{path}: not an imgpt checkpoint (needs the keys 'model' and 'model_config', "
                              "each a dictionary)")
    return payload


def saved_train_config(ckpt: str) -> dict | None:
    """The TrainConfig saved in a train.py checkpoint (a file, or an out_dir's ckpt.pt); None for pretrained weights
    (a name or a Hugging Face directory)."""
    path = os.path.join(ckpt, "ckpt.pt") if os.path.isdir(ckpt) else ckpt
    if not os.path.isfile(path):
        return None
    payload = load_checkpoint(path)  # memory-mapped: the weights and optimizer state are not read for the config
    config = payload.get("config") if isinstance(payload, dict) else None
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{path}: key 'config' holds a {type(config).__name__}, not the training settings "
                              "train.py writes there")
    return config


TRAINING_KEYS = {"model": dict, "model_config": dict, "tokenizer": (str, dict), "config": dict, "optimizer": dict,
                 "scaler": dict, "step": int, "data_state": dict, "rng": list, "best_val_loss": (int, float),
                 "history": list}


def check_training_checkpoint(payload: dict, path: str) -> None:
    """Everything `train.py --init_from resume` reads from a checkpoint is there, each of the right kind."""
    for key, kind in TRAINING_KEYS.items():
        if key not in payload:
            raise CheckpointError(f"{path}: key {key!r} is missing: not a checkpoint train.py can resume")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(payload[key]).__name__}, not what train.py "
                                  "wrote there")
    if not all(type(payload["data_state"].get(k)) is int and payload["data_state"][k] >= 0 for k in ("epoch", "index")):
        raise CheckpointError(f"{path}: key 'data_state' needs whole numbers 'epoch' and 'index', 0 or more")
    if payload["step"] < 0:
        raise CheckpointError(f"{path}: key 'step' is negative ({payload['step']})")


def rng_state() -> dict:
    """Every random stream training draws from (dropout, NEFTune noise), as weights_only-loadable values. On CUDA,
    this process's own GPU only (the one it draws from), so a resume on a machine with fewer GPUs still fits."""
    version, state, gauss = random.getstate()
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": [version, list(state), gauss]}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():  # older checkpoints hold every visible GPU's: take this one's
        here = torch.cuda.current_device()
        torch.cuda.set_rng_state(s["cuda"][here if len(s["cuda"]) > here else 0])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


def all_rng_states(d: Dist) -> list[dict]:
    """Each rank's RNG state (ranks draw different dropout masks), gathered for rank 0 to save."""
    mine = rng_state()
    if not d.enabled:
        return [mine]
    states: list = [None] * d.world_size
    torch_dist.all_gather_object(states, mine)
    return states


def unwrap(key: str) -> str:
    """A parameter name without the prefixes torch.compile and DistributedDataParallel add."""
    for prefix in ("module.", "_orig_mod.", "module."):
        key = key.removeprefix(prefix)
    return key
