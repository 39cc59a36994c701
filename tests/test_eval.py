"""eval.py: the numbers it reports, checked against hand computations and the references they claim to follow."""
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import data
import eval
import eval as ev
from conftest import leave_spawned_worker, write_file
from imgpt import benchmarks as bm
from imgpt import device, formats, synthetic
from imgpt.checkpoint import save_checkpoint
from imgpt.cli import UserError, make_config, run_cli
from imgpt.distributed import Dist
from imgpt.tokenizers import get_tokenizer
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVS = [
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Teal."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Say hi twice."}, {"role": "assistant", "content": "hi hi, and a longer tail"}],
]


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("byte")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()


def config(**kw) -> ev.EvalConfig:
    return make_config(ev.EvalConfig, {"ckpt": "unused", **kw})


# ----------------------------------------------------------------------------- output-only loss

def test_output_loss_equals_hand_computation(net, tok):
    """Mean CE over the targets that are assistant content or end-of-text, nothing else, summed over examples."""
    total, count = 0.0, 0
    for conv in CONVS:
        ids, segs = data.encode_segments(conv, tok)
        logits = net(torch.tensor([ids[:-1]]))[0]  # (T-1, V): position t predicts ids[t+1]
        ce = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        mask = torch.tensor([s in (data.ASSISTANT, data.EOT) for s in segs[1:]])
        assert tok.eot_token in torch.tensor(ids[1:])[mask].tolist()  # the end-of-text is scored
        total, count = total + ce[mask].sum().item(), count + int(mask.sum())
    r = ev.loss_metrics(net, tok, CONVS, config(batch_size=2), Dist(), max_len=64)
    assert r["output_tokens"] == count == sum(len(c[-1]["content"].encode()) + 1 for c in CONVS)
    assert r["output_loss"] == pytest.approx(total / count, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


# ----------------------------------------------------------------------------- multiple choice

@pytest.mark.ex6
def test_acc_and_acc_norm_disagree_on_crafted_logprobs():
    # the long choice has the lower total (-6 < -4) but the higher per-character log-prob (-1 > -2)
    logprobs, choices = [-4.0, -6.0], ["ab", "abcdef"]
    assert bm.pick_acc(logprobs) == 0
    picked = bm.pick_acc_norm(logprobs, choices)
    assert picked == 1, f"choices {choices} with log-probs {logprobs}: pick_acc_norm picked {picked}, expected 1"
    assert bm.pick_acc([-1.0, -1.0, -2.0]) == 0  # ties: the first, like numpy's argmax


@pytest.mark.ex6
def test_acc_norm_counts_characters_not_bytes_and_ties_go_first():
    # "éé" is 2 characters but 4 UTF-8 bytes: per character -1.5 < -4/3, per byte -0.75 > -4/3
    picked = bm.pick_acc_norm([-3.0, -4.0], ["éé", "abc"])
    assert picked == 1, (f"choices ['éé', 'abc'] with log-probs [-3, -4]: picked {picked}, expected 1 (-4/3 per "
                         f"character beats -3/2): divide by characters, len(choice), not UTF-8 bytes")
    picked = bm.pick_acc_norm([-2.0, -4.0, -9.0], ["a", "ab", "abc"])
    assert picked == 0, f"choices 0 and 1 tie at -2 per character: picked {picked}, expected 0 (ties: the first)"


@pytest.mark.ex6
def test_exact_ties_go_to_the_first_tied_choice_in_any_order():
    """lm-evaluation-harness takes numpy's argmax: the first of tied choices, whatever their totals or lengths."""
    scored = [("ab", -2.0), ("abcd", -4.0), ("abc", -3.0), ("a", -3.0), ("abcdefgh", -16.0)]  # -1,-1,-1,-3,-2 per char
    for order in itertools.permutations(range(len(scored))):
        choices, logprobs = [scored[i][0] for i in order], [scored[i][1] for i in order]
        want = min(k for k, i in enumerate(order) if i < 3)
        got = bm.pick_acc_norm(logprobs, choices)
        assert got == want, (f"choices {choices} with log-probs {logprobs}: picked {got}, expected {want} (choices "
                             f"{[k for k, i in enumerate(order) if i < 3]} tie at -1 per character; the first of them)")


@pytest.mark.ex6
@pytest.mark.parametrize("logprobs, choices, want", [
    ([-1.5 * (1 + 2e-5) * 3, -1.5 * 7], ["abc", "abcdefg"], 1),  # -1.50003 vs -1.5 per character
    ([-10.0002, -2.0 * 5], ["abcd", "abcde"], 1),  # -2.50005 vs -2.0
    ([-0.700007 * 2, -0.7 * 9], ["ab", "abcdefghi"], 1),
    ([-4.0, -3.99996, -4.0], ["abcd", "abcd", "abcd"], 1),
    ([-7.99992, -8.0], ["abcd", "abcd"], 0),
])
def test_near_ties_are_told_apart_at_float32_precision_or_better(logprobs, choices, want):
    """Scores that differ by a few parts in 100000: float32 or float64 arithmetic tells them apart, float16 or
    bfloat16 makes them tie or swap."""
    got = bm.pick_acc_norm(logprobs, choices)
    per_char = [lp / len(c) for lp, c in zip(logprobs, choices)]
    assert got == want, (f"choices {choices} with log-probs {logprobs}: picked {got}, expected {want} (per character "
                         f"{[f'{x:.6f}' for x in per_char]}: compute in float32 or float64)")


@pytest.mark.ex6
@pytest.mark.parametrize("logprobs, choices, want", [
    ([-0.5, -4.0], ["", "ab"], 0),  # the empty choice: -0.5 for its 1 character, against -2 per character
    ([-3.0, -4.0], ["", "ab"], 1),  # -3 against -2
    ([-1.0, -1.0], ["", "a"], 0),  # a tie: the first
    ([-2.0, -1.0, -1.5], ["a", "", ""], 1),
])
def test_an_empty_choice_counts_as_one_character(logprobs, choices, want):
    got = bm.pick_acc_norm(logprobs, choices)
    assert got == want, (f"choices {choices} with log-probs {logprobs}: picked {got}, expected {want}: an empty "
                         f"choice counts as 1 character (no division by zero), ties go to the first")


@pytest.mark.ex6
@pytest.mark.parametrize("logprobs, choices, want", [
    ([-1.0, -3.0], ["a", "abcd"], 1),  # -1 vs -0.75 per character (not -0.5 vs -0.6: no space is added)
    ([-2.0, -3.3], [" a", "abc"], 0),  # a choice given with a space keeps it: -1 vs -1.1 (not -2 vs -1.1)
    ([-2.4, -3.0], ["ab ", "abc"], 0),  # -0.8 vs -1 (not -1.2 vs -1)
])
def test_len_counts_each_choice_exactly_as_given(logprobs, choices, want):
    got = bm.pick_acc_norm(logprobs, choices)
    per_char = [round(lp / max(len(c), 1), 4) for lp, c in zip(logprobs, choices)]
    assert got == want, (f"choices {choices!r} with log-probs {logprobs}: picked {got}, expected {want}: divide by "
                         f"len(choice) of the string exactly as given, spaces included, none added or stripped "
                         f"({per_char} per character)")


class Uniform(torch.nn.Module):
    """Every next token equally likely: a continuation of k tokens has log-prob -k log V."""
    config = GPTConfig(block_size=64, vocab_size=257, n_layer=1, n_head=1, n_embd=8)

    def forward(self, idx, select=None):
        return torch.zeros(len(select), 257)


@pytest.mark.ex6
def test_choice_metrics_end_to_end_acc_vs_acc_norm(tok):
    # byte tokens: " a" is 2 tokens for 1 char (-2 log V per char), " abcd" 5 for 4 (-1.25 log V per char)
    q = bm.Question("Pick one:", ["a", "abcd"], gold=1)
    r = ev.choice_metrics(Uniform(), tok, [q, bm.Question("Again:", ["abcd", "a"], gold=0)], config(), Dist())
    assert r == {"examples": 2, "acc": 0.0, "acc_norm": 1.0}, (
        f"choices 'a' and 'abcd' under a model that finds every byte token equally likely, the gold one 'abcd': "
        f"{r}, expected acc 0 and acc_norm 1")
    lps = bm.continuation_logprobs(Uniform(), eval.choice_pairs(q, tok, chat=False), 4, "cpu")
    assert lps == pytest.approx([-2 * math.log(257), -5 * math.log(257)])


def test_batched_scoring_equals_one_row_at_a_time(net, tok):
    """Right padding and select= change nothing: the same sums as a full forward pass of each row alone."""
    assert net.config.block_size == 64
    qs = [bm.Question("The sky is", ["blue", "green and wide"], 0), bm.Question("", ["x", "yz"], 1),
          bm.Question("Q: " + "long " * 20, ["a", "b"], 0),  # an empty context scores after end-of-text
          bm.Question("Pick:", ["A", "B", "C", "D"], 2)]
    pairs = [p for q in qs for p in eval.choice_pairs(q, tok, chat=False)]
    assert pairs[2][0] == [tok.eot_token]
    rows = []
    counting = lambda idx, select: rows.append(idx.shape[0]) or net(idx, select=select)  # noqa: E731
    counting.config = net.config
    batched = bm.continuation_logprobs(counting, pairs, 4, "cpu")
    assert rows == [4, 2]  # 10 pairs, 6 distinct inputs: " a"/" b" and " A".." D" each share theirs
    for (ctx, cont), got in zip(pairs, batched):
        seq = torch.tensor([(ctx + cont)[-65:]])  # a context too long for the block loses its oldest tokens
        logp = net(seq[:, :-1]).log_softmax(-1)[0, -len(cont):]  # (len(cont), V)
        assert got == pytest.approx(logp.gather(1, seq[0, -len(cont):, None]).sum().item(), abs=1e-4)


def test_chat_choices_are_the_assistant_reply(tok):
    (ctx, cont), _ = eval.choice_pairs(bm.Question("Capital of France?", ["Paris", "Rome"], 0), tok, chat=True)
    assert tok.decode(ctx) == "<|user|>\nCapital of France?\n<|assistant|>\n" and tok.decode(cont) == "Paris"
    assert ctx == data.prompt_ids([{"role": "user", "content": "Capital of France?"}], tok)
    with pytest.raises(formats.DataError, match="empty choice"):
        eval.choice_pairs(bm.Question("Q?", ["yes", ""], 0), tok, chat=True)


# ----------------------------------------------------------------------------- exact match, BLEU, ROUGE-L


# ----------------------------------------------------------------------------- readers


def test_gpt2_bpe_pairs_equal_lm_eval_split(shared_data, gpt2_bpe_dir):
    """lm-eval encodes context + continuation whole and splits after the context's tokens; with GPT-2's BPE and
    a leading space, encoding the two apart gives the same tokens (checked on real questions)."""
    tok = get_tokenizer(gpt2_bpe_dir)
    hs = bm.read_hellaswag(os.path.join(shared_data, "hellaswag", "hellaswag_val_full.txt.bz2"))[:100]
    mmlu = bm.read_mmlu(os.path.join(shared_data, "mmlu-redux", "mmlu_anatomy.csv"), "continuation")[:100]
    for q in hs + mmlu:
        for (ctx, cont), choice in zip(eval.choice_pairs(q, tok, chat=False), q.choices):
            assert ctx + cont == tok.encode_ordinary(q.context + " " + choice)
            assert tok.decode(cont) == " " + choice


# ----------------------------------------------------------------------------- generation and the whole program

def test_generation_batched_matches_one_prompt_at_a_time(net, tok, tmp_path):
    out = str(tmp_path / "gen.jsonl")
    r = ev.generation_metrics(net, tok, CONVS, config(batch_size=2, max_new_tokens=6), Dist(), out, greedy=False)
    records = [json.loads(line) for line in open(out)]
    assert [x["reference"] for x in records] == [c[-1]["content"] for c in CONVS]
    for rec, conv in zip(records, CONVS):
        prompt = data.prompt_ids(conv, tok)
        assert rec["prompt"] == tok.decode(prompt)
        assert rec["output"] == tok.decode(net.generate([prompt], 6, eos_id=tok.eot_token)[0])
    outputs, references = [x["output"] for x in records], [x["reference"] for x in records]
    assert r["examples"] == 3 and r["bleu"] == ev.bleu(outputs, references)

    def sample(seed: int, greedy: bool = False) -> list[str]:
        cfg = config(max_new_tokens=6, temperature=1.0, seed=seed)
        ev.generation_metrics(net, tok, CONVS, cfg, Dist(), out, greedy=greedy)
        return [json.loads(line)["output"] for line in open(out)]
    assert sample(0) == sample(0) != sample(1)  # reproducible for a seed
    assert sample(1, greedy=True) == outputs  # memorization is greedy whatever --temperature says


def test_prompt_ids_is_cut_like_training(tok):
    """The prompt is the training example's own prefix, cut with the answer counted, as training cut it."""
    conv = [{"role": "user", "content": "fact " * 30 + "Question?"}, {"role": "assistant", "content": "Answer."}]
    assert data.prompt_ids(conv, tok, 1000) == data.prompt_ids(conv, tok)
    for max_len in (40, 60, 1000):
        ids, segs = data.encode_segments(conv, tok, max_len)
        p = data.prompt_ids(conv, tok, max_len)
        assert ids[:len(p)] == p and segs[len(p)] == data.ASSISTANT
    # 40 tokens: 24 template + 7 answer + end-of-text leave 8 for the prompt (its last 8 bytes)
    assert tok.decode(data.prompt_ids(conv, tok, 40)) == "<|user|>\nuestion?\n<|assistant|>\n"
    assert ev.new_token_budget(config(), ["abc", "abcdefg"], tok) == 7 + 16
    assert ev.new_token_budget(config(max_new_tokens=500), ["x"], tok) == 500


def test_generation_never_cuts_a_prompt_that_training_kept(net, tok, tmp_path):
    """The old bug: a generation budget of 64 in a 64-token context cut every prompt to fit. Now each prompt is
    the training prefix (cut at block_size + 1, as train.py cuts examples) and the answer gets the room left."""
    convs = [[{"role": "user", "content": "k" * n + "="}, {"role": "assistant", "content": "abcd"}]
             for n in (10, 25, 35, 60)]  # prompts of 36, 51, 61 tokens, and one that training cut
    out = str(tmp_path / "gen.jsonl")
    ev.generation_metrics(net, tok, convs, config(batch_size=3, max_new_tokens=64), Dist(), out, greedy=True,
                          max_len=65)
    records = [json.loads(line) for line in open(out)]
    kept = []
    for rec, conv in zip(records, convs):
        ids, segs = data.encode_segments(conv, tok, 65)
        prefix = ids[:data.answer_start(segs)]
        assert rec["prompt"] == tok.decode(prefix), f"generation saw a prompt training never saw: {rec['prompt']!r}"
        assert len(tok.encode(rec["output"], allowed_special="all")) <= 65 - len(prefix)  # the room left
        kept.append(len(prefix) == len(data.prompt_ids(conv, tok)))
    assert kept == [True, True, True, False]  # only the prompt that training cut is cut


SETTINGS = dict(data="synthetic", format="", val_size=100, num_examples=0, synth_examples=11, synth_facts=1,
                synth_heldout=4, synth_mentions=1, synth_keys=20, synth_seed=3, seed=5, block_size=64)  # what train.py saves as "config" (in part)


@pytest.fixture(scope="module")
def run_dir(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(str(path / "ckpt.pt"), {"model": net.state_dict(), "tokenizer": "byte",
                                            "model_config": dataclasses.asdict(net.config), "config": SETTINGS})
    return str(path)


def test_evaluate_checkpoint_scores_train_py_split(net, tok, run_dir, tmp_path):
    """A train.py checkpoint: --data '' is the held-out split train.py made, --train_data '' its training split."""
    train_convs, val_convs = synthetic.synthetic_split(11, 4, 1, 1, seed=3, n_keys=20)
    out = str(tmp_path / "res" / "r.json")
    cfg = make_config(ev.EvalConfig, dict(ckpt=run_dir, memorization=True, max_new_tokens=4, out=out))
    m = ev.evaluate(cfg)["metrics"]
    assert (m["heldout"]["examples"], m["train"]["examples"], m["memorization"]["examples"]) == (4, 11, 11)
    expected = ev.loss_metrics(net, tok, val_convs, cfg, Dist(), 64 + 1)["output_loss"]  # block_size + 1, as train.py
    assert m["heldout"]["output_loss"] == pytest.approx(expected, rel=1e-6)
    assert m["heldout"]["gap_vs_train"] == pytest.approx(m["heldout"]["output_loss"] - m["train"]["output_loss"])
    assert json.load(open(out))["metrics"] == json.loads(json.dumps(m))
    memorized = [json.loads(line)["reference"] for line in open(str(tmp_path / "res" / "r.train.jsonl"))]
    assert memorized == [c[-1]["content"] for c in train_convs]
    assert "gap_vs_train" in ev.metrics_table(m)


def test_a_cpu_evaluation_takes_every_core_unless_busy_once_its_inputs_load(run_dir, tmp_path, monkeypatch, capsys):
    """Every core on an idle machine; 1 thread and one line on a busy one; a count given (compare.py's runs: 1)
    kept. Chosen after the model loads, so a bad checkpoint's error stays the only line (test_rundir.py)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    threads = torch.get_num_threads()
    try:
        for load, given, count, note in ((0.0, 0, 2, ""), (9.0, 0, 1, "busy machine: load 9.0 on 2 cores, so 1 "
                                         "thread (--threads N to choose)\n"), (9.0, 2, 2, ""), (0.0, 1, 1, "")):
            monkeypatch.setattr(device, "machine_load", lambda: load)
            ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=run_dir, limit=2, threads=given,
                                                        out=str(tmp_path / "r.json"))))
            assert (torch.get_num_threads(), capsys.readouterr().err) == (count, note), (load, given)
    finally:
        torch.set_num_threads(threads)


def test_results_go_next_to_the_checkpoint(net, tmp_path_factory, monkeypatch):
    run_dir = str(tmp_path_factory.mktemp("run"))
    small = dict(data="synthetic", synth_examples=12, synth_heldout=2, synth_facts=1, synth_mentions=1, block_size=64)
    save_checkpoint(os.path.join(run_dir, "ckpt.pt"), {"model": net.state_dict(), "tokenizer": "byte",
                                                      "model_config": dataclasses.asdict(net.config), "config": small})
    tmp_path = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory
    r = ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=run_dir, generate=True, max_new_tokens=2, limit=2)))
    assert r["file"] == os.path.join(run_dir, "eval.json") and json.load(open(r["file"]))["metrics"] == \
        json.loads(json.dumps(r["metrics"]))
    assert os.path.isfile(os.path.join(run_dir, "eval.heldout.jsonl")) and os.listdir(tmp_path) == []
    assert ev.results_path(os.path.join(run_dir, "ckpt.pt")) == os.path.join(run_dir, "eval.json")
    (tmp_path / "best.pt").write_bytes(b"")
    assert ev.results_path(str(tmp_path / "best.pt")) == str(tmp_path / "eval_best.json")
    assert ev.results_path("gpt2") == "eval_gpt2.json"  # a model id has no directory of its own here


def test_pretrained_weights_without_data(net, tmp_path):
    """No saved training config: multiple choice runs alone; generation asks for --data."""
    save_checkpoint(str(tmp_path / "w.pt"), {"model": net.state_dict(), "tokenizer": "byte",
                                             "model_config": dataclasses.asdict(net.config)})
    mmlu = write_file(tmp_path / "q.csv", b"Q?,a,b,c,d,A\n")
    cfg = make_config(ev.EvalConfig, dict(ckpt=str(tmp_path / "w.pt"), mmlu=mmlu, out=str(tmp_path / "r.json")))
    r = ev.evaluate(cfg)
    assert list(r["metrics"]) == ["mmlu"] and r["metrics"]["mmlu"]["examples"] == 1
    with pytest.raises(UserError, match="--generate/--memorization need --data"):
        ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=str(tmp_path / "w.pt"), generate=True)))
    with pytest.raises(UserError, match="nothing to evaluate"):
        ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=str(tmp_path / "w.pt"))))


def ddp_worker(rank: int, world: int, init_file: str, cfg: dict) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev.evaluate(make_config(ev.EvalConfig, cfg), Dist(rank=rank, local_rank=rank, world_size=world))
    finally:
        torch.distributed.destroy_process_group()
    leave_spawned_worker()


def test_two_processes_give_the_single_process_numbers(run_dir, tmp_path):
    """Each rank takes every 2nd example (5 questions, 4 + 11 conversations: uneven shares); sums are all-reduced
    and the generations come back in the original order."""
    mmlu = write_file(tmp_path / "q.csv", b"".join(b"Q%d?,a,bb,ccc,dddd,%s\n" % (i, b"ABCD"[i % 4:i % 4 + 1])
                                             for i in range(5)))
    base = dict(ckpt=run_dir, generate=True, memorization=True, mmlu=mmlu, max_new_tokens=3, batch_size=2)
    single = ev.evaluate(make_config(ev.EvalConfig, {**base, "out": str(tmp_path / "one.json")}))["metrics"]
    cfg = {**base, "out": str(tmp_path / "two.json")}
    torch.multiprocessing.spawn(ddp_worker, args=(2, str(tmp_path / "init"), cfg), nprocs=2)
    double = json.load(open(tmp_path / "two.json"))["metrics"]
    for task in ("generate", "memorization"):
        single[task].pop("file"), double[task].pop("file")
        assert open(tmp_path / f"one.{'heldout' if task == 'generate' else 'train'}.jsonl").read() == \
            open(tmp_path / f"two.{'heldout' if task == 'generate' else 'train'}.jsonl").read()
    assert double["mmlu"]["examples"] == 5 and double["heldout"]["examples"] == 4
    assert double.keys() == single.keys()
    for task, values in single.items():
        assert double[task] == pytest.approx(values, rel=1e-5, abs=1e-5), task


def test_cli_errors_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["eval.py", "--ckpt", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as e:
        run_cli(ev.main)
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
    with pytest.raises(UserError, match="--mmlu: .*missing.csv: no such file"):
        config(mmlu=str(tmp_path / "missing.csv"))
    with pytest.raises(UserError, match="--mmlu_style"):
        config(mmlu_style="cloze")
    p = subprocess.run([sys.executable, "eval.py", "--ckpt", "gpt2", "--data", str(tmp_path / "missing.json")],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "IMGPT_CACHE": str(tmp_path)})
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_train_exact_match_is_token_exact_from_the_training_prefix(tok):
    """metrics.exact_match_rate (train.py's held-out and memorization exact match): greedy answers from each
    example's own training prefix must equal the answer and stop at end-of-text."""
    import metrics
    convs = [[{"role": "user", "content": f"K{i}="}, {"role": "assistant", "content": a}]
             for i, a in enumerate(["abcd", "efgh", "ijkl"])]
    examples, _ = data.encode_dataset(convs, tok, 64, 0.0)
    answers = {tuple(data.prompt_ids(c, tok)): tok.encode_ordinary(c[1]["content"]) for c in convs}

    class Replies(torch.nn.Module):  # answers prompt i with replies[i], or the right answer
        def __init__(self, replies):
            super().__init__()
            self.replies = replies

        def generate(self, prompts, max_new, eos_id=None):
            assert all(tuple(p) in answers for p in prompts), "generation must start from the training prefix"
            out = [self.replies.get(i, answers[tuple(p)]) for i, p in
                   ((int(tok.decode(p).split("K")[1].split("=")[0]), p) for p in prompts)]
            return [o[:max_new] for o in out]

    assert metrics.exact_match_rate(Replies({}), examples, 2, tok.eot_token) == 1.0
    wrong = {0: tok.encode_ordinary("abce"), 1: tok.encode_ordinary("efghe")}  # a wrong letter; no stop at the end
    assert metrics.exact_match_rate(Replies(wrong), examples, 2, tok.eot_token) == pytest.approx(1 / 3)
    assert metrics.is_exact([1, 2], [1, 2, 9], [data.ASSISTANT, data.ASSISTANT, data.EOT])
    assert not metrics.is_exact([1, 2, 3], [1, 2, 9], [data.ASSISTANT, data.ASSISTANT, data.EOT])
    assert metrics.is_exact([1, 2, 3], [1, 2], [data.ASSISTANT, data.ASSISTANT])  # training cut the answer's end


class Believes(torch.nn.Module):
    """A stand-in model with one believed answer per prompt, as next-token logits (one-hot: the believed token at
    every position from the prompt's end on) and as greedy generation: both ways of scoring must agree."""

    def __init__(self, beliefs: dict[tuple, list[int]], eos_id: int):
        super().__init__()
        self.beliefs, self.eos_id = beliefs, eos_id

    def believed(self, row: list[int]) -> tuple[int, list[int]]:
        start = next(len(p) for p in self.beliefs if tuple(row[:len(p)]) == p)  # the prompt this row starts with
        return start, self.beliefs[tuple(row[:start])]

    def forward(self, idx, pos=None, doc=None, select=None):
        B, T = idx.shape
        logits = torch.zeros(B * T, 300)
        for b in range(B):
            start, answer = self.believed(idx[b].tolist())
            for t in range(start - 1, T):  # position t predicts token t + 1: the answer's (t + 1 - start)-th
                logits[b * T + t, answer[t + 1 - start] if t + 1 - start < len(answer) else 0] = 1.0
        return logits[select]

    def generate(self, prompts, max_new, eos_id=None):
        out = []
        for p in prompts:
            answer = self.believed(list(p))[1]
            cut = answer.index(eos_id) if eos_id in answer else len(answer)
            out.append(answer[:min(cut, max_new)])
        return out


def test_exact_match_from_the_loss_pass_is_the_generated_one(tok):
    """train.py's exact match comes from the evaluation's forward pass (the most likely token right at every
    answer position): the same rate as generating the greedy answers, for right answers, a wrong token inside
    one, an answer that does not stop, one that stops early, and rows of different lengths in one batch."""
    import metrics
    convs = [[{"role": "user", "content": f"K{i}=" + "x" * i}, {"role": "assistant", "content": a}]
             for i, a in enumerate(["abcd", "efgh", "ijkl", "mnop", "qrst", "uvwx"])]
    examples, _ = data.encode_dataset(convs, tok, 64, 0.0)
    eot = tok.eot_token
    right = {tuple(data.prompt_ids(c, tok)): tok.encode_ordinary(c[1]["content"]) + [eot] for c in convs}
    keys = list(right)
    beliefs = dict(right)
    beliefs[keys[1]] = tok.encode_ordinary("efgx") + [eot]  # a wrong token inside
    beliefs[keys[3]] = tok.encode_ordinary("mnop and more")  # right, but does not stop
    beliefs[keys[4]] = tok.encode_ordinary("qr") + [eot]  # stops early
    for model, rate in ((Believes(right, eot), 1.0), (Believes(beliefs, eot), 3 / 6)):
        for bs in (1, 4):
            generated = metrics.exact_match_rate(model, examples, bs, eot)
            assert generated == pytest.approx(rate)
            assert metrics.segment_losses(model, examples, bs, "cpu")["exact_match"] == pytest.approx(generated)
