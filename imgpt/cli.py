"""Command lines: dataclass configs become flags (and TOML/JSON config files), every value checked,
and a UserError (or a RunStopped) ends a program with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import sys
import types
import typing
from dataclasses import field
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input (file, flag, checkpoint): printed as one line, exit code 2, no traceback."""


class RunStopped(Exception):
    """A run that had to stop though its input was fine (its loss diverged): one line, exit code 2, no traceback."""


def run_cli(main: Callable[[], Any]) -> None:
    """Call main(); turn a UserError or a RunStopped (or a file the system refused: full disk, no permission) into
    `error: ...` on stderr and exit 2, and Ctrl-C into exit 130."""
    try:
        main()
    except (UserError, RunStopped) as e:
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


def _given_flags(argv: Sequence[str] | None) -> set[str]:
    """Names of the settings given on the command line (`--lr 1`, `--lr=1`, `--no-fused`)."""
    flags = {a[2:].split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    return flags | {f.removeprefix("no-") for f in flags}


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
