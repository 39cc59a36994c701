"""Programs around the story, one folder per audience; run each from the repository root as a module:

    python -m scripts.experiments.compare     # experiments/: IT vs IM, the paper's factors, budgets, reports
    python -m scripts.bench.bench_train       # bench/: speed and memory against a reference in the same process
    python -m scripts.course grade            # course/: the course kit (handout, grade, reset; check for instructors)
    python -m scripts.maint.mutate --list     # maint/: maintainer tools (do the promise tests catch a broken line?)
    python -m scripts.tools.export --ckpt out --out_dir hf-out   # tools/: a user's tools (Hugging Face export)
"""
