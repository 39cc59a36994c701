"""What a training run keeps in its out_dir, and how a run picks up from it.

out_dir holds ckpt.pt (the last state), best.pt, log.jsonl and summary.json. A new run never replaces them
silently; `--init_from resume` continues from ckpt.pt, after checking that the checkpoint holds what resuming reads,
so a damaged or foreign file is one error naming the file and the key, not a traceback from deep inside torch.
While a run lives, it holds out_dir/train.lock: one run per out_dir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; runs into one out_dir are not guarded there
    fcntl = None

from imgpt.checkpoint import CheckpointError, set_rng_state
from imgpt.cli import UserError, validate
from imgpt.distributed import Dist
from imgpt.files import check_output_dir, remove_stale_temps, write_text_atomic
from imgpt.tokenizers import tokenizer_from_record
from imgpt.train_config import TrainConfig, check_saved_config


@dataclass
class Progress:
    """Where the run stands: saved in checkpoints, so a resumed run continues with the same next batch."""
    step: int = 0
    epoch: int = 0
    index: int = 0  # next optimizer step within the epoch's plan
    best_val_loss: float = math.inf
    history: list = dataclasses.field(default_factory=list)


RUN_FILES = ("ckpt.pt", "best.pt", "log.jsonl", "summary.json")


LOCK_FILE = "train.lock"


@contextlib.contextmanager
def hold_out_dir(out_dir: str):
    """Hold out_dir for the run: an exclusive flock on out_dir/train.lock, which the system releases when the
    process ends however it ends (kill -9 included: never stuck). A second run into the same out_dir, even one
    started in the same instant, stops naming the process that holds it. The lock file goes when the run ends, and
    so does out_dir if the run made it and a failed start left it empty. (No flock on Windows: no guard there.)"""
    check_output_dir(out_dir, "--out_dir")
    if fcntl is None:
        yield
        return
    made = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_FILE)
    fd = take_lock(path, out_dir)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # while held: a process that opened it first finds it replaced (take_lock), retries
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)  # only if empty: a start that failed makes nothing


def take_lock(path: str, out_dir: str) -> int:
    """The file descriptor of `path`, flocked, with this process's id in it; or a UserError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"--out_dir {out_dir} is in use by another training run ({holder(path)}): wait for it "
                            "to end, or choose another --out_dir") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a file its last holder removed as it ended
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return fd
        os.close(fd)


def holder(path: str) -> str:
    """'PID 123' (on another host: 'PID 123 on host') from a lock file, which its holder writes just after
    taking the lock: a moment's wait covers that."""
    for _ in range(20):
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8", errors="replace") as f:
            pid, _, host = f.read().strip().partition(" ")
            if pid:
                return f"PID {pid}" if host in ("", socket.gethostname()) else f"PID {pid} on {host}"
        time.sleep(0.05)
    return "PID unknown"


def check_length(cfg: TrainConfig, step: int, total: int) -> None:
    """A resumed run has steps left: a finished one continues only to a longer --max_steps (or --epochs)."""
    if step >= total:
        length = f"--max_steps {cfg.max_steps}" if cfg.max_steps else f"--epochs {cfg.epochs:g} ({total} steps)"
        raise UserError(f"{cfg.out_dir}: the run is at step {step} of {total}, nothing left to train with {length}: "
                        f"--max_steps N (more than {step}) continues it")


def keep_log_until(path: str, step: int) -> None:
    """Drop log.jsonl's records after `step` (those of steps that run again after a resume; also a line cut short
    by a kill). The evaluation at the checkpoint's own step stays, unless it is step 0, which is evaluated anew."""
    def kept(line: str) -> bool:
        try:
            r = json.loads(line)
            at = r["eval"]["step"] if "eval" in r else r["step"]
        except (ValueError, KeyError, TypeError):
            return False
        return at < step or (at == step and ("eval" not in r or step > 0))
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().split("\n") if line and kept(line)]
        write_text_atomic(path, "".join(line + "\n" for line in lines))


def prepare_out_dir(cfg: TrainConfig) -> None:
    """out_dir is a directory we can write in, and a run already in it is continued (--init_from resume) or
    replaced (--overwrite), never silently: a plain rerun would truncate its log and replace its checkpoints."""
    check_output_dir(cfg.out_dir, "--out_dir")
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out_dir, name))]
    if found and cfg.init_from != "resume" and not cfg.overwrite:
        resume = "--init_from resume continues it, " if "ckpt.pt" in found else "no ckpt.pt to resume from, "
        raise UserError(f"--out_dir {cfg.out_dir} holds a training run ({', '.join(found)}): {resume}--overwrite "
                        "replaces it, or choose another --out_dir")
    remove_stale_temps(cfg.out_dir)  # half-written files of a run killed with -9: the whole ones stayed in place


RUN_CONTROL = ("out_dir", "stop_step", "log_interval", "device", "compile", "save", "threads", "eval_interval",
               "micro_batch_size", "grad_checkpoint", "head_chunk")  # memory knobs: the same update
LENGTH = ("max_steps", "epochs")  # a resumed run may get a new length: extending a finished run is common


def resume_config(saved: dict, given: TrainConfig, path: str, typed: set[str] | None = None) -> TrainConfig:
    """The checkpoint's config (the run's definition) with the settings the user gave now (`typed`: flags and
    --config keys; None = those of `given` that differ from the defaults) that a resumed run can take: run control,
    and a new length. Any other given setting that differs from the checkpoint's stops here, naming it."""
    if unknown := sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}):
        raise CheckpointError(f"{path}: key 'config' has setting(s) this train.py does not know: {', '.join(unknown)}")
    check_saved_config(saved, path)
    default = TrainConfig()
    if typed is None:
        typed = {k for k, v in asdict(given).items() if v != getattr(default, k)}
    typed = {k for k in typed if getattr(given, k) is not None} - {"init_from", "overwrite"}
    keep = {k: getattr(given, k) for k in ("out_dir", "stop_step", "log_interval", "device", "compile", "save")}
    keep |= {k: getattr(given, k) for k in typed & {"threads", "eval_interval", "micro_batch_size", "grad_checkpoint",
                                                      "head_chunk", *LENGTH}}
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
