"""What the kit does to a tree: find an exercise's functions, blank them, hand the blanked copy out, grade it.

Functions are found by their qualified name in the parsed file (ast), never by marker lines: the story files
carry no trace of the course. A blank is the function's signature, the docstring exercises.py gives it and
`raise NotImplementedError("Exercise N: hint (docs/assignments.md)")`.
"""
from __future__ import annotations

import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

from imgpt.cli import UserError
from scripts.course.exercises import EXERCISES, Blank, Exercise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The instructor's part: the check, wrong solutions, rubrics and reference numbers, and the kit's own tests. Never in
# the handout.
INSTRUCTOR = "scripts/course/instructor/"
INSTRUCTOR_ONLY = (INSTRUCTOR, "tests/test_course.py", ".ci/")
BACKUPS = "course-backup"  # where `reset` keeps the code it blanks (in .gitignore: a handout never carries it)
BLANK_RAISE = re.compile(r"^\s*raise NotImplementedError\(\s*\"Exercise (\d+): ")


# ----------------------------------------------------------------------------- functions in a source file

def read(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def find_function(lines: list[str], function: str, where: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The node of `function` ("name" or "Class.name") in a file's lines; a missing one is an error naming both."""
    scope: list[ast.stmt] = ast.parse("".join(lines), where).body
    node = None
    for part in function.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise UserError(f"{where}: no function {function} (the course kit's exercises.py names it)")
        scope = node.body
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise UserError(f"{where}: {function} is a class, not a function")
    return node


def docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def docstring_lines(text: str, indent: str) -> list[str]:
    """A docstring's source lines at an indent: one line if the text is one line, else closed on its own line."""
    head, *rest = text.split("\n")
    if not rest:
        return [f'{indent}"""{head}"""\n']
    return [f'{indent}"""{head}\n'] + [f"{indent}{t}".rstrip() + "\n" for t in rest] + [f'{indent}"""\n']


def raise_lines(number: int, hint: str, indent: str) -> list[str]:
    """raise NotImplementedError("Exercise N: hint ..."), the message wrapped to stay within 120 columns."""
    message = f"Exercise {number}: {hint} (docs/assignments.md)".replace('"', "'")
    head = f"{indent}raise NotImplementedError("
    quoted = [f'"{part}"' for part in textwrap.wrap(message, 116 - len(head), drop_whitespace=False)]
    return [head + "\n".join([quoted[0]] + [" " * len(head) + q for q in quoted[1:]]) + ")\n"]


def body_indent(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    first = lines[node.body[0].lineno - 1]
    return first[:len(first) - len(first.lstrip())]


def blank_function(lines: list[str], number: int, blank: Blank) -> list[str]:
    """The file's lines with `blank.function`'s body replaced by its handout docstring and the raise."""
    node = find_function(lines, blank.function, blank.file)
    indent = body_indent(lines, node)
    body = docstring_lines(blank.docstring, indent) + raise_lines(number, blank.hint, indent)
    return relined(lines[:node.body[0].lineno - 1] + body + lines[node.end_lineno:])


def relined(parts: list[str]) -> list[str]:
    """One line per item again (a wrapped raise is one item of several lines): line numbers stay list indices."""
    return "".join(parts).splitlines(True)


def replace_docstring(lines: list[str], function: str, text: str, where: str) -> list[str]:
    """The file's lines with the docstring of `function` ("" = the module) replaced by `text`."""
    node = find_function(lines, function, where) if function else ast.parse("".join(lines), where)
    doc = docstring_node(node)
    if doc is None:
        raise UserError(f"{where}: {function or 'the module'} has no docstring to replace")
    indent = body_indent(lines, node) if function else ""
    return relined(lines[:doc.lineno - 1] + docstring_lines(text, indent) + lines[doc.end_lineno:])


def replace_function(lines: list[str], function: str, code: str, where: str) -> list[str]:
    """The file's lines with the whole of `function` (from `def`, decorators kept) replaced by `code`, a def
    written at any indent: a recorded wrong solution goes in this way."""
    node = find_function(lines, function, where)
    def_line = lines[node.lineno - 1]
    indent = def_line[:len(def_line) - len(def_line.lstrip())]
    new = [indent + line + "\n" if line.strip() else "\n" for line in textwrap.dedent(code).strip("\n").split("\n")]
    return relined(lines[:node.lineno - 1] + new + lines[node.end_lineno:])


def function_source(lines: list[str], function: str, where: str) -> str:
    node = find_function(lines, function, where)
    return "".join(lines[node.lineno - 1:node.end_lineno])


def is_blank(lines: list[str], number: int, blank: Blank) -> bool:
    """Whether the function still holds the handout's blank: its body, past the docstring, raises Exercise N."""
    node = find_function(lines, blank.function, blank.file)
    body = node.body[1:] if docstring_node(node) else node.body
    return len(body) == 1 and bool(BLANK_RAISE.match(lines[body[0].lineno - 1])) and \
        BLANK_RAISE.match(lines[body[0].lineno - 1]).group(1) == str(number)


def blank_exercise(root: str, number: int) -> list[str]:
    """Blank exercise `number` in the tree at root (and replace the docstrings it names); returns the changed
    files."""
    e, changed = EXERCISES[number], []
    for rel in sorted({b.file for b in e.code} | {d.file for d in e.docstrings}):
        path = os.path.join(root, rel)
        lines = new = read(path)
        for b in (b for b in e.code if b.file == rel):
            new = blank_function(new, number, b)
        for d in (d for d in e.docstrings if d.file == rel):
            new = replace_docstring(new, d.function, d.text, rel)
        if new != lines:
            write(path, new)
            changed.append(rel)
    return changed


def blank_functions(root: str, number: int) -> list[Blank]:
    """The functions of exercise `number` that still hold the handout's blank in the tree at root."""
    return [b for b in EXERCISES[number].code if is_blank(read(os.path.join(root, b.file)), number, b)]


def still_blank(root: str, number: int) -> bool:
    return bool(blank_functions(root, number))


# ----------------------------------------------------------------------------- trees of files

def tree_files(root: str) -> list[str]:
    """The project's files, relative to root with /: what git tracks, never what a user made in the checkout (a
    virtualenv, out/, caches, notes). Outside git (a copy of a handout): every file but those .gitignore names,
    and virtualenvs under any name."""
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
        files += [os.path.relpath(os.path.join(d, name), root).replace(os.sep, "/") for name in names
                  if not is_ignored(name, ignored)]
    return sorted(files)


def ignore_patterns(root: str) -> list[str]:
    """The name patterns of root's .gitignore (`name/` for directories only)."""
    path = os.path.join(root, ".gitignore")
    lines = open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else []
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))]


def is_ignored(name: str, patterns: list[str]) -> bool:
    """Whether a file name (a directory's ends with /) matches one of .gitignore's patterns."""
    is_dir = name.endswith("/")
    return any(fnmatch.fnmatch(name.rstrip("/"), p.strip("/")) for p in patterns if is_dir or not p.endswith("/"))


def copy_tree(src: str, dst: str, instructor: bool) -> None:
    for rel in tree_files(src):
        if not instructor and rel.startswith(INSTRUCTOR_ONLY):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))


# ----------------------------------------------------------------------------- handout and reset

def exercise_number(text: str) -> int:
    if not text.isdigit() or int(text) not in EXERCISES:
        raise UserError(f"no exercise {text!r}: choose from {', '.join(map(str, EXERCISES))}")
    return int(text)


def kinds() -> str:
    """Which exercises are code (autograded), which written (graded by hand), which both."""
    code = [n for n, e in EXERCISES.items() if e.code and not e.written]
    written = [n for n, e in EXERCISES.items() if e.written and not e.code]
    both = [n for n, e in EXERCISES.items() if e.written and e.code]
    return (f"code (autograded): {', '.join(map(str, code))}; written (graded by hand): "
            f"{', '.join(map(str, written))}; code and written: {', '.join(map(str, both))}")


def handout(out_dir: str, src: str = ROOT) -> None:
    """A history-free copy with every exercise blanked and no instructor's file; built beside out_dir, then
    renamed: never half-written."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not empty; give a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".handout-", dir=parent)
    try:
        copy_tree(src, tmp, instructor=False)
        for n in EXERCISES:
            blank_exercise(tmp, n)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote the handout to {out_dir}: {len(tree_files(out_dir))} files, the instructor's part left out.\n"
          f"Exercises: {kinds()}. Its docs/assignments.md is the students' sheet.")


def reset(root: str, number: int) -> str | None:
    """Blank exercise `number` again in root, first saving its functions as they are now (the student's code)
    to course-backup/exN-<time>.py; returns that backup's path (None when every function was blank already)."""
    e = EXERCISES[number]
    if not e.code:
        raise UserError(f"exercise {number} is written only: nothing to reset")
    saved = [f"# {b.file}: {b.function}\n{function_source(read(os.path.join(root, b.file)), b.function, b.file)}"
             for b in e.code if not is_blank(read(os.path.join(root, b.file)), number, b)]
    backup = None
    if saved:
        os.makedirs(os.path.join(root, BACKUPS), exist_ok=True)
        backup = os.path.join(BACKUPS, f"ex{number}-{time.strftime('%Y%m%d-%H%M%S')}.py")
        while os.path.exists(os.path.join(root, backup)):  # two resets in one second: keep both
            backup = backup[:-3] + "-again.py"
        with open(os.path.join(root, backup), "w", encoding="utf-8") as f:
            f.write(f"# Exercise {number} as it was before `reset {number}`; copy back what you want to keep.\n\n"
                    + "\n\n".join(saved))
    blank_exercise(root, number)
    return backup


# ----------------------------------------------------------------------------- grading

def run_graders(root: str, exercise: Exercise, files: list[str] | None = None,
                stop_first: bool = False) -> tuple[bool, list[str], str]:
    """Run the tests marked exN in root (in `files` if given, else wherever they are under tests/): (all passed,
    one line per failed test: its name and its message's first line, pytest's report)."""
    flags = ["-x", "--tb=line"] if stop_first else ["--tb=short"]
    # --assert=plain: a failing assert shows the message the grader wrote, not pytest's introspection of it
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--assert=plain", "-rN", *flags,
           "-m", f"ex{exercise.number}", *(files or ["tests"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    if r.returncode == 5:
        raise UserError(f"exercise {exercise.number}: no test marked ex{exercise.number} under tests/")
    if r.returncode not in (0, 1):
        raise UserError(f"exercise {exercise.number}: pytest could not run ({' '.join(cmd[2:])}):\n{out[-2000:]}")
    return r.returncode == 0, failures(out), out


def failures(out: str) -> list[str]:
    """One line per failed test of a pytest report: `test_name: the first line of what it said`."""
    found = []
    for m in re.finditer(r"^_{3,} (\S+) _{3,}$(.*?)(?=^_{3,} |^=+ |\Z)", out, re.M | re.S):
        said = [line[1:].strip() for line in m.group(2).splitlines() if line.startswith("E ")]
        found.append(f"{m.group(1).split('.')[-1]}: {said[0] if said else '?'}")
    for line in out.splitlines():  # --tb=line: "path:line: Error: message", the test's name not shown
        if re.match(r"^\S+\.py:\d+: ", line):
            found.append(line.split(": ", 1)[1])
    return found


def grade(root: str, numbers: list[int]) -> bool:
    """Print the points of each exercise: all of them when every grading test passes, else none; a blank
    exercise, or one whose prerequisite is blank, says so in one line and runs nothing."""
    earned = auto = 0
    blank = {n for n, e in EXERCISES.items() if e.code and still_blank(root, n)}
    for n in numbers:
        e = EXERCISES[n]
        if not e.code:
            print(f"exercise {n}, {e.title}: written, graded by hand ({e.points} points)")
            continue
        auto += e.points
        head = f"exercise {n}, {e.title}: "
        if n in blank:
            where = ", ".join(f"{b.file}: {b.function}" for b in blank_functions(root, n))
            print(f"{head}0/{e.points} (still blank: write {where})")
            continue
        waiting = sorted(set(e.needs) & blank)
        if waiting:
            print(f"{head}0/{e.points} (needs exercise{'s' * (len(waiting) > 1)} "
                  f"{', '.join(map(str, waiting))}, still blank)")
            continue
        ok, failed, out = run_graders(root, e)
        if len(numbers) == 1 and not ok:
            print(out.rstrip())
        earned += e.points if ok else 0
        status = "all tests pass" if ok else f"{len(failed)} test{'s' * (len(failed) > 1)} fail; first: {failed[0]}"
        if e.written:
            status += "; the written part is graded by hand"
        print(f"{head}{e.points if ok else 0}/{e.points} ({status})")
    if len(numbers) > 1:
        print(f"total: {earned}/{auto} autograded points")
    return earned == auto
