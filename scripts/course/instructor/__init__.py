"""The instructor's part of the course kit: the check, the recorded wrong solutions, the rubrics and reference
numbers. No handout carries this folder (kit.INSTRUCTOR_ONLY)."""
