"""The course kit (python -m scripts.course): exercises.py names the exercises, kit.py blanks and grades them,
instructor/ holds what students never get. See __main__.py for the commands."""
