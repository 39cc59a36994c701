"""imgpt/cli.py: dataclass configs become flags, config files merge under flags, bad values fail clearly."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from imgpt.cli import RunStopped, UserError, config_parser, make_config, opt, parse_config, run_cli


@dataclass
class Cfg:
    lr: float = opt(1e-3, "learning rate")
    steps: int = opt(10, "optimizer steps")
    name: str = opt("tiny", "model preset")
    fused: bool = opt(False, "use the fused kernel")
    weights: list[float] = opt([0.0, 1.0], "prompt loss weights")
    limit: int | None = opt(None, "optional cap")

    def validate(self) -> None:
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")


def test_defaults_and_flags_parse_to_typed_values():
    cfg = parse_config(Cfg, ["--lr", "3e-4", "--steps=7", "--fused", "--weights", "0,0.3,1", "--limit", "5"])
    assert (cfg.lr, cfg.steps, cfg.name, cfg.fused, cfg.weights, cfg.limit) == (3e-4, 7, "tiny", True, [0.0, 0.3, 1.0], 5)
    assert parse_config(Cfg, []) == Cfg()
    assert parse_config(Cfg, ["--limit", "none"]).limit is None


def test_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit) as e:
        config_parser(Cfg).parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag, help_text in [("--lr", "learning rate"), ("--steps", "optimizer steps"), ("--fused", "fused kernel"),
                            ("--no-fused", ""), ("--config", "TOML or JSON")]:
        assert flag in text and help_text in text


def test_config_file_is_overridden_by_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.5\nsteps = 3\nfused = true\n')
    cfg = parse_config(Cfg, ["--config", str(toml), "--steps", "4"])
    assert (cfg.lr, cfg.steps, cfg.fused) == (0.5, 4, True)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"name": "gpt2", "fused": True}))
    assert parse_config(Cfg, ["--config", str(js), "--no-fused"]) == Cfg(name="gpt2", fused=False)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "ten"], "--steps: expected int, got 'ten'"),
    (["--lr", "0"], "--lr must be positive"),  # the generic range check passes 0; validate() does not
    (["--lr", "-1"], "--lr must be >= 0, got -1"),  # check_numbers: every number in range, before validate()
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--fused=maybe"], None),  # argparse itself rejects a value for a boolean switch
])
def test_bad_values_fail_with_a_clear_message(argv, message):
    with pytest.raises((UserError, SystemExit)) as e:
        parse_config(Cfg, argv)
    if message is not None:
        assert message in str(e.value)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: cannot parse config"):
        parse_config(Cfg, ["--config", str(bad)])
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"learning_rate": 1}')
    with pytest.raises(UserError, match="unknown.json: unknown setting 'learning_rate'"):
        parse_config(Cfg, ["--config", str(unknown)])
    with pytest.raises(UserError, match="unknown setting"):
        make_config(Cfg, {"nope": 1})


def test_a_stopped_run_ends_like_a_user_error_one_line_exit_2_though_it_is_not_one(capsys):
    """A diverged run (train.TrainingDiverged) is no mistake of the user's, so it is no UserError; the command line
    still ends with one line and exit status 2, no traceback."""
    def diverge():
        raise RunStopped("loss nan at step 3: stopped")
    assert not issubclass(RunStopped, UserError)
    with pytest.raises(SystemExit) as stop:
        run_cli(diverge)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: loss nan at step 3: stopped\n"
