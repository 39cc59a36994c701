"""GPT-2's sizes: the model config (checked when made) and the released presets.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgpt.checkpoint import CheckpointError
from imgpt.cli import UserError

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
