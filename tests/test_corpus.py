"""Plain text and the pretrained regime: documents cut into windows with every token learned once; a corpus that
states every fact of the world; the statement probe; the question-answering split tuned from a base."""
import json
import os
import re
from collections import Counter

import pytest
import torch

import data
import train as T
from data import ASSISTANT, EOT, USER
from imgpt import formats, synthetic
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import UserError
from imgpt.tokenizers import byte_tokenizer
from metrics import exact_match_rate

TOK = byte_tokenizer()
TEXT = "The first paragraph is here.\nIt has two lines.\n\n\nThe second one is a little longer than the first one is."


def write(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def text_file(tmp_path) -> str:
    return write(tmp_path / "corpus.txt", "\n\n".join(f"Document {i}: " + "word " * (3 + 7 * i) for i in range(12)))


# ----------------------------------------------------------------------------- plain text: windows, weights 1

def test_txt_paragraphs_and_jsonl_text_fields_are_documents(tmp_path):
    txt = formats.load_conversations(write(tmp_path / "a.txt", TEXT))
    assert txt == [[{"role": "text", "content": "The first paragraph is here.\nIt has two lines."}],
                   [{"role": "text", "content": TEXT.split("\n\n\n")[1]}]]
    jsonl = write(tmp_path / "a.jsonl", "\n".join(json.dumps({"text": t}) for t in TEXT.split("\n\n\n")))
    assert formats.load_conversations(jsonl) == [[{"role": "text", "content": t}] for t in TEXT.split("\n\n\n")]


@pytest.mark.parametrize("content, message", [
    ("\n\n  \n", r"empty.txt: no text"),
    ('{"text": "fine"}\n{"text": 5}\n', r"empty.txt:2: field 'text' must be a string, got int"),
    (b"caf\xe9", r"empty.txt:1: not UTF-8 text")])
def test_bad_text_files_name_the_file_line_and_field(tmp_path, content, message):
    path = tmp_path / ("empty.txt" if isinstance(content, bytes) or "{" not in content else "empty.jsonl")
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(formats.DataError, match=message.replace("empty.txt", path.name)):
        formats.load_conversations(str(path))


@pytest.mark.parametrize("max_len", [2, 3, 7, 16, 1000])
def test_documents_are_windows_in_which_every_token_is_learned_once_with_weight_1(max_len):
    docs = [[{"role": "text", "content": t}] for t in TEXT.split("\n\n\n")]
    examples, stats = data.encode_dataset(docs, TOK, max_len, 0.0)
    stream = [TOK.encode_ordinary(d[0]["content"]) + [TOK.eot_token] for d in docs]
    assert all(len(e.ids) <= max_len for e in examples)
    for plw in (0.0, 1.0):  # IT and IM alike: a document is all output
        targets = []  # (token, weight) of every predicted position, in order
        for e in examples:
            w = data.loss_weights(e.segs, plw)
            assert w[0] == 0 and all(x == 1.0 for x in w[1:])
            targets += list(zip(e.ids[1:], w[1:]))
        # each document's tokens after its first, each exactly once: windows overlap by one token, lose none
        assert [t for t, _ in targets] == [t for doc in stream for t in doc[1:]]
    assert stats["output_tokens"] == sum(map(len, stream)) and stats["dropped"] == 0
    assert examples[0].segs[-1] == (EOT if max_len >= len(stream[0]) else ASSISTANT)
    assert sum(len(e.ids) - 1 for e in examples) == sum(len(s) - 1 for s in stream)


def test_a_document_ends_with_end_of_text_wherever_it_is_encoded():
    """data.py show (encode_example) and training (encode_dataset) see the same tokens: the text, then EOT."""
    doc = [{"role": "text", "content": "Some text."}]
    ids, weights = data.encode_example(doc, TOK, 0.0)
    assert ids == TOK.encode_ordinary("Some text.") + [TOK.eot_token] and weights == [0.0] + [1.0] * 10
    (example,), _ = data.encode_dataset([doc], TOK, None, 0.0)
    assert example.ids == ids


def test_windows_overlap_by_exactly_one_token():
    ids = list(range(10))
    cut = data.windows(ids, [ASSISTANT] * 10, 4)
    assert [w for w, _ in cut] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [w for w, _ in data.windows(ids[:9], [ASSISTANT] * 9, 4)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8]]
    assert data.windows(ids, [ASSISTANT] * 10, 10) == [(ids, [ASSISTANT] * 10)]


def text_run(data_path: str, out_dir: str, **kw) -> T.TrainConfig:
    base = dict(out_dir=out_dir, data=data_path, val_size=3, n_layer=2, n_head=2, n_embd=32, block_size=16,
                batch_size=4, micro_batch_size=4, max_steps=6, lr=1e-3, eval_interval=3, eval_examples=0, train_eval_size=4, seed=0,
                dropout=0.1, device="cpu", threads=1)
    return T.TrainConfig(**{**base, **kw})


def test_plain_text_trains_evaluates_and_resumes_exactly(tmp_path):
    """A .txt corpus longer than the context: windows; held-out loss per token; 4 steps + resume + 2 = 6 steps."""
    corpus = text_file(tmp_path)
    full = T.train(text_run(corpus, str(tmp_path / "full")))
    log = [r["eval"] for r in map(json.loads, open(tmp_path / "full" / "log.jsonl")) if "eval" in r]
    assert [r["step"] for r in log] == [0, 3, 6]
    assert log[-1]["val_output_loss"] < log[0]["val_output_loss"]  # every held-out token is an output token
    assert full["steps"] == 6
    T.train(text_run(corpus, str(tmp_path / "part"), stop_step=4))
    T.train(T.TrainConfig(init_from="resume", out_dir=str(tmp_path / "part")))
    a = load_checkpoint(str(tmp_path / "full" / "ckpt.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "part" / "ckpt.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the corpus and the probe

def test_corpus_states_every_fact_in_every_phrasing_repeatedly():
    world = synthetic.synthetic_world(120)
    docs = synthetic.corpus_documents(world, repeats=3, per_doc=5)
    statements = lambda doc: doc.replace("\nA: ", " A: ").split("\n")  # a question and its answer are one
    lines = [s.replace(" A: ", "\nA: ") for d in docs for s in statements(d)]
    assert {len(statements(d)) for d in docs} == {1, 2, 3, 4, 5}  # documents of every size up to per_doc
    assert Counter(lines) == Counter({s.format(k=k, v=v): 3 for k, v in world.items() for s in synthetic.STATEMENTS})
    assert len(set(docs)) > len(docs) * 0.9  # shuffled: not the same documents over and over
    assert docs == synthetic.corpus_documents(world, repeats=3, per_doc=5)


def test_probe_prompts_a_statement_and_expects_its_value():
    world = {"A1": "bodo", "B2": "kite"}
    probe = synthetic.probe_conversations(world)
    (ex, *_), _ = data.encode_dataset(probe, TOK, 100, 0.0)
    assert TOK.decode(ex.ids) == "A1=bodo" and ex.segs == [USER] * 3 + [ASSISTANT] * 4
    assert data.prompt_ids(probe[0], TOK) == TOK.encode_ordinary("A1=")
    assert data.loss_weights(ex.segs, 0.0)[3:] == [1.0] * 4  # the value is the scored output


def test_probe_deep_in_a_context_states_other_true_facts_first():
    world = synthetic.synthetic_world(30)
    for conv in synthetic.probe_conversations(world, lines_before=8):
        *before, asked = conv[0]["content"].split("\n")
        key = asked.removesuffix("=")
        facts = [line.split("=") for line in before]
        assert len(facts) == 8 and all(world[k] == v and k != key for k, v in facts)
        assert conv[1]["content"] == world[key]


class Knows(torch.nn.Module):
    """A stand-in model that completes "K=" with its own idea of K's value (then keeps talking)."""

    def __init__(self, beliefs: dict[str, str]):
        super().__init__()
        self.beliefs = beliefs

    def generate(self, prompts, max_new_tokens, eos_id=None):
        out = []
        for p in prompts:
            key = TOK.decode(p).removesuffix("=")
            out.append(TOK.encode_ordinary(self.beliefs.get(key, "") + "\nZ9=")[:max_new_tokens])
        return out


def test_probe_exact_match_on_a_hand_made_model():
    world = {"A1": "bodo", "B2": "kite", "C3": "mura", "D4": "sela"}
    examples, _ = data.encode_dataset(synthetic.probe_conversations(world), TOK, 100, 0.0)
    beliefs = {"A1": "bodo", "B2": "kito", "C3": "mura"}  # one wrong value, one fact unknown
    assert exact_match_rate(Knows(beliefs), examples, 3, TOK.eot_token) == 0.5
    assert exact_match_rate(Knows(world), examples, 3, TOK.eot_token) == 1.0
    assert exact_match_rate(Knows({k: v[:3] for k, v in world.items()}), examples, 3, TOK.eot_token) == 0.0


def test_load_split_gives_the_corpus_and_the_probe_of_the_whole_world():
    train, probe = formats.load_split({"data": "synthetic-corpus", "synth_keys": 30})
    world = synthetic.synthetic_world(30)
    assert all(formats.is_document(d) for d in train) and len(probe) == 30
    assert {c[0]["content"][:-1]: c[1]["content"] for c in probe} == world


# ----------------------------------------------------------------------------- tuning from the base: questions

QA = re.compile(r"((?:[A-Z][0-9]=[a-z]{4}\n)*)Q: What is ([A-Z][0-9])\?")


def test_qa_split_asks_known_facts_and_holds_out_keys_never_asked_or_stated():
    world = synthetic.synthetic_world(120)
    train_keys, heldout = synthetic.split_keys(world, 40)
    train, val = synthetic.qa_split(60, 40, 6)
    assert len(train) == 60 and [QA.fullmatch(c[0]["content"])[2] for c in val] == heldout
    for conv in train + val:
        m = QA.fullmatch(conv[0]["content"])
        key, facts = m[2], re.findall(r"([A-Z][0-9])=([a-z]{4})", conv[0]["content"])
        assert conv[1]["content"] == f"{key} is {world[key]}" and len(facts) == 6
        assert all(world[k] == v and k in train_keys and k != key for k, v in facts)  # only training facts stated
    assert {QA.fullmatch(c[0]["content"])[2] for c in train} <= set(train_keys)
    assert len({QA.fullmatch(c[0]["content"])[2] for c in train}) == 60  # 60 of the 80 training keys, once each
    more, _ = synthetic.qa_split(100, 40, 6)
    short, short_val = synthetic.qa_split(60, 40, 0)
    asked = lambda convs: [QA.fullmatch(c[0]["content"])[2] for c in convs]
    assert asked(more)[:60] == asked(train) and asked(short) == asked(train)  # the knobs hold the questions
    assert short_val[0][0]["content"] == f"Q: What is {heldout[0]}?"


# ----------------------------------------------------------------------------- the two README commands, small

def test_pretrain_then_compare_it_and_im_from_the_base(tmp_path, monkeypatch):
    """README's pair: train.py --data synthetic-corpus, then compare.py --init_from that base --data synthetic-qa.
    The tuned runs start from the base's weights, are scored on the questions and keep the probe's number."""
    from scripts.experiments import compare
    small = dict(n_layer=1, n_head=2, n_embd=32, synth_keys=24, synth_heldout=4, eval_interval=0, threads=1)
    base = T.train(T.TrainConfig(out_dir=str(tmp_path / "base"), data="synthetic-corpus", max_steps=3, **small))
    assert base["plain_text"] and set(base["final"]) >= {"val_exact_match", "val_output_loss"}
    assert "train_exact_match" not in base["final"]  # plain text has no prompt to answer
    monkeypatch.chdir(tmp_path)
    records = compare.main(["--init_from", "base", "--data", "synthetic-qa", "--out_dir", "cmp", "--seeds", "1",
                            "--jobs", "1", "--max_steps", "2", "--synth_examples", "10", "--synth_facts", "2",
                            "--synth_keys", "24", "--synth_heldout", "4", "--eval_interval", "0"])
    assert [r["mode"] for r in records] == ["it", "im"]
    for r in records:
        assert 0 <= r["metrics"]["knowledge"] <= 1 and "exact_match" in r["metrics"]
        assert r["train_settings"]["lr"] == 3e-4 and r["train_settings"]["batch_size"] == 16  # the tuning recipe
    results = json.load(open(tmp_path / "cmp" / "results.json"))
    assert "knowledge" in results["runs"][0]["metrics"]
    with pytest.raises(UserError, match=r"--synth_keys 30: the base base learned a world of 24 keys; tune it with "
                                         r"--synth_keys 24"):  # a world the base never saw: refused before any work
        T.train(T.TrainConfig(init_from="base", data="synthetic-qa", synth_keys=30, out_dir="other-world"))
    assert not os.path.exists(tmp_path / "other-world")
