"""Which conversations train and which are held out: a data file split by a seed, or the
built-in tasks' own splits.
"""
from __future__ import annotations

import numpy as np

from imgpt.cli import UserError
from imgpt.formats import load_conversations
from imgpt.synthetic import corpus_documents, probe_conversations, qa_split, synthetic_split, synthetic_world


def split_and_subsample(convs: list, val_size: float, num_examples: int, seed: int) -> tuple[list, list]:
    """(train, val): hold out val_size (a count, or a fraction if < 1) first, then keep num_examples (0 = all).

    The held-out set does not depend on num_examples, and smaller training sets are subsets of larger ones.
    """
    n = len(convs)
    n_val = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 <= n_val < n:
        raise UserError(f"val_size={val_size} leaves no training examples out of {n}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    val, train = perm[:n_val], perm[n_val:]
    if num_examples > len(train):
        raise UserError(f"num_examples={num_examples}, but only {len(train)} are left after holding out {n_val}")
    train = train[:num_examples] if num_examples > 0 else train
    return [convs[i] for i in sorted(train)], [convs[i] for i in sorted(val)]


# train.py's data settings and their defaults: the one place both train.py and eval.py turn them into a split
SYNTHETIC = ("synthetic", "synthetic-corpus", "synthetic-qa")  # the built-in tasks: from scratch; pretraining; tuning


WORLD_TASKS = SYNTHETIC[1:]  # the pretrained regime: a base learns the world from text, then is tuned on questions


SPLIT_DEFAULTS = dict(data="synthetic", format="", val_size=100, num_examples=0, seed=1337,
                      synth_examples=200, synth_heldout=40, synth_facts=8, synth_mentions=10, synth_keys=120,
                      synth_seed=0)


def load_split(settings: dict) -> tuple[list, list]:
    """(train, held-out) conversations from data settings (any others are ignored; missing ones take
    SPLIT_DEFAULTS). eval.py calls it with a checkpoint's saved config, so it scores exactly what training held out."""
    s = {**SPLIT_DEFAULTS, **{k: v for k, v in settings.items() if k in SPLIT_DEFAULTS}}
    if s["data"] in SYNTHETIC:  # their splits are part of the tasks: held-out questions ask about held-out keys
        if s["num_examples"]:
            raise UserError("--num_examples subsamples a data file; the synthetic tasks' is --synth_examples")
        if s["data"] == "synthetic-corpus":  # plain text stating the whole world; held out: the statement probe
            world = synthetic_world(s["synth_keys"])
            return [[{"role": "text", "content": d}] for d in corpus_documents(world, seed=s["synth_seed"])], \
                probe_conversations(world)
        if s["data"] == "synthetic-qa":
            return qa_split(s["synth_examples"], s["synth_heldout"], s["synth_facts"], s["synth_seed"],
                            n_keys=s["synth_keys"])
        return synthetic_split(s["synth_examples"], s["synth_heldout"], s["synth_facts"], s["synth_mentions"],
                               s["synth_seed"], n_keys=s["synth_keys"])
    convs = load_conversations(s["data"], s["format"] or None)
    return split_and_subsample(convs, s["val_size"], s["num_examples"], s["seed"])
