"""The course kit: hand out the exercises, grade them, and (instructors) prove that every grader catches what it
should. Run from the repository root:

    python -m scripts.course handout OUT_DIR   # a history-free copy, every exercise blanked, no instructor's file
    python -m scripts.course grade [N]         # run exercise N's graders (no N: every exercise), print the points
    python -m scripts.course reset N           # blank exercise N again here, keeping your code in course-backup/
    python -m scripts.course check [N] --jobs 2   # instructors, CI: the handout gives no solution away, and each
                                                  # grader fails on its blank and every recorded wrong solution,
                                                  # passes on the solution and on it with its needs alone

The exercises (which functions, their hints and docstrings, what each needs) are scripts/course/exercises.py;
how they are blanked and graded, scripts/course/kit.py; the instructor's part (the check, the recorded wrong
solutions, rubrics and reference numbers) is scripts/course/instructor/, which no handout carries.
"""
from __future__ import annotations

import argparse
import os
import sys

from imgpt.cli import UserError, run_cli
from scripts.course import kit
from scripts.course.exercises import EXERCISES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("handout", help="write a blanked, history-free copy").add_argument("out_dir")
    sub.add_parser("grade", help="run the grading tests, print points").add_argument("exercise", nargs="?")
    sub.add_parser("reset", help="blank one exercise again (your code is kept)").add_argument("exercise")
    checking = sub.add_parser("check", help="instructors: prove the handout and every grader right (CI)")
    checking.add_argument("exercise", nargs="?")
    checking.add_argument("--jobs", type=int, default=1, help="grader runs side by side (default 1)")
    args = parser.parse_args(argv)
    chosen = [kit.exercise_number(args.exercise)] if getattr(args, "exercise", None) else list(EXERCISES)
    if args.command == "handout":
        kit.handout(args.out_dir)
    elif args.command == "grade":
        if not kit.grade(kit.ROOT, chosen):
            sys.exit(1)
    elif args.command == "reset":
        backup = kit.reset(kit.ROOT, chosen[0])
        kept = f"; your code is in {backup}" if backup else " (it was blank already)"
        print(f"exercise {chosen[0]}: blanked again{kept}")
    elif args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    elif not os.path.isdir(os.path.join(kit.ROOT, kit.INSTRUCTOR)):
        raise UserError(f"check needs the instructor's part of the kit: {kit.INSTRUCTOR} is not here")
    else:
        from scripts.course.instructor.check import check  # not in a handout
        check(chosen, args.jobs)


if __name__ == "__main__":
    run_cli(main)
