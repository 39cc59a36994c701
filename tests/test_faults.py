"""Bad inputs and faults: nothing lost, nothing half-written, and one clear line (exit 2) that says where.

Each test here backs one of README's "What imgpt promises" items; Ctrl-C at random moments is in test_train.py.
"""
import bz2
import dataclasses
import errno
import io
import json
import math
import os
import typing

import pytest
import torch

import data
import eval as ev
import train as T
from conftest import data_file, one_thread, tiny  # noqa: F401 (fixtures)
from imgpt import benchmarks as bm
from imgpt import checkpoint, cli, files, formats, pretrained
from imgpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from imgpt.cli import UserError, make_config, parse_config
from imgpt.distributed import Dist
from imgpt.rundir import RUN_FILES
from imgpt.train_config import resolve
from model import GPT
from scripts.experiments import compare, sweep

from conftest import HELLASWAG, cli_error

# ----------------------------------------------------------------------------- nothing lost

def test_a_nan_evaluation_is_never_saved_over_the_last_good_checkpoint(data_file, tmp_path, monkeypatch):
    """Evaluations at steps 0, 2, 4: the one at step 4 is NaN. The run stops there; ckpt.pt stays the step-2 one
    and best.pt one of step 0 or 2 (before: ckpt.pt was replaced by the step-4 model and its NaN evaluation)."""
    eval_record, calls = T.eval_record, []

    def nan_at_step_4(*args):
        calls.append(1)
        r = eval_record(*args)
        return {k: math.nan for k in r} if len(calls) == 3 else r

    monkeypatch.setattr(T, "eval_record", nan_at_step_4)
    with pytest.raises(T.TrainingDiverged, match="evaluation at step 4 gave val_output_loss"):
        T.train(tiny(data_file, str(tmp_path), max_steps=5, eval_interval=2))
    for name, steps in (("ckpt.pt", {2}), ("best.pt", {0, 2})):
        ckpt = load_checkpoint(str(tmp_path / name))
        assert ckpt["step"] in steps and all(math.isfinite(v) for r in ckpt["history"] for v in r.values()), name


def test_non_finite_weights_are_never_saved(data_file, tmp_path):
    s = T.setup(resolve(tiny(data_file, str(tmp_path))), Dist())
    with torch.no_grad():
        s.model.transformer.wte.weight[3, 1] = math.inf
    with pytest.raises(T.TrainingDiverged, match="NaN or inf at step 0: ckpt.pt not written"):
        T.save(s, "ckpt.pt")
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_rerun_refuses_to_overwrite_a_run_unless_resumed_or_asked(data_file, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    T.train(tiny(data_file, out, max_steps=1))
    before = {name: (tmp_path / "run" / name).read_bytes() for name in RUN_FILES}
    args = ["train.py", f"--data={data_file}", f"--out_dir={out}", "--max_steps=1", "--n_layer=1", "--n_embd=32"]
    err = cli_error(T.main, args, monkeypatch, capsys)
    assert err == (f"error: --out_dir {out} holds a training run (ckpt.pt, best.pt, log.jsonl, summary.json): "
                   "--init_from resume continues it, --overwrite replaces it, or choose another --out_dir\n")
    assert before == {name: (tmp_path / "run" / name).read_bytes() for name in RUN_FILES}  # untouched
    T.train(tiny(data_file, out, max_steps=1, eval_interval=0, val_size=0, overwrite=True))
    assert not (tmp_path / "run" / "best.pt").exists()  # the old run's files went: nothing of it mixes in
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2  # 1 step + the final evaluation


def test_jsonl_lines_split_on_line_feeds_only(tmp_path):
    """U+2028, U+2029 and U+0085 are valid raw inside JSON strings (json.dumps(ensure_ascii=False) writes them)."""
    texts = ["a\u2028b", "c\u2029d", "e\x85f"]
    lines = [json.dumps({"instruction": t, "output": t[::-1]}, ensure_ascii=False) for t in texts]
    path = tmp_path / "d.jsonl"
    path.write_text("\r\n".join(lines + ['{"instruction": "x", "output": }']) + "\n", encoding="utf-8")
    with pytest.raises(formats.DataError, match=r"d.jsonl:4: malformed JSON line"):  # the right line number
        formats.load_conversations(str(path))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    convs = formats.load_conversations(str(path))
    assert [c[0]["content"] for c in convs] == texts and [c[1]["content"] for c in convs] == [t[::-1] for t in texts]


@pytest.fixture(scope="module")
def finished_run(data_file, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("finished"))
    T.train(tiny(data_file, out, max_steps=4, stop_step=2))
    return out


def corrupt(ckpt: dict, how: str) -> None:
    if how.startswith("drop "):
        del ckpt[how.removeprefix("drop ")]
    elif how == "unknown setting":
        ckpt["config"]["bogus"] = 1
    elif how == "wrong shape":
        ckpt["model"]["transformer.wpe.weight"] = torch.zeros(3, 3)
    elif how == "bad model_config":
        ckpt["model_config"]["n_head"] = 3
    elif how == "bad config value":
        ckpt["config"]["lr"] = -1.0
    elif how == "optimizer of another model":
        ckpt["optimizer"]["param_groups"] = ckpt["optimizer"]["param_groups"][:1]
    elif how == "unknown tokenizer":
        ckpt["tokenizer"] = "no-such-tokenizer"
    elif how == "step not a number":
        ckpt["step"] = "2"


@pytest.mark.parametrize("how, message", [
    ("drop config", "key 'config' is missing"),
    ("drop optimizer", "key 'optimizer' is missing"),
    ("unknown setting", "key 'config' has setting(s) this train.py does not know: bogus"),
    ("wrong shape", "wrong shapes transformer.wpe.weight (3, 3) (expected (64, 32))"),
    ("bad model_config", "bad model config (model config: n_embd=32 is not divisible by n_head=3)"),
    ("bad config value", "key 'config': --lr must be >= 0, got -1"),
    ("optimizer of another model", "key 'optimizer' does not fit this model"),
    ("step not a number", "key 'step' holds a str"),
    ("unknown tokenizer", "key 'tokenizer': unknown tokenizer 'no-such-tokenizer'"),
])
def test_resume_checks_the_checkpoint_and_names_it_and_the_key(finished_run, tmp_path, how, message):
    ckpt = load_checkpoint(os.path.join(finished_run, "ckpt.pt"))
    corrupt(ckpt, how)
    save_checkpoint(str(tmp_path / "ckpt.pt"), ckpt)
    with pytest.raises(CheckpointError) as e:
        T.train(T.TrainConfig(init_from="resume", out_dir=str(tmp_path)))
    assert str(e.value).startswith(f"{tmp_path / 'ckpt.pt'}: ") and message in str(e.value)


def test_resume_refuses_a_tokenizer_larger_than_the_model(finished_run, tmp_path, gpt2_bpe_dir):
    ckpt = load_checkpoint(os.path.join(finished_run, "ckpt.pt"))
    ckpt["tokenizer"] = gpt2_bpe_dir
    save_checkpoint(str(tmp_path / "ckpt.pt"), ckpt)
    with pytest.raises(CheckpointError, match="ckpt.pt: key 'tokenizer': 50257 tokens, the model only 257"):
        T.train(T.TrainConfig(init_from="resume", out_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- output places

def test_out_dir_that_is_a_file_or_not_writable(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    err = cli_error(T.main, ["train.py", f"--out_dir={tmp_path / 'f'}"], monkeypatch, capsys)
    assert err == f"error: --out_dir {tmp_path / 'f'}: {tmp_path / 'f'} is a file, not a directory\n"
    err = cli_error(T.main, ["train.py", f"--out_dir={tmp_path / 'f' / 'run'}"], monkeypatch, capsys)
    assert err == f"error: --out_dir {tmp_path / 'f' / 'run'}: {tmp_path / 'f'} is a file, not a directory\n"
    err = cli_error(T.main, ["train.py", f"--data={tmp_path / 'nope.jsonl'}", f"--out_dir={tmp_path / 'run'}"],
                    monkeypatch, capsys)
    assert "nope.jsonl: no such file" in err and not (tmp_path / "run").exists()  # a failed start makes nothing
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)

    def refused(*args, **kw):  # root ignores permission bits: refuse the probe as a read-only disk would
        raise PermissionError(errno.EACCES, "Permission denied")

    if os.geteuid() == 0:
        monkeypatch.setattr(files.tempfile, "TemporaryFile", refused)
    err = cli_error(T.main, ["train.py", f"--out_dir={ro / 'run'}"], monkeypatch, capsys)
    assert err == f"error: --out_dir {ro / 'run'}: cannot write in {ro} (Permission denied)\n"
    assert os.listdir(ro) == []  # nothing made, not even the run's directory


def test_disk_full_keeps_the_old_checkpoint_and_leaves_no_temp_file(data_file, tmp_path, monkeypatch, capsys):
    """The saves up to step 1 work; the first of step 2 meets a full disk half-way: one line naming the file, the
    step-1 checkpoint intact, no temp file left."""
    real_save = torch.save

    def disk_fills(obj, f, *args, **kw):
        if obj["step"] <= 1:  # best.pt at step 0 (no ckpt.pt there: nothing to resume), best.pt and ckpt.pt at 1
            return real_save(obj, f, *args, **kw)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_fills)
    args = ["train.py", f"--data={data_file}", f"--out_dir={tmp_path}", "--max_steps=2", "--eval_interval=1",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=4", "--val_size=4"]
    err = cli_error(T.main, args, monkeypatch, capsys)
    first = ("best.pt", "ckpt.pt")  # step 2 writes best.pt first if its evaluation improved, else ckpt.pt
    assert err in [f"error: cannot write {tmp_path / name}: No space left on device\n" for name in first]
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "ckpt.pt", "log.jsonl"]
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == 1


class FillsUp(io.FileIO):
    """A file on a disk that is full after 1000 bytes."""

    def write(self, b) -> int:
        if self.tell() + len(b) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_a_disk_full_mid_checkpoint_is_reported_as_such(tmp_path, monkeypatch):
    """torch's zip writer turns a write error after its first write into 'unexpected pos 7'; save_checkpoint
    reports the file and ENOSPC, and removes its half-written temp file."""
    monkeypatch.setattr(files, "open", lambda path, mode: FillsUp(path, mode), raising=False)
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / 'c.pt'}: No space left on device$"):
        save_checkpoint(str(tmp_path / "c.pt"), {"w": torch.zeros(1 << 16)})
    assert os.listdir(tmp_path) == []


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                         fsync(fd)))
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", a)), replace(a, b)))
    files.write_text_atomic(str(tmp_path / "x.json"), "{}")
    assert events == [("fsync", False), ("replace", files.temp_path(str(tmp_path / 'x.json'))), ("fsync", True)]
    assert (tmp_path / "x.json").read_text() == "{}" and os.listdir(tmp_path) == ["x.json"]


def test_any_file_the_system_refuses_is_one_line(monkeypatch, capsys):
    """E.g. log.jsonl on a disk that filled up during training: the path and the system's reason."""
    def main():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/log.jsonl")

    assert cli_error(main, ["train.py"], monkeypatch, capsys) == "error: out/log.jsonl: No space left on device\n"


def test_eval_out_that_is_a_directory(tmp_path):
    with pytest.raises(UserError, match=f"--out {tmp_path}: is a directory"):
        make_config(ev.EvalConfig, {"ckpt": "gpt2", "out": str(tmp_path)})


# ----------------------------------------------------------------------------- flags and config files

CONFIGS = [T.TrainConfig, ev.EvalConfig, data.StatsConfig, compare.CompareConfig, sweep.SweepConfig]
NEEDED = {ev.EvalConfig: {"ckpt": "gpt2"}}  # settings without which validate() stops first


def numeric_fields(cls) -> list[tuple[str, type, float]]:
    """(name, int or float, lowest allowed value) of every numeric setting, lists included."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        tp = cli._scalar(tp)
        tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if tp in (int, float):
            out.append((f.name, tp, f.metadata["low"]))
    return out


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_flag_is_checked_for_range_and_finiteness(cls):
    """The whole class: each numeric setting of every program, below its lowest value and (floats) inf / nan."""
    fields = numeric_fields(cls)
    assert len(fields) >= 2
    for name, tp, low in fields:
        bad = [low - 1] + ([math.inf, math.nan] if tp is float else [])
        for value in bad:
            value = [value] if isinstance(getattr(cls(), name), list) else value
            with pytest.raises(UserError, match=f"^--{name} must be"):
                make_config(cls, {**NEEDED.get(cls, {}), name: value})


@pytest.mark.parametrize("argv, message", [
    (["--log_interval", "0"], "--log_interval must be >= 1, got 0"),
    (["--train_eval_size", "-1"], "--train_eval_size must be >= 0, got -1"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--weight_decay", "inf"], "--weight_decay must be a finite number, got inf"),
    (["--kl_coef", "inf"], "--kl_coef must be a finite number, got inf"),
    (["--neftune_alpha", "inf"], "--neftune_alpha must be a finite number, got inf"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
])
def test_train_flags(argv, message, tmp_path, monkeypatch, capsys):
    err = cli_error(T.main, ["train.py", *argv, f"--out_dir={tmp_path / 'out'}"], monkeypatch, capsys)
    assert err == f"error: {message}\n"
    assert not os.path.exists(tmp_path / "out")  # nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda():
    with pytest.raises(UserError, match="--device cuda: (this torch was built without CUDA|no CUDA GPU is visible)"):
        make_config(T.TrainConfig, {"device": "cuda"})


def test_eval_stats_and_compare_flags(tmp_path, monkeypatch, capsys):
    err = cli_error(ev.main, ["eval.py", "--ckpt=gpt2", "--temperature=nan"], monkeypatch, capsys)
    assert err == "error: --temperature must be a finite number, got nan\n"
    for flag, message in [("--batch_size=0", "--batch_size must be >= 1, got 0"),
                          ("--max_len=-5", "--max_len must be >= 2, got -5")]:
        err = cli_error(data.main, ["data.py", "stats", "synthetic", flag], monkeypatch, capsys)
        assert err == f"error: {message}\n"
    err = cli_error(compare.main, ["compare.py", "--modes="], monkeypatch, capsys)
    assert err == "error: --modes: no mode given (e.g. --modes it,im, or --prompt_loss_weights 0,1)\n"
    (tmp_path / "results.json").write_text(json.dumps({"runs": [{"mode": "it", "seed": 0, "metrics": {}}]}))
    with pytest.raises(UserError, match=r"results.json: runs\[0\] lacks steps, time_s, history, train_settings"):
        compare.load_records(str(tmp_path / "results.json"))


def test_config_file_errors_name_the_file_and_flags_still_win(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("log_interval = 0\n")
    with pytest.raises(UserError, match=f"^{toml}: --log_interval must be >= 1, got 0$"):
        parse_config(T.TrainConfig, ["--config", str(toml)])
    assert parse_config(T.TrainConfig, ["--config", str(toml), "--log_interval=5"]).log_interval == 5
    toml.write_text('lr = "fast"\n')
    with pytest.raises(UserError, match=f"^{toml}: --lr: expected float, got 'fast'$"):
        parse_config(T.TrainConfig, ["--config", str(toml)])
    with pytest.raises(UserError, match="^--lr must be >= 0, got -1$"):  # given on the command line: no file named
        parse_config(T.TrainConfig, ["--config", str(toml), "--lr=-1"])


def test_model_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1, "n_head": 3, "n_embd": 100, "vocab_size": 10,
                                                      "n_positions": 8}))
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'config.json'}: bad model config .*n_embd=100 is not "
                                              "divisible by n_head=3"):
        GPT.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------- input files

def test_deeply_nested_json_is_one_clear_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "a.json").write_text(deep)
    with pytest.raises(formats.DataError, match="a.json:1: JSON nested too deeply to read"):
        formats.load_conversations(str(tmp_path / "a.json"))
    (tmp_path / "b.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"x": ' + deep + "}\n")
    with pytest.raises(formats.DataError, match="b.jsonl:2: JSON nested too deeply to read"):
        formats.load_conversations(str(tmp_path / "b.jsonl"))
    (tmp_path / "h.jsonl").write_text(deep + "\n")
    with pytest.raises(formats.DataError, match="h.jsonl:1: expected a JSON object"):
        bm.read_hellaswag(str(tmp_path / "h.jsonl"))
    (tmp_path / "config.json").write_text(deep)
    with pytest.raises(CheckpointError, match="config.json: not readable JSON"):
        pretrained.read_json(str(tmp_path / "config.json"))


def test_benchmark_files(tmp_path):
    mmlu = "question,A,B,C,D,answer\nWhat?,a,b,c,d,B\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + mmlu.encode())
    (q,) = bm.read_mmlu_csv(str(tmp_path / "bom.csv"))  # the BOM is not part of the 'question' header
    assert (q.context, q.choices, q.gold) == ("What?", ["a", "b", "c", "d"], 1)
    (tmp_path / "header.csv").write_text("question,A,B,C,D,answer\n")
    with pytest.raises(formats.DataError, match="header.csv: no questions in this file"):
        bm.read_mmlu_csv(str(tmp_path / "header.csv"))
    for name, content in [("empty.txt", b""), ("empty.jsonl", b"\n")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(formats.DataError, match=f"{name}: no questions in this file"):
            bm.read_hellaswag(str(tmp_path / name))
    (tmp_path / "hs.txt.bz2").write_bytes(bz2.compress(HELLASWAG.encode())[:-10])
    with pytest.raises(formats.DataError, match=r"hs.txt.bz2: cannot read \(EOFError"):
        bm.read_hellaswag(str(tmp_path / "hs.txt.bz2"))
    (tmp_path / "junk.txt.bz2").write_bytes(b"BZh91AY&SY" + bytes(range(200)))
    with pytest.raises(formats.DataError, match=r"junk.txt.bz2: cannot read \(OSError"):
        bm.read_hellaswag(str(tmp_path / "junk.txt.bz2"))


def test_bad_benchmark_files_fail_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "header.csv").write_text("question,A,B,C,D,answer\n")
    (tmp_path / "hs.txt").write_text(HELLASWAG)

    def no_model(*args, **kw):
        raise AssertionError("the model was loaded before the benchmark files were read")

    monkeypatch.setattr(ev, "load_model", no_model)
    for flags in ({"mmlu": str(tmp_path / "header.csv")}, {"hellaswag": str(tmp_path / "hs.txt"),
                                                            "mmlu": str(tmp_path / "header.csv")}):
        with pytest.raises(formats.DataError, match="header.csv: no questions"):
            ev.evaluate(make_config(ev.EvalConfig, {"ckpt": "gpt2", "device": "cpu", **flags}), Dist())


# ----------------------------------------------------------------------------- no code runs from a file

class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_holding_code_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    torch.save({"model": Payload(), "model_config": {}}, tmp_path / "ckpt.pt")
    err = cli_error(ev.main, ["eval.py", f"--ckpt={tmp_path / 'ckpt.pt'}", "--data=synthetic"], monkeypatch, capsys)
    assert err == (f"error: {tmp_path / 'ckpt.pt'}: refused: the file holds Python code (posix.system), not only "
                   "tensors and plain values; imgpt never runs code from a file\n")
    err = cli_error(T.main, ["train.py", "--init_from=resume", f"--out_dir={tmp_path}"], monkeypatch, capsys)
    assert "posix.system" in err and "weights_only" not in err
    os.makedirs(tmp_path / "hf")
    torch.save({"wte": Payload()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refused: the file holds Python code \(posix"):
        pretrained.read_weights(str(tmp_path / "hf"))
