"""From logits to the next token: greedy, temperature, top-k and top-p; and left padding for a
batch of prompts.
"""
from __future__ import annotations

import torch


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
