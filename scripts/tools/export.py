"""Export a checkpoint to Hugging Face's GPT-2 format, for transformers, lm-evaluation-harness, vLLM and the hub.

    python -m scripts.tools.export --ckpt out --out_dir hf-out
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('hf-out')"
    lm_eval --model hf --model_args pretrained=hf-out --tasks hellaswag,mmlu --batch_size 8

Writes config.json, model.safetensors (Conv1D layout: the four matrices per block stored (in, out), the tied head
left to transformers) and the tokenizer as vocab.json + merges.txt, with a chat template equal to training's.
GPT-2's architecture holds ours exactly, so GPT2LMHeadModel gives the same logits (a test checks <= 1e-4).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.pretrained import CONV1D_WEIGHTS
from imgpt.tokenizers import EOT, bpe_files
from model import GPTConfig, load_model


# data.chat_pieces in Jinja, for tokenizer.apply_chat_template and lm-eval's --apply_chat_template. Newlines are
# written {{ '\n' }}: HF's Jinja drops a raw newline after a block tag.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ '\\n' }}{{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}<|endoftext|>{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}")


@dataclass
class ExportConfig:
    ckpt: str = opt("out", "what to export: a training out_dir (its ckpt.pt), a checkpoint file, or an HF directory")
    out_dir: str = opt("hf-out", "directory to write (must not exist, or be empty, unless --overwrite)")
    overwrite: bool = opt(False, "replace an existing --out_dir")


def hf_config(config: GPTConfig, eot: int) -> dict:
    """config.json of a GPT2LMHeadModel with our architecture (checkpoint.config_from_hf reads it back)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02, "bos_token_id": eot,
            "eos_token_id": eot, "tie_word_embeddings": True, "torch_dtype": "float32"}


def hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in HF's layout: same names, Conv1D weights transposed to (in, out), no tied lm_head
    (safetensors refuses tensors that share memory; transformers re-ties the head to wte)."""
    return {k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v).contiguous()
            for k, v in state.items() if k != "lm_head.weight"}


def tokenizer_files(tok) -> dict[str, str]:
    """vocab.json, merges.txt and the configs that make transformers' GPT2Tokenizer(Fast) match ours."""
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1 << 30,
              "chat_template": CHAT_TEMPLATE, **special}
    return {**bpe_files(tok), "tokenizer_config.json": json.dumps(config, indent=1),
            "special_tokens_map.json": json.dumps(special, indent=1)}


def prepare_dir(path: str, overwrite: bool) -> str:
    """A fresh temporary sibling of `path` to write into; refuses to replace a non-empty `path` by accident."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
        raise UserError(f"--out_dir {path}: exists and is not empty; pass --overwrite to replace it")
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def export(cfg: ExportConfig) -> str:
    """Write cfg.ckpt to cfg.out_dir in Hugging Face format; returns the directory. All or nothing: files go to a
    temporary directory that replaces out_dir only when complete."""
    model, tok = load_model(cfg.ckpt)
    tmp = prepare_dir(cfg.out_dir, cfg.overwrite)
    save_file(hf_state(model.state_dict()), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    files = {"config.json": json.dumps(hf_config(model.config, tok.eot_token), indent=1), **tokenizer_files(tok)}
    for name, text in files.items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    os.replace(tmp, cfg.out_dir)
    return cfg.out_dir


def main() -> None:
    cfg = parse_config(ExportConfig, description=__doc__)
    out = export(cfg)
    print(f"wrote {out}: {', '.join(sorted(os.listdir(out)))}")
    print(f"next: lm_eval --model hf --model_args pretrained={out} --tasks hellaswag,mmlu --batch_size 8")


if __name__ == "__main__":
    run_cli(main)
