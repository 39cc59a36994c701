"""The course kit: hand out the exercises, grade them, and prove that every grader catches what it should.

    python scripts/course.py handout OUT_DIR   # a copy without history, every solution region blanked
    python scripts/course.py grade [N]         # run exercise N's grading tests (no N: all), print the points
    python scripts/course.py reset N           # blank exercise N again, here
    python scripts/course.py check [N]         # instructors and CI: each grader fails on the blank and on every
                                               # recorded wrong solution, passes on the solution, and passes with
                                               # only the exercise and its prerequisites solved (--jobs 2)

A solution region is the few lines a student writes, between a line `# BEGIN SOLUTION exN: hint` and a line
`# END SOLUTION`. The handout keeps both markers (so `reset` finds the region again) and puts in between
    raise NotImplementedError("Exercise N: hint (docs/assignments.md)")
Lines `# HANDOUT DOCSTRING exN: text` right above a docstring that gives the answer away make the handout's
docstring just their texts, one line each. Graders are the tests marked `@pytest.mark.exN` (pytest.ini registers
the markers); wrong solutions are data, one module per mistake in scripts/wrong_solutions/ (see its README).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import os
import queue
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime import UserError, run_cli  # noqa: E402

WRONG_DIR = os.path.join("scripts", "wrong_solutions")
INSTRUCTOR_ONLY = (WRONG_DIR + os.sep, os.path.join("tests", "test_course.py"), ".ci" + os.sep)
SOURCES = re.compile(r"^(scripts/)?[^/]+\.py$")  # where regions live: the modules and scripts, not the tests
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION ex(\d+)(?::\s*(.*))?$")
END = re.compile(r"^\s*# END SOLUTION$")
DOCSTRING = re.compile(r"^(\s*)# HANDOUT DOCSTRING ex(\d+):(?: (.*))?$")
TRACEBACK_LINE = re.compile(r"^\S+\.py:\d+: ")  # pytest --tb=line: "file:line: Error: message"


@dataclass(frozen=True)
class Exercise:
    number: int
    title: str
    points: int
    tests: tuple[str, ...] = ()  # the test files holding its graders; none: a written answer, graded by hand
    needs: tuple[int, ...] = ()  # the exercises its graders call: solve these first (docs/assignments.md's table)


EXERCISES = {e.number: e for e in [
    Exercise(1, "the loss weights", 10, ("tests/test_data.py",)),
    Exercise(2, "split-invariant normalization", 15, ("tests/test_train.py",), needs=(1, 4, 5)),
    Exercise(3, "the KV cache", 20, ("tests/test_generation.py", "tests/test_model.py"), needs=(5,)),
    Exercise(4, "skip what costs nothing", 10, ("tests/test_model.py",)),
    Exercise(5, "block-diagonal attention", 15, ("tests/test_attention.py", "tests/test_model.py",
                                                 "tests/test_data.py"), needs=(1,)),
    Exercise(6, "acc vs acc_norm", 10, ("tests/test_eval.py",)),
    Exercise(7, "the paper's two factors (written)", 10),
    Exercise(8, "the continuous prompt-loss weight", 10, ("tests/test_prompt_weight.py",)),
]}


# ----------------------------------------------------------------------------- regions in a source file

@dataclass(frozen=True)
class Region:
    exercise: int
    begin: int  # index of the BEGIN line; the body is lines[begin + 1:end]
    end: int  # index of the END line
    indent: str
    hint: str


def find_regions(lines: list[str], where: str) -> list[Region]:
    """The solution regions of a file, in order; unclosed or nested markers are an error naming the line."""
    regions, open_at = [], None
    for i, line in enumerate(lines):
        if m := BEGIN.match(line):
            if open_at is not None:
                raise UserError(f"{where}:{i + 1}: BEGIN SOLUTION inside the region opened on line {open_at[0] + 1}")
            open_at = (i, m)
        elif END.match(line):
            if open_at is None:
                raise UserError(f"{where}:{i + 1}: END SOLUTION without a BEGIN SOLUTION above it")
            (b, m), open_at = open_at, None
            regions.append(Region(int(m.group(2)), b, i, m.group(1), m.group(3) or ""))
    if open_at is not None:
        raise UserError(f"{where}:{open_at[0] + 1}: BEGIN SOLUTION without an END SOLUTION")
    return regions


def blank_body(region: Region) -> list[str]:
    """raise NotImplementedError("Exercise N: hint ..."), the message wrapped to stay within 120 columns."""
    hint = f"Exercise {region.exercise}: {region.hint} (docs/assignments.md)".replace('"', "'")
    head = f"{region.indent}raise NotImplementedError("
    parts = textwrap.wrap(hint, 116 - len(head), drop_whitespace=False)
    quoted = [f'"{part}"' for part in parts]
    return [head + "\n".join([quoted[0]] + [" " * len(head) + q for q in quoted[1:]]) + ")\n"]


def indented(code: str, indent: str) -> list[str]:
    """A dedented snippet of code, indented to a region's level."""
    return [indent + line + "\n" if line.strip() else "\n" for line in textwrap.dedent(code).strip("\n").splitlines()]


def replace_regions(lines: list[str], where: str, exercise: int, bodies: dict[int, list[str]] | None) -> list[str]:
    """Lines with exercise's k-th region (1-based) in this file replaced by bodies[k]; bodies None = all blank."""
    out, last, k = [], 0, 0
    for r in find_regions(lines, where):
        if r.exercise != exercise:
            continue
        k += 1
        body = blank_body(r) if bodies is None else bodies.get(k)
        if body is not None:
            out += lines[last:r.begin + 1] + body
            last = r.end
    return out + lines[last:]


def docstring_end(lines: list[str], i: int) -> int:
    """Index of the line that closes the docstring opening on line i."""
    j = i if lines[i].count('"""') >= 2 else i + 1
    while '"""' not in lines[j]:
        j += 1
    return j


def reduce_docstrings(lines: list[str], exercise: int) -> list[str]:
    """Each docstring under `# HANDOUT DOCSTRING exN: text` lines becomes their texts, one line each; the markers
    go."""
    out, i = [], 0
    while i < len(lines):
        texts = []
        while i < len(lines) and (m := DOCSTRING.match(lines[i])) and int(m.group(2)) == exercise:
            indent, i = m.group(1), i + 1
            texts.append(m.group(3) or "")
        if not texts:
            out.append(lines[i])
            i += 1
            continue
        if len(texts) == 1:
            out.append(f'{indent}"""{texts[0]}"""\n')
        else:
            out += [f'{indent}"""{texts[0]}\n', *(f"{indent}{t}".rstrip() + "\n" for t in texts[1:]), f'{indent}"""\n']
        i = docstring_end(lines, i) + 1
    return out


# ----------------------------------------------------------------------------- trees of files

def tree_files(root: str) -> list[str]:
    """The project's files, relative to root: what git tracks, never what a user made in the checkout (a virtualenv,
    out/, caches, notes). Outside git (a copy of a handout): every file but those .gitignore names, and virtualenvs
    under any name."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        if os.path.samefile(top, root):
            listed = subprocess.run(["git", "ls-files", "--cached", "-z"], cwd=root, capture_output=True, text=True,
                                    check=True).stdout.split("\0")
            return [p for p in listed if p and os.path.isfile(os.path.join(root, p))]
    except (OSError, subprocess.CalledProcessError):
        pass
    ignored = ignore_patterns(root)
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".git" and not is_ignored(x + "/", ignored)
                   and not os.path.isfile(os.path.join(d, x, "pyvenv.cfg"))]
        files += [os.path.relpath(os.path.join(d, name), root) for name in names if not is_ignored(name, ignored)]
    return sorted(files)


def ignore_patterns(root: str) -> list[str]:
    """The name patterns of root's .gitignore (`name/` for directories only)."""
    try:
        with open(os.path.join(root, ".gitignore"), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith(("#", "!"))]
    except FileNotFoundError:
        return []


def is_ignored(name: str, patterns: list[str]) -> bool:
    """Whether a file name (a directory's ends with /) matches one of .gitignore's patterns."""
    is_dir = name.endswith("/")
    return any(fnmatch.fnmatch(name.rstrip("/"), p.strip("/")) for p in patterns if is_dir or not p.endswith("/"))


def source_files(root: str) -> list[str]:
    return [p for p in tree_files(root) if SOURCES.match(p.replace(os.sep, "/"))]


def copy_tree(src: str, dst: str, instructor: bool) -> None:
    for rel in tree_files(src):
        if not instructor and rel.startswith(INSTRUCTOR_ONLY):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))


def read(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def exercise_number(text: str) -> int:
    if not text.isdigit() or int(text) not in EXERCISES:
        raise UserError(f"no exercise {text!r}: choose from {', '.join(map(str, EXERCISES))}")
    return int(text)


def reset(root: str, exercise: int) -> int:
    """Blank exercise `exercise` in root's sources; returns how many regions were blanked."""
    count = 0
    for rel in source_files(root):
        path = os.path.join(root, rel)
        lines = read(path)
        count += sum(r.exercise == exercise for r in find_regions(lines, rel))
        new = reduce_docstrings(replace_regions(lines, rel, exercise, None), exercise)
        if new != lines:
            write(path, new)
    return count


def handout(out_dir: str) -> None:
    """A history-free copy with every exercise blanked; built beside out_dir, then renamed: never half-written."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not empty; give a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".handout-", dir=parent)
    try:
        copy_tree(ROOT, tmp, instructor=False)
        for n in EXERCISES:
            reset(tmp, n)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote the handout to {out_dir}: {len(tree_files(out_dir))} files, exercises "
          f"{', '.join(str(n) for n in EXERCISES)} blanked; hand out docs/assignments.md with it")


# ----------------------------------------------------------------------------- grading

def run_grader(root: str, exercise: Exercise, stop_first: bool) -> tuple[bool, list[str], str]:
    """Run an exercise's marked tests in root: (all passed, one summary line per failed test, pytest's output)."""
    flags = ["-x", "--tb=line"] if stop_first else ["--tb=short"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, "-m", f"ex{exercise.number}",
           *exercise.tests]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    if r.returncode == 5:
        raise UserError(f"exercise {exercise.number}: no test in {', '.join(exercise.tests)} "
                        f"is marked ex{exercise.number}")
    if r.returncode not in (0, 1):
        raise UserError(f"exercise {exercise.number}: pytest could not run ({' '.join(cmd[2:])}):\n{out[-2000:]}")
    failed = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return r.returncode == 0, failed, out


def grade(root: str, numbers: list[int]) -> bool:
    """Print the points of each exercise: all of them when every grading test passes, else none."""
    earned = auto = 0
    for n in numbers:
        e = EXERCISES[n]
        if not e.tests:
            print(f"exercise {n}, {e.title}: written, graded by hand with the rubric in docs/assignments.md "
                  f"({e.points} points)")
            continue
        ok, failed, out = run_grader(root, e, stop_first=False)
        if len(numbers) == 1:
            print(out)
        auto, earned = auto + e.points, earned + (e.points if ok else 0)
        names = [line.split(" - ")[0].split("::")[-1] for line in failed]  # the test's name, no path or message
        status = "all tests pass" if ok else f"{len(failed)} failing: " + ", ".join(names)
        print(f"exercise {n}, {e.title}: {e.points if ok else 0}/{e.points} ({status})")
    if len(numbers) > 1:
        print(f"total: {earned}/{auto} autograded points")
    return earned == auto


# ----------------------------------------------------------------------------- checking the graders

def wrong_solutions(root: str, exercise: int) -> list[tuple[str, dict[tuple[str, int], str]]]:
    """(name, {(file, k): code for the exercise's k-th region in that file}) of each recorded wrong solution."""
    directory = os.path.join(root, WRONG_DIR)
    out = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(f"ex{exercise}_") and name.endswith(".py"):
            out.append((name[:-3], runpy.run_path(os.path.join(directory, name))["REPLACE"]))
    return out


ALONE = "alone"  # the variant with every other exercise blanked but the declared prerequisites: it must pass


def apply_variant(work: str, originals: dict[str, list[str]], exercise: int,
                  replace: dict[tuple[str, int], str] | None) -> None:
    """Restore the solution, then blank the exercise (replace None), put in a wrong solution's regions, or (replace
    ALONE) blank every other exercise but the prerequisites it declares."""
    for rel, lines in originals.items():
        write(os.path.join(work, rel), lines)
    if replace is None or replace == ALONE:
        keep = {exercise, *EXERCISES[exercise].needs} if replace == ALONE else set(EXERCISES) - {exercise}
        for n in set(EXERCISES) - keep:
            reset(work, n)
        return
    for (rel, k), code in replace.items():
        regions = [r for r in find_regions(originals[rel], rel) if r.exercise == exercise]
        if not 1 <= k <= len(regions):
            raise UserError(f"{WRONG_DIR}: ex{exercise} region {k} of {rel}: that file has {len(regions)}")
        path = os.path.join(work, rel)
        write(path, replace_regions(read(path), rel, exercise, {k: indented(code, regions[k - 1].indent)}))


def grade_variant(works: queue.Queue, originals: dict[str, list[str]], exercise: Exercise, name: str,
                  replace: dict | None) -> tuple[str, str | None]:
    """Grade one variant of one exercise in a free copy of the solution: (its report line, a problem or None)."""
    work, t0 = works.get(), time.perf_counter()
    try:
        apply_variant(work, originals, exercise.number, replace)
        ok, failed, out = run_grader(work, exercise, stop_first=True)
    finally:
        works.put(work)
    expected = name == "solution" or replace == ALONE
    why = [line.split(": ", 1)[1] for line in out.splitlines() if TRACEBACK_LINE.match(line)]
    verdict = "PASSES" if ok else f"FAILS {failed[0] if failed else ''}\n      {(why or ['?'])[0][:300]}"
    line = f"  ex{exercise.number} {name}: {verdict} ({time.perf_counter() - t0:.1f} s)"
    problem = f"exercise {exercise.number}: the grader {'fails' if expected else 'passes'} on {name}"
    return line, None if ok == expected else problem


def check(numbers: list[int], jobs: int = 1) -> None:
    """Build the handout, then prove each grader right on its blank, on each recorded wrong solution and on the
    solution. Each runs in a copy of the solution where only its own exercise is blanked or wrong, so that a
    failure comes from that exercise alone; `jobs` copies grade side by side. Last, each grader must pass where
    only its exercise and the prerequisites it declares are solved: a student can follow the recommended order."""
    if not os.path.isdir(os.path.join(ROOT, WRONG_DIR)):
        raise UserError(f"check needs the instructor's repository: {WRONG_DIR} is not here")
    t0, problems = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        handout(os.path.join(tmp, "handout"))
        works: queue.Queue = queue.Queue()
        for i in range(jobs):
            copy_tree(ROOT, os.path.join(tmp, f"solution{i}"), instructor=True)
            works.put(os.path.join(tmp, f"solution{i}"))
        originals = {rel: read(os.path.join(ROOT, rel)) for rel in source_files(ROOT)}
        tasks = [(EXERCISES[n], name, replace) for n in numbers if EXERCISES[n].tests
                 for name, replace in [("blank", None)] + wrong_solutions(ROOT, n) + [("solution", {})]]
        tasks += [(e, f"solution with the others blanked but its prerequisites ({', '.join(map(str, e.needs))})"
                   if e.needs else "solution with every other exercise blanked", ALONE)
                  for e in (EXERCISES[n] for n in numbers) if e.tests]
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for line, problem in pool.map(lambda task: grade_variant(works, originals, *task), tasks):
                print(line, flush=True)
                problems += [problem] if problem else []
    if problems:
        raise UserError("course check failed:\n  " + "\n  ".join(problems))
    print(f"course check passed: exercises {', '.join(map(str, numbers))}, {len(tasks)} variants, "
          f"in {time.perf_counter() - t0:.0f} s")


# ----------------------------------------------------------------------------- the command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("handout", help="write a blanked, history-free copy").add_argument("out_dir")
    sub.add_parser("grade", help="run the grading tests, print points").add_argument("exercise", nargs="?")
    sub.add_parser("reset", help="blank one exercise again").add_argument("exercise")
    checking = sub.add_parser("check", help="prove every grader right (CI)")
    checking.add_argument("exercise", nargs="?")
    checking.add_argument("--jobs", type=int, default=1, help="grader runs side by side (default 1)")
    args = parser.parse_args(argv)
    chosen = [exercise_number(args.exercise)] if getattr(args, "exercise", None) else list(EXERCISES)
    if args.command == "handout":
        handout(args.out_dir)
    elif args.command == "grade":
        if not grade(ROOT, chosen):
            sys.exit(1)
    elif args.command == "reset":
        print(f"exercise {chosen[0]}: {reset(ROOT, chosen[0])} region(s) blanked")
    elif args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    else:
        check(chosen, args.jobs)


if __name__ == "__main__":
    run_cli(main)
