"""The built-in task: recall facts of a small made-up world, where loss over instructions decides the outcome.

A world maps keys (a letter and a digit; 120 by default, at most 260) to made-up four-letter words. Every
instruction states a few facts and then asks for one more, written as a statement cut just before its value:

    user:      L1=bugo, S6=bodo, R5=zilo, V2=tira, I5=bupi, S1=nage, M1=pibi, J8=dugi, D6=
    assistant: kote

The keys are split once. Training examples ask about training keys; held-out examples ask about the other keys,
so no training *answer* ever gives a held-out value. Training *instructions* state each held-out fact a fixed
number of times (`mentions`), in exactly the form the question takes ("D6=kote"). IT puts no loss on
instructions and cannot learn those values: its held-out exact match is 0 by construction, and what it can
show is how well it learned the format and how much it memorized. IM trains on every statement, so it can
recall them when asked. That is one of the two ways IM helps, extra supervision from facts the instructions
state; the other, the paper's, is less overfitting of the few answers (see README).

The question has the statements' surface form on purpose: a question phrased differently from the statements
("Tell me Y3's value.") asks a tiny model to carry knowledge across phrasings, which small models learn poorly
(Allen-Zhu & Li, "Physics of Language Models 3.1"), and such a task shows little of either mechanism.

The knobs hold what they do not name fixed: more training examples add questions about training keys and
statements of training facts only (every held-out fact is still stated `mentions` times); more facts per
instruction lengthen the instructions without changing what is asked.
"""
from __future__ import annotations

import itertools
import random
import string
from typing import Iterator

from imgpt.cli import UserError

N_KEYS = 260  # a letter and a digit: A0 ... Z9
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def synthetic_world(n_keys: int = N_KEYS, world_seed: int = 0) -> dict[str, str]:
    """key -> value for n_keys keys, values distinct made-up words (consonant-vowel-consonant-vowel)."""
    if not 2 <= n_keys <= N_KEYS:
        raise UserError(f"--synth_keys must be between 2 and {N_KEYS}, got {n_keys}")
    rng = random.Random(world_seed)
    keys = rng.sample([letter + digit for letter in string.ascii_uppercase for digit in string.digits], n_keys)
    words = [a + b + c + d for a in CONSONANTS for b in VOWELS for c in CONSONANTS for d in VOWELS]
    return dict(zip(keys, rng.sample(words, n_keys)))


def split_keys(world: dict[str, str], n_heldout: int, world_seed: int = 0) -> tuple[list[str], list[str]]:
    """(training keys, held-out keys): a fixed split of the world, the same for any number of examples."""
    if not 1 <= n_heldout < len(world):
        raise UserError(f"--synth_heldout must be between 1 and {len(world) - 1}, got {n_heldout}")
    keys = random.Random(world_seed + 1).sample(sorted(world), len(world))
    return keys[n_heldout:], keys[:n_heldout]


def instruction(stated: list[str], asked: str, world: dict[str, str]) -> str:
    """'S9=tami, Y2=bosi, Y3=': the stated facts, then the asked key as a statement without its value."""
    return ", ".join([f"{k}={world[k]}" for k in stated] + [f"{asked}="])


def conversation(stated: list[str], asked: str, world: dict[str, str]) -> list[dict]:
    return [{"role": "user", "content": instruction(stated, asked, world)},
            {"role": "assistant", "content": world[asked]}]


def deal_mentions(heldout: list[str], mentions: int, n_train: int, n_facts: int,
                  rng: random.Random) -> list[list[str]]:
    """Each held-out key `mentions` times over the n_train instructions: dealt round-robin in shuffled rounds,
    never twice into one instruction, at most n_facts into one."""
    if len(heldout) * mentions > n_train * n_facts or mentions > n_train:
        raise UserError(f"--synth_mentions {mentions}: {len(heldout)} held-out facts x {mentions} mentions do not "
                        f"fit in {n_train} training instructions of {n_facts} facts")
    dealt: list[list[str]] = [[] for _ in range(n_train)]
    order, at = rng.sample(range(n_train), n_train), 0
    for key in (k for _ in range(mentions) for k in rng.sample(heldout, len(heldout))):
        for _ in range(n_train):  # the next instruction in the round that lacks this key and has room
            if key not in dealt[order[at % n_train]] and len(dealt[order[at % n_train]]) < n_facts:
                break
            at += 1
        else:
            raise UserError(f"--synth_mentions {mentions}: no room left to state {key} again; lower it")
        dealt[order[at % n_train]].append(key)
        at += 1
    return dealt


def stated_keys(dealt: list[str], stream: Iterator[str], n_facts: int, asked: str, rng: random.Random) -> list[str]:
    """One instruction's stated keys: its dealt held-out keys, then distinct training keys from the stream."""
    stated = list(dealt)
    while len(stated) < n_facts:
        key = next(stream)
        if key != asked and key not in stated:
            stated.append(key)
    rng.shuffle(stated)
    return stated


def endless(keys: list[str], rng: random.Random) -> Iterator[str]:
    """Keys in shuffled rounds through all of them, so that each is drawn equally often (within one)."""
    while True:
        yield from rng.sample(keys, len(keys))


def synthetic_split(n_train: int = 200, n_heldout: int = 40, n_facts: int = 8, mentions: int = 10, seed: int = 0,
                    world_seed: int = 0, n_keys: int = 120) -> tuple[list[list[dict]], list[list[dict]]]:
    """(training, held-out) conversations. Deterministic for (seed, world_seed).

    Training example i asks about a training key (each asked equally often) and states n_facts facts: its share
    of the held-out mentions, the rest training facts. Held-out example j asks about held-out key j and states
    n_facts other facts of the world (any split).
    """
    if n_train < 1 or n_facts < 1:
        raise UserError(f"--synth_examples and --synth_facts must be >= 1, got {n_train} and {n_facts}")
    world = synthetic_world(n_keys, world_seed)
    train_keys, heldout = split_keys(world, n_heldout, world_seed)
    # one random stream per part, so a knob changes only its own part: the questions asked in training do not
    # depend on n_facts or mentions, and the held-out examples depend on n_facts alone
    asked = list(itertools.islice(endless(train_keys, random.Random(f"asked-{seed}")), n_train))  # n_train=50 asks the first 50 of 200
    rng = random.Random(f"stated-{seed}")
    dealt = deal_mentions(heldout, mentions, n_train, n_facts, rng)
    stream = endless(train_keys, rng)
    train = [conversation(stated_keys(d, stream, n_facts, a, rng), a, world) for d, a in zip(dealt, asked)]
    val_rng = random.Random(f"heldout-{seed}")
    everything = endless(sorted(world), val_rng)
    val = [conversation(stated_keys([], everything, n_facts, k, val_rng), k, world) for k in heldout]
    return train, val


# ----------------------------------------------------------------------------- the pretrained regime
# The paper tunes a model that already knows the world. Here a base model first learns every fact of the world from
# plain text (`corpus_documents`, python train.py --data synthetic-corpus), then a few instruction examples teach it
# to answer questions (`qa_split`, --data synthetic-qa --init_from that base). The held-out questions ask about facts
# the base knows but no instruction example asked about, and no instruction states: IM can gain nothing there from
# extra supervision, only from how the tuning changes what the base already knows.

STATEMENTS = ("{k}={v}", "{k} is {v}", "the value of {k} is {v}", "Q: What is {k}?\nA: {k} is {v}")  # in the corpus
QUESTION = "Q: What is {k}?"  # how an instruction asks: the corpus's question (as on a FAQ page)
ANSWER = "{k} is {v}"  # how an answer replies: the corpus's answer


def corpus_documents(world: dict[str, str], repeats: int = 16, per_doc: int = 12, seed: int = 0) -> list[str]:
    """Plain-text documents stating every fact of the world in every phrasing `repeats` times, one statement per
    line, 1 to `per_doc` to a document, in shuffled order: each fact is stated in many places and contexts, so that
    a model learns the fact rather than where it stood."""
    rng = random.Random(f"corpus-{seed}")
    lines = [s.format(k=k, v=v) for _ in range(repeats) for k, v in world.items() for s in STATEMENTS]
    rng.shuffle(lines)
    docs, at = [], 0
    while at < len(lines):
        n = rng.randint(1, per_doc)
        docs.append("\n".join(lines[at:at + n]))
        at += n
    return docs


def probe_conversations(world: dict[str, str], keys: list[str] | None = None,
                        lines_before: int = 0) -> list[list[dict]]:
    """The statement probe: plain text "D6=" to complete with "kote" (no template; `context` is weight-0 text).
    With lines_before, after that many statements of other facts ("P0=lula\n..."): does the knowledge hold deep
    into a context, where an instruction's question stands?"""
    rng = random.Random(f"probe-{lines_before}")
    return [[{"role": "context", "content": "".join(f"{c}={world[c]}\n" for c in
                                                    rng.sample([c for c in sorted(world) if c != k], lines_before))
              + f"{k}="}, {"role": "text", "content": world[k]}]
            for k in (keys if keys is not None else sorted(world))]


def qa_split(n_train: int = 40, n_heldout: int = 40, n_facts: int = 8, seed: int = 0, world_seed: int = 0,
             n_keys: int = 120) -> tuple[list[list[dict]], list[list[dict]]]:
    """(training, held-out) question-answering conversations about the world, for tuning a base that knows it:

        user:      P0=lula\nO7=daku\nB8=funu\nH2=mesa\nQ9=bafi\nH7=peti\nZ2=beme\nG1=guti\nQ: What is D6?
        assistant: D6 is kote

    Training questions ask about training keys, held-out ones about the held-out keys; every instruction states
    n_facts training facts (none held out, none asked). The same key split as `synthetic_split`."""
    if n_train < 1 or n_facts < 0:
        raise UserError(f"--synth_examples must be >= 1 and --synth_facts >= 0, got {n_train} and {n_facts}")
    world = synthetic_world(n_keys, world_seed)
    train_keys, heldout = split_keys(world, n_heldout, world_seed)
    if n_facts >= len(train_keys):
        raise UserError(f"--synth_facts {n_facts}: only {len(train_keys)} training facts to state")

    def ask(key: str, rng: random.Random) -> list[dict]:
        stated = rng.sample([k for k in train_keys if k != key], n_facts)
        context = "".join(f"{k}={world[k]}\n" for k in stated)  # one statement a line, as in the corpus
        return [{"role": "user", "content": context + QUESTION.format(k=key)},
                {"role": "assistant", "content": ANSWER.format(k=key, v=world[key])}]

    asked = list(itertools.islice(endless(train_keys, random.Random(f"asked-{seed}")), n_train))
    rng, val_rng = random.Random(f"qa-stated-{seed}"), random.Random(f"qa-heldout-{seed}")
    return [ask(k, rng) for k in asked], [ask(k, val_rng) for k in heldout]
