"""The course kit (python -m scripts.course): the handout holds no solution line, reset keeps a backup, grade
talks in one line, check catches a grader that lets a wrong solution through. The full `check` (every grader on
every variant) is its own CI step; the instructor's part, this file included, never reaches a handout."""
import ast
import os
import re
import subprocess
import sys

import pytest

from imgpt.cli import UserError
from scripts.course import kit
from scripts.course.exercises import EXERCISES
from scripts.course.instructor import check

ROOT = kit.ROOT
STORY = ["model.py", "data.py", "loss.py", "metrics.py", "train.py", "eval.py", "sample.py"]


def run(args: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.course", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.fixture(scope="module")
def handout(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("course") / "handout")
    kit.handout(out)
    return out


def test_the_handout_holds_no_solution_line_of_any_exercise(handout):
    """Every exercise's solution lines (the reference bodies, and the docstrings the handout replaces), searched
    for in every file of the handout: none found."""
    secrets = {n: check.solution_lines(ROOT, n) for n, e in EXERCISES.items() if e.code}
    assert sum(map(len, secrets.values())) > 50 and all(secrets.values()), secrets
    assert "return (ce + kl_coef * kl) * (world / divisor) * (0.0 if dummy else 1.0)" in secrets[2]
    assert "return torch.nonzero(weights.reshape(-1)).squeeze(1)" in secrets[4]  # exercise 4: the whole answer
    assert any("several_after_cache" in line for line in secrets[3])  # the issue-26 case of exercise 3
    assert any(line.startswith("IT  0 ") for line in secrets[1])  # data.py's docstring: exercise 1's weight table
    assert check.leaks(handout) == {n: [] for n in secrets}


def test_the_leak_search_finds_a_solution_line_planted_anywhere(tmp_path):
    """The search is not vacuous: exercise 8's answer pasted into a doc page, and exercise 4's into a test
    helper, are both found."""
    out = str(tmp_path / "handout")
    kit.handout(out)
    line8 = check.solution_lines(ROOT, 8)[-1]
    with open(os.path.join(out, "docs", "assignments.md"), "a", encoding="utf-8") as f:
        f.write(f"\n    {line8}\n")
    with open(os.path.join(out, "tests", "test_model.py"), "a", encoding="utf-8") as f:
        f.write("\n\ndef helper(weights):\n    return torch.nonzero(weights.reshape(-1)).squeeze(1)\n")
    found = check.leaks(out)
    assert found[8] == [f"docs/assignments.md: {line8}"] and found[4] == [
        "tests/test_model.py: return torch.nonzero(weights.reshape(-1)).squeeze(1)"], found
    assert not any(found[n] for n in found if n not in (4, 8))


def test_the_handout_blanks_each_exercise_and_leaves_the_instructors_part_out(handout):
    files = kit.tree_files(handout)
    assert not any(p.startswith((".git/", kit.INSTRUCTOR)) or "__pycache__" in p for p in files)
    assert "tests/test_course.py" not in files and "docs/assignments.md" in files
    assert {"scripts/course/__main__.py", "scripts/course/kit.py", "scripts/course/exercises.py"} <= set(files)
    for n, e in EXERCISES.items():  # every code exercise's functions are blank and say where to read on
        for b in e.code:
            lines = kit.read(os.path.join(handout, b.file))
            assert kit.is_blank(lines, n, b), (n, b.function)
            assert f'raise NotImplementedError("Exercise {n}: ' in kit.function_source(lines, b.function, b.file)
    assert [n for n, e in EXERCISES.items() if not e.code] == [7]  # written only
    assert [n for n, e in EXERCISES.items() if e.code and e.written] == [8]  # code and written
    for rel in files:  # the blanked tree is still Python
        if rel.endswith(".py"):
            ast.parse(open(os.path.join(handout, rel), encoding="utf-8").read(), rel)


def test_the_solution_has_no_course_marker_and_every_named_function_is_solved():
    """The story files carry no trace of the course: the kit names whole functions (exercises.py)."""
    for rel in STORY + [p for p in kit.tree_files(ROOT) if p.startswith(("imgpt/", "scripts/")) and p.endswith(".py")
                        and not p.startswith("scripts/course/")]:
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        assert not re.search(r"BEGIN SOLUTION|END SOLUTION|HANDOUT DOCSTRING", text), rel
    for n, e in EXERCISES.items():
        for b in e.code:
            assert not kit.is_blank(kit.read(os.path.join(ROOT, b.file)), n, b), (n, b.function)


def test_handout_holds_the_tracked_files_only_never_a_virtualenv_out_or_user_files(tmp_path):
    """A checkout where the quick start made .venv and train.py made out/, plus a user's notes, caches and a
    reset's backup: the handout holds what git tracks (less the instructor's part), in git and in a copy without
    .git alike; and it lists which exercises are code and which written."""
    work = tmp_path / "checkout"
    kit.copy_tree(ROOT, str(work), instructor=True)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    tracked = set(kit.tree_files(str(work)))
    made = {".venv/pyvenv.cfg": "home = /usr/bin\n", ".venv/lib/site-packages/pkg/solution.py": "x = 1\n",
            "venv2/pyvenv.cfg": "home = /usr/bin\n", "venv2/lib/mod.py": "y = 2\n", "out/ckpt.pt": "weights",
            "out/log.jsonl": "{}\n", "__pycache__/model.cpython-311.pyc": "bytes", "notes.txt": "my answers\n",
            "scripts/my_try.py": "print(1)\n", "course-backup/ex3-20260101-000000.py": "# my code\n"}
    for rel, text in made.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    r = run(["handout", str(tmp_path / "handout")], cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert "code (autograded): 1, 2, 3, 4, 5, 6; written (graded by hand): 7; code and written: 8" in r.stdout
    files = set(kit.tree_files(str(tmp_path / "handout")))
    assert files == {p for p in tracked if not p.startswith(kit.INSTRUCTOR_ONLY)} and len(files) > 40
    subprocess.run(["rm", "-rf", str(work / ".git")], check=True)  # a copy without git: .gitignore and venvs decide
    r = run(["handout", str(tmp_path / "handout2")], cwd=str(work))
    assert r.returncode == 0, r.stderr
    files = set(kit.tree_files(str(tmp_path / "handout2")))
    assert not [p for p in files if p.startswith((".venv", "venv2", "out", "__pycache__", "course-backup"))], files
    assert files >= {p for p in tracked if not p.startswith(kit.INSTRUCTOR_ONLY)}


def test_reset_keeps_a_backup_and_grade_says_blank_and_needs_in_one_line(tmp_path):
    """reset 1 saves the code it blanks; grade 1 then says "still blank" and grade 5 (which needs 1) "needs
    exercise 1, still blank", each in one line, no test run, no traceback, no test names."""
    kit.copy_tree(ROOT, str(tmp_path), instructor=False)
    r = run(["reset", "1"], cwd=str(tmp_path))
    backups = os.listdir(tmp_path / kit.BACKUPS)
    assert r.returncode == 0 and f"your code is in {kit.BACKUPS}/{backups[0]}" in r.stdout and len(backups) == 1
    saved = (tmp_path / kit.BACKUPS / backups[0]).read_text()
    assert "# data.py: loss_weights" in saved and check.solution_lines(ROOT, 1)[0] in saved
    assert kit.is_blank(kit.read(str(tmp_path / "data.py")), 1, EXERCISES[1].code[0])
    assert (tmp_path / "model.py").read_text() == open(os.path.join(ROOT, "model.py")).read()  # exercise 1 only
    r = run(["reset", "1"], cwd=str(tmp_path))
    assert "it was blank already" in r.stdout and len(os.listdir(tmp_path / kit.BACKUPS)) == 1
    r = run(["grade", "1"], cwd=str(tmp_path))
    assert r.returncode == 1 and r.stdout.strip() == (
        "exercise 1, the loss weights: 0/10 (still blank: write data.py: loss_weights)"), r.stdout
    r = run(["grade", "5"], cwd=str(tmp_path))
    assert r.returncode == 1 and r.stdout.strip() == (
        "exercise 5, block-diagonal attention: 0/15 (needs exercise 1, still blank)"), r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_grade_reports_a_wrong_solution_without_pytest_noise(tmp_path):
    """A recorded wrong solution of exercise 6 in place: grade 6 prints the graders' own messages, without
    pytest's introspection ("Use -v to get more diff", "where <built-in method ...>"), and one summary line that
    names the first failure."""
    kit.copy_tree(ROOT, str(tmp_path), instructor=False)
    (name, replace), = [w for w in check.wrong_solutions(6) if w[0] == "ex6_ties_by_total_logprob"]
    check.apply_variant(str(tmp_path), {}, 6, replace)
    r = run(["grade", "6"], cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout[-2000:]
    assert "Use -v to get more diff" not in r.stdout and "<built-in method" not in r.stdout
    assert "the first of them" in r.stdout  # the grader's message: which rule the choice broke
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"exercise 6, acc vs acc_norm: 0/10 \(\d+ tests? fails?; first: test_\w+.*\)", last), last


def test_check_flags_every_variant_its_grader_gets_wrong(monkeypatch, capsys):
    """check's bookkeeping, fast: a stand-in grader that passes everything, and records what it was given. The
    blank and each wrong solution must then be problems, the solution and the solution with every other exercise
    blanked not. (The real graders run in CI's `check --jobs 2`, and in the grade tests above.)"""
    seen, others_blank = [], []

    def passes_everything(root, exercise, files, stop_first):
        lines = kit.read(os.path.join(root, "imgpt", "benchmarks.py"))
        seen.append(kit.function_source(lines, "pick_acc_norm", "imgpt/benchmarks.py"))
        others_blank.append(kit.still_blank(root, 5))
        assert files == ["tests/test_eval.py"]  # found by the mark, once
        return True, [], ""

    monkeypatch.setattr(kit, "run_graders", passes_everything)
    monkeypatch.setattr(check, "find_graders", lambda root: {6: ["tests/test_eval.py"]})
    with pytest.raises(UserError) as e:
        check.check([6], jobs=2)
    wrong = [name for name, _ in check.wrong_solutions(6)]
    assert str(e.value).splitlines()[1:] == [f"  exercise 6: the grader passes on {v}" for v in ["blank"] + wrong]
    assert len(seen) == len(wrong) + 3 and sum('NotImplementedError("Exercise 6' in c for c in seen) == 1
    assert others_blank == [False] * (len(wrong) + 2) + [True]  # last: exercise 6 alone (it needs no other)
    assert sum(".encode()" in c for c in seen) == 1  # ex6_bytes was in place when its grader ran
    out = capsys.readouterr().out
    assert "ex6 handout: 1 solution lines searched, 0 found" in out
    assert "ex6 solution: PASSES" in out and "ex6 solution with every other exercise blanked: PASSES" in out


def test_graders_are_found_by_their_mark_wherever_they_live():
    found = check.find_graders(ROOT)
    assert set(found) == {n for n, e in EXERCISES.items() if e.code}, found
    assert "tests/test_generation.py" in found[3] and "tests/test_model.py" in found[4]


def test_wrong_solutions_replace_functions_that_exist_and_compile():
    recorded = {name for n in EXERCISES for name, _ in check.wrong_solutions(n)}
    issue_12_table = {"ex3_positions_ignore_padding", "ex3_mask_offset_plus_one", "ex3_mask_offset_minus_one",
                      "ex3_cache_never_advances", "ex5_ignores_start", "ex5_padding_sees_nothing", "ex6_bytes",
                      "ex6_last_on_ties"}
    issue_20_table = {"ex2_forgets_norm", "ex2_kl_not_normalized", "ex2_kl_coef_ignored",
                      "ex3_window_keeps_first_tokens", "ex3_window_one_short", "ex5_real_queries_see_padding",
                      "ex6_ties_by_total_logprob", "ex6_float16", "ex6_empty_choice_unguarded"}
    issue_26_table = {"ex3_no_mask_after_cache_unpadded", "ex4_bool_mask", "ex4_column_major",
                      "ex4_only_full_weights", "ex4_two_dim_indices"}
    assert issue_12_table | issue_20_table | issue_26_table <= recorded  # check proves each one caught
    assert len(recorded) >= 34
    for n, e in EXERCISES.items():
        named = {(b.file, b.function) for b in e.code}
        for name, replace in check.wrong_solutions(n):
            assert replace and set(replace) <= named, (name, set(replace) - named)
            for (rel, function), spec in replace.items():
                lines = kit.read(os.path.join(ROOT, rel))
                code = check.wrong_function(lines, function, spec, rel)
                text = "".join(kit.replace_function(lines, function, code, rel))
                compile(text, f"{name}: {rel}", "exec")
                assert text != open(os.path.join(ROOT, rel), encoding="utf-8").read(), name


def test_assignments_table_and_order_follow_the_declared_prerequisites():
    """docs/assignments.md's "needs" column is exercises.py's (check proves each grader needs no more), and the
    recommended order puts every exercise after those it needs."""
    with open(os.path.join(ROOT, "docs", "assignments.md"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\| (\d) \| [^|]+ \| [^|]+ \| ([-\d, ]+) \| [^|]+ \|$", text, re.M)
    table = {int(n): () if needs.strip() == "-" else tuple(int(x) for x in needs.split(",")) for n, needs in rows}
    assert table == {n: e.needs for n, e in EXERCISES.items()}, table
    order = [int(x) for x in re.search(r"in the order \*\*([\d, ]+)\*\*", text).group(1).split(",")]
    assert sorted(order) == sorted(EXERCISES), order
    for i, n in enumerate(order):
        assert set(EXERCISES[n].needs) <= set(order[:i]), (n, EXERCISES[n].needs, order[:i])


def test_bad_input_is_one_line(tmp_path):
    r = run(["reset", "9"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no exercise '9'" in r.stderr
    r = run(["reset", "7"])
    assert r.returncode == 2 and "exercise 7 is written only" in r.stderr
    (tmp_path / "keep.txt").write_text("mine")
    r = run(["handout", str(tmp_path)])
    assert r.returncode == 2 and "exists and is not empty" in r.stderr and os.listdir(tmp_path) == ["keep.txt"]
    with pytest.raises(UserError, match=r"model.py: no function GPT.nope"):
        kit.find_function(kit.read(os.path.join(ROOT, "model.py")), "GPT.nope", "model.py")
