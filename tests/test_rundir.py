"""A run's directory: flags typed on the command line never lose silently (a new length wins over the recipe's,
resume extends a finished run or names the setting it refuses), a resumed log holds each step once, and one run
at a time holds an out_dir."""
import json
import os
import subprocess
import sys
import time

import pytest

import train as T
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import UserError, parse_config, run_cli
from imgpt.train_config import resolve
from scripts.experiments import compare, sweep
from train import lr_at
from test_train import ROOT
from conftest import data_file, log_records, one_thread, tiny  # noqa: F401 (fixtures)


def cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """train.py's main() as the command line runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    capsys.readouterr()
    code = 0
    try:
        run_cli(T.main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def steps_logged(out_dir: str) -> tuple[list[int], list[int]]:
    """(the step of each step record, the step of each evaluation), in the log's order."""
    records = log_records(out_dir)
    return [r["step"] for r in records if "eval" not in r], [r["eval"]["step"] for r in records if "eval" in r]


# ----------------------------------------------------------------------------- a typed length wins

def test_a_typed_epochs_wins_over_the_recipes_max_steps():
    """synthetic-qa's recipe sets 300 steps; --epochs 3 made the run 300 steps anyway (the recipe's max_steps
    "overrode" the typed epochs)."""
    argv = ["--init_from", "no-such-base", "--data", "synthetic-qa", "--epochs", "3"]
    cfg = resolve(parse_config(T.TrainConfig, argv))
    assert (cfg.max_steps, cfg.epochs) == (0, 3.0)
    cfg = resolve(parse_config(T.TrainConfig, ["--init_from", "no-such-base", "--max_steps", "30"]))
    assert (cfg.max_steps, cfg.epochs) == (30, 0.0)  # the paper recipe's 2 epochs give way the other way round
    with pytest.raises(UserError, match=r"--max_steps 30 and --epochs 3.0 both set the run's length: give one"):
        parse_config(T.TrainConfig, ["--max_steps", "30", "--epochs", "3"])


def test_epochs_from_the_command_line_set_the_steps_of_a_scratch_run(data_file, tmp_path, monkeypatch, capsys):
    """17 examples in batches of 8: 3 steps an epoch, so --epochs 2 is 6 steps (the scratch recipe says 400)."""
    out = str(tmp_path / "run")
    args = ["--data", data_file, "--out_dir", out, "--val_size", "4", "--n_layer", "1", "--n_head", "1",
            "--n_embd", "16", "--block_size", "64", "--batch_size", "8", "--eval_interval", "0", "--device", "cpu",
            "--eval_examples", "4", "--train_eval_size", "4", "--num_examples", "17"]
    code, err = cli(args + ["--epochs", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert json.load(open(os.path.join(out, "summary.json")))["steps"] == 6


def test_compare_and_sweep_pass_a_typed_length_through_and_refuse_what_they_decide():
    cfg, base = compare.parse_args(compare.CompareConfig, ["--init_from", "base", "--data", "synthetic-qa",
                                                           "--epochs", "3"])
    tcfg, settings, _ = compare.run_settings(cfg, base, "im", 0)
    assert (settings["max_steps"], settings["epochs"]) == (0, 3.0)
    cfg, base = sweep.compare.parse_args(sweep.SweepConfig, ["--factor", "examples", "--max_steps", "7"])
    assert resolve(sweep.plan_points(cfg, base)[0][1]).max_steps == 7
    for argv, flag in ((["--factor", "examples", "--synth_examples", "100"], "--synth_examples"),
                       (["--factor", "examples", "--num_examples", "100"], "--num_examples"),
                       (["--factor", "ratio", "--synth_facts", "3"], "--synth_facts")):
        with pytest.raises(UserError, match=f"^{flag}: set by --factor and --points here"):
            compare.parse_args(sweep.SweepConfig, argv)
    with pytest.raises(UserError, match="^--init_from resume: compare.py trains every run anew"):
        compare.parse_args(compare.CompareConfig, ["--init_from", "resume"])


# ----------------------------------------------------------------------------- resume: extend, or say why not

def test_resume_with_a_larger_max_steps_extends_a_finished_run(data_file, tmp_path, monkeypatch, capsys):
    """A finished 3-step run, resumed with --max_steps 5: steps 4 and 5 run on the schedule of a 5-step run (the
    rate jumps back up from the 3-step schedule's floor); before, "ignored: --max_steps" and nothing trained."""
    out = str(tmp_path / "run")
    T.train(tiny(data_file, out, max_steps=3, log_interval=1, warmup_ratio=0.0))
    code, err = cli(["--init_from", "resume", "--out_dir", out, "--max_steps", "5"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert (summary["steps"], summary["total_steps"], summary["finished"]) == (5, 5, True)
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 5
    assert steps_logged(out) == ([1, 2, 3, 4, 5], [3, 5])
    lrs = [r["lr"] for r in log_records(out) if "lr" in r]
    assert lrs[3] == pytest.approx(lr_at(3, 5, 3e-4, 3e-5, 0, "cosine")) and lrs[3] > lrs[2]


@pytest.mark.parametrize("argv, message", [
    ([], "the run is at step 3 of 3, nothing left to train with --max_steps 3: --max_steps N (more than 3) "
         "continues it"),
    (["--max_steps", "2"], "the run is at step 3 of 2"),
    (["--lr", "1e-3"], "--lr 0.001: the run in {out} was trained with lr 0.0003, and a resumed run keeps its "
                       "settings (only its length and run control can change): drop --lr, or start a new run from "
                       "its weights with --init_from {out}/ckpt.pt --out_dir NEW_DIR"),
    (["--loss", "it"], "--loss it: the run in {out} was trained with loss im"),  # typed, though it is the default
    (["--max_steps", "5", "--epochs", "2"], "--max_steps 5 and --epochs 2.0 both set the run's length"),
])
def test_resume_refuses_a_typed_flag_it_cannot_honour_in_one_line(argv, message, data_file, tmp_path, monkeypatch,
                                                                  capsys):
    out = str(tmp_path / "run")
    T.train(tiny(data_file, out, max_steps=3, loss="im"))
    code, err = cli(["--init_from", "resume", "--out_dir", out, *argv], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and message.format(out=out) in err, err


def test_a_resumed_log_holds_each_step_once(data_file, tmp_path, monkeypatch):
    """Killed after step 5 (logged) with the last checkpoint at step 4: the resumed run logs step 5 again. Before,
    log.jsonl then held step 5 twice."""
    out, step, killed = str(tmp_path / "run"), T.train_step, RuntimeError("kill -9")

    def dies_at_step_6(s, ids, batches):
        if s.prog.step == 5:
            raise killed
        return step(s, ids, batches)

    monkeypatch.setattr(T, "train_step", dies_at_step_6)
    with pytest.raises(RuntimeError, match="kill -9"):
        T.train(tiny(data_file, out, max_steps=6, eval_interval=2, log_interval=1))
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"step": 6, "lo')  # and a line cut short by the kill
    monkeypatch.setattr(T, "train_step", step)
    T.train(T.TrainConfig(init_from="resume", out_dir=out))
    assert steps_logged(out) == ([1, 2, 3, 4, 5, 6], [0, 2, 4, 6])


# ----------------------------------------------------------------------------- one run per out_dir

def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_two_runs_into_one_out_dir_the_second_stops_naming_the_first(data_file, tmp_path):
    """The same training twice at once: the second exits 2 naming the directory and the first's PID (before,
    both ran into one out_dir, each step logged twice). The first killed with -9, the lock is free again."""
    out = str(tmp_path / "run")
    args = ["--data", data_file, "--out_dir", out, "--val_size", "4", "--n_layer", "1", "--n_head", "1",
            "--n_embd", "16", "--block_size", "64", "--batch_size", "8", "--eval_interval", "0", "--device", "cpu",
            "--eval_examples", "4", "--train_eval_size", "4"]
    twins = [launch(args + ["--max_steps", "3", "--log_interval", "1"]) for _ in range(2)]  # the same instant
    errors = [p.communicate(timeout=300)[1] for p in twins]
    assert sorted(p.returncode for p in twins) == [0, 2], errors
    assert "is in use by another training run (PID " in errors[[p.returncode for p in twins].index(2)]
    assert steps_logged(out) == ([1, 2, 3], [3])  # one run's steps, once each
    first = launch(args + ["--max_steps", "100000", "--overwrite"])
    try:
        deadline = time.time() + 120
        while os.path.exists(os.path.join(out, "summary.json")):  # removed once the first holds out_dir
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        second = launch(args + ["--max_steps", "1"])
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and err.count("\n") == 1, err
        assert err == (f"error: --out_dir {out} is in use by another training run (PID {first.pid}): wait for it to "
                       "end, or choose another --out_dir\n")
        first.kill()  # SIGKILL: no handler runs, the system releases the lock
        first.wait()
        third = launch(args + ["--max_steps", "1", "--overwrite"])
        _, err = third.communicate(timeout=120)
        assert third.returncode == 0, err
        assert steps_logged(out)[0] == [1] and not os.path.exists(os.path.join(out, "train.lock"))
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------------------------------------- the last bad inputs

@pytest.mark.parametrize("key, value, message", [
    ("out_dir", None, "key 'out_dir': expected a string, got null"),  # before: TypeError: stat: path should be ...
    ("data", 3, "key 'data': expected a string, got int 3"),
    ("lr", True, "key 'lr': expected a number or null, got bool true"),
    ("max_steps", 2.5, "key 'max_steps': expected a whole number or null, got float 2.5"),
    ("n_layer", None, "key 'n_layer': expected a whole number, got null"),
    ("save", 3, "key 'save': expected true or false, got int 3"),
    ("device", {"a": 1}, "key 'device': expected a string, got dict {\"a\": 1}"),
])
def test_a_config_file_value_of_the_wrong_kind_is_one_line_naming_file_and_key(key, value, message, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(UserError) as e:
        parse_config(T.TrainConfig, ["--config", str(path)])
    assert str(e.value) == f"{path}: {message}"


def test_every_setting_of_a_checkpoint_is_checked_for_its_kind(data_file, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    T.train(tiny(data_file, out, max_steps=1))
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    ckpt["config"]["data"] = None
    import eval as ev
    from imgpt.checkpoint import save_checkpoint
    save_checkpoint(os.path.join(out, "ckpt.pt"), ckpt)
    for argv, main in ((["--init_from", "resume", "--out_dir", out], T.main), (["--ckpt", out], ev.main)):
        monkeypatch.setattr(sys, "argv", ["x", *argv])
        with pytest.raises(SystemExit):
            run_cli(main)
        err = capsys.readouterr().err
        assert err.endswith("ckpt.pt: key 'config': setting 'data': expected a string, got null\n") and \
            err.count("error:") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("content", [b"", b"hello world\n", bytes(range(256)) * 16, b"PK\x03\x04" + bytes(300)],
                         ids=["empty", "text", "bytes", "zip-header"])
def test_a_file_that_is_no_checkpoint_is_one_line_without_torchs_advice(content, data_file, tmp_path, monkeypatch,
                                                                         capsys):
    """Random bytes as a checkpoint printed four lines repeating torch's advice to retry with weights_only=False
    (which would run a file's code): now one line naming the file and what it is not, from every program, on a busy
    machine too (the programs say they take 1 thread only once their inputs have loaded)."""
    import eval as ev
    import sample
    from imgpt import device
    from scripts.tools import export
    monkeypatch.setattr(device, "machine_load", lambda: 99.0)  # busy: a thread note would come before the error
    monkeypatch.setattr(device, "usable_cores", lambda: 2)
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(content)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(dict(n_layer=1, n_head=1, n_embd=8, vocab_size=300, n_positions=16)))
    (hf / "pytorch_model.bin").write_bytes(content)
    runs = [(T.main, ["--init_from", "resume", "--out_dir", str(tmp_path)], "not a PyTorch checkpoint"),
            (T.main, ["--init_from", str(bad), "--out_dir", str(tmp_path / "o")], "not a PyTorch checkpoint"),
            (ev.main, ["--ckpt", str(bad)], "not a PyTorch checkpoint"),
            (sample.main, ["--ckpt", str(bad), "--prompt", "hi"], "not a PyTorch checkpoint"),
            (export.main, ["--ckpt", str(bad), "--out_dir", str(tmp_path / "x")], "not a PyTorch checkpoint"),
            (ev.main, ["--ckpt", str(hf)], "pytorch_model.bin: not a weights file")]
    for main, argv, what in runs:
        monkeypatch.setattr(sys, "argv", ["x", *argv])
        with pytest.raises(SystemExit) as e:
            run_cli(main)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and what in err, (argv, err)
        assert "weights_only" not in err and "Traceback" not in err and ("empty file" in err) == (not content), err
