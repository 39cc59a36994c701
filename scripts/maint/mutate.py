"""Mutation audit: break the code behind the promises (docs/promises.md) in small, realistic ways, one at a
time, and check that the tests docs/promises.md names for that promise notice. A break that passes them marks a
test to write.

    python -m scripts.maint.mutate                # every mutation: a few minutes to half an hour, by machine load
    python -m scripts.maint.mutate --list         # the mutations, numbered, and the tests each promise runs
    python -m scripts.maint.mutate 3 7            # only mutations 3 and 7
    python -m scripts.maint.mutate --promise 2    # only the mutations of promise 2
    python -m scripts.maint.mutate --file test_promises.py   # run only the named tests of that file: does it alone catch?

Each mutation replaces one exact snippet of one file in a scratch copy of the repository (the working tree is never
touched), runs `pytest -x` on the tests docs/promises.md's "What imgpt promises" names for that promise, and restores the
file. Caught: a test failed. Survived: all passed. Stale: the snippet is no longer in the file (the code moved:
update MUTATIONS). Exit code 1 if any mutation survived or is stale. Not part of CI: it reruns a promise's tests
once per mutation.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMISES = os.path.join("docs", "promises.md")  # the promises, each with the tests that back it


@dataclass
class Mutation:
    promise: int  # docs/promises.md's number of the promise it breaks
    path: str  # relative to the repository root
    old: str  # an exact snippet of that file, found exactly once
    new: str
    what: str


MUTATIONS = [
    # 1. A mistake is one line
    Mutation(1, "imgpt/checkpoint.py", 'if not all(type(payload["data_state"].get(k)) is int',
             "if False and all(type(payload['data_state'].get(k)) is int", "resume no longer checks the data position"),
    Mutation(1, "imgpt/rundir.py", "    check_moments(optimizer, path)\n", "", "resume no longer checks the moments' shapes"),
    Mutation(1, "imgpt/rundir.py", "except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:",
             "except (ValueError, TypeError, RuntimeError) as e:", "a random state missing a stream is a KeyError"),
    Mutation(1, "imgpt/pretrained.py", "if not_tensors := sorted(k for k, v in state.items() if not isinstance(v, torch.",
             "if not_tensors := [] and (v for k, v in state.items() if not isinstance(v, torch.",
             "weights that are not tensors reach .shape"),
    Mutation(1, "imgpt/checkpoint.py", 'if payload["step"] < 0:', "if False:", "a negative step is accepted"),
    # 2. Checkpoints are atomic
    Mutation(2, "imgpt/files.py", 'return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"', 'return f"{path}.tmp"',
             "one temp name for every process"),
    Mutation(2, "imgpt/files.py", 'return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"',
             'return f"{path}.{os.getpid()}.tmp"', "the temp name without the host"),
    Mutation(2, "eval.py", 'write_text_atomic(cfg.out, json.dumps(report, indent=2) + "\\n")',
             'open(cfg.out, "w").write(json.dumps(report, indent=2) + "\\n")', "eval.py's report written in place"),
    Mutation(2, "eval.py", 'write_text_atomic(jsonl, "".join(',
             'open(jsonl, "w", encoding="utf-8").write("".join(', "eval.py's generations written in place"),
    Mutation(2, "train.py", 'files.write_text_atomic(session.path("summary.json"), json.dumps(summary, indent=1))',
             'open(session.path("summary.json"), "w").write(json.dumps(summary, indent=1))',
             "summary.json written in place"),
    Mutation(2, "scripts/experiments/report.py", 'write_text_atomic(os.path.join(out_dir, "results.json"), ',
             'open(os.path.join(out_dir, "results.json"), "w").write(', "results.json written in place"),
    Mutation(2, "scripts/experiments/report.py", 'write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))',
             'fig.savefig(path, format="png", dpi=110)', "figures written in place"),
    Mutation(2, "scripts/experiments/sweep.py", 'write_text_atomic(os.path.join(cfg.out_dir, "sweep.json"),',
             'open(os.path.join(cfg.out_dir, "sweep.json"), "w").write(', "sweep.json written in place"),
    Mutation(2, "imgpt/rundir.py", "    remove_stale_temps(cfg.out_dir)", "    pass", "stale temp files stay"),
    Mutation(2, "imgpt/files.py", "        with contextlib.suppress(FileNotFoundError):\n            os.remove(tmp)",
             "        pass", "a failed write leaves its temp file"),
    # 3. Nothing good is replaced by something bad
    Mutation(3, "train.py", "finite = [torch.isfinite(t).all() for t in [*session.model.parameters(), *moments]]",
             "finite = [~torch.isinf(t).any() for t in [*session.model.parameters(), *moments]]",
             "only inf is refused, NaN is saved"),
    Mutation(3, "train.py", "[*session.model.parameters(), *moments]", "[next(session.model.parameters()), *moments]",
             "only the first parameter is checked"),
    Mutation(3, "train.py", "moments = [] if weights_only else [", "moments = [] if True else [",
             "the optimizer moments are not checked"),
    Mutation(3, "imgpt/rundir.py", 'if found and cfg.init_from != "resume" and not cfg.overwrite:',
             'if found and cfg.init_from == "scratch" and not cfg.overwrite:', "only a rerun from scratch is refused"),
    Mutation(3, "imgpt/rundir.py", "found = [name for name in RUN_FILES if", "found = [name for name in RUN_FILES[:1] if",
             "only ckpt.pt counts as a run"),
    # 4. Resume is exact
    Mutation(4, "imgpt/rundir.py", 'ckpt["best_val_loss"],\n', "math.inf,\n", "the best held-out loss restarts on resume"),
    Mutation(4, "imgpt/rundir.py", '                    ckpt["history"])', "                    [])",
             "the evaluation history restarts on resume"),
    Mutation(4, "imgpt/rundir.py", 'set_rng_state(ckpt["rng"][d.rank])', "pass", "the random streams are not restored"),
    # 5. No code runs from a file
    Mutation(5, "imgpt/checkpoint.py", 'return torch.load(path, map_location="cpu", weights_only=True, **kw)',
             'return torch.load(path, map_location="cpu", weights_only=False, **kw)',
             "every checkpoint, saved config and .bin file is loaded with weights_only=False"),
    Mutation(5, "imgpt/benchmarks.py", "choices = ast.literal_eval(text.strip())", "choices = eval(text.strip())",
             "MMLU choice lists go through eval"),
    # 6. Valid input is read
    Mutation(6, "imgpt/formats.py", 'return raw.decode("utf-8-sig")', 'return raw.decode("utf-8")',
             "data files keep their BOM"),
    Mutation(6, "imgpt/benchmarks.py", 'encoding="utf-8-sig", errors="replace"', 'encoding="utf-8", errors="replace"',
             "benchmark files keep their BOM"),
    Mutation(6, "imgpt/cli.py", 'text = f.read().decode("utf-8-sig")', 'text = f.read().decode("utf-8")',
             "config files keep their BOM"),
    Mutation(6, "imgpt/pretrained.py", 'with open(path, encoding="utf-8-sig") as f:  # a UTF-8 BOM',
             'with open(path, encoding="utf-8") as f:  # a UTF-8 BOM', "Hugging Face JSON files keep their BOM"),
    Mutation(6, "imgpt/formats.py", 'return [line.removesuffix("\\r") for line in text.split("\\n")]',
             "return text.splitlines()", "JSONL split at U+2028 too"),
    Mutation(6, "imgpt/formats.py", 'paragraphs = [p.strip("\\n") for p in text.replace("\\r\\n", "\\n").split("\\n\\n")]',
             'paragraphs = [p.strip("\\n") for p in text.split("\\n\\n")]', "CRLF text is one paragraph"),
    Mutation(6, "imgpt/tokenizers.py", 'with open(files[1], encoding="utf-8-sig") as f:',
             'with open(files[1], encoding="utf-8") as f:', "merges.txt keeps its BOM"),
    Mutation(6, "scripts/experiments/compare.py", 'with open(path, encoding="utf-8-sig") as f:',
             'with open(path, encoding="utf-8") as f:', "compare.py --resume reads results.json with its BOM"),
    # 8. A comparison pairs runs by seed
    Mutation(8, "scripts/experiments/report.py",
             "return {s: (va[s] - vb[s]) if lower_is_better else (vb[s] - va[s]) for s in va if s in vb}",
             "return {s: (x - y) if lower_is_better else (y - x) for s, x, y in zip(va, va.values(), vb.values())}",
             "gains paired by position, not by seed"),
]


def promise_tests(readme: str) -> dict[int, list[str]]:
    """{promise number: pytest node ids} from docs/promises.md's "What imgpt promises": each item's backticked test names,
    in test_faults.py unless a backticked `test_x.py` before them names another file."""
    section = readme.split("## What imgpt promises", 1)[1].split("\n## ", 1)[0]
    tests: dict[int, list[str]] = {}
    for number, body in re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |^\S|\Z)", section, re.S | re.M):
        where = "test_faults.py"
        for name in re.findall(r"`(test_\w+(?:\.py)?)`", body):
            if name.endswith(".py"):
                where = name
            else:
                tests.setdefault(int(number), []).append(f"tests/{where}::{name}")
    return tests


def scratch_copy() -> str:
    """The repository's tracked and untracked (not ignored) files, copied into a temporary directory."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    scratch = tempfile.mkdtemp(prefix="imgpt-mutate-")
    for rel in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.dirname(os.path.join(scratch, rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(scratch, rel))
    return scratch


def run_one(m: Mutation, tests: list[str], scratch: str, timeout: float) -> tuple[str, str]:
    """('caught' | 'survived' | 'stale' | 'timeout', the first failing test or why)."""
    path = os.path.join(scratch, m.path)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    if original.count(m.old) != 1:
        return "stale", f"snippet found {original.count(m.old)} times in {m.path}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(original.replace(m.old, m.new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=scratch, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"the tests ran over {timeout:.0f} s (a hang counts as caught)"
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", done.stdout, re.M)
    if done.returncode == 0:
        return "survived", ""
    return "caught", failed[0] if failed else done.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("numbers", nargs="*", type=int, help="run only these mutations (see --list)")
    p.add_argument("--promise", type=int, action="append", help="run only the mutations of this promise")
    p.add_argument("--list", action="store_true", help="list the mutations and each promise's tests, run nothing")
    p.add_argument("--file", help="of each promise's tests, run only those in this file (e.g. test_promises.py)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per mutation before it counts as a hang")
    args = p.parse_args()
    with open(os.path.join(ROOT, PROMISES), encoding="utf-8") as f:
        tests = promise_tests(f.read())
    if args.file:
        tests = {n: [t for t in names if t.startswith(f"tests/{args.file}::")] for n, names in tests.items()}
    chosen = [(i, m) for i, m in enumerate(MUTATIONS, 1) if (not args.numbers or i in args.numbers)
              and (not args.promise or m.promise in args.promise)]
    if args.list:
        for n, names in sorted(tests.items()):
            print(f"promise {n}: {' '.join(names)}")
        for i, m in chosen:
            print(f"{i:3d}. promise {m.promise}, {m.path}: {m.what}")
        return
    scratch, outcomes = scratch_copy(), []
    try:
        for i, m in chosen:
            t0 = time.perf_counter()
            if not tests.get(m.promise):  # pytest would run every test it finds
                outcomes.append("no tests")
                print(f"{i:3d}. no tests for promise {m.promise}", flush=True)
                continue
            outcome, detail = run_one(m, tests[m.promise], scratch, args.timeout)
            outcomes.append(outcome)
            print(f"{i:3d}. {outcome:8s} promise {m.promise}, {m.path}: {m.what} ({time.perf_counter() - t0:.0f} s)"
                  + (f"  [{detail}]" if detail else ""), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    caught = sum(o in ("caught", "timeout") for o in outcomes)
    print(f"{caught} of {len(outcomes)} mutations caught; survived: {outcomes.count('survived')}, "
          f"stale: {outcomes.count('stale')}")
    sys.exit(0 if caught == len(outcomes) else 1)


if __name__ == "__main__":
    main()
