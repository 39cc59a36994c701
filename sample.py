"""Talk to a trained model: one answer to --prompt, or a chat that keeps the whole conversation.

    python sample.py --ckpt out --prompt "L1=bugo, S6=bodo, D6="     # one answer, streamed as it is generated
    python sample.py --ckpt out                                     # chat: empty line or /reset starts over, /quit
    python sample.py --ckpt out --temperature 0.8 --top_p 0.9       # sampled instead of greedy

Every turn goes through the training template (data.prompt_ids), so the model sees exactly the prefix it was
trained to continue: "<|user|>\\n...\\n<|assistant|>\\n". Generation stops at end-of-text. A conversation longer
than the context loses its oldest prompt tokens first, as training cuts long examples.
"""
from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

import torch

import data
from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.device import autodetect_device, cpu_threads
from model import KVCache, load_model, sample_next


@dataclass
class SampleConfig:
    ckpt: str = opt("out", "a training out_dir (its ckpt.pt), a checkpoint file, an HF directory, or a name like gpt2")
    prompt: str = opt("", "answer this one instruction and exit ('' = interactive chat)")
    system: str = opt("", "a system message before the conversation")
    max_new_tokens: int = opt(200, "longest answer, in tokens")
    temperature: float = opt(0.0, "0 = greedy; > 0 samples")
    top_k: int | None = opt(None, "sample only from the k most likely tokens")
    top_p: float | None = opt(None, "sample only from the smallest set of tokens with this total probability")
    seed: int = opt(0, "sampling seed")
    device: str = opt("cpu", "cpu, cuda, mps or auto")
    threads: int = opt(0, "CPU threads (0 = one per core, or 1 when other programs keep every core busy)")

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or (self.top_k is not None and self.top_k < 1) or \
                (self.top_p is not None and not 0 < self.top_p <= 1):
            raise UserError("need --temperature >= 0, --top_k >= 1 and 0 < --top_p <= 1")


@torch.no_grad()
def stream(model, prompt: list[int], cfg: SampleConfig, eos_id: int, generator: torch.Generator | None = None):
    """Yield the new tokens one at a time (the KV cache keeps each step to one token), stopping at eos_id."""
    device = model.transformer.wte.weight.device
    tokens = torch.tensor([prompt], device=device)  # (1, T)
    valid = torch.ones_like(tokens, dtype=torch.bool)
    cache = KVCache(model.config.n_layer, min(len(prompt) + cfg.max_new_tokens, model.config.block_size))
    for _ in range(cfg.max_new_tokens):
        nxt = sample_next(model.next_logits(tokens, valid, cache, padded=False), cfg.temperature, cfg.top_k,
                          cfg.top_p, generator)
        token = nxt.item()  # the one wait for the GPU per new token
        if token == eos_id:
            return
        yield token
        tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
        valid = torch.cat([valid, valid[:, :1]], dim=1)


def reply(model, tok, messages: list[dict], cfg: SampleConfig, write: Callable[[str], object],
          generator: torch.Generator | None = None) -> str:
    """The assistant's answer to `messages`, written out piece by piece as it is generated; returns it whole."""
    block = model.config.block_size
    prompt = data.prompt_ids(messages, tok, block - min(cfg.max_new_tokens, block // 2))  # cut as training cuts
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span several tokens
    text = ""
    for token in stream(model, prompt, cfg, tok.eot_token, generator):
        piece = decoder.decode(tok.decode_single_token_bytes(token))
        write(piece)
        text += piece
    tail = decoder.decode(b"", final=True)
    write(tail + "\n")
    return text + tail


def chat(model, tok, cfg: SampleConfig, read: TextIO, write: Callable[[str], object],
         generator: torch.Generator | None = None) -> list[dict]:
    """The interactive loop: each user line joins the conversation, the answer too. Returns the last conversation."""
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(start)
    write("chat with the model: an empty line or /reset starts over, /quit (or Ctrl-D) ends\n")
    while True:
        write("user> ")
        line = read.readline()
        if not line or line.strip() == "/quit":
            return messages
        if not line.strip() or line.strip() == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        write("assistant> ")
        messages.append({"role": "assistant", "content": reply(model, tok, messages, cfg, write, generator)})


def main() -> None:
    cfg = parse_config(SampleConfig, description=__doc__)
    cfg.validate()
    device = autodetect_device() if cfg.device == "auto" else cfg.device
    model, tok = load_model(cfg.ckpt, device=device)
    if device.startswith("cpu"):  # after the load: a bad checkpoint stays the only line on stderr
        torch.set_num_threads(cpu_threads(cfg.threads))
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    write = lambda text: (sys.stdout.write(text), sys.stdout.flush())  # noqa: E731 (streaming: flush each piece)
    if cfg.prompt:
        start = [{"role": "system", "content": cfg.system}] if cfg.system else []
        reply(model, tok, start + [{"role": "user", "content": cfg.prompt}], cfg, write, generator)
    else:
        chat(model, tok, cfg, sys.stdin, write, generator)


if __name__ == "__main__":
    run_cli(main)
