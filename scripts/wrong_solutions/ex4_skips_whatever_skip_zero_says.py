"""Zero-weight positions skipped whatever skip_zero says: the loss is the same, but --no-skip_zero (bench_train's
baseline, the head on every position) silently stops being a baseline."""
REPLACE = {("model.py", 2): """
    select = weights != 0
"""}
