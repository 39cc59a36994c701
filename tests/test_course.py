"""scripts/course.py: the handout holds no solution, reset and grade work on a tree, check catches a grader that
lets a wrong solution through. The full `course.py check` (53 grader runs) is its own CI step."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import course  # noqa: E402
from imgpt.cli import UserError  # noqa: E402


def solution_lines() -> set[str]:
    """Code lines that exist only inside solution regions or answer-giving docstrings: what must not leak."""
    inside, outside = set(), set()
    for rel in course.source_files(ROOT):
        lines = course.read(os.path.join(ROOT, rel))
        secret = {i for r in course.find_regions(lines, rel) for i in range(r.begin + 1, r.end)}
        for i, line in enumerate(lines):
            if course.DOCSTRING.match(line) and not course.DOCSTRING.match(lines[i + 1]):  # the last marker line
                secret |= set(range(i + 1, course.docstring_end(lines, i + 1) + 1))
        for i, line in enumerate(lines):
            (inside if i in secret else outside).add(line.strip())
            if m := course.DOCSTRING.match(line):
                outside.add((m.group(3) or "").strip())  # what the handout's docstring says instead is public
    return {line for line in inside - outside if len(line) >= 12 and not line.startswith(("#", '"""'))}


def run(args: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/course.py", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_handout_has_no_solution_text_no_history_and_no_instructor_files(tmp_path):
    course.handout(str(tmp_path / "handout"))
    secrets = solution_lines()
    assert len(secrets) > 20  # the regions of 7 exercises, and two docstrings of exercise 2
    assert "loss = (ce + kl_coef * kl) * (world / divisor) * (0.0 if b is None else 1.0)  # ...with zero gradients" \
        in secrets
    assert any(line.startswith("IT  0 ") for line in secrets)  # data.py's docstring: the weight table of exercise 1
    files = course.tree_files(str(tmp_path / "handout"))
    for rel in files:
        with open(tmp_path / "handout" / rel, encoding="utf-8", errors="replace") as f:
            text = f.read()
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{rel} gives solutions away: {leaked[:3]}"
    assert not any(p.startswith((".git" + os.sep, course.WRONG_DIR)) or "__pycache__" in p for p in files)
    assert "tests/test_course.py" not in files and "docs/assignments.md" in files
    for n, e in course.EXERCISES.items():  # every autograded exercise is blanked, and says where to read on
        blanks = [line for rel in course.source_files(str(tmp_path / "handout"))
                  for line in course.read(str(tmp_path / "handout" / rel)) if f'"Exercise {n}: ' in line]
        assert bool(blanks) == bool(e.tests), (n, blanks)


def test_handout_holds_the_tracked_files_only_never_a_virtualenv_out_or_user_files(tmp_path):
    """A checkout where the quick start made .venv and train.py made out/, plus a user's notes and caches: the
    handout holds what git tracks (less the instructor's files), in git and in a copy without .git alike."""
    work = tmp_path / "checkout"
    course.copy_tree(ROOT, str(work), instructor=True)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    tracked = set(course.tree_files(str(work)))
    made = {".venv/pyvenv.cfg": "home = /usr/bin\n", ".venv/lib/site-packages/pkg/solution.py": "x = 1\n",
            "venv2/pyvenv.cfg": "home = /usr/bin\n", "venv2/lib/mod.py": "y = 2\n", "out/ckpt.pt": "weights",
            "out/log.jsonl": "{}\n", "__pycache__/model.cpython-311.pyc": "bytes", "notes.txt": "my answers\n",
            "scripts/my_try.py": "print(1)\n"}
    for rel, text in made.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    r = run(["handout", str(tmp_path / "handout")], cwd=str(work))
    assert r.returncode == 0, r.stderr
    files = set(course.tree_files(str(tmp_path / "handout")))
    assert files == {p for p in tracked if not p.startswith(course.INSTRUCTOR_ONLY)} and len(files) > 40
    subprocess.run(["rm", "-rf", str(work / ".git")], check=True)  # a copy without git: .gitignore and venvs decide
    r = run(["handout", str(tmp_path / "handout2")], cwd=str(work))
    assert r.returncode == 0, r.stderr
    files = set(course.tree_files(str(tmp_path / "handout2")))
    assert not [p for p in files if p.startswith((".venv", "venv2", "out", "__pycache__"))], sorted(files)
    assert files >= {p for p in tracked if not p.startswith(course.INSTRUCTOR_ONLY)}


def test_reset_blanks_one_exercise_and_grade_scores_it(tmp_path):
    course.copy_tree(ROOT, str(tmp_path), instructor=True)
    r = run(["reset", "6"], cwd=str(tmp_path))
    assert r.returncode == 0 and "exercise 6: 1 region(s) blanked" in r.stdout
    assert 'raise NotImplementedError("Exercise 6: ' in (tmp_path / "imgpt" / "benchmarks.py").read_text()
    assert (tmp_path / "model.py").read_text() == open(os.path.join(ROOT, "model.py")).read()  # only exercise 6
    r = run(["grade", "6"], cwd=str(tmp_path))
    assert r.returncode == 1 and "exercise 6, acc vs acc_norm: 0/10 (16 failing: " in r.stdout, r.stdout[-2000:]
    assert "total:" not in r.stdout  # one exercise: its own line is the total
    assert "NotImplementedError: Exercise 6" in r.stdout  # grade N shows pytest's report: the hint and the line


def test_check_flags_every_variant_its_grader_gets_wrong(monkeypatch, capsys):
    """check's bookkeeping, fast: a stand-in grader that passes everything, and reports what it was given. The
    blank and each wrong solution must then be problems, the solution and the solution with every other exercise
    blanked not. (The real graders run in CI's `course.py check --jobs 2`, and in the grade test above.)"""
    seen, others_blank = [], []

    def passes_everything(root, exercise, stop_first):
        code = "".join(r for r in course.read(os.path.join(root, "imgpt", "benchmarks.py")) if "return" in r or "raise" in r)
        seen.append(code)
        others_blank.append('NotImplementedError("Exercise 5' in "".join(course.read(os.path.join(root, "model.py"))))
        return True, [], ""

    monkeypatch.setattr(course, "run_grader", passes_everything)
    with pytest.raises(UserError) as e:
        course.check([6], jobs=2)
    wrong = [name for name, _ in course.wrong_solutions(ROOT, 6)]
    assert str(e.value).splitlines()[1:] == [f"  exercise 6: the grader passes on {v}" for v in ["blank"] + wrong]
    assert len(seen) == len(wrong) + 3 and sum('NotImplementedError("Exercise 6' in c for c in seen) == 1
    assert others_blank == [False] * (len(wrong) + 2) + [True]  # last: exercise 6 alone (it needs no other)
    assert sum(".encode()" in c for c in seen) == 1  # ex6_bytes was in place when its grader ran
    out = capsys.readouterr().out
    assert "ex6 solution: PASSES" in out and "ex6 solution with every other exercise blanked: PASSES" in out


def test_regions_wrong_solutions_and_bad_input():
    found = [r.exercise for r in course.find_regions(course.read(os.path.join(ROOT, "model.py")), "model.py")]
    assert sorted(found) == [3, 3, 3, 4, 4, 5], found
    recorded = {name for n in course.EXERCISES for name, _ in course.wrong_solutions(ROOT, n)}
    issue_12_table = {"ex3_positions_ignore_padding", "ex3_mask_offset_plus_one", "ex3_mask_offset_minus_one",
                      "ex3_cache_never_advances", "ex4_head_then_index", "ex4_select_by_target", "ex5_ignores_start",
                      "ex5_padding_sees_nothing", "ex6_bytes", "ex6_last_on_ties"}
    issue_20_table = {"ex2_forgets_norm", "ex2_kl_not_normalized", "ex2_kl_coef_ignored",
                      "ex3_window_keeps_first_tokens", "ex3_window_one_short", "ex4_skips_whatever_skip_zero_says",
                      "ex5_real_queries_see_padding", "ex6_ties_by_total_logprob", "ex6_float16",
                      "ex6_empty_choice_unguarded"}
    assert issue_12_table | issue_20_table <= recorded, (issue_12_table | issue_20_table) - recorded  # check: caught
    assert course.EXERCISES[7].tests == ()  # written: graded by the rubric, never "passes with no work"
    for n in course.EXERCISES:  # every wrong solution names a region that exists, compiles, keeps the markers
        for name, replace in course.wrong_solutions(ROOT, n):
            for (rel, k), code in replace.items():
                lines = course.read(os.path.join(ROOT, rel))
                mine = [r for r in course.find_regions(lines, rel) if r.exercise == n]
                assert 1 <= k <= len(mine), (name, rel, k)
                text = "".join(course.replace_regions(lines, rel, n, {k: course.indented(code, mine[k - 1].indent)}))
                compile(text, f"{name}: {rel}", "exec")
                wrong = text.splitlines(True)  # as the file reads back
                assert len(course.find_regions(wrong, rel)) == len(course.find_regions(lines, rel)), name
    with pytest.raises(UserError, match=r"x.py:3: BEGIN SOLUTION without an END SOLUTION"):
        course.find_regions(["a\n", "b\n", "    # BEGIN SOLUTION ex1: hint\n", "c\n"], "x.py")
    with pytest.raises(UserError, match=r"x.py:1: END SOLUTION without a BEGIN"):
        course.find_regions(["# END SOLUTION\n"], "x.py")
    r = run(["reset", "9"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no exercise '9'" in r.stderr


def test_assignments_table_and_order_follow_the_declared_prerequisites():
    """docs/assignments.md's "needs" column is course.py's (check proves each grader needs no more), and the
    recommended order puts every exercise after those it needs."""
    with open(os.path.join(ROOT, "docs", "assignments.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\| (\d) \| [^|]+ \| [^|]+ \| ([-\d, ]+) \| [^|]+ \|$", text, re.M)
    table = {int(n): () if needs.strip() == "-" else tuple(int(x) for x in needs.split(",")) for n, needs in rows}
    assert table == {n: e.needs for n, e in course.EXERCISES.items()}, table
    order = [int(x) for x in re.search(r"in the order \*\*([\d, ]+)\*\*", text).group(1).split(",")]
    assert sorted(order) == sorted(course.EXERCISES), order
    for i, n in enumerate(order):
        assert set(course.EXERCISES[n].needs) <= set(order[:i]), (n, course.EXERCISES[n].needs, order[:i])


def test_handout_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = run(["handout", str(tmp_path)])
    assert r.returncode == 2 and "exists and is not empty" in r.stderr and os.listdir(tmp_path) == ["keep.txt"]
