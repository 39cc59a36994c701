"""sample.py: streamed answers equal generate()'s, the chat keeps the training template, the CLI works."""
import io
import os
import subprocess
import sys

import pytest
import torch

import data
import sample
from imgpt import device
from imgpt.checkpoint import save_checkpoint
from imgpt.tokenizers import get_tokenizer
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=257)).eval()
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(0, 1.0)  # strong positions: greedy output is not one token repeated
    return model


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("byte")


def test_stream_equals_generate_and_stops_at_end_of_text(net, tok):
    prompt = data.prompt_ids([{"role": "user", "content": "hi"}], tok)
    cfg = sample.SampleConfig(max_new_tokens=12)
    greedy = net.generate([prompt], 12)[0]
    assert list(sample.stream(net, prompt, cfg, eos_id=-1)) == greedy and len(set(greedy)) > 2
    eos = greedy[5]  # pretend the 6th token is end-of-text: the stream ends just before its first occurrence
    assert list(sample.stream(net, prompt, cfg, eos_id=eos)) == net.generate([prompt], 12, eos_id=eos)[0] == \
        greedy[:greedy.index(eos)]
    sampled = sample.SampleConfig(max_new_tokens=12, temperature=1.0, top_k=20)
    draw = lambda seed: list(sample.stream(net, prompt, sampled, -1, torch.Generator().manual_seed(seed)))  # noqa
    assert draw(1) == draw(1) != draw(2)


def test_reply_streams_whole_characters(net, tok, monkeypatch):
    monkeypatch.setattr(sample, "stream", lambda *a, **k: iter("東京!".encode()))  # byte tokens: 3 per character
    pieces = []
    text = sample.reply(net, tok, [{"role": "user", "content": "x"}], sample.SampleConfig(), pieces.append)
    assert text == "東京!" and "".join(pieces) == "東京!\n" and "\ufffd" not in "".join(pieces)


def test_chat_keeps_the_conversation_under_the_training_template(net, tok, monkeypatch):
    prompts = []

    def fake_stream(model, prompt, cfg, eos_id, generator=None):
        prompts.append(prompt)
        yield from tok.encode(f"a{len(prompts)}")

    monkeypatch.setattr(sample, "stream", fake_stream)
    out = io.StringIO()
    cfg = sample.SampleConfig(system="Be brief.", max_new_tokens=16)
    sample.chat(net, tok, cfg, io.StringIO("hi\nmore\n\nagain\n/quit\n"), out.write)
    sys_msg, u = {"role": "system", "content": "Be brief."}, lambda c: {"role": "user", "content": c}
    conv = [sys_msg, u("hi"), {"role": "assistant", "content": "a1"}, u("more")]
    assert prompts == [data.prompt_ids(conv[:2], tok), data.prompt_ids(conv, tok),
                       data.prompt_ids([sys_msg, u("again")], tok)]  # the empty line started over
    assert tok.decode(prompts[1]) == "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\na1<|endoftext|>" \
                                     "<|user|>\nmore\n<|assistant|>\n"
    assert "assistant> a2\n" in out.getvalue()


def test_long_conversations_lose_their_oldest_tokens(net, tok, monkeypatch):
    seen = []
    monkeypatch.setattr(sample, "stream", lambda model, prompt, *a, **k: seen.append(prompt) or iter(()))
    long = [{"role": "user", "content": "x" * 300}]
    sample.reply(net, tok, long, sample.SampleConfig(max_new_tokens=8), lambda s: None)
    sample.reply(net, tok, long, sample.SampleConfig(max_new_tokens=500), lambda s: None)
    assert seen == [data.prompt_ids(long, tok, 128 - 8), data.prompt_ids(long, tok, 64)]  # room for the answer,
    assert len(seen[0]) == 120  # but never less than half the context for the prompt


def test_command_line(net, tok, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"model": net.state_dict(), "model_config": vars(net.config), "tokenizer": "byte"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, "sample.py", "--ckpt", path, *args], cwd=ROOT, env=env,  # noqa
                                       capture_output=True, text=True, timeout=120)
    one = run("--prompt", "hi", "--max_new_tokens", "12")
    expected = net.generate([data.prompt_ids([{"role": "user", "content": "hi"}], tok)], 12, eos_id=256)[0]
    assert (one.returncode, one.stdout) == (0, tok.decode(expected) + "\n")
    bad = run("--max_new_tokens", "0")
    assert (bad.returncode, bad.stderr) == (2, "error: --max_new_tokens: must be at least 1, got 0\n")


def test_a_cpu_chat_takes_every_core_unless_busy(net, tmp_path, monkeypatch, capsys):
    """Every core on an idle machine, 1 thread on a busy one, said on stderr: stdout stays the answer alone."""
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"model": net.state_dict(), "model_config": vars(net.config), "tokenizer": "byte"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(sys, "argv", ["sample.py", "--ckpt", path, "--prompt", "hi", "--max_new_tokens", "3"])
    threads = torch.get_num_threads()
    try:
        answers = []
        for load, count, note in ((0.0, 2, ""), (9.0, 1, "busy machine: load 9.0 on 2 cores, so 1 thread "
                                                        "(--threads N to choose)\n")):
            monkeypatch.setattr(device, "machine_load", lambda: load)
            sample.main()
            out, err = capsys.readouterr()
            assert (torch.get_num_threads(), err) == (count, note)
            answers.append(out)
        assert answers[0] == answers[1] and answers[0].endswith("\n")
    finally:
        torch.set_num_threads(threads)
