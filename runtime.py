"""What every imgpt program needs around the model: clear errors, config flags (each number checked), output
files written atomically, device and processes, and a Ctrl-C that waits for the step to end.

The bottom floor: imports nothing from the project, so model.py, data.py, train.py and eval.py can all use it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
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
    """Call main(); turn a UserError (or a file the system refused: full disk, no permission) into `error: ...`
    on stderr and exit 2, and Ctrl-C into exit 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {os_error(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def os_error(e: OSError) -> str:
    """'path: No space left on device': where, and the system's reason, in one line."""
    reason = e.strerror or os.strerror(e.errno or errno.EIO)
    return f"{e.filename}: {reason}" if e.filename is not None else reason


# ----------------------------------------------------------------------------- config dataclass -> flags

def opt(default: Any, help: str, low: float | None = 0) -> Any:
    """A dataclass field with a default and a one-line help text, which becomes an argparse flag. A number (or
    each number of a list) must be finite and at least `low` (None: any finite value); see check_numbers."""
    metadata = {"help": help, "low": low}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")  # a UTF-8 BOM (Windows editors write one) is neither TOML nor JSON
        if path.endswith(".toml"):
            import tomllib
            return tomllib.loads(text)
        data = json.loads(text)
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
            check_file_value(config_path, key, value, _field_types(cls)[key])
            if isinstance(value, list):
                file_values[key] = ",".join(map(str, value))
        parser.set_defaults(**file_values)
    args = vars(parser.parse_args(argv))
    types = _field_types(cls)
    from_file = set(file_values) - _given_flags(argv) if config_path else set()
    values = {}
    try:
        for name in types:
            raw = args[name]
            values[name] = raw if isinstance(raw, bool) or raw is None else _parse_value(name, types[name], str(raw))
        return make_config(cls, values)
    except UserError as e:  # a bad value read from the file: say which file
        if any(f"--{name}" in str(e) for name in from_file):
            raise UserError(f"{config_path}: {e}") from None
        raise


def check_file_value(path: str, key: str, value: Any, tp: Any) -> None:
    """A config file's value has the kind its setting takes (kind_error); the error names the file and the key."""
    if (wrong := kind_error(value, tp)) is not None:
        raise UserError(f"{path}: key {key!r}: {wrong}")


def kind_error(value: Any, tp: Any, strings_parse: bool = True) -> str | None:
    """None if `value` has the kind a setting of type `tp` takes: a string for a text, a number for a number (or,
    with strings_parse, a string parsed as the flag would be), true/false for a switch, a list for a list; null
    only where the flag takes none (the recipe's value). Else 'expected ..., got ...'."""
    text = (str,) if strings_parse else ()
    kinds = {str: (str,), int: (int, *text), float: (int, float, *text), bool: (bool, *text)}
    optional, base = type(None) in typing.get_args(tp), _scalar(tp)
    inner = typing.get_args(base)[0] if typing.get_origin(base) is list else None
    if (inner or base) not in kinds:
        return None  # a kind no flag has today: parsing it says what is wrong
    if value is None:
        ok = optional
    elif inner is not None:
        ok = (strings_parse and isinstance(value, str)) or (isinstance(value, list) and all(
            isinstance(v, kinds[inner]) and not (isinstance(v, bool) and inner is not bool) for v in value))
    else:
        ok = isinstance(value, kinds[base]) and not (isinstance(value, bool) and base is not bool)
    if ok:
        return None
    want = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}[inner or base]
    want = f"a list of {want.removeprefix('a ')}s" if inner is not None else want
    shown = "null" if value is None else f"{type(value).__name__} {json.dumps(value, default=str)[:40]}"
    return f"expected {want}{' or null' if optional else ''}, got {shown}"


def _given_flags(argv: Sequence[str] | None) -> set[str]:
    """Names of the settings given on the command line (`--lr 1`, `--lr=1`, `--no-fused`)."""
    flags = {a[2:].split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    return flags | {f.removeprefix("no-") for f in flags}


def given_settings(cls: type, argv: Sequence[str] | None = None) -> set[str]:
    """The settings of `cls` the user gave: flags on the command line, and the keys of its --config file."""
    argv = sys.argv[1:] if argv is None else argv
    given = _given_flags(argv)
    config_path = config_parser(cls).parse_known_args(argv)[0].config
    if config_path:
        given |= set(read_config_file(config_path))
    return given & set(_field_types(cls))


def make_config(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` with unknown keys rejected and validated: for configs built in code or from files."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    return validate(cls(**values))


def validate(cfg: T) -> T:
    """check_numbers, then the config's own `validate()` (the checks that relate settings to each other)."""
    check_numbers(cfg)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def check_numbers(cfg: Any) -> None:
    """Every numeric setting (and each number of a list setting) finite and at least its field's `low`: one rule
    for every flag of every program, so `--log_interval 0` or `--lr inf` stops here, naming the flag."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue  # None (= the recipe's value), strings, switches
            if not math.isfinite(v):
                raise UserError(f"--{f.name} must be a finite number, got {v}")
            low = f.metadata.get("low", 0)
            if low is not None and v < low:
                raise UserError(f"--{f.name} must be >= {low:g}, got {v:g}")


# ----------------------------------------------------------------------------- downloads

def cache_dir() -> str:
    """Where downloaded models and datasets are kept: $IMGPT_CACHE, else ~/.cache/imgpt."""
    return os.environ.get("IMGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imgpt")


def temp_path(path: str) -> str:
    """Where a file is written before its rename: unique per host and process, since two nodes sharing a
    filesystem may run the same pid and each would otherwise rename (or delete) the other's half-written file."""
    return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"


def remove_stale_temps(directory: str) -> list[str]:
    """Remove the temp files (temp_path) that processes of this host which no longer run left in `directory`
    (killed with -9, or a power loss, mid-write); returns their paths. Another host's are left alone: whether its
    process still runs cannot be told from here."""
    pattern = re.compile(rf".+\.{re.escape(socket.gethostname())}\.(\d+)\.tmp")
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        found = pattern.fullmatch(name)
        if found and not process_alive(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs; on Windows always True (there os.kill(pid, 0) sends a Ctrl-C)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


# How long the other ranks wait for local rank 0's download (gpt2-xl is 6 GB): their own barrier, in a gloo group
# with this timeout, not the NCCL group's default of 10 minutes, which a slow download would exceed and kill the job.
DOWNLOAD_TIMEOUT = datetime.timedelta(hours=2)


@contextlib.contextmanager
def local_rank_zero_first(d: "Dist"):
    """Run the block on each node's local rank 0 first (it downloads), then on the other ranks (they find
    the files in the cache): one download per node instead of one per process. The ranks wait for each other in
    a gloo group made for it, with DOWNLOAD_TIMEOUT (every rank must enter: new_group is a collective)."""
    group = dist.new_group(backend="gloo", timeout=DOWNLOAD_TIMEOUT) if d.enabled else None
    if d.enabled and d.local_rank != 0:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if d.enabled and d.local_rank == 0:
            dist.barrier(group=group)


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


# ----------------------------------------------------------------------------- output files

def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """Write `path` (binary) through `write(file)`, atomically: a temp file unique to this process, fsynced, renamed
    over `path`, then the directory fsynced, so a crash or power loss leaves the old file or the whole new one,
    never an empty or partial one. On failure the temp file is removed and a UserError names the path."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)  # unique per host and process: two writers of the same file never share a temp file
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(directory)  # ... and the rename itself survives a power loss
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (not possible, nor needed, on Windows)."""
    if os.name != "nt":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_dir(path: str, flag: str) -> None:
    """`path` is a directory this process can write in, or one it can make: checked before any work, creating
    nothing. The test is a real write, since permission bits do not tell for root or a read-only file system."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the directory, or the nearest one above it that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- device and processes

def check_device(device: str) -> None:
    """--device names a kind of device that this torch can use on this machine: checked before any work."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device {device}: {why}; use --device cpu (or auto)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: Apple's MPS is not available here; use --device cpu (or auto)")


class StopAtStepBoundary:
    """While active, Ctrl-C (SIGINT) and SIGTERM only set `requested`: the training loop finishes the step it is in
    and then stops. A signal handled mid-step would tear it: the weights moved by the fused optimizer kernel but
    the step counter not, or the random streams advanced by this step's dropout and noise draws. A second Ctrl-C
    quits at once. Handlers can only be set in the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: the user wants out now
        self.requested = True

    def __enter__(self) -> "StopAtStepBoundary":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


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
