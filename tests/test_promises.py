"""docs/promises.md ("What imgpt promises"), each tried against the ways a small code change would break it. Every test here
asserts what a user would see: the files on disk and their bytes, a marker file that a payload would create, the
one error line, best.pt's step and loss. So a test fails when its promise does, whichever function the change is
in. scripts/maint/mutate.py applies such changes one at a time and runs these tests (see docs/promises.md).
"""
import builtins
import bz2
import errno
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import HELLASWAG, cli_error

import eval as ev
import sample
import train as T
from imgpt import benchmarks as bm
from imgpt import checkpoint, formats, pretrained, tokenizers
from imgpt.checkpoint import load_checkpoint, save_checkpoint
from imgpt.cli import UserError, make_config, parse_config
from imgpt.distributed import Dist
from imgpt.rundir import RUN_FILES
from imgpt.train_config import resolve
from scripts.experiments import compare, report
from scripts.tools import export
from conftest import write_tiny_bpe
from conftest import data_file, one_thread, tiny  # noqa: F401 (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def stopped_run(data_file, tmp_path_factory) -> str:
    """A run of 4 steps stopped after 2 (ckpt.pt, best.pt, log.jsonl, summary.json): copy it before changing it."""
    out = str(tmp_path_factory.mktemp("stopped"))
    T.train(tiny(data_file, out, max_steps=4, stop_step=2, eval_interval=1))
    return out


def copy_run(run: str, to) -> str:
    shutil.copytree(run, str(to), dirs_exist_ok=True)
    return str(to)


def files(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


# ----------------------------------------------------------------------------- 1. a mistake is one line

def set_path(keys: tuple, value):
    """A change to the checkpoint: ckpt[k1][k2]... = value (value None: delete the key)."""
    def change(ckpt: dict) -> None:
        for k in keys[:-1]:
            ckpt = ckpt[k]
        if value is None:
            del ckpt[keys[-1]]
        else:
            ckpt[keys[-1]] = value() if callable(value) else value
    return change


def first_moment(value):
    """A change to the first parameter's AdamW moment exp_avg."""
    def change(ckpt: dict) -> None:
        state = ckpt["optimizer"]["state"]
        state[min(state)]["exp_avg"] = value() if callable(value) else value
    return change


# every key train.py --init_from resume reads, and the words its one line must hold
RESUME_READS = ("model", "model_config", "tokenizer", "config", "optimizer", "scaler", "step", "data_state", "rng",
                "best_val_loss", "history")
WRONG_KIND = {"model": [], "model_config": "gpt2", "tokenizer": 5, "config": [], "optimizer": [], "scaler": [],
              "step": "2", "data_state": [0, 0], "rng": {}, "best_val_loss": "low", "history": {}}
CORRUPTIONS = ([(f"no {k}", set_path((k,), None), f"'{k}'") for k in RESUME_READS]
               + [(f"{k} of the wrong kind", set_path((k,), v), f"'{k}'") for k, v in WRONG_KIND.items()]
               + [("step True", set_path(("step",), True), "'step'"),
                  ("step negative", set_path(("step",), -1), "'step'"),
                  ("a weight not a tensor", set_path(("model", "transformer.wte.weight"), "x"),
                   "transformer.wte.weight"),
                  ("a weight missing", set_path(("model", "transformer.wpe.weight"), None), "transformer.wpe.weight"),
                  ("a weight of the wrong shape", set_path(("model", "transformer.wpe.weight"), lambda: torch.zeros(3)),
                   "transformer.wpe.weight"),
                  ("model_config n_head 3", set_path(("model_config", "n_head"), 3), "model config"),
                  ("model_config n_layer text", set_path(("model_config", "n_layer"), "x"), "model config"),
                  ("config unknown setting", set_path(("config", "bogus"), 1), "'config'"),
                  ("config lr negative", set_path(("config", "lr"), -1.0), "'config'"),
                  ("optimizer empty", set_path(("optimizer",), {}), "'optimizer'"),
                  ("optimizer groups cut",
                   lambda c: c["optimizer"].update(param_groups=c["optimizer"]["param_groups"][:1]), "'optimizer'"),
                  ("optimizer state text", first_moment("x"), "'optimizer'"),
                  ("optimizer moment of the wrong shape",
                   first_moment(lambda: torch.zeros(3)), "'optimizer'"),
                  ("data_state without index", set_path(("data_state", "index"), None), "'data_state'"),
                  ("data_state without epoch", set_path(("data_state", "epoch"), None), "'data_state'"),
                  ("data_state index text", set_path(("data_state", "index"), "1"), "'data_state'"),
                  ("data_state index negative", set_path(("data_state", "index"), -1), "'data_state'"),
                  ("data_state epoch negative", set_path(("data_state", "epoch"), -1), "'data_state'"),
                  ("rng of nothing", set_path(("rng",), [{}]), "'rng'"),
                  ("rng not a state", set_path(("rng",), ["x"]), "'rng'"),
                  ("rng torch text", set_path(("rng", 0, "torch"), "x"), "'rng'"),
                  ("rng torch too short", set_path(("rng", 0, "torch"), lambda: torch.zeros(3, dtype=torch.uint8)),
                   "'rng'"),
                  ("rng python garbage", set_path(("rng", 0, "python"), [3, [1, 2], None]), "'rng'"),
                  ("rng python missing", set_path(("rng", 0, "python"), None), "'rng'"),
                  ("tokenizer unknown", set_path(("tokenizer",), "no-such-tokenizer"), "'tokenizer'"),
                  ("tokenizer record broken", set_path(("tokenizer",), {"vocab.json": "{"}), "'tokenizer'"),
                  ("tokenizer record without merges", set_path(("tokenizer",), {"vocab.json": "{}"}), "'tokenizer'")])


@pytest.mark.parametrize("how, change, words", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_every_checkpoint_field_resume_reads_is_one_line_naming_file_and_key(stopped_run, tmp_path, monkeypatch,
                                                                           capsys, how, change, words):
    """Each field resume reads, missing, of the wrong kind or holding nonsense: exit 2 with one line that starts
    with the checkpoint's path and names the key; nothing else written, the checkpoint left as it was."""
    ckpt = load_checkpoint(os.path.join(stopped_run, "ckpt.pt"))
    change(ckpt)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, ckpt)
    before = files(tmp_path)
    err = cli_error(T.main, ["train.py", "--init_from=resume", f"--out_dir={tmp_path}"], monkeypatch, capsys)
    assert err.startswith(f"error: {path}: ") and words in err, err
    assert files(tmp_path) == before


@pytest.mark.parametrize("program", ["eval", "sample", "export"])
def test_a_damaged_checkpoint_is_one_line_in_every_program(stopped_run, tmp_path, monkeypatch, capsys, program):
    ckpt = load_checkpoint(os.path.join(stopped_run, "ckpt.pt"))
    ckpt["model"]["transformer.h.0.attn.c_attn.weight"] = "not a tensor"
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, ckpt)
    main, argv = {"eval": (ev.main, ["eval.py", f"--ckpt={path}"]),
                  "sample": (sample.main, ["sample.py", f"--ckpt={path}", "--prompt=hi"]),
                  "export": (export.main, ["export.py", f"--ckpt={path}", f"--out_dir={tmp_path / 'hf'}"])}[program]
    err = cli_error(main, argv, monkeypatch, capsys)
    assert err.startswith(f"error: {path}: ") and "transformer.h.0.attn.c_attn.weight" in err, err
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# ----------------------------------------------------------------------------- 2. checkpoints are atomic

WRITER = """
import os, socket, sys, time
sys.path.insert(0, {root!r})
from imgpt import files
host, target, go = sys.argv[1:4]
socket.gethostname = lambda: host  # two nodes sharing a file system ...
os.getpid = lambda: 4242  # ... whose writers happen to have the same pid
def write(f):
    f.write(host.encode() * 1000)
    f.flush()
    open(go + "." + host, "w").close()  # mid-write now
    while not os.path.exists(go):
        time.sleep(0.01)
    f.write(b"end")
files.write_atomic(target, write)
"""


def test_two_writers_of_one_file_on_two_hosts_with_one_pid_never_share_a_temp_file(tmp_path):
    """Both write the same file at the same time: two temp files exist side by side (a shared temp name would
    interleave or truncate their bytes), and the file that stays is one writer's whole text."""
    target, go = tmp_path / "ckpt.pt", tmp_path / "go"
    script = WRITER.format(root=ROOT)
    writers = [subprocess.Popen([sys.executable, "-c", script, host, str(target), str(go)])
               for host in ("nodeA", "nodeB")]
    deadline, ready = time.time() + 120, [tmp_path / "go.nodeA", tmp_path / "go.nodeB"]
    while time.time() < deadline and not all(r.exists() for r in ready) and all(w.poll() is None for w in writers):
        time.sleep(0.05)
    temps = [n for n in os.listdir(tmp_path) if n.startswith("ckpt.pt.")]  # both writers are mid-write
    go.write_text("")
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert sorted(temps) == ["ckpt.pt.nodeA.4242.tmp", "ckpt.pt.nodeB.4242.tmp"]
    assert target.read_bytes() in (b"nodeA" * 1000 + b"end", b"nodeB" * 1000 + b"end")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "go", "go.nodeA", "go.nodeB"]


def test_the_temp_file_is_named_as_the_docs_say(tmp_path, monkeypatch):
    """imgpt/checkpoint.py and docs/promises.md name the temp file `<name>.<host>.<pid>.tmp`: the name written is that one."""
    seen, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(a), replace(a, b)))
    save_checkpoint(str(tmp_path / "ckpt.pt"), {"w": torch.zeros(2)})
    assert seen == [str(tmp_path / f"ckpt.pt.{socket.gethostname()}.{os.getpid()}.tmp")]
    promises = open(os.path.join(ROOT, "docs", "promises.md"), encoding="utf-8").read()
    assert "<name>.<host>.<pid>.tmp" in checkpoint.__doc__ and "<name>.<host>.<pid>.tmp" in promises


KILLED_WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
from imgpt import files
target, ready = sys.argv[1:3]
def write(f):
    f.write(b"half of a new checkpoint")
    f.flush()
    open(ready, "w").close()
    time.sleep(600)
files.write_atomic(target, write)
"""


def test_kill_9_mid_write_keeps_the_old_file_and_the_next_start_removes_the_temp_file(stopped_run, tmp_path):
    """kill -9 while ckpt.pt is rewritten: the old ckpt.pt stays whole, its temp file stays behind until train.py
    next starts in that out_dir, which removes it (but not the temp file of a process that still runs, nor one of
    another host), and resumes from the old checkpoint."""
    out = copy_run(stopped_run, tmp_path / "run")
    old = (tmp_path / "run" / "ckpt.pt").read_bytes()
    ready = tmp_path / "ready"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(root=ROOT), os.path.join(out, "ckpt.pt"),
                               str(ready)])
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline and writer.poll() is None:
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    stale = f"ckpt.pt.{socket.gethostname()}.{writer.pid}.tmp"
    assert (tmp_path / "run" / "ckpt.pt").read_bytes() == old and (tmp_path / "run" / stale).exists()
    alive = f"notes.txt.{socket.gethostname()}.{os.getppid()}.tmp"  # our parent runs: its file may be mid-write
    other_host = f"ckpt.pt.{socket.gethostname()}x.{writer.pid}.tmp"
    for name in (alive, other_host):
        (tmp_path / "run" / name).write_text("mid-write")
    summary = T.train(T.TrainConfig(init_from="resume", out_dir=out))
    assert summary["steps"] == 4 and summary["finished"]
    assert sorted(n for n in os.listdir(out) if n.endswith(".tmp")) == sorted([alive, other_host])


class FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes: the write that overflows writes what fits, then fails."""
    room = 64

    def write(self, b) -> int:
        b = bytes(b)
        left = self.room - self.tell()
        if len(b) > left:
            super().write(b[:max(left, 0)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def disk_fills_while_writing(monkeypatch, target) -> None:
    """Every file opened for writing whose path starts with `target` (the file, or any temp file beside it named
    after it) is on a full disk: however a program writes `target`, the write fails half-way."""
    real_open = builtins.open

    def open_(file, mode="r", *args, **kw):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(str(target)) and set(mode) & set("wax+"):
            raw = FullDisk(os.fspath(file), mode.replace("b", "").replace("t", ""))
            if "b" in mode:
                return raw
            return io.TextIOWrapper(io.BufferedWriter(raw), encoding=kw.get("encoding") or "utf-8")
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", open_)


def assert_kept(directory, name: str, old: bytes) -> None:
    assert open(os.path.join(directory, name), "rb").read() == old, f"{name} was damaged"
    assert [n for n in os.listdir(directory) if n.startswith(name) and n != name] == [], "a temp file stayed"


@pytest.mark.parametrize("name", ["eval.json", "eval.heldout.jsonl"])
def test_eval_results_survive_a_full_disk_mid_write(stopped_run, tmp_path, monkeypatch, name):
    out = copy_run(stopped_run, tmp_path / "run")
    old = b'{"an earlier evaluation": "whole"}\n' * 10
    (tmp_path / "run" / name).write_bytes(old)
    disk_fills_while_writing(monkeypatch, tmp_path / "run" / name)
    cfg = make_config(ev.EvalConfig, {"ckpt": out, "device": "cpu", "generate": True, "limit": 2,
                                      "max_new_tokens": 2})
    with pytest.raises((UserError, OSError), match="No space left on device"):
        ev.evaluate(cfg)
    assert_kept(out, name, old)


def test_summary_json_survives_a_full_disk_mid_write(stopped_run, tmp_path, monkeypatch):
    out = copy_run(stopped_run, tmp_path / "run")
    old = (tmp_path / "run" / "summary.json").read_bytes()
    disk_fills_while_writing(monkeypatch, tmp_path / "run" / "summary.json")
    with pytest.raises((UserError, OSError), match="No space left on device"):
        T.train(T.TrainConfig(init_from="resume", out_dir=out))
    assert_kept(out, "summary.json", old)


def history_record(mode: str, seed: int, loss: float) -> dict:
    return {"mode": mode, "seed": seed, "metrics": {"heldout_loss": loss, "exact_match": 0.5}, "steps": 2,
            "time_s": {"train": 1.0, "eval": 0.5},
            "history": [{"step": s, "train_output_loss": loss + 1 - s, "val_output_loss": loss + 2 - s}
                        for s in (0, 1)],
            "train_settings": {}, "eval_settings": [{"ckpt": "x/ckpt.pt"}]}


COMPARISON = [history_record(m, s, v) for m, s, v in (("it", 0, 4.0), ("im", 0, 3.0), ("it", 1, 4.5), ("im", 1, 3.5))]
INFO = {"train_examples": 10, "heldout_examples": 5, "ratio": 2.0, "output_tokens": 4}


@pytest.mark.parametrize("name", ["results.json", "summary.md", "curves.png"])
def test_comparison_results_survive_a_full_disk_mid_write(tmp_path, monkeypatch, name):
    """compare.py and sweep.py write these after every run: a full disk at the third run keeps the second's."""
    monkeypatch.setattr(report, "describe_setup", lambda records, info: "setup")
    report.write_results(str(tmp_path), COMPARISON[:2], INFO)
    old = (tmp_path / name).read_bytes()
    disk_fills_while_writing(monkeypatch, tmp_path / name)
    with pytest.raises((UserError, OSError), match="No space left on device"):
        report.write_results(str(tmp_path), COMPARISON, INFO)
    assert_kept(tmp_path, name, old)



@pytest.mark.parametrize("name", ["sweep.json", "sweep.md", "sweep.png"])
def test_sweep_results_survive_a_full_disk_mid_write(tmp_path, monkeypatch, name):
    """sweep.py rewrites its files after every point: a full disk at the second point keeps the first's."""
    from scripts.experiments import sweep
    monkeypatch.setattr(sweep, "run_point", lambda cfg, label, base: (COMPARISON, INFO))
    sweep.main(["--out_dir", str(tmp_path), "--points", "50"])
    old = (tmp_path / name).read_bytes()
    disk_fills_while_writing(monkeypatch, tmp_path / name)
    with pytest.raises((UserError, OSError), match="No space left on device"):
        sweep.main(["--out_dir", str(tmp_path), "--points", "50,100"])
    assert_kept(tmp_path, name, old)


# ----------------------------------------------------------------------------- 3. nothing good is replaced by bad

def poison(s: T.Session, where: str, value: float) -> None:
    """Put one non-finite number into the first or the last parameter, or into an AdamW moment."""
    params = list(s.model.parameters())
    with torch.no_grad():
        if where == "moment":
            s.optimizer.state[params[-1]]["exp_avg_sq"].view(-1)[-1] = value
        else:
            (params[0] if where == "first weight" else params[-1]).view(-1)[-1] = value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where, name", [("first weight", "ckpt.pt"), ("last weight", "ckpt.pt"),
                                         ("last weight", "best.pt"), ("moment", "ckpt.pt")])
def test_non_finite_weights_or_moments_never_replace_a_good_checkpoint(data_file, tmp_path, where, name, value):
    s = T.setup(resolve(tiny(data_file, str(tmp_path), micro_batch_size=4)), Dist())
    T.train_step(s, list(range(8)), T.prepare(s, list(range(8))))  # the optimizer now holds its moments
    T.flush(s)
    T.save(s, name, weights_only=name == "best.pt")
    good = (tmp_path / name).read_bytes()
    poison(s, where, value)
    with pytest.raises(T.TrainingDiverged, match=f"NaN or inf at step 1: {name} not written"):
        T.save(s, name, weights_only=name == "best.pt")
    assert (tmp_path / name).read_bytes() == good
    assert [n for n in os.listdir(tmp_path) if n.startswith(name)] == [name]


INIT_FROM = ["scratch", "a checkpoint file", "a run's out_dir", "a Hugging Face directory", "gpt2"]


@pytest.mark.parametrize("init_from", INIT_FROM)
def test_a_rerun_with_any_init_from_refuses_to_overwrite_a_run(stopped_run, tmp_path, monkeypatch, capsys, init_from):
    """Whatever the new run starts from, an out_dir holding a run is refused in one line and left byte for byte."""
    out = copy_run(stopped_run, tmp_path / "run")
    other = copy_run(stopped_run, tmp_path / "other")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 257,
                                                "n_positions": 64}))
    source = {"scratch": "scratch", "a checkpoint file": os.path.join(other, "ckpt.pt"), "a run's out_dir": other,
              "a Hugging Face directory": str(hf), "gpt2": "gpt2"}[init_from]
    before = files(out)
    err = cli_error(T.main, ["train.py", f"--init_from={source}", f"--out_dir={out}", "--data=synthetic",
                             "--max_steps=1"], monkeypatch, capsys)
    assert err.startswith(f"error: --out_dir {out} holds a training run (") and "--overwrite replaces it" in err
    assert files(out) == before


@pytest.mark.parametrize("name", RUN_FILES)
def test_any_file_of_a_run_is_enough_to_refuse_a_rerun(stopped_run, tmp_path, monkeypatch, capsys, name):
    shutil.copy(os.path.join(stopped_run, name), tmp_path / name)
    err = cli_error(T.main, ["train.py", f"--out_dir={tmp_path}", "--max_steps=1"], monkeypatch, capsys)
    resume = "--init_from resume continues it" if name == "ckpt.pt" else "no ckpt.pt to resume from"
    assert err == (f"error: --out_dir {tmp_path} holds a training run ({name}): {resume}, "
                   "--overwrite replaces it, or choose another --out_dir\n")
    assert os.listdir(tmp_path) == [name]


# ----------------------------------------------------------------------------- 4. resume is exact

BOUNCY = dict(max_steps=6, lr=0.3, eval_interval=1, dropout=0.1, neftune_alpha=5.0, micro_batch_size=4)
TIMING = ("tokens_per_s", "step_time", "mfu", "time_s", "out_dir")  # and where the run was


def without_timing(record):
    if isinstance(record, dict):
        return {k: without_timing(v) for k, v in record.items() if k not in TIMING}
    if isinstance(record, list):
        return [without_timing(v) for v in record]
    return record


def run_outcome(out: str) -> dict:
    """What a run leaves for its user: both checkpoints' step, best loss, history and weights, summary.json and
    log.jsonl (timings left out)."""
    outcome = {}
    for name in ("ckpt.pt", "best.pt"):
        c = load_checkpoint(os.path.join(out, name))
        outcome[name] = {"step": c["step"], "best_val_loss": c["best_val_loss"], "history": c["history"],
                         "model": c["model"]}
    with open(os.path.join(out, "summary.json")) as f:
        outcome["summary.json"] = without_timing(json.load(f))
    with open(os.path.join(out, "log.jsonl")) as f:
        outcome["log.jsonl"] = [without_timing(json.loads(line)) for line in f]
    return outcome


def assert_same_outcome(got: dict, expected: dict) -> None:
    for name in ("ckpt.pt", "best.pt"):
        g, e = got[name], expected[name]
        assert (g["step"], g["best_val_loss"], g["history"]) == (e["step"], e["best_val_loss"], e["history"]), name
        assert all(torch.equal(g["model"][k], e["model"][k]) for k in e["model"]), name
    assert got["summary.json"] == expected["summary.json"]
    assert got["log.jsonl"] == expected["log.jsonl"]


@pytest.fixture(scope="module")
def bouncy_uninterrupted(data_file, tmp_path_factory) -> dict:
    """6 steps at a learning rate so high that the held-out loss is lowest at step 1 and worse at every later
    evaluation: best.pt must stay the step-1 model however the run is cut."""
    out = str(tmp_path_factory.mktemp("bouncy"))
    T.train(tiny(data_file, out, **BOUNCY))
    outcome = run_outcome(out)
    losses = [h["val_output_loss"] for h in outcome["ckpt.pt"]["history"]]
    assert outcome["best.pt"]["step"] == 1 and min(losses[2:]) > losses[1], losses  # the premise of the tests below
    return outcome


def test_resume_leaves_best_pt_summary_and_log_as_the_uninterrupted_run(data_file, tmp_path, bouncy_uninterrupted):
    out = str(tmp_path)
    T.train(tiny(data_file, out, stop_step=3, **BOUNCY))
    T.train(T.TrainConfig(init_from="resume", out_dir=out, device="cpu"))  # the rest comes from the checkpoint
    assert_same_outcome(run_outcome(out), bouncy_uninterrupted)


def test_ctrl_c_then_resume_leaves_best_pt_summary_and_log_as_the_uninterrupted_run(data_file, tmp_path, monkeypatch,
                                                                                  bouncy_uninterrupted):
    """SIGINT during step 4's backward: the run saves ckpt.pt after step 4 (no evaluation), the resumed run
    evaluates at steps 5 and 6 and keeps best.pt of step 1."""
    setup = T.setup

    def setup_with_interrupt(cfg, d, typed=None):
        s = setup(cfg, d, typed)
        fired = []

        def interrupt(grad):
            if s.prog.step == 3 and not fired:
                fired.append(signal.raise_signal(signal.SIGINT))

        list(s.model.parameters())[0].register_hook(interrupt)
        return s

    monkeypatch.setattr(T, "setup", setup_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(data_file, str(tmp_path), **BOUNCY))
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 4
    monkeypatch.setattr(T, "setup", setup)
    T.train(T.TrainConfig(init_from="resume", out_dir=str(tmp_path), device="cpu"))
    assert_same_outcome(run_outcome(str(tmp_path)), bouncy_uninterrupted)


# ----------------------------------------------------------------------------- 5. no code runs from a file

class Touch:
    """Unpickling this runs `touch marker`: a loader that ran it leaves the marker file behind."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def code_checkpoint(path, marker) -> str:
    """A checkpoint whose every part that some program reads first (weights, training config) holds code."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    torch.save({"model": Touch(marker), "model_config": {}, "config": Touch(marker), "tokenizer": "byte"}, path)
    return str(path)


def hf_code_dir(directory, marker) -> str:
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 257, "n_positions": 64}, f)
    torch.save({"transformer.wte.weight": Touch(marker)}, os.path.join(directory, "pytorch_model.bin"))
    return str(directory)


LOADERS = {  # every program that reads a checkpoint, and each way it can be named
    "eval --ckpt FILE": lambda p, d, h: (ev.main, ["eval.py", f"--ckpt={p}", "--data=synthetic"]),
    "eval --ckpt OUT_DIR": lambda p, d, h: (ev.main, ["eval.py", f"--ckpt={d}"]),
    "eval --ckpt HF_DIR": lambda p, d, h: (ev.main, ["eval.py", f"--ckpt={h}", "--data=synthetic"]),
    "train --init_from resume": lambda p, d, h: (T.main, ["train.py", "--init_from=resume", f"--out_dir={d}"]),
    "train --init_from FILE": lambda p, d, h: (T.main, ["train.py", f"--init_from={p}", f"--out_dir={d}/new"]),
    "train --init_from FILE --data synthetic-qa": lambda p, d, h: (
        T.main, ["train.py", f"--init_from={p}", "--data=synthetic-qa", f"--out_dir={d}/new"]),
    "train --init_from HF_DIR": lambda p, d, h: (T.main, ["train.py", f"--init_from={h}", f"--out_dir={d}/new"]),
    "sample --ckpt FILE": lambda p, d, h: (sample.main, ["sample.py", f"--ckpt={p}", "--prompt=hi"]),
    "export --ckpt FILE": lambda p, d, h: (export.main, ["export.py", f"--ckpt={p}", f"--out_dir={d}/hf-out"]),
    "compare --init_from FILE": lambda p, d, h: (compare.main, ["compare.py", f"--init_from={p}", f"--out_dir={d}/cmp",
                                                              "--data=synthetic"]),
}


@pytest.mark.parametrize("loader", LOADERS)
def test_no_program_runs_code_from_a_checkpoint(tmp_path, monkeypatch, capsys, loader):
    """The payload would create a marker file when unpickled: every program refuses the file in one line, and the
    marker never appears (a loader that ran the code and then refused the result would leave it)."""
    marker = tmp_path / "pwned"
    path = code_checkpoint(tmp_path / "run" / "ckpt.pt", marker)
    main, argv = LOADERS[loader](path, str(tmp_path / "run"), hf_code_dir(str(tmp_path / "hf"), marker))
    err = cli_error(main, argv, monkeypatch, capsys)
    assert "refused: the file holds Python code (posix.system)" in err, err
    assert not marker.exists(), "the file's code ran"


def test_mmlu_choice_lists_and_config_files_never_run_code(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}') or ['a', 'b', 'c', 'd']"
    with open(tmp_path / "redux.csv", "w", newline="") as f:
        f.write('question,choices,answer\n"What?","' + code.replace('"', '""') + '",1\n')
    err = cli_error(ev.main, ["eval.py", "--ckpt=gpt2", f"--mmlu={tmp_path / 'redux.csv'}"], monkeypatch, capsys)
    assert "redux.csv:2: field 'choices': expected a list of strings" in err and not marker.exists()
    for name, text in (("run.json", json.dumps({"lr": code})), ("run.toml", f"lr = {json.dumps(code)}\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=f"{name}: --lr: expected float"):
            parse_config(T.TrainConfig, ["--config", str(tmp_path / name)])
    with pytest.raises(UserError, match="--lr: expected float"):
        parse_config(T.TrainConfig, [f"--lr={code}"])
    assert not marker.exists()


# ----------------------------------------------------------------------------- 6. valid input is read

ALPACA = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
          {"instruction": "Add 2 and 3.", "input": "2, 3", "output": "5"}]
DATA_FILES = {  # name -> its text, each a form that editors and exporters really write
    "data.jsonl": "".join(json.dumps(r) + "\n" for r in ALPACA),
    "data.json": json.dumps(ALPACA, indent=1),
    "text.txt": "The first paragraph.\nIt has two lines.\n\nThe second paragraph.\n",
    "text.jsonl": json.dumps({"text": "One document."}) + "\n" + json.dumps({"text": "Another."}) + "\n",
}


def variants(text: str) -> dict[str, bytes]:
    """The same text as a Windows editor saves it (BOM, CRLF), without the last line break, and with blank lines
    around it."""
    return {"bom": BOM + text.encode(), "crlf": text.replace("\n", "\r\n").encode(),
            "bom+crlf": BOM + text.replace("\n", "\r\n").encode(), "no final newline": text.rstrip("\n").encode(),
            "blank lines around": ("\n" + text + "\n\n").encode()}


@pytest.mark.parametrize("name", DATA_FILES)
def test_every_data_format_reads_the_same_with_a_bom_crlf_or_no_final_newline(tmp_path, name):
    (tmp_path / name).write_text(DATA_FILES[name], encoding="utf-8")
    plain = formats.load_conversations(str(tmp_path / name))
    for how, raw in variants(DATA_FILES[name]).items():
        (tmp_path / how).mkdir()
        (tmp_path / how / name).write_bytes(raw)
        assert formats.load_conversations(str(tmp_path / how / name)) == plain, how


MMLU = "question,A,B,C,D,answer\nWhat?,a,b,c,d,B\n\"Why, then?\",e,f,\"g, h\",i,3\n"
MMLU_REDUX = "question,choices,answer\nWhat?,\"['a', 'b', 'c', 'd']\",1\n"
HELLASWAG_JSONL = json.dumps({"ctx": "A man sits.", "endings": ["a", "b", "c", "d"], "label": 2}) + "\n"


@pytest.mark.parametrize("name, text, read", [
    ("mmlu.csv", MMLU, bm.read_mmlu_csv), ("redux.csv", MMLU_REDUX, bm.read_mmlu_csv),
    ("hs.txt", HELLASWAG, bm.read_hellaswag), ("hs.jsonl", HELLASWAG_JSONL, bm.read_hellaswag),
    ("hs.txt.bz2", HELLASWAG, bm.read_hellaswag)], ids=["mmlu.csv", "redux.csv", "hs.txt", "hs.jsonl", "hs.txt.bz2"])
def test_every_benchmark_format_reads_the_same_with_a_bom_or_crlf(tmp_path, name, text, read):
    pack = bz2.compress if name.endswith(".bz2") else (lambda b: b)
    (tmp_path / name).write_bytes(pack(text.encode()))
    plain = read(str(tmp_path / name))
    for how, raw in variants(text).items():
        if how == "blank lines around" and name.endswith(("csv", "txt", "bz2")):
            continue  # a blank first line is not a header, a blank line splits HellaSwag's 6-line records
        (tmp_path / how).mkdir()
        (tmp_path / how / name).write_bytes(pack(raw))
        assert read(str(tmp_path / how / name)) == plain, how


def test_config_files_with_a_bom_or_crlf_are_read(tmp_path):
    for name, text in (("run.toml", 'lr = 0.01\ndata = "synthetic"\n'),
                       ("run.json", '{"lr": 0.01, "data": "synthetic"}')):
        for how, raw in variants(text).items():
            (tmp_path / name).write_bytes(raw)
            cfg = parse_config(T.TrainConfig, ["--config", str(tmp_path / name)])
            assert (cfg.lr, cfg.data) == (0.01, "synthetic"), (name, how)


def test_a_hugging_face_directory_with_bom_files_is_read(tmp_path):
    """config.json, vocab.json and merges.txt as a Windows editor saves them: the same tokenizer and config."""
    write_tiny_bpe(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32,
                                                                "vocab_size": 260, "n_positions": 64}))
    shutil.copytree(tmp_path / "plain", tmp_path / "bom")
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / "bom" / name).write_bytes(BOM + (tmp_path / "plain" / name).read_bytes().replace(b"\n", b"\r\n"))
    plain, bom = tokenizers.bpe_tokenizer(str(tmp_path / "plain")), tokenizers.bpe_tokenizer(str(tmp_path / "bom"))
    assert plain._mergeable_ranks == bom._mergeable_ranks and bom.encode("hello world") == plain.encode("hello world")
    assert pretrained.read_json(str(tmp_path / "bom" / "config.json")) == pretrained.read_json(
        str(tmp_path / "plain" / "config.json"))


def test_a_results_json_with_a_bom_is_read_by_compare_resume(tmp_path):
    (tmp_path / "results.json").write_bytes(BOM + json.dumps({"runs": COMPARISON}).encode())
    assert compare.load_records(str(tmp_path / "results.json")) == COMPARISON


# ----------------------------------------------------------------------------- the comparison's verdict

def test_it_and_im_gains_are_paired_by_seed_whatever_order_the_runs_came_in(tmp_path, monkeypatch):
    """IM's runs finished in another seed order than IT's, and seed 3 only ran with IT: each gain compares the two
    modes on the same seed (same initialization, same example order), and an unpaired seed is left out."""
    it = {0: (4.0, 0.2), 1: (3.0, 0.5), 2: (2.0, 0.6), 3: (1.0, 0.9)}  # seed: (held-out loss, exact match)
    im = {2: (1.9, 0.5), 0: (4.5, 0.4), 1: (2.5, 0.5)}
    records = ([history_record("it", s, loss) | {"metrics": {"heldout_loss": loss, "exact_match": em}}
                for s, (loss, em) in it.items()]
               + [history_record("im", s, loss) | {"metrics": {"heldout_loss": loss, "exact_match": em}}
                  for s, (loss, em) in im.items()])
    monkeypatch.setattr(report, "describe_setup", lambda records, info: "setup")
    report.write_results(str(tmp_path), records, INFO)
    results = json.loads((tmp_path / "results.json").read_text())
    loss, em = results["gains_over_it"]["im"]["heldout_loss"], results["gains_over_it"]["im"]["exact_match"]
    assert loss["per_seed"] == pytest.approx({"0": -0.5, "1": 0.5, "2": 0.1})  # IT's loss minus IM's, per seed
    assert em["per_seed"] == pytest.approx({"0": 0.2, "1": 0.0, "2": -0.1})  # IM's exact match minus IT's
    assert (loss["min"], em["min"]) == pytest.approx((-0.5, -0.1))
    verdict = (tmp_path / "summary.md").read_text()
    assert "IM better on 2 of 3 seeds; IM's gain per seed -0.5, +0.5, +0.1)" in verdict
    assert "IM better on 1 of 3 seeds; IM's gain per seed +0.2, +0, -0.1)" in verdict


# ----------------------------------------------------------------------------- the list itself

def test_every_test_readme_names_for_a_promise_exists():
    """docs/promises.md's promise list is what scripts/maint/mutate.py runs: a renamed or misspelled test would silently guard
    nothing."""
    from scripts.maint import mutate
    with open(os.path.join(ROOT, mutate.PROMISES), encoding="utf-8") as f:
        tests = mutate.promise_tests(f.read())
    assert sorted(tests) == list(range(1, 10))
    for node in (n for names in tests.values() for n in names):
        path, name = node.split("::")
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            assert re.search(rf"^def {name}\(", f.read(), re.M), f"docs/promises.md names {node}, which does not exist"
    assert {m.promise for m in mutate.MUTATIONS} <= set(tests)


def test_every_mutation_still_finds_its_snippet():
    """The mutation audit is not part of CI: a snippet the code no longer holds (a rename, a move) would make its
    mutation stale and its promise unaudited without anyone noticing. Each must stand exactly once in its file."""
    from scripts.maint import mutate
    stale = []
    for m in mutate.MUTATIONS:
        with open(os.path.join(ROOT, m.path), encoding="utf-8") as f:
            if f.read().count(m.old) != 1:
                stale.append(f"{m.path}: {m.old[:60]!r} ({m.what})")
    assert not stale, "stale mutations (update scripts/maint/mutate.py's MUTATIONS):\n" + "\n".join(stale)
