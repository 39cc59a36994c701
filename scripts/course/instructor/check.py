"""The course check (instructors, CI): the handout gives no solution away, and every grader is right.

1. The handout: for each exercise, the solution lines (the non-trivial lines of the reference bodies of its
   functions, and of the docstrings the handout replaces because they say the answer) are searched for in every
   file of a fresh handout; none may be found.
2. The graders: each exercise's graders (the tests marked exN, found by collecting tests/ once) run in a copy of
   the solution where only that exercise is blank, or holds one recorded wrong solution (wrong_solutions/, one
   module per mistake), and must fail; on the solution they must pass; and they must pass where only the exercise
   and the ones it needs are solved, every other exercise blank (the recommended order works).
"""
from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import queue
import re
import runpy
import subprocess
import sys
import tempfile
import textwrap
import time

from imgpt.cli import UserError
from scripts.course import kit
from scripts.course.exercises import EXERCISES, Exercise

WRONG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrong_solutions")
SHORTEST_SECRET = 12  # characters: shorter lines (`return x`, `else:`) say nothing an exercise could give away
# Lines of a reference body that the code around the exercise holds too, so that the handout must keep them; each
# is named here, so that any other line found in the handout is a leak.
SHARED = {3: ("for block in self.transformer.h:",  # GPT.forward's loop over the blocks
              "if cache is not None:")}  # CausalSelfAttention.forward's test for a cache


# ----------------------------------------------------------------------------- 1. the handout gives nothing away

def solution_lines(root: str, number: int) -> list[str]:
    """The lines of exercise `number`'s reference bodies that would give it away, stripped and with trailing
    comments cut (docstring, comments, lines under SHORTEST_SECRET characters and SHARED lines left out): what no
    handout may hold."""
    found, e = [], EXERCISES[number]
    for b in e.code:
        lines = kit.read(os.path.join(root, b.file))
        node = kit.find_function(lines, b.function, b.file)
        doc = kit.docstring_node(node)
        for line in lines[(doc.end_lineno if doc else node.body[0].lineno - 1):node.end_lineno]:
            code = re.sub(r"\s+#.*$", "", line).strip()
            if len(code) >= SHORTEST_SECRET and not code.startswith("#") and code not in SHARED.get(number, ()):
                found.append(code)
    for d in e.docstrings:  # the docstrings the handout replaces because they say the answer
        lines = kit.read(os.path.join(root, d.file))
        doc = kit.docstring_node(kit.find_function(lines, d.function, d.file) if d.function else
                                 ast.parse("".join(lines)))
        kept = {line.strip() for line in d.text.splitlines()}  # what the handout says too is no secret
        found += [line.strip() for line in doc.value.value.splitlines()
                  if len(line.strip()) >= SHORTEST_SECRET and line.strip() not in kept]
    return found


def leaks(handout_dir: str, root: str = kit.ROOT) -> dict[int, list[str]]:
    """{exercise: ["file: line", ...]} for every solution line found anywhere in the handout (every file)."""
    texts = {}
    for rel in kit.tree_files(handout_dir):
        with open(os.path.join(handout_dir, rel), encoding="utf-8", errors="replace") as f:
            texts[rel] = f.read()
    return {n: [f"{rel}: {line}" for line in solution_lines(root, n) for rel, text in texts.items() if line in text]
            for n, e in EXERCISES.items() if e.code}


# ----------------------------------------------------------------------------- 2. every grader is right

def find_graders(root: str) -> dict[int, list[str]]:
    """{exercise: the test files holding tests marked exN}, from one collection of tests/ (wherever they live)."""
    collect = ("import json, sys, pytest\n"
               "class Marks:\n"
               "    def pytest_collection_finish(self, session):\n"
               "        found = {(m.name, i.nodeid.split('::')[0]) for i in session.items for m in i.iter_markers()}\n"
               "        print('MARKS ' + json.dumps(sorted(found)))\n"
               "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests'], plugins=[Marks()]))")
    r = subprocess.run([sys.executable, "-c", collect], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    line = next((line for line in r.stdout.splitlines() if line.startswith("MARKS ")), None)
    if r.returncode != 0 or line is None:
        raise UserError(f"could not collect tests/ to find the graders:\n{(r.stdout + r.stderr)[-2000:]}")
    files: dict[int, list[str]] = {}
    for mark, path in json.loads(line[len("MARKS "):]):
        if m := re.fullmatch(r"ex(\d+)", mark):
            files.setdefault(int(m.group(1)), []).append(path)
    return files


def wrong_solutions(number: int) -> list[tuple[str, dict[tuple[str, str], str | list[tuple[str, str]]]]]:
    """(name, {(file, function): the whole wrong function, or edits of the solution's}) of each recorded wrong
    solution of an exercise (wrong_solutions/README.md)."""
    out = []
    for name in sorted(os.listdir(WRONG_DIR)):
        if name.startswith(f"ex{number}_") and name.endswith(".py"):
            out.append((name[:-3], runpy.run_path(os.path.join(WRONG_DIR, name))["REPLACE"]))
    return out


BLANK, ALONE = "blank", "alone"  # the variants that are not code: blank it; blank every other but its needs


def apply_variant(work: str, originals: dict[str, list[str]], number: int, variant) -> None:
    """Restore the solution, then blank the exercise (BLANK), blank every other exercise but its needs (ALONE), or
    put a wrong solution's functions in ({(file, function): code})."""
    for rel, lines in originals.items():
        kit.write(os.path.join(work, rel), lines)
    if variant in (BLANK, ALONE):
        keep = {number, *EXERCISES[number].needs} if variant == ALONE else set(EXERCISES) - {number}
        for n in sorted(set(EXERCISES) - keep):
            kit.blank_exercise(work, n)
        return
    for (rel, function), spec in variant.items():
        path = os.path.join(work, rel)
        lines = kit.read(path)
        kit.write(path, kit.replace_function(lines, function, wrong_function(lines, function, spec, rel), rel))


def wrong_function(lines: list[str], function: str, spec: str | list[tuple[str, str]], where: str) -> str:
    """The whole wrong function: `spec` itself, or the solution's function with spec's edits made, each (what
    the solution says, what the mistake says instead) found exactly once."""
    if isinstance(spec, str):
        return spec
    source = textwrap.dedent(kit.function_source(lines, function, where))
    for old, new in spec:
        if source.count(old) != 1:
            raise UserError(f"{where}: {function}: a wrong solution edits {old!r}, which the solution holds "
                            f"{source.count(old)} times, not once")
        source = source.replace(old, new)
    return source


def grade_variant(works: queue.Queue, originals: dict[str, list[str]], exercise: Exercise, files: list[str],
                  name: str, variant) -> tuple[str, str | None]:
    """Grade one variant of one exercise in a free copy of the solution: (its report line, a problem or None)."""
    work, t0 = works.get(), time.perf_counter()
    try:
        apply_variant(work, originals, exercise.number, variant)
        ok, failed, _ = kit.run_graders(work, exercise, files, stop_first=True)
    finally:
        works.put(work)
    expected = name.startswith("solution")
    verdict = "PASSES" if ok else f"FAILS\n      {(failed or ['?'])[0][:300]}"
    line = f"  ex{exercise.number} {name}: {verdict} ({time.perf_counter() - t0:.1f} s)"
    problem = f"exercise {exercise.number}: the grader {'fails' if expected else 'passes'} on {name}"
    return line, None if ok == expected else problem


def variants(numbers: list[int]) -> list[tuple[Exercise, str, object]]:
    tasks = []
    for e in (EXERCISES[n] for n in numbers if EXERCISES[n].code):
        tasks += [(e, BLANK, BLANK)] + [(e, *w) for w in wrong_solutions(e.number)] + [(e, "solution", {})]
    for e in (EXERCISES[n] for n in numbers if EXERCISES[n].code):
        alone = f"but its needs ({', '.join(map(str, e.needs))})" if e.needs else "exercise"
        tasks.append((e, f"solution with every other {alone} blanked", ALONE))
    return tasks


def check(numbers: list[int], jobs: int = 1) -> None:
    """Build a handout and search it for every solution line; then grade every variant of every exercise, `jobs`
    copies of the solution side by side."""
    t0, problems = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        kit.handout(os.path.join(tmp, "handout"))
        found = leaks(os.path.join(tmp, "handout"))
        for n in numbers:
            if EXERCISES[n].code:
                print(f"  ex{n} handout: {len(solution_lines(kit.ROOT, n))} solution lines searched, "
                      f"{len(found[n])} found{': ' + '; '.join(found[n][:3]) if found[n] else ''}")
                problems += [f"exercise {n}: the handout gives away {line}" for line in found[n]]
        graders = find_graders(kit.ROOT)
        missing = [n for n in numbers if EXERCISES[n].code and n not in graders]
        if missing:
            raise UserError(f"no test marked ex{missing[0]} under tests/: exercise {missing[0]} has no grader")
        works: queue.Queue = queue.Queue()
        for i in range(jobs):
            kit.copy_tree(kit.ROOT, os.path.join(tmp, f"solution{i}"), instructor=True)
            works.put(os.path.join(tmp, f"solution{i}"))
        edited = {f for e in EXERCISES.values() for f in [b.file for b in e.code] + [d.file for d in e.docstrings]}
        originals = {rel: kit.read(os.path.join(kit.ROOT, rel)) for rel in sorted(edited)}
        tasks = variants(numbers)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for line, problem in pool.map(lambda t: grade_variant(works, originals, t[0], graders[t[0].number],
                                                                  t[1], t[2]), tasks):
                print(line, flush=True)
                problems += [problem] if problem else []
    if problems:
        raise UserError("course check failed:\n  " + "\n  ".join(problems))
    print(f"course check passed: exercises {', '.join(map(str, numbers))}: the handout searched for "
          f"{sum(len(solution_lines(kit.ROOT, n)) for n in numbers if EXERCISES[n].code)} solution lines, none found; "
          f"{len(tasks)} grader variants, in {time.perf_counter() - t0:.0f} s")
