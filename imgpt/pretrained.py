"""Hugging Face GPT-2 checkpoints: downloads into the cache, config.json and the weights
(safetensors or pytorch_model.bin), checked against the shapes our model expects.

Downloads go to $IMGPT_CACHE (default ~/.cache/imgpt)/<model id>/ and come from $HF_ENDPOINT (default
https://huggingface.co), so a mirror works; a cached file is always a whole file. Offline, point at a local directory.
"""
from __future__ import annotations

import json
import os
import urllib.error

import torch
from safetensors.torch import load_file

from imgpt.checkpoint import CheckpointError, load_error, torch_load
from imgpt.files import cache_dir, download

HUB_MODELS = {  # our short name -> repository on the Hugging Face hub
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


HUB_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")


def hub_dir(name: str) -> str:
    """The local directory holding model `name` (one of HUB_MODELS), downloading whatever is not cached yet."""
    if name not in HUB_MODELS:
        raise CheckpointError(f"{name!r} is neither a local directory nor a known model id "
                              f"({', '.join(HUB_MODELS)})")
    local = os.path.join(cache_dir(), name)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    for filename in HUB_FILES:
        path = os.path.join(local, filename)
        if os.path.isfile(path):
            continue
        url = f"{endpoint}/{HUB_MODELS[name]}/resolve/main/{filename}"
        try:
            download(url, path)
        except (urllib.error.URLError, OSError) as e:
            raise CheckpointError(
                f"cannot download {url} ({getattr(e, 'reason', e)}). Offline? Copy the model's files "
                f"({', '.join(HUB_FILES)}) from a machine with internet into {local}, or into any directory "
                f"and pass that directory instead of {name!r}; set HF_ENDPOINT to use a mirror") from None
    return local


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as f:  # a UTF-8 BOM (Windows editors write one) is not JSON
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser's stack
        raise CheckpointError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face checkpoint directory: model.safetensors, else pytorch_model.bin, either of
    them possibly split into shards listed by a `<name>.index.json`."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = os.path.join(directory, name + ".index.json")
        if os.path.isfile(os.path.join(directory, name)):
            files = [name]
        elif os.path.isfile(index):
            files = sorted(set(read_json(index).get("weight_map", {}).values()))
        else:
            continue
        return {k: v for f in files for k, v in read_weight_file(os.path.join(directory, f)).items()}
    raise CheckpointError(f"{directory}: holds neither model.safetensors nor pytorch_model.bin")


def read_weight_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found (listed in the checkpoint's index)")
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        try:
            return torch_load(path, mmap=True)  # tensors only: no code runs
        except Exception:  # a legacy (non-zip) file cannot be memory-mapped: read it whole, with its own error
            return torch_load(path)
    except Exception as e:  # safetensors, pickle and zip errors have no common base class
        raise load_error(path, e, "a weights file") from None


def config_from_hf(hf: dict, path: str = "config.json") -> dict:
    """GPTConfig fields from a Hugging Face GPT-2 config.json; anything GPT-2's architecture lacks is refused."""
    missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size") if k not in hf]
    if missing or ("n_positions" not in hf and "n_ctx" not in hf):
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing or ['n_positions'])}")
    unsupported = {
        "model_type": hf.get("model_type", "gpt2") != "gpt2",
        "activation_function": hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"),
        "n_inner": hf.get("n_inner") not in (None, 4 * hf["n_embd"]),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": hf.get("add_cross_attention", False),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [f"{k}={hf[k]!r}" for k, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{path}: not a plain GPT-2 architecture: {', '.join(bad)}")
    return dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], vocab_size=hf["vocab_size"],
                block_size=hf.get("n_positions", hf.get("n_ctx")),
                layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))


CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def state_from_hf(hf: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                  path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename and transpose a Hugging Face GPT-2 state dict into ours, checked against `expected` shapes.

    Old checkpoints (the hub's gpt2) lack the `transformer.` prefix and carry the causal-mask buffers
    `attn.bias`/`attn.masked_bias`; `lm_head.weight` is tied to wte. HF's Conv1D stores (in, out), nn.Linear
    (out, in): four weights per block get a transpose.
    """
    state = {}
    for key, tensor in hf.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        key = key if key.startswith("transformer.") else "transformer." + key
        state[key] = tensor.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else tensor  # the model keeps it
    check_state(state, expected, path)
    return state


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: str) -> None:
    """One CheckpointError naming every missing, unexpected and mis-shaped key, if there are any."""
    problems = []
    if not_tensors := sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor)):
        raise CheckpointError(f"{path}: weights that are not tensors: {listing(not_tensors)}")
    if missing := sorted(set(expected) - set(state)):
        problems.append(f"missing keys {listing(missing)}")
    if unexpected := sorted(set(state) - set(expected)):
        problems.append(f"unexpected keys {listing(unexpected)}")
    if wrong := [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k]]:
        problems.append(f"wrong shapes {listing(wrong)}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the model config: {'; '.join(problems)}")


def listing(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
