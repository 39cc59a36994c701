"""GPT-2, top to bottom: its sizes, attention, block, model, weighted loss, KV-cache generation and sampling,
loading.

Module and parameter names are exactly those of Hugging Face's GPT2LMHeadModel (transformer.wte,
transformer.h.0.attn.c_attn, ..., lm_head), so the released checkpoints load by name; imgpt/pretrained.py reads the
files and tokenizers. References: Radford et al. 2019 (GPT-2); karpathy/nanoGPT for the shape of this file.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from imgpt import pretrained, tokenizers
from imgpt.checkpoint import CheckpointError, load_checkpoint, unwrap
from imgpt.cli import UserError

# ----------------------------------------------------------------------------- the model's sizes

PRESETS = {  # the released GPT-2 sizes (vocab 50257, block 1024: the defaults) and a tiny byte-level model
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=257),  # byte tokenizer, CPU demos
}


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (number of learned positions)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    attention: str = "sdpa"  # "sdpa" (fused kernel) or "math" (the explicit formula, for reading)

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")}
        if bad := [f"{k}={v!r}" for k, v in sizes.items() if not isinstance(v, int) or v < 1]:
            raise UserError(f"model config: {', '.join(bad)}: must be a positive whole number")
        if self.n_embd % self.n_head:
            raise UserError(f"model config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.attention not in ("sdpa", "math"):
            raise UserError(f"model config: attention={self.attention!r}, expected 'sdpa' or 'math'")

    @classmethod
    def from_file(cls, values: dict, path: str) -> "GPTConfig":
        """The config a file recorded (a checkpoint's model_config, an HF config.json); errors name the file."""
        try:
            return cls(**values)
        except (TypeError, UserError) as e:  # TypeError: a field this code does not know
            raise CheckpointError(f"{path}: bad model config ({e})") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', 'distilgpt2', or 'tiny' (byte vocab, for CPU demos)."""
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}: choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- attention
# Which attention runs depends on the batch. Padded rows (one example each, padding on the right): no mask at
# all, is_causal=True, exact for every real token, and CUDA may use FlashAttention (which refuses any mask).
# Packed rows (--pack: examples back to back, positions restarting): attention must stay inside each example.
# On CUDA varlen_attn takes the examples' start offsets (cu_seqlens) and computes no block across two of them;
# elsewhere the dense block-diagonal mask below does the same, readable but quadratic in the row's length.
# (FlexAttention would also work, but is fast only compiled, and needs a block mask built for every batch.)
# Generation of prompts of different lengths pads them on the left, and keeps its mask.

def attention_mask(doc_q: torch.Tensor, doc_k: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool: query i (at absolute position start + i) may see key j iff j <= start + i and both
    carry the same document id. Padding (id -1) only sees padding, so no row is empty (an empty row is NaN)."""
    Tq, Tk = doc_q.size(1), doc_k.size(1)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril(diagonal=start)
    same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)  # (B, Tq, Tk)
    return (same_doc & causal).unsqueeze(1)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_len: int) -> torch.Tensor:
    """Causal attention inside each document of a packed batch, (N, nh, hs) in and out, on CUDA's flash kernel.

    cu_seqlens (D+1,) int32 are the documents' start offsets in the N flattened tokens: no mask is built and no
    block across two documents is computed. max_len bounds the longest document (block_size: a constant, so a
    compiled graph does not depend on the batch)."""
    from torch.nn.attention.varlen import varlen_attn  # CUDA only (flash); device.varlen_problem reads its signature
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, window_size=(-1, 0))  # (-1, 0): causal


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, written out. mask None = causal, the last query aligned with the last key."""
    Tq, Tk = q.size(-2), k.size(-2)
    if mask is None:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return F.dropout(att, dropout) @ v  # (B, nh, Tq, hs)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, in buffers allocated once for max_len tokens."""

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer, self.max_len, self.len = n_layer, max_len, 0
        self.k: torch.Tensor | None = None  # (n_layer, B, nh, max_len, hs), allocated at the first update
        self.v: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (B, nh, T, hs) after the old ones; return all of them."""
        if self.k is None:
            B, nh, _, hs = k.shape
            self.k = k.new_empty(self.n_layer, B, nh, self.max_len, hs)
            self.v = torch.empty_like(self.k)
        end = self.len + k.size(2)
        self.k[layer, :, :, self.len:end] = k
        self.v[layer, :, :, self.len:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.config, self.layer = config, layer  # the model's one config: dropout and attention are read live

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        nh = self.config.n_head
        dropout = self.config.dropout if self.training else 0.0
        if cu_seqlens is not None:  # packed documents on CUDA: flatten the rows, one varlen call, no mask
            q, k, v = (t.reshape(B * T, nh, C // nh) for t in (q, k, v))  # (N, nh, hs)
            y = varlen_attention(q, k, v, cu_seqlens, self.config.block_size)  # (N, nh, hs)
            return F.dropout(self.c_proj(y.reshape(B, T, C)), dropout, self.training)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # is_causal aligns the first query with the first key: right unless cached keys come before the queries.
        # After cached keys with no mask, every query sees every key: right for one new token only (next_logits
        # passes a mask for several).
        # A Python bool (not `T > 1`, a symbolic bool under dynamic shapes that breaks torch.compile's graph).
        causal = mask is None and (cache is None or cache.len == 0)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if self.config.attention == "math":
            y = math_attention(q, k, v, mask, dropout)
        else:  # no mask + is_causal: CUDA may pick its flash kernel, which skips the blocks above the diagonal
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return F.dropout(self.c_proj(y), dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new", one fused kernel
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.c_proj(self.gelu(self.c_fc(x))), self.config.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, cu_seqlens)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- the model and its loss

def example_lengths(doc: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): how many tokens of its row share each token's document id (its example's length)."""
    return (doc.unsqueeze(2) == doc.unsqueeze(1)).sum(-1)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V), (N,), (N,) -> (sum_i w_i * CE_i, sum_i w_i), fp32. Targets under weight 0 may be anything (-1)."""
    weights = weights.float()
    targets = torch.where(weights != 0, targets, 0)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    return (weights * ce).sum(), weights.sum()


def chunked_head_cross_entropy(h: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor,
                               weights: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weighted_cross_entropy(h @ head_weight.T, targets, weights), `chunk` positions at a time: (N, C) in.

    Each chunk's logits and float32 log-softmax are freed after its loss and recomputed in backward (checkpoint): at
    most (chunk, V) are held, not (N, V) (~0.2 MB per position at GPT-2's vocabulary), for one more head matmul."""
    weights = weights.float()
    targets = torch.where(weights != 0, targets, 0)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for i in range(0, h.size(0), chunk):
        part = slice(i, i + chunk)
        total = total + checkpoint(_head_loss, h[part], head_weight, targets[part], weights[part], use_reentrant=False)
    return total, weights.sum()


def _head_loss(h: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(F.linear(h, head_weight).float(), targets, reduction="none")  # (n,), as the whole head
    return (weights * ce).sum()


def head_positions(weights: torch.Tensor) -> torch.Tensor:
    """(B, T) weights -> (N,) int64: the positions whose weight is not 0, as indices into the flattened (B * T)
    tokens in row-major order (row 0's first). Only these reach the output head: the rest add nothing to the loss.
    Reading their count waits for the device, so training calls this on the CPU, in data.collate."""
    return torch.nonzero(weights.reshape(-1)).squeeze(1)  # (N, 1) -> (N,)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config, layer) for layer in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads tokens in and writes them out
        self.grad_checkpoint = False  # --grad_checkpoint: keep each block's input only, recompute it in backward
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # each block adds two residual branches: keep the sum's scale
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields the tied matrix once

    def embed(self, idx: torch.Tensor, pos: torch.Tensor, doc: torch.Tensor | None,
              neftune_alpha: float) -> torch.Tensor:
        """Token + position embeddings (B, T, C); NEFTune noise on the tokens while training."""
        tok = self.transformer.wte(idx)
        if neftune_alpha > 0 and self.training:  # Jain et al. 2023: scale alpha / sqrt(L d), L = example length
            L = example_lengths(doc) if doc is not None else torch.full_like(idx, idx.size(1))
            scale = neftune_alpha / torch.sqrt(L * self.config.n_embd).unsqueeze(-1)  # (B, T, 1)
            tok = tok + torch.empty_like(tok).uniform_(-1, 1) * scale
        return F.dropout(tok + self.transformer.wpe(pos), self.config.dropout, self.training)

    def forward(self, idx: torch.Tensor, pos: torch.Tensor | None = None, doc: torch.Tensor | None = None,
                select: torch.Tensor | None = None, neftune_alpha: float = 0.0,
                cu_seqlens: torch.Tensor | None = None, head: bool = True) -> torch.Tensor:
        """Logits (B, T, V); or (N, V) for the N positions `select` names: indices into the flattened (B * T)
        tokens, such as head_positions gives (the output head, the largest matmul, runs on those rows only).
        head=False: the final hidden states instead of logits, (B, T, C) or (N, C) (for a chunked head).

        pos: position ids (default 0..T-1). doc: example id of each token (-1 = padding), for NEFTune's lengths.
        cu_seqlens: only for packed rows (several examples per row): (D+1,) int32 start offsets of each run of
        one document id in the flattened tokens (data.collate computes them); attention then stays inside each
        document. Unpacked, right-padded rows need no mask: causal attention is exact for every real token.
        """
        B, T = idx.shape
        if cu_seqlens is None and T > self.config.block_size:
            raise UserError(f"sequence of {T} tokens is longer than the model's block_size {self.config.block_size}")
        if pos is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
        mask, varlen = None, None
        if cu_seqlens is not None and self.uses_varlen(idx.device):
            varlen = cu_seqlens
        elif cu_seqlens is not None:
            mask = attention_mask(doc, doc)  # the readable fallback: a dense (B, 1, T, T) block-diagonal mask
        x = self.embed(idx, pos, doc, neftune_alpha)
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()  # same dropout masks again
        for block in self.transformer.h:
            inputs = (x, mask, None, varlen)
            x = checkpoint(block, *inputs, use_reentrant=False) if recompute else block(*inputs)
        if select is not None:
            x = x.flatten(0, 1).index_select(0, select)  # (N, C): the other positions never reach the head
        x = self.transformer.ln_f(x)
        return self.lm_head(x) if head else x

    def uses_varlen(self, device: torch.device) -> bool:
        """Packed rows take CUDA's varlen flash kernel when it can run: half precision, no attention dropout."""
        if device.type != "cuda" or self.config.attention != "sdpa" or self.config.dropout > 0:
            return False
        return torch.is_autocast_enabled("cuda") or self.transformer.wte.weight.dtype in (torch.float16,
                                                                                          torch.bfloat16)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, pos: torch.Tensor | None = None,
             doc: torch.Tensor | None = None, neftune_alpha: float = 0.0, select: torch.Tensor | None = None,
             cu_seqlens: torch.Tensor | None = None, head_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weights * token losses, sum of weights) over the batch: sums, not a mean; the training step divides
        by the whole step's N (loss.micro_batch_loss), so the update does not depend on how the step was split.
        select: head_positions(weights) (data.collate's Batch.select), so that only the positions that weigh
        anything reach the output head; None runs the head on every position (--no-skip_zero); head_chunk > 0
        (--head_chunk) runs the head and loss that many positions at a time. The same numbers either way."""
        out = self(idx, pos, doc, select, neftune_alpha, cu_seqlens, head=not head_chunk)  # logits, or hidden states
        if select is None:
            out, targets, weights = out.flatten(0, 1), targets.flatten(), weights.flatten()
        else:
            targets, weights = targets.flatten()[select], weights.flatten()[select]
        if head_chunk:
            return chunked_head_cross_entropy(out, self.lm_head.weight, targets, weights, head_chunk)
        return weighted_cross_entropy(out, targets, weights)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float] = (0.9, 0.95),
                             fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices and embeddings only (not on biases and LayerNorm gains).
        fused (default: on CPU and CUDA) updates all parameters in one kernel: on CPU about 6x faster."""
        params = list(self.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        if fused is None:
            fused = params[0].device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    # ------------------------------------------------------------------------- generation

    def next_logits(self, tokens: torch.Tensor, valid: torch.Tensor, cache: KVCache | None,
                    padded: bool | None = None) -> torch.Tensor:
        """(B, V) logits for the token after each row of left-padded `tokens` (B, T), `valid` marking real ones.

        With a cache only the tokens it has not seen run through the model, one or several at a time. Past the
        block size (or without a cache) the last block_size tokens run from scratch, as the model has no position
        beyond that. padded: whether any row is left-padded, if the caller knows (reading `valid` would wait for
        the GPU).
        """
        if padded is None:
            padded = not bool(valid.all())
        if cache is not None and tokens.size(1) > cache.max_len:
            cache = None  # past the block size: positions shift every step, nothing cached stays valid
        start = cache.len if cache is not None else 0
        if cache is None:
            tokens, valid = tokens[:, -self.config.block_size:], valid[:, -self.config.block_size:]
        pos = (valid.cumsum(1) - 1).clamp(min=0)  # each row counts from its first real token
        doc = torch.where(valid, 0, -1)
        # No mask only where is_causal is exact: nothing cached yet, or one new token (which sees every key).
        several_after_cache = start > 0 and tokens.size(1) - start > 1
        mask = attention_mask(doc[:, start:], doc, start) if padded or several_after_cache else None
        x = self.embed(tokens[:, start:], pos[:, start:], None, 0.0)
        for block in self.transformer.h:
            x = block(x, mask, cache)
        if cache is not None:
            cache.len = tokens.size(1)
        return self.lm_head(self.transformer.ln_f(x[:, -1]))

    @torch.no_grad()
    def generate(self, idx: list[list[int]] | torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
        """The new tokens of each prompt (up to its first eos_id, excluded). Prompts may differ in length.

        temperature 0 is greedy; otherwise sample from the top_k / top_p (nucleus) filtered distribution,
        reproducibly for a given `generator`.
        """
        prompts = idx.tolist() if isinstance(idx, torch.Tensor) else [list(p) for p in idx]
        if not prompts or not all(prompts):
            raise UserError("generate needs at least one prompt, and every prompt at least one token")
        device = self.transformer.wte.weight.device
        tokens, valid = left_pad(prompts, device)
        max_len = min(tokens.size(1) + max_new_tokens, self.config.block_size)
        cache = KVCache(self.config.n_layer, max_len) if use_cache else None
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        padded = len({len(p) for p in prompts}) > 1  # known here: next_logits need not read `valid`
        for _ in range(max_new_tokens):
            logits = self.next_logits(tokens, valid, cache, padded)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            for row, token in enumerate(nxt.tolist()):  # the one wait for the GPU per new token
                done[row] = done[row] or token == eos_id
                if not done[row]:
                    out[row].append(token)
            if all(done):
                break
            tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        return out

    # ------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides) -> "GPT":
        """A Hugging Face GPT-2 checkpoint: a model id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2),
        downloaded once into the cache, or a directory with config.json + model.safetensors / pytorch_model.bin.
        Dropout starts at 0 whatever config.json says; `overrides` (e.g. dropout=0.1) change our config."""
        directory = name_or_dir if os.path.isdir(name_or_dir) else pretrained.hub_dir(name_or_dir)
        config_path = os.path.join(directory, "config.json")
        hf_config = pretrained.config_from_hf(pretrained.read_json(config_path), config_path)
        config = GPTConfig.from_file({**hf_config, **overrides}, config_path)
        state = pretrained.state_from_hf(pretrained.read_weights(directory), expected_shapes(config), directory)
        return cls.from_state(config, state)

    @classmethod
    def from_state(cls, config: GPTConfig, state: dict[str, torch.Tensor]) -> "GPT":
        """The model with these weights (lm_head tied to wte), built without a random init to overwrite: the
        modules are made on the meta device (no memory) and take the loaded tensors themselves (assign=True)."""
        with torch.device("meta"):
            model = cls(config)
        state = {k: v.float() for k, v in state.items()}  # assign keeps a tensor's dtype: a fp16 file stays fp32
        model.load_state_dict({**state, "lm_head.weight": state["transformer.wte.weight"]}, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # assign=True gave the head its own Parameter
        return model


# ----------------------------------------------------------------------------- from logits to the next token

def left_pad(prompts: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> tokens (B, T) padded on the left, and the mask of real tokens."""
    T = max(len(p) for p in prompts)
    tokens = torch.tensor([[0] * (T - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    valid = torch.tensor([[False] * (T - len(p)) + [True] * len(p) for p in prompts], device=device)
    return tokens, valid


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, -inf elsewhere."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p (nucleus sampling)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= p  # the mass before this token already reaches p; never the first
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens: argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def expected_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    """Every weight's shape (lm_head is tied to wte, so it is not listed), without allocating the model."""
    with torch.device("meta"):
        state = GPT(config).state_dict()
    return {k: v.shape for k, v in state.items() if k != "lm_head.weight"}


# ----------------------------------------------------------------------------- one entry point for every checkpoint

def load_model(name_or_path: str, device: str = "cpu") -> tuple[GPT, tiktoken.Encoding]:
    """(model in eval mode, tokenizer) from an imgpt checkpoint file, a training out_dir holding ckpt.pt, a
    Hugging Face checkpoint directory, or a model id such as 'gpt2'."""
    path = name_or_path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "ckpt.pt")):
        path = os.path.join(path, "ckpt.pt")
    if os.path.isfile(path):
        model, tok = model_from_checkpoint(path)
    elif os.path.isdir(path) or path in pretrained.HUB_MODELS:
        model = GPT.from_pretrained(path)
        tok = tokenizers.model_dir_tokenizer(path if os.path.isdir(path) else pretrained.hub_dir(path))
    else:
        raise CheckpointError(f"{path!r}: no such file or directory, and not a known model id "
                              f"({', '.join(pretrained.HUB_MODELS)})")
    if tok.n_vocab > model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tok.n_vocab} tokens, the model only {model.config.vocab_size}")
    return model.to(device).eval(), tok


def model_from_checkpoint(path: str) -> tuple[GPT, tiktoken.Encoding]:
    """Rebuild the model and its tokenizer from what an imgpt checkpoint recorded."""
    payload = load_checkpoint(path)
    return model_from_payload(payload, path), tokenizers.tokenizer_from_record(payload.get("tokenizer", "gpt2"), path)


def model_from_payload(payload: dict, path: str) -> GPT:
    """The model of a loaded checkpoint, its weights checked against its model_config (errors name `path`)."""
    config = GPTConfig.from_file(payload["model_config"], path)
    state = {unwrap(k): v for k, v in payload["model"].items()}
    state.pop("lm_head.weight", None)  # tied to wte
    pretrained.check_state(state, expected_shapes(config), path)
    return GPT.from_state(config, state)
