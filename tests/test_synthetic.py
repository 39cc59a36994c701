"""imgpt/synthetic.py: the built-in task's format, its fixed split, and the knobs that hold everything else fixed."""
import re
from collections import Counter

import pytest

from imgpt import synthetic
from imgpt.cli import UserError

FACT = r"[A-Z][0-9]=[a-z]{4}"


def stated(conv: list[dict]) -> list[tuple[str, str]]:
    """The (key, value) facts an instruction states, without the asked key at its end."""
    return [tuple(f.split("=")) for f in conv[0]["content"].split(", ")[:-1]]


def asked(conv: list[dict]) -> str:
    return conv[0]["content"].split(", ")[-1].removesuffix("=")


def mention_counts(train: list, keys: list[str]) -> dict[str, int]:
    counts = Counter(k for conv in train for k, _ in stated(conv))
    return {k: counts[k] for k in keys}


def test_world_is_fixed_and_values_distinct():
    world = synthetic.synthetic_world()
    assert len(world) == 260 and len(set(world.values())) == 260
    assert all(re.fullmatch(r"[A-Z][0-9]", k) and re.fullmatch(r"[a-z]{4}", v) for k, v in world.items())
    assert world == synthetic.synthetic_world() != synthetic.synthetic_world(world_seed=1)
    assert len(synthetic.synthetic_world(120)) == 120


def test_format_question_is_a_statement_cut_before_its_value():
    world = synthetic.synthetic_world(120)  # the default world
    train, val = synthetic.synthetic_split(200, 40, 8, 10)
    for conv in train + val:
        assert re.fullmatch(rf"({FACT}, ){{8}}[A-Z][0-9]=", conv[0]["content"]), conv[0]["content"]
        facts = stated(conv)
        assert all(world[k] == v for k, v in facts)  # every statement is true
        assert len({k for k, _ in facts}) == 8 and asked(conv) not in dict(facts)  # the answer is never in view
        assert conv[1] == {"role": "assistant", "content": world[asked(conv)]}
    assert (train, val) == synthetic.synthetic_split(200, 40, 8, 10)  # deterministic
    assert train != synthetic.synthetic_split(200, 60, 8, 6, seed=1)[0]


def test_heldout_values_are_stated_in_training_instructions_but_never_answered():
    """IT cannot know a held-out answer (no training output gives it); IM can (instructions state it)."""
    train, val = synthetic.synthetic_split(200, 40, 8, 10)
    heldout = [asked(c) for c in val]
    assert len(set(heldout)) == 40
    assert not set(heldout) & {asked(c) for c in train}
    assert {c[1]["content"] for c in val}.isdisjoint(c[1]["content"] for c in train)
    assert set(mention_counts(train, heldout).values()) == {10}


@pytest.mark.parametrize("n_train", [50, 60, 100, 400])
def test_more_examples_add_training_facts_only(n_train):
    """The examples sweep: the world, the held-out set and how often each held-out fact is stated stay fixed; the
    training questions of a smaller set are the first ones of a bigger set."""
    base_train, base_val = synthetic.synthetic_split(200, 40, 8, 10)
    train, val = synthetic.synthetic_split(n_train, 40, 8, 10)
    assert val == base_val
    heldout = [asked(c) for c in val]
    assert set(mention_counts(train, heldout).values()) == {10}
    shared = min(n_train, 200)  # (200 examples ask each of the 80 training keys 2 or 3 times)
    assert [asked(c) for c in train[:shared]] == [asked(c) for c in base_train[:shared]]
    counts = Counter(asked(c) for c in train)  # training keys asked equally often, within one
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n_facts,mentions", [(1, 1), (2, 2), (4, 5)])
def test_instruction_length_changes_without_changing_what_is_asked(n_facts, mentions):
    base_train, base_val = synthetic.synthetic_split(200, 40, 8, 10)
    train, val = synthetic.synthetic_split(200, 40, n_facts, mentions)
    assert [asked(c) for c in train] == [asked(c) for c in base_train]
    assert [c[1] for c in train] == [c[1] for c in base_train] and [c[1] for c in val] == [c[1] for c in base_val]
    assert all(len(stated(c)) == n_facts for c in train + val)
    assert set(mention_counts(train, [asked(c) for c in val]).values()) == {mentions}


def test_knobs_that_cannot_fit_are_refused_with_the_flag_name():
    with pytest.raises(UserError, match="--synth_mentions 4: 60 held-out facts x 4 mentions do not fit in 50"):
        synthetic.synthetic_split(50, 60, 4, 4)
    with pytest.raises(UserError, match="--synth_heldout"):
        synthetic.synthetic_split(200, 260, 8, 1)
    with pytest.raises(UserError, match="--synth_keys"):
        synthetic.synthetic_world(300)
    with pytest.raises(UserError, match="--synth_examples and --synth_facts"):
        synthetic.synthetic_split(0, 60, 8, 1)
