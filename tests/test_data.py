"""data.py: formats -> messages -> (ids, weights); truncation; batching; errors; the CLI."""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
from data import ASSISTANT, EOT, PAD, SYSTEM, TEMPLATE, USER, Example, make_example
from imgpt import batching, formats, synthetic
from imgpt.cli import UserError
from imgpt.tokenizers import get_tokenizer
from imgpt.train_config import LOSS_PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BYTE = get_tokenizer("byte")  # 256 bytes + <|endoftext|> = 256: expected ids are readable by hand
E = 256


def b(text: str) -> list[int]:
    return list(text.encode())


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


SINGLE = msgs(("user", "Hi"), ("assistant", "Yo"))
MULTI = msgs(("system", "Be kind."), ("user", "Hi"), ("assistant", "Yo"), ("user", "2+2?"), ("assistant", "4"))


def write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- exact ids and weights

SEGMENT_NAMES = {TEMPLATE: "TEMPLATE", SYSTEM: "SYSTEM", USER: "USER", ASSISTANT: "ASSISTANT", EOT: "EOT", PAD: "PAD"}


ROW = [TEMPLATE, SYSTEM, TEMPLATE, USER, USER, TEMPLATE, ASSISTANT, ASSISTANT, EOT, PAD, PAD]


@pytest.mark.ex1
@pytest.mark.parametrize("segs, prompt_loss_weight, template_loss_weight, want", [
    (ROW, 0.0, 0.0, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
    (ROW, 1.0, 0.0, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
    (ROW, 0.3, 0.25, [0.0, 0.3, 0.25, 0.3, 0.3, 0.25, 1.0, 1.0, 1.0, 0.0, 0.0]),
    ([ASSISTANT, EOT], 0.3, 0.25, [0.0, 1.0]),
    ([USER, ASSISTANT, EOT, PAD], 0.7, 0.0, [0.0, 1.0, 1.0, 0.0]),
    ([SYSTEM, SYSTEM, TEMPLATE, EOT], 0.5, 1.0, [0.0, 0.5, 1.0, 1.0]),
])
def test_loss_weights_token_by_token(segs, prompt_loss_weight, template_loss_weight, want):
    got = data.loss_weights(segs, prompt_loss_weight, template_loss_weight)
    fed = (f"segments {[SEGMENT_NAMES[s] for s in segs]}, prompt_loss_weight={prompt_loss_weight}, "
           f"template_loss_weight={template_loss_weight}")
    assert len(got) == len(segs), f"{fed}: {len(got)} weights, expected {len(segs)} (one per token, weights[0] too)"
    for t, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{fed}: token {t} ({SEGMENT_NAMES[segs[t]]}) got weight {g}, expected {w}; all weights {got}"


@pytest.mark.ex1
def test_single_turn_exact_ids_and_weights_in_each_mode():
    ids, w_it = data.encode_example(SINGLE, BYTE, 0.0)
    #   <   |    u    s    e    r    |    >   \n    H    i   \n    <    |    a ...
    assert ids[:14] == [60, 124, 117, 115, 101, 114, 124, 62, 10, 72, 105, 10, 60, 124]
    assert ids == b("<|user|>\n") + b("Hi") + b("\n<|assistant|>\n") + b("Yo") + [E]
    assert len(ids) == 9 + 2 + 15 + 2 + 1
    assert w_it == [0] * 9 + [0, 0] + [0] * 15 + [1, 1] + [1]
    assert data.encode_example(SINGLE, BYTE, 1.0)[1] == [0] * 9 + [1, 1] + [0] * 15 + [1, 1] + [1]
    assert data.encode_example(SINGLE, BYTE, 0.3)[1] == [0] * 9 + [0.3, 0.3] + [0] * 15 + [1, 1] + [1]
    # template weight 1 (the authors' released code): every token but the first, which nothing predicts
    assert data.encode_example(SINGLE, BYTE, 0.0, 1.0)[1] == [0] + [1] * 8 + [0, 0] + [1] * 15 + [1, 1, 1]
    assert data.encode_example(SINGLE, BYTE, 1.0, 1.0)[1] == [0] + [1] * 28


def test_alpaca_input_goes_after_a_blank_line_and_empty_input_adds_nothing(tmp_path):
    path = write(tmp_path, "a.json", [{"instruction": "Add", "input": "2 3", "output": "5"},
                                      {"instruction": "Add", "input": "", "output": "5"}])
    with_input, without = formats.load_conversations(path)
    assert with_input == msgs(("user", "Add\n\n2 3"), ("assistant", "5"))
    assert without == msgs(("user", "Add"), ("assistant", "5"))
    ids, w = data.encode_example(with_input, BYTE, 0.3)
    assert ids == b("<|user|>\n") + b("Add\n\n2 3") + b("\n<|assistant|>\n") + b("5") + [E]
    assert w == [0] * 9 + [0.3] * 8 + [0] * 15 + [1, 1]


@pytest.mark.ex1
def test_multi_turn_with_system_exact_ids_segments_and_weights():
    ids, segs = data.encode_segments(MULTI, BYTE)
    pieces = [("<|system|>\n", TEMPLATE), ("Be kind.", SYSTEM), ("\n<|user|>\n", TEMPLATE), ("Hi", USER),
              ("\n<|assistant|>\n", TEMPLATE), ("Yo", ASSISTANT), (None, EOT), ("<|user|>\n", TEMPLATE),
              ("2+2?", USER), ("\n<|assistant|>\n", TEMPLATE), ("4", ASSISTANT), (None, EOT)]
    assert data.chat_pieces(MULTI) == [(t or "<|endoftext|>", s) for t, s in pieces]
    assert ids == [i for t, _ in pieces for i in (b(t) if t else [E])]
    assert segs == [s for t, s in pieces for _ in (b(t) if t else [E])]
    w = {plw: data.encode_example(MULTI, BYTE, plw)[1] for plw in (0.0, 0.3, 1.0)}
    expected = lambda plw: ([0] * 11 + [plw] * 8 + [0] * 10 + [plw] * 2 + [0] * 15 + [1] * 3  # EOT is the 3rd 1
                            + [0] * 9 + [plw] * 4 + [0] * 15 + [1] * 2)
    assert w[0.0] == expected(0.0) and w[0.3] == expected(0.3) and w[1.0] == expected(1.0)
    assert sum(w[0.0]) == 2 + 1 + 1 + 1 and sum(w[1.0]) == 5 + 8 + 2 + 4


def test_gpt2_bpe_fixture(gpt2_bpe_dir):
    tok = get_tokenizer(gpt2_bpe_dir)
    m = msgs(("user", "Name a color."), ("assistant", "Teal."))
    ids, w = data.encode_example(m, tok, 0.0)
    assert ids == [27, 91, 7220, 91, 29, 198, 5376, 257, 3124, 13, 198, 27, 91, 562, 10167, 91, 29, 198,
                   51, 2287, 13, 50256]  # < | user | > \n Name ' a' ' color' . \n < | ass istant | > \n T eal . EOT
    assert w == [0] * 18 + [1, 1, 1, 1]
    assert data.encode_example(m, tok, 1.0)[1] == [0] * 6 + [1] * 4 + [0] * 8 + [1] * 4
    transformers = pytest.importorskip("transformers")  # the reference BPE agrees piece by piece
    files = (os.path.join(gpt2_bpe_dir, name) for name in ("encoder.json", "vocab.bpe"))
    ref = transformers.GPT2Tokenizer(*files)
    assert ids == [i for t, s in data.chat_pieces(m) for i in ([50256] if s == EOT else ref.encode(t))]


@pytest.mark.ex1
def test_loss_weights_table_presets_and_padding():
    segs = [TEMPLATE, USER, SYSTEM, TEMPLATE, ASSISTANT, EOT, PAD]
    assert data.loss_weights(segs, 0.5, 0.25) == [0.0, 0.5, 0.5, 0.25, 1.0, 1.0, 0.0]
    assert data.loss_weights([USER, USER], 1.0) == [0.0, 1.0]  # the first token is never a target
    assert LOSS_PRESETS == {"it": 0.0, "im": 1.0}  # --loss it|im, for train.py and data.py show alike


def conversations_for_properties() -> list[list[dict]]:
    return [SINGLE, MULTI, msgs(("user", "Add\n\n2 3"), ("assistant", "")),
            msgs(("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"),
                 ("user", "u3"), ("assistant", "a3"))] + synthetic.synthetic_split(20, 5, 2, 2)[0]


@pytest.mark.parametrize("m", conversations_for_properties())
def test_weighted_tokens_decode_to_exactly_the_contents(m):
    ids, w_it = data.encode_example(m, BYTE, 0.0)
    w_im = data.encode_example(m, BYTE, 1.0)[1]
    decoded = lambda w: BYTE.decode([i for i, x in zip(ids, w) if x > 0])
    assert decoded(w_it) == "".join(x["content"] + "<|endoftext|>" for x in m if x["role"] == "assistant")
    im = decoded(w_im)
    assert im == "".join(x["content"] + ("<|endoftext|>" if x["role"] == "assistant" else "") for x in m)
    assert not any(tag in im for tag in ("<|user|>", "<|assistant|>", "<|system|>"))


@pytest.mark.parametrize("m", conversations_for_properties()[:4] + [msgs(("user", "only a question"))])
def test_prompt_ids_are_exactly_the_training_prefix(m):
    full = m if m[-1]["role"] == "assistant" else m + msgs(("assistant", "an answer"))
    ids, segs = data.encode_segments(full, BYTE)
    p = data.prompt_ids(m, BYTE)
    assert ids[:len(p)] == p and BYTE.decode(p).endswith("<|assistant|>\n")
    assert set(segs[len(p):]) <= {ASSISTANT, EOT}  # the answer follows at once: generation continues from here
    assert data.prompt_ids(full[:-1], BYTE) == p


# ----------------------------------------------------------------------------- truncation

def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_template():
    m = msgs(("user", "abcdefghij"), ("assistant", "XYZ"))  # 9 + 10 + 15 + 3 + 1 = 38 tokens
    ids, segs = data.encode_segments(m, BYTE, max_len=34)
    assert ids == b("<|user|>\n") + b("efghij") + b("\n<|assistant|>\n") + b("XYZ") + [E]
    assert data.encode_segments(m, BYTE, max_len=38)[0] == data.encode_segments(m, BYTE)[0]


def test_long_output_keeps_its_start_and_the_prompt_keeps_half_the_room():
    m = msgs(("user", "q" * 40), ("assistant", "A" * 100))
    ids, segs = data.encode_segments(m, BYTE, max_len=64)  # room for content: 64 - 24 template = 40
    assert len(ids) == 64 and segs.count(USER) == 20 and segs.count(ASSISTANT) == 20 and EOT not in segs
    assert BYTE.decode(ids).startswith("<|user|>\n" + "q" * 20 + "\n<|assistant|>\n" + "A" * 20)


def test_an_encoded_example_carries_its_weights_at_the_runs_prompt_weight():
    """The weights are made once, at the data build, from the run's prompt and template weights; collate reads
    them (and nothing after the build takes the prompt weight)."""
    convs = conversations_for_properties()
    for plw, tlw in ((0.0, 0.0), (0.3, 0.0), (1.0, 0.5)):
        examples, _ = data.encode_dataset(convs, BYTE, 60, plw, tlw)
        for e in examples:
            want = data.loss_weights(e.segs, plw, tlw)
            assert e.weights == want, f"prompt weight {plw}, template weight {tlw}: {e.weights} carried, {want} due"
        batch = data.collate(examples[:3])
        for row, e in enumerate(examples[:3]):
            n = len(e.ids) - 1
            assert batch.weights[row, :n].tolist() == pytest.approx(e.weights[1:]), "collate changed the weights"


def test_truncation_never_leaves_an_example_without_output_and_counts_drops():
    convs = conversations_for_properties()
    for max_len in (8, 20, 30, 40, 60, 100, 300):
        examples, stats = data.encode_dataset(convs, BYTE, max_len, 1.0)
        assert stats["kept"] + stats["dropped"] == stats["examples"] == len(convs)
        assert len(examples) == stats["kept"]
        for e in examples:
            assert len(e.ids) <= max_len and sum(data.loss_weights(e.segs, 0.0)) > 0
    assert data.encode_dataset(convs, BYTE, 8, 1.0)[1]["dropped"] == len(convs)  # the template alone does not fit
    stats = data.encode_dataset(convs, BYTE, 40, 1.0)[1]
    assert stats["dropped"] == 0 and stats["truncated"] == len(convs) - 2  # SINGLE (29 tokens), "Add" (33) fit


# ----------------------------------------------------------------------------- batches

def examples(lengths: list[int], prompt_loss_weight: float = 1.0) -> list[Example]:
    return [make_example(list(range(1, n + 1)), [TEMPLATE] + [USER] * (n // 2 - 1) + [ASSISTANT] * (n - n // 2),
                         prompt_loss_weight) for n in lengths]


def test_collate_pads_with_zero_weight():
    ex = examples([5, 4])  # segs [T, U, A, A, A] and [T, U, A, A]
    batch = data.collate(ex)
    assert batch.idx.shape == (2, 4) and batch.idx.dtype == torch.long and batch.weights.dtype == torch.float32
    assert batch.idx[1].tolist() == [1, 2, 3, 0] and batch.targets[1].tolist() == [2, 3, 4, 0]
    assert batch.weights[1].tolist() == [1, 1, 1, 0] and batch.segs[1].tolist() == [USER, ASSISTANT, ASSISTANT, PAD]
    assert batch.doc.tolist() == [[0, 0, 0, 0], [0, 0, 0, -1]] and batch.pos[1].tolist() == [0, 1, 2, 0]
    assert data.collate(examples([5, 4], prompt_loss_weight=0.0)).weights.tolist() == [[0, 1, 1, 1], [0, 1, 1, 0]]
    assert data.useful_fraction(batch) == 7 / 8
    assert batch.to("cpu").targets.equal(batch.targets)


def test_packing_rows_doc_ids_and_positions():
    ex = examples([9, 7, 5, 4, 3])  # 8, 6, 4, 3, 2 positions
    batch = data.collate(ex, pack_len=12)
    assert batch.idx.shape[1] <= 12 and data.useful_fraction(batch) == 23 / batch.doc.numel()
    seen = []
    for r in range(batch.idx.shape[0]):
        docs = [d for d in batch.doc[r].tolist() if d >= 0]
        assert docs == sorted(docs)  # each example is one contiguous run
        for d in set(docs):
            at = batch.doc[r] == d
            n = int(at.sum())
            assert batch.pos[r][at].tolist() == list(range(n))  # positions restart at 0
            assert batch.idx[r][at].tolist() == list(range(1, n + 1))
            assert batch.targets[r][at].tolist() == list(range(2, n + 2))
            seen.append(n)
        assert (batch.weights[r][batch.doc[r] < 0] == 0).all()
    assert sorted(seen) == [2, 3, 4, 6, 8]
    with pytest.raises(ValueError, match="pack_len"):
        data.collate(ex, pack_len=7)


def test_packing_balances_rows():
    # first-fit decreasing would fill rows of 10 as [6,4],[3]: width 10; balanced: [6],[4,3]: width 7
    batch = data.collate(examples([7, 5, 4]), pack_len=10)
    assert batch.idx.shape == (2, 7)



@pytest.mark.ex5
def test_packed_examples_do_not_see_each_other():
    from model import GPTConfig
    from model import GPT
    torch.manual_seed(0)
    net = GPT(GPTConfig.preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=64)).eval()
    ex = [make_example(b(t), [USER] * len(t), 1.0) for t in ("first example", "the second", "third")]
    changed = [ex[0], make_example(b("THE SECOND"), ex[1].segs, 1.0), ex[2]]
    batches = [data.collate(e, pack_len=64) for e in (ex, changed)]
    assert batches[0].idx.shape[0] == 1 and (batches[0].doc[0] >= 0).sum() == 12 + 9 + 4  # one packed row
    with torch.no_grad():
        logits = [net(x.idx, x.pos, x.doc, cu_seqlens=x.cu_seqlens) for x in batches]
        alone = net(data.collate(ex[:1]).idx)
    mine = batches[0].doc != 1
    fed = "one packed row of 'first example', 'the second', 'third'"
    assert not torch.allclose(logits[0][~mine], logits[1][~mine]), f"{fed}: changing the second changed nothing"
    moved = (logits[0][mine] - logits[1][mine]).abs().max().item()
    assert moved < 1e-5, f"{fed}: changing the second moved the others' logits by {moved:.2e}, expected below 1e-5"
    diff = (logits[0][batches[0].doc == 0] - alone[0]).abs().max().item()
    assert diff < 1e-5, f"{fed}: the first example's logits differ from its own alone by {diff:.2e}, expected < 1e-5"

def test_epoch_batches_deterministic_random_grouped_and_complete():
    lengths = [(i * 37) % 200 + 5 for i in range(1000)]
    a = batching.epoch_batches(lengths, 8, seed=1, epoch=3)
    assert a == batching.epoch_batches(lengths, 8, seed=1, epoch=3)
    assert a != batching.epoch_batches(lengths, 8, seed=1, epoch=4) != batching.epoch_batches(lengths, 8, seed=2, epoch=3)
    assert sorted(i for batch in a for i in batch) == list(range(1000)) and len(a) == 125
    plain = batching.epoch_batches(lengths, 8, seed=1, epoch=3, group_by_length=False)
    pad = lambda batches: sum(len(x) * max(lengths[i] for i in x) for x in batches) / sum(lengths)
    assert pad(a) < 1.05 < 1.4 < pad(plain)  # computed / real tokens
    assert [len(x) for x in batching.epoch_batches(lengths[:21], 8, 0, 0)].count(5) == 1  # the short batch is kept
    capped = batching.epoch_batches(lengths, 64, seed=0, epoch=0, batch_tokens=1000)
    assert all(len(x) * max(lengths[i] for i in x) <= 1000 for x in capped)
    assert sorted(i for x in capped for i in x) == list(range(1000))


@pytest.mark.parametrize("n,world,accum", [(16, 2, 4), (13, 2, 3), (3, 4, 2), (0, 2, 2), (7, 1, 1)])
def test_micro_batches_cover_the_batch_exactly(n, world, accum):
    batch = list(range(100, 100 + n))
    parts = [batching.micro_batches(batch, r, world, accum) for r in range(world)]
    assert all(len(p) == accum for p in parts)  # every rank runs the same number of micro-steps
    flat = [i for p in parts for mb in p for i in mb]
    assert sorted(flat) == batch and len(flat) == n
    sizes = [len(mb) for p in parts for mb in p]
    assert max(sizes) - min(sizes) <= 1


def test_split_is_deterministic_and_independent_of_num_examples():
    convs = list(range(100))
    train, val = formats.split_and_subsample(convs, 10, 0, seed=0)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert formats.split_and_subsample(convs, 10, 0, seed=0) == (train, val)
    small, val2 = formats.split_and_subsample(convs, 10, 20, seed=0)
    mid, val3 = formats.split_and_subsample(convs, 10, 50, seed=0)
    assert val2 == val3 == val and len(small) == 20 and set(small) <= set(mid) <= set(train)
    assert formats.split_and_subsample(convs, 0.1, 0, seed=1)[1] != val
    with pytest.raises(UserError, match="num_examples"):
        formats.split_and_subsample(convs, 10, 91, seed=0)
    with pytest.raises(UserError, match="val_size"):
        formats.split_and_subsample(convs, 100, 0, seed=0)


# ----------------------------------------------------------------------------- formats

def test_every_format_becomes_the_same_messages(tmp_path):
    want = msgs(("user", "Add\n\n2 3"), ("assistant", "5"))
    files = {
        "alpaca.jsonl": '{"instruction": "Add", "input": "2 3", "output": "5"}\n\n',
        "dolly.jsonl": '{"instruction": "Add", "context": "2 3", "response": "5", "category": "math"}\n',
        "pc.jsonl": '{"prompt": "Add\\n\\n2 3", "completion": "5"}\n',
        "gsm8k.jsonl": '{"question": "Add\\n\\n2 3", "answer": "5"}\n',
        "chat.json": json.dumps([{"messages": want}]),
        "share.jsonl": json.dumps({"conversations": [{"from": "human", "value": "Add\n\n2 3"},
                                                     {"from": "gpt", "value": "5"}]}),
        "lima.jsonl": json.dumps({"conversations": ["Add\n\n2 3", "5"], "source": "x"}),
        "seed.jsonl": json.dumps({"instruction": "Add", "instances": [{"input": "2 3", "output": "5"}]}),
    }
    for name, text in files.items():
        assert formats.load_conversations(write(tmp_path, name, text)) == [want], name


def test_multi_turn_formats_and_history(tmp_path):
    sys_msg, turns = msgs(("system", "Be kind.")), MULTI[1:]
    speakers = ["system", "human", "gpt", "human", "gpt"]
    share = {"conversations": [{"from": f, "value": m["content"]} for f, m in zip(speakers, MULTI)]}
    assert formats.load_conversations(write(tmp_path, "s.json", [share])) == [MULTI]
    assert formats.load_conversations(write(tmp_path, "m.jsonl", json.dumps({"messages": sys_msg + turns}))) == [MULTI]
    lima = {"instruction": "2+2?", "input": "", "output": "4", "history": [["Hi", "Yo"]], "system": "Be kind."}
    assert formats.load_conversations(write(tmp_path, "l.json", [lima])) == [MULTI]
    trailing = {"messages": MULTI + msgs(("user", "unanswered"))}  # a turn with no answer teaches nothing
    assert formats.load_conversations(write(tmp_path, "t.jsonl", json.dumps(trailing))) == [MULTI]


def test_format_override(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"instruction": "I", "output": "O", "response": "R"}\n')
    assert formats.load_conversations(path)[0][1]["content"] == "R"  # detected as dolly
    assert formats.load_conversations(path, fmt="alpaca")[0][1]["content"] == "O"


@pytest.mark.parametrize("name,content,fmt,message", [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', None,
     r"bad.jsonl:2: malformed JSON"),
    ("arr.json", '[{"instruction": "a",\n "output": }]', None, r"arr.json:2: malformed JSON"),
    ("miss.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "input": "b"}\n', "alpaca",
     r"miss.jsonl:3: missing field 'output'"),
    ("type.json", '[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 7}]', None,
     r"type.json: record \[1\]: field 'output' must be a string, got int"),
    ("role.jsonl", '{"messages": [{"role": "bot", "content": "x"}]}\n', None,
     r"role.jsonl:1 messages\[0\]: field 'role'"),
    ("noans.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', None, r"noans.jsonl:1: no assistant turn"),
    ("hist.json", '[{"instruction": "a", "output": "b", "history": [["only one"]]}]', None,
     r"record \[0\]: field 'history\[0\]'"),
    ("empty.jsonl", "\n  \n", None, r"empty.jsonl: file is empty"),
    ("none.json", "[]", None, r"none.json: no records"),
    ("unknown.jsonl", '{"query": "a", "reply": "b"}\n', None,
     r"unknown.jsonl:1: cannot tell the format .*'query', 'reply'"),
    ("fmt.jsonl", '{"instruction": "a", "output": "b"}\n', "csv", r"unknown format 'csv'"),
    ("latin1.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n', None,
     r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9\)"),
    ("scalar.jsonl", '"just a string"\n', None, r"scalar.jsonl:1: expected a JSON object, got str"),
    ("null.jsonl", '{"instruction": "a", "output": null}\n', None,
     r"null.jsonl:1: field 'output' must be a string, got null"),
    ("msgs.jsonl", '{"messages": "hi"}\n', None, r"msgs.jsonl:1: field 'messages' must be a list, got str"),
])
def test_bad_input_names_file_line_and_field(tmp_path, name, content, fmt, message):
    with pytest.raises(formats.DataError, match=message):
        formats.load_conversations(write(tmp_path, name, content), fmt)


def test_missing_file_and_offline_download(tmp_path, monkeypatch):
    with pytest.raises(formats.DataError, match="no such file"):
        formats.load_conversations(str(tmp_path / "nope.json"))
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(formats.DATASETS, "tiny", ("http://127.0.0.1:9/tiny.json", "alpaca"))  # nothing listens there
    with pytest.raises(formats.DataError, match="cannot download dataset 'tiny'.*local path"):
        formats.load_conversations("tiny")
    assert not os.listdir(tmp_path / "cache")  # no partial file left behind


def test_named_dataset_downloads_once_into_the_cache(tmp_path, monkeypatch):
    source = write(tmp_path, "src.json", [{"instruction": "Add", "input": "", "output": "5"}])
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(formats.DATASETS, "tiny", ("file://" + source, "alpaca"))
    assert formats.load_conversations("tiny") == [msgs(("user", "Add"), ("assistant", "5"))]
    assert os.listdir(tmp_path / "cache") == ["tiny-src.json"]
    os.remove(source)  # served from the cache now
    assert len(formats.load_conversations("tiny")) == 1


# ----------------------------------------------------------------------------- the CLI

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_stats_prints_a_table(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"instruction": "abcd", "output": "xy"}\n'
                                      '{"instruction": "ab", "output": "wxyz"}\n')
    r = run_cli("stats", path, "--tokenizer", "byte", "--max_len", "64")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| d.jsonl"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 2 examples of 31 tokens (30 targets): 3 instruction and 4 output tokens (content + EOT) on average;
    # weighted under IT: 3 + 5 of 60 targets, under IM: 7 + 7
    assert cells[1:9] == ["2", "3.000", "4.000", "0.750", "0.133", "0.233", "0", "0"]


def test_show_marks_each_token_by_its_loss_weight(tmp_path, capsys):
    path = write(tmp_path, "d.jsonl", '{"instruction": "Name a color.", "output": "Teal."}\n')
    lines = {}
    for loss in ("it", "im", "0.3"):
        data.main(["show", path, "--loss", loss, "--tokenizer", "byte", "--color", "never"])
        lines[loss] = capsys.readouterr().out.splitlines()[1]
    assert lines["it"] == "example 1, 6 of 43 tokens trained on: <|user|>\\nName a color.\\n<|assistant|>\\n" \
                          "[Teal.<|endoftext|>]"  # IT: exactly the answer and end-of-text
    assert lines["im"] == "example 1, 19 of 43 tokens trained on: <|user|>\\n[Name a color.]\\n<|assistant|>\\n" \
                          "[Teal.<|endoftext|>]"
    assert "[Name a color.]x0.3" in lines["0.3"]
    with pytest.raises(UserError, match="--loss: expected it, im or a number, got 'all'"):
        data.main(["show", path, "--loss", "all", "--tokenizer", "byte"])


def test_token_marks_plain_and_colored():
    tokens = [("<", 0.0), ("a", 1.0), ("b", 1.0), ("\n", 0.3), ("c", 0.3), ("d", 0.0)]
    assert data.bracketed(tokens) == "<[ab][\\nc]x0.3d"
    shades = data.SHADES
    assert data.colored(tokens) == (f"{shades['zero'][0]}<{shades['full'][1]}a{shades['full'][0]}b"
                                        f"{shades['part'][1]}\\n{shades['part'][0]}c{shades['zero'][1]}d\033[0m")
    assert data.render(tokens, color=False) == "4 of 6 tokens trained on: <[ab][\\nc]x0.3d"


@pytest.mark.parametrize("args,message", [
    (["stats"], "give at least one data file"),
    (["frobnicate"], "usage: python data.py stats"),
    (["stats", "nope.jsonl", "--tokenizer", "byte"], "no such file"),
    (["stats", "synthetic", "--max_len", "ten"], "--max_len: expected int"),
])
def test_cli_usage_errors_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        data.main(args)


def test_cli_bad_file_names_line_and_field(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    r = run_cli("stats", path, "--tokenizer", "byte")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "bad.jsonl:2: missing field 'output'" in r.stderr



ALPACA_SETS = {"llms-from-scratch-ch07/instruction-data.json": 1100, "codealpaca/code_alpaca_2k.json": 2017,
               "llamafactory-alpaca-demo/alpaca_en_demo.json": 999, "lima/lima.json": 1029,
               "stanford-alpaca/seed_tasks.jsonl": 175}


def test_shared_alpaca_sets_load_and_batch_with_little_padding(shared_data, gpt2_bpe_dir):
    tok = get_tokenizer(gpt2_bpe_dir)
    for path, n in ALPACA_SETS.items():
        convs = formats.load_conversations(os.path.join(shared_data, path))
        assert len(convs) == n, path
        row = data.dataset_stats(convs, tok, max_len=1024, batch_size=8)
        assert row["dropped"] == 0 and row["IT weighted"] < row["IM weighted"] <= 1, path
        assert row["useful@8 packed"] >= 0.94, path  # length-grouped batches of 8, packed into rows
        if "seed_tasks" not in path:  # 175 examples with a long tail: padding alone reaches 0.815
            assert row["useful@8"] >= 0.92, path
    lima = formats.load_conversations(os.path.join(shared_data, "lima/lima.json"))
    assert sum(len(c) > 2 for c in lima) == 29  # the multi-turn rows, from `history`


def test_gsm8k_reads_as_question_answer(shared_data):
    convs = formats.load_conversations(os.path.join(shared_data, "gsm8k", "test.jsonl"))
    assert len(convs) == 1319
    assert all(c[0]["role"] == "user" and "\n#### " in c[1]["content"] for c in convs)
