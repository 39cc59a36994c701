"""The built-in synthetic task: instructions about a small made-up world, where loss over instructions matters."""
from __future__ import annotations

import math
import random

from runtime import UserError


ATTRIBUTES = {  # a small fixed world: every entity has one value of each attribute
    "color": "red blue green teal gold pink gray black white brown",
    "pet": "cat dog owl fox frog crab goat hawk mole newt",
    "city": "Rome Oslo Lima Cairo Paris Tokyo Delhi Quito Bern Kyiv",
    "food": "rice soup figs bread plums beans cake nuts corn kale",
    "tool": "saw axe drill rope pen hammer lamp key file vise",
    "sport": "golf chess polo judo rugby darts tennis rowing yoga squash",
    "drink": "tea milk cola juice cocoa water wine soda kefir mead",
    "gem": "ruby jade opal onyx pearl topaz amber beryl agate zircon",
}


def synthetic_world(n_entities: int, world_seed: int = 0) -> dict[tuple[str, str], str]:
    """(entity, attribute) -> value. Entity i is the same for any n_entities (a bigger world extends a smaller)."""
    if n_entities > 20000:  # the name space holds 24500 names
        raise UserError(f"a synthetic world of {n_entities} entities is too big (at most 20000)")
    rng, world = random.Random(world_seed), {}
    names: set[str] = set()
    while len(names) < n_entities:  # Kavo, Dorem, ...: two syllables and maybe a final consonant
        syllables = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(2))
        name = (syllables + rng.choice(["", "", "n", "r", "s", "l"])).capitalize()
        if name not in names:
            names.add(name)
            world.update({(name, a): rng.choice(values.split()) for a, values in ATTRIBUTES.items()})
    return world


def fact(key: tuple[str, str], world: dict) -> str:
    return f"{key[0]}'s {key[1]} is {world[key]}."


def draw(stream: list, keys: list, k: int, rng: random.Random, avoid: list | tuple = ()) -> list:
    """k distinct keys from a stream of shuffled rounds through all keys (so all are drawn equally often)."""
    out: list = []
    while len(out) < k:
        stream += [] if stream else rng.sample(keys, len(keys))
        if (key := stream.pop()) not in out and key not in avoid:
            out.append(key)
    return out


def synthetic_conversations(n: int, n_facts: int = 8, n_answers: int = 1, seed: int = 0, world_seed: int = 0,
                            n_entities: int | None = None) -> list[list[dict]]:
    """Instructions that state n_facts facts of a fixed world and ask for n_answers facts they do NOT state.

    user:      Kavo's pet is owl. Dorem's city is Oslo. ... Tell me Zade's color.
    assistant: teal.
    The world (world_seed) is shared by training and held-out examples. By default it has n * n_answers
    facts, so each fact is asked about once and a held-out answer was never an output in training: only the
    instructions of other examples state it (about n_facts / n_answers times per fact). Loss on instructions
    (IM) turns those statements into supervision; IT never trains on them. So instruction length (n_facts)
    sets how much IM can gain. Answers are checked by exact match. Deterministic for (seed, world_seed).
    The answer is the values alone ("teal, dog." for two): an answer that repeats "Zade's color is" must be
    copied from the prompt, which a tiny model learns slowly (measured: after 500 steps, 0/20 exact answers
    while it completed 7/20 held-out statements; with values alone, 2/20 under IM and 0/20 under IT).
    """
    if n_entities is None:
        n_entities = math.ceil(max(n * n_answers, n_facts + n_answers + 1) / len(ATTRIBUTES))
    world = synthetic_world(n_entities, world_seed)
    keys, rng, asked_stream, stated_stream, convs = list(world), random.Random(seed), [], [], []
    for _ in range(n):
        asked = draw(asked_stream, keys, n_answers, rng)
        stated = draw(stated_stream, keys, n_facts, rng, avoid=asked)
        question = " and ".join(f"{e}'s {a}" for e, a in asked)
        user = " ".join(fact(k, world) for k in stated) + f" Tell me {question}."
        convs.append([{"role": "user", "content": user},
                      {"role": "assistant", "content": ", ".join(world[k] for k in asked) + "."}])
    return convs
