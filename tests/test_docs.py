"""Every command README.md, the pages under docs/ and the programs' --help texts show runs as written: each
program answers --help, every flag a documented command uses exists, and the fast commands run for real (on a
tiny run of our own)."""
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# our programs: the story files run by path, the scripts by module from the repository root (`python -m scripts...`)
PROGRAMS = ["train.py", "eval.py", "data.py", "sample.py", "scripts.tools.export", "scripts.experiments.compare",
            "scripts.experiments.sweep", "scripts.experiments.budget", "scripts.experiments.prompt_weight",
            "scripts.bench.bench_model", "scripts.bench.bench_train", "scripts.bench.bench_gpu", "scripts.course",
            "scripts.maint.mutate", "scripts.experiments.english_base", "scripts.experiments.real_text",
            "scripts.bench.bench_threads", "scripts.tools.gpu_check"]
PASS_THROUGH = {"scripts.experiments.compare", "scripts.experiments.sweep", "scripts.experiments.budget"}  # they hand
# train.py's flags on
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PAGES = ["README.md", "scripts/course/instructor/README.md"] + sorted(  # the course kit's instructor page is
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))  # not in a handout
DOCS = {p: open(os.path.join(ROOT, p), encoding="utf-8").read() for p in PAGES if os.path.exists(os.path.join(ROOT, p))}
README = DOCS["README.md"]


def help_text(program: str, monkeypatch) -> str:
    """`python program --help` or `python -m module --help`, run in this process (torch is imported once, not nine
    times)."""
    monkeypatch.setattr(sys, "argv", [program, "--help"])
    monkeypatch.syspath_prepend(ROOT)  # as `python program` and `python -m module` do, run from the root
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        if program.endswith(".py"):
            runpy.run_path(os.path.join(ROOT, program), run_name="__main__")
        else:
            with warnings.catch_warnings():  # runpy warns when another test imported the module: rerunning it as
                warnings.simplefilter("ignore", RuntimeWarning)  # __main__ is what `python -m` does anyway
                runpy.run_module(program, run_name="__main__", alter_sys=True)
        raise SystemExit(0)  # data.py prints its usage and returns
    assert e.value.code in (0, None), (program, e.value.code)
    return out.getvalue()


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {p: help_text(p, monkeypatch) for p in PROGRAMS}


def shell_lines(text: str) -> list[str]:
    """The commands of a text: lines of ```bash blocks (continuations joined, comments cut, && split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            commands += [c.strip() for c in line.split("&&") if c.strip()]
    return commands


def example_lines(text: str) -> list[str]:
    """Indented example commands in a --help text or docstring."""
    return [re.sub(r"\s+#.*$", "", m).strip() for m in re.findall(r"^ {2,}((?:python|torchrun) .*)$", text, re.M)]


def program_of(command: str) -> tuple[str | None, list[str]]:
    """(our program a command runs: a story file or a scripts module, the --flags it passes); None for anything else
    (pip, lm_eval, python -m pytest)."""
    words = shlex.split(command)
    if words[0] not in ("python", "torchrun") or "-c" in words:
        return None, []
    module = words[words.index("-m") + 1] if "-m" in words else None
    program = module if module and module.startswith("scripts.") else None
    if module is None:
        program = next((w.removeprefix("./") for w in words if w.endswith(".py")), None)
    return program, [w.split("=")[0] for w in words if w.startswith("--")]


def documented(helps: dict[str, str]) -> list[tuple[str, str]]:
    found = [(page, c) for page, text in DOCS.items() for c in shell_lines(text)]
    return found + [(f"{p} --help", c) for p, text in helps.items() for c in example_lines(text)]


def test_every_program_answers_help(helps):
    assert set(helps) == set(PROGRAMS) and all("usage" in t.lower() for t in helps.values())


def test_every_documented_flag_exists(helps):
    known = {p: set(re.findall(r"--[a-z_][a-z_-]*", t)) for p, t in helps.items()}
    checked = 0
    for where, command in documented(helps):
        program, flags = program_of(command)
        if program is None:
            continue
        assert program in helps, f"{where}: {command!r} runs {program}, which is not one of {PROGRAMS}"
        allowed = known[program] | (known["train.py"] if program in PASS_THROUGH else set()) | {"--standalone",
                  "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port"}
        assert not set(flags) - allowed, f"{where}: {command!r} uses unknown flags {set(flags) - allowed}"
        checked += 1
    assert checked >= 40  # the README and the help texts do show that many commands


def test_ci_runs_the_readme_test_command():
    (test_command,) = [c for c in shell_lines(README) if "pytest" in c and not c.startswith("pip")][:1]
    assert test_command == "python -m pytest -q tests"
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert re.search(r"^" + re.escape(test_command) + r"\s", ci, re.M)
    assert "torch==" in ci  # CI pins the CPU wheel before anything pulls CUDA torch
    dev = open(os.path.join(ROOT, "requirements-dev.txt")).read().splitlines()
    assert "-r requirements.txt" in dev  # the second quick-start line sets up everything the first one did


FAST = [  # README and docs/ commands run for real, as written, in a directory holding a tiny trained `out`
    "python data.py show synthetic --loss im --n 1",
    "python eval.py --ckpt out",
    "python -m scripts.tools.export --ckpt out --out_dir hf-out",
    "python sample.py --ckpt out --prompt \"S8=lodi, K2=\"",
    "python data.py stats synthetic --tokenizer byte",
    "python -m scripts.maint.mutate --list",  # a script run as a module, from another directory than the root
]


def test_fast_readme_commands_run_as_written(tmp_path, helps):
    commands = [c for _, c in documented(helps)]
    small = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--synth_examples=40", "--synth_heldout=4",
             "--synth_mentions=2", "--synth_facts=2", "--max_steps=2", "--train_eval_size=6", "--out_dir=out"]
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *small], cwd=tmp_path, env=ENV, check=True,
                   capture_output=True, timeout=300)
    runs = {}
    for command in FAST:  # independent of each other: all at once
        assert command in commands, f"{command!r} is no longer in README.md or docs/: update FAST"
        words = shlex.split(command)
        program = words[1:] if words[1] == "-m" else [os.path.join(ROOT, words[1]), *words[2:]]
        runs[command] = subprocess.Popen([sys.executable, *program], cwd=tmp_path, env={**ENV, "PYTHONPATH": ROOT},
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # PYTHONPATH:
        # `-m scripts...` finds the scripts as it does from the repository root
    for command, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (command, err[-2000:])
    assert {"eval.json", "ckpt.pt"} <= set(os.listdir(tmp_path / "out"))
    assert "model.safetensors" in os.listdir(tmp_path / "hf-out")


def test_bench_train_takes_one_size_with_its_defaults():
    """`scripts/bench/bench_train.py --sizes tiny-bpe` (course assignment 4) failed: three default batches, one size."""
    from scripts.bench import bench_train
    from imgpt.cli import UserError, parse_config
    one = parse_config(bench_train.BenchConfig, ["--sizes", "tiny-bpe"])
    assert (one.for_size("batch", "tiny-bpe"), one.for_size("rounds", "tiny-bpe")) == (8, 12)
    two = parse_config(bench_train.BenchConfig, ["--sizes", "tiny,124M", "--rounds", "5"])
    assert [two.for_size("rounds", s) for s in two.sizes] == [5, 5]
    per_size = parse_config(bench_train.BenchConfig, ["--sizes", "tiny,124M", "--batch", "4,2"])
    assert per_size.for_size("batch", "124M") == 2
    with pytest.raises(UserError, match=r"--batch: give one value, or one per size \(2 sizes\), got 3"):
        parse_config(bench_train.BenchConfig, ["--sizes", "tiny,124M", "--batch", "1,2,3"])
