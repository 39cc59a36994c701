"""What every imgpt program needs around the model: clear errors, config flags, device and processes.

The bottom floor: imports nothing from the project, so model.py, data.py, train.py and eval.py can all use it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import sys
import types
import typing
import urllib.request
from dataclasses import field
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input (file, flag, checkpoint): printed as one line, exit code 2, no traceback."""


def run_cli(main: Callable[[], Any]) -> None:
    """Call main(); turn a UserError into `error: ...` on stderr and exit 2, and Ctrl-C into exit 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------- config dataclass -> flags

def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help text, which becomes an argparse flag."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves `from __future__ import annotations` strings


def _scalar(tp: Any) -> Any:
    """Optional[X] -> X, so `x: int | None` parses as int (and 'none' as None)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else tp


def _parse_value(name: str, tp: Any, text: str) -> Any:
    optional = type(None) in typing.get_args(tp)
    tp = _scalar(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    if typing.get_origin(tp) is list:  # comma-separated: --weights 0,0.3,1
        (inner,) = typing.get_args(tp)
        return [_parse_value(name, inner, t.strip()) for t in text.split(",") if t.strip()]
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--{name}: expected true or false, got {text!r}")
    try:
        return tp(text)
    except (TypeError, ValueError):
        raise UserError(f"--{name}: expected {getattr(tp, '__name__', tp)}, got {text!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each flag's default, and keep the description's line breaks (its example commands)."""


def config_parser(cls: type, description: str = "") -> argparse.ArgumentParser:
    """One flag per dataclass field (`--name VALUE`, `--flag/--no-flag` for booleans), plus `--config FILE`."""
    p = argparse.ArgumentParser(description=description, allow_abbrev=False, formatter_class=_HelpFormatter)
    p.add_argument("--config", default=None, help="TOML or JSON file of settings; flags given on the command line win")
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if _scalar(types[f.name]) is bool:
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            p.add_argument(f"--{f.name}", type=str, default=shown, metavar=f.name.upper(), help=help_text)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """Settings from a .toml or .json file (no code is executed)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except Exception as e:  # tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must hold a table of settings")
    return data


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    """Build a `cls` from defaults < config file < command-line flags, then call its `validate()` if it has one."""
    parser = config_parser(cls, description)
    config_path = parser.parse_known_args(argv)[0].config
    if config_path:  # the file's values become the defaults, so flags given on the command line still win
        file_values = read_config_file(config_path)
        for key, value in file_values.items():
            if key not in _field_types(cls):
                raise UserError(f"{config_path}: unknown setting {key!r}")
            if isinstance(value, list):
                file_values[key] = ",".join(map(str, value))
        parser.set_defaults(**file_values)
    args = vars(parser.parse_args(argv))
    types = _field_types(cls)
    values = {}
    for name in types:
        raw = args[name]
        values[name] = raw if isinstance(raw, bool) or raw is None else _parse_value(name, types[name], str(raw))
    return make_config(cls, values)


def make_config(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` with unknown keys rejected and `validate()` called: for configs built in code or from files."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- downloads

def cache_dir() -> str:
    """Where downloaded models and datasets are kept: $IMGPT_CACHE, else ~/.cache/imgpt."""
    return os.environ.get("IMGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imgpt")


def temp_path(path: str) -> str:
    """Where a file is written before its rename: unique per host and process, since two nodes sharing a
    filesystem may run the same pid and each would otherwise rename (or delete) the other's half-written file."""
    return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"


@contextlib.contextmanager
def local_rank_zero_first(d: "Dist"):
    """Run the block on each node's local rank 0 first (it downloads), then on the other ranks (they find
    the files in the cache): one download per node instead of one per process."""
    if d.enabled and d.local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if d.enabled and d.local_rank == 0:
            dist.barrier()


def download(url: str, path: str) -> None:
    """Fetch url into path with a progress bar; the file appears only once it is complete."""
    tmp = temp_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- device and processes

def autodetect_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclasses.dataclass
class Dist:
    """Where this process stands: rank 0 of 1 without torchrun."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (NCCL on CUDA, gloo on CPU); otherwise a single process."""
    device = autodetect_device() if device == "auto" else device
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=device)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def amp_dtype_for(dtype: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where the GPU has bf16 tensor cores (Ampere and later), else fp16 with
    a gradient scaler (V100, T4: they only emulate bf16, slowly, yet is_bf16_supported() says yes by default);
    None = plain float32."""
    if dtype == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def join_distributed(device: str) -> tuple[Dist, bool]:
    """Join torchrun's process group; or use one the caller set up (then the caller also destroys it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return init_distributed(device), True
    device = autodetect_device() if device == "auto" else device
    if device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"
    rank = dist.get_rank()
    return Dist(rank, int(os.environ.get("LOCAL_RANK", rank)), dist.get_world_size(), device), False
