"""Model files from outside and our own: Hugging Face GPT-2 checkpoints, the tokenizers that go with them,
and imgpt's training checkpoints.

model.py builds the network; this file only turns files into plain dicts and tensors (and back), so it imports
nothing from the project except runtime. Every way a file can be wrong ends in one CheckpointError that names it.

Downloads go to $IMGPT_CACHE (default ~/.cache/imgpt)/<model id>/ and come from $HF_ENDPOINT
(default https://huggingface.co), so a mirror works. A file is written to `<name>.<host>.<pid>.tmp` (runtime.temp_path)
and renamed when complete: a cached file is always a whole file. Offline, point at a local directory instead.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import urllib.error
import warnings
from typing import Any

import tiktoken
import torch
from safetensors.torch import load_file

from runtime import UserError, cache_dir, download, write_atomic


class CheckpointError(UserError):
    """A checkpoint or tokenizer that cannot be found, downloaded or read: the message says which and why."""


# ----------------------------------------------------------------------------- downloading from the hub

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


# ----------------------------------------------------------------------------- Hugging Face checkpoint -> tensors

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


# ----------------------------------------------------------------------------- tokenizers

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"


def byte_tokenizer() -> tiktoken.Encoding:
    """256 byte tokens plus <|endoftext|> = 256: any text encodes, nothing to download."""
    return tiktoken.Encoding(name="byte", pat_str=GPT2_PATTERN, mergeable_ranks={bytes([b]): b for b in range(256)},
                             special_tokens={EOT: 256}, explicit_n_vocab=257)


def gym_byte_decoder() -> dict[str, int]:
    """GPT-2's vocab files spell bytes as printable characters: printable ones as themselves, others as chr(256+n)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def bpe_ranks(vocab: dict[str, int], merges: list[str]) -> dict[bytes, int]:
    """tiktoken's mergeable ranks from GPT-2's vocab.json + merges.txt (the same as tiktoken's data_gym loader,
    which we do not call because it copies local files into its download cache, keyed by path, and serves the
    stale copy after the file changes). tiktoken merges in rank order, so ids must follow merges.txt."""
    decode = gym_byte_decoder()
    ranks = {bytes([decode[c]]): vocab[c] for c in decode}  # GPT-2 numbers bytes in printable order, ours 0..255
    for line in merges:
        first, second = line.split()
        ranks[bytes(decode[c] for c in first + second)] = len(ranks)
    from_vocab = {bytes(decode[c] for c in token): i for token, i in vocab.items() if token != EOT}
    if ranks != from_vocab:
        raise ValueError("token ids in the vocabulary do not follow the order of the merges")
    return ranks


def tokenizer_files(directory: str) -> tuple[str, str] | None:
    """(vocab, merges) paths under their Hugging Face or original OpenAI names, or None."""
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if os.path.isfile(os.path.join(directory, vocab)) and os.path.isfile(os.path.join(directory, merges)):
            return os.path.join(directory, vocab), os.path.join(directory, merges)
    return None


def bpe_tokenizer(directory: str) -> tiktoken.Encoding:
    """A GPT-2-style BPE built offline from a directory's vocab.json + merges.txt (or encoder.json + vocab.bpe)."""
    files = tokenizer_files(directory)
    if files is None:
        raise CheckpointError(f"{directory}: no tokenizer files (vocab.json + merges.txt, or encoder.json + vocab.bpe)")
    vocab = read_json(files[0])
    try:
        with open(files[1], encoding="utf-8-sig") as f:
            merges = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        ranks = bpe_ranks(vocab, merges)
    except (OSError, ValueError, KeyError) as e:  # KeyError: a byte missing from the vocabulary
        raise CheckpointError(f"{directory}: unusable tokenizer files ({type(e).__name__}: {e})") from None
    if EOT not in vocab:
        raise CheckpointError(f"{files[0]}: has no {EOT} token")
    return tiktoken.Encoding(name=directory, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: vocab[EOT]})


def cached_gpt2_tokenizer() -> tiktoken.Encoding | None:
    """GPT-2's BPE if this machine has it without a download: tiktoken's cache ($TIKTOKEN_CACHE_DIR), else the
    files of a GPT-2 model in $IMGPT_CACHE; None otherwise."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # network errors come from requests, hash errors as ValueError
        pass
    for name in HUB_MODELS:
        directory = os.path.join(cache_dir(), name)
        if tokenizer_files(directory):
            return bpe_tokenizer(directory)
    return None


def gpt2_tokenizer() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding (downloaded once into its cache), else the files of a downloaded GPT-2 model."""
    tok = cached_gpt2_tokenizer()
    if tok is None:
        raise CheckpointError("cannot load the GPT-2 tokenizer (no network, nothing cached). Offline? Pass a "
                              "directory holding vocab.json + merges.txt (or encoder.json + vocab.bpe) instead of "
                              "'gpt2', or fill tiktoken's cache ($TIKTOKEN_CACHE_DIR)")
    return tok


def get_tokenizer(name_or_dir: str) -> tiktoken.Encoding:
    """'byte', 'gpt2' (any GPT-2 model id works too), or a directory with GPT-2 BPE files. `tok.eot_token` is EOS."""
    if name_or_dir == "byte":
        return byte_tokenizer()
    if name_or_dir in HUB_MODELS:
        return gpt2_tokenizer()
    if os.path.isdir(name_or_dir):
        return bpe_tokenizer(name_or_dir)
    raise CheckpointError(f"unknown tokenizer {name_or_dir!r}: not 'byte' or 'gpt2', and no such directory "
                          "(one holding vocab.json + merges.txt)")


def model_dir_tokenizer(directory: str) -> tiktoken.Encoding:
    """The tokenizer of a Hugging Face model directory: its own files, else GPT-2's BPE if cached on this machine
    (save_pretrained writes no tokenizer files unless the tokenizer is saved too)."""
    if tokenizer_files(directory):
        return bpe_tokenizer(directory)
    tok = cached_gpt2_tokenizer()
    if tok is None:
        raise CheckpointError(f"{directory}: has no tokenizer files, and GPT-2's is not cached on this machine: add "
                              f"the model's vocab.json and merges.txt to {directory}")
    return tok


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens BPE merged into `token`: replay the merges ranked below it on its bytes, lowest rank first."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pair_ranks = [ranks.get(a + b, len(ranks)) for a, b in zip(parts, parts[1:])]
        i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def bpe_files(tok: tiktoken.Encoding) -> dict[str, str]:
    """The text of GPT-2-style vocab.json and merges.txt for any tiktoken BPE (bpe_ranks' inverse), e.g. to
    store in a checkpoint or to export for Hugging Face; for the byte tokenizer, 257 tokens and no merges."""
    spell = {b: c for c, b in gym_byte_decoder().items()}
    text = {t: "".join(spell[b] for b in t) for t in tok._mergeable_ranks}
    vocab = {text[t]: i for t, i in tok._mergeable_ranks.items()} | tok._special_tokens
    merges = [" ".join(text[p] for p in merge_of(t, tok._mergeable_ranks))
              for t, _ in sorted(tok._mergeable_ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "\n".join(["#version: 0.2", *merges])}


def tokenizer_record(tok: tiktoken.Encoding) -> str | dict[str, str]:
    """What a checkpoint stores to rebuild `tok` on any machine: 'byte' (built in), or the text of its vocab.json
    and merges.txt, never a path (the directory may move, the checkpoint may be copied)."""
    return "byte" if tok.name == "byte" else bpe_files(tok)


def tokenizer_from_record(record: str | dict, path: str = "checkpoint") -> tiktoken.Encoding:
    """The tokenizer a checkpoint stored (tokenizer_record); older checkpoints stored a name or a directory."""
    if isinstance(record, str):
        if os.sep in record and not os.path.isdir(record):  # a directory path, as old checkpoints stored
            raise CheckpointError(f"{path}: its tokenizer directory {record} is gone (the checkpoint predates "
                                  "self-contained tokenizers): copy vocab.json and merges.txt back there")
        return get_tokenizer(record)
    try:
        vocab = json.loads(record["vocab.json"])
        merges = [line for line in record["merges.txt"].split("\n") if line and not line.startswith("#version")]
        return tiktoken.Encoding(name=path, pat_str=GPT2_PATTERN, mergeable_ranks=bpe_ranks(vocab, merges),
                                 special_tokens={EOT: vocab[EOT]})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: unusable stored tokenizer ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- our own checkpoints

class KeepWriteErrors:
    """A file whose write errors are remembered: torch's zip writer replaces them by an opaque RuntimeError
    ("unexpected pos 704 vs 598" on a full disk), so save_checkpoint re-raises the real one."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str, payload: dict) -> None:
    """torch.save, atomically (runtime.write_atomic): a crash, a full disk or a power loss mid-write leaves the
    previous checkpoint intact and no temp file behind."""
    def write(f) -> None:
        out = KeepWriteErrors(f)
        try:
            torch.save(payload, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
    write_atomic(path, write)


def load_error(path: str, e: Exception, what: str) -> CheckpointError:
    """One line for a file torch.load could not read: code refused as such (refuse_code), anything else as what the
    file is not, with torch's reason in a few words, never its advice to retry with weights_only=False (which would
    run whatever code the file holds)."""
    refuse_code(path, e)
    text = str(e).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line
             and "torch.load" not in line and "file an issue" not in line]
    reason = f"{type(e).__name__}: {lines[0].split('. ')[0][:100]}" if lines else type(e).__name__
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return CheckpointError(f"{path}: not {what} (an empty file)")
    return CheckpointError(f"{path}: not {what} (damaged, or another kind of file: {reason})")


def torch_load(path: str, **kw) -> Any:
    """torch.load with weights_only=True (tensors and plain values: no code runs), quiet about a foreign pickle's
    protocol: what cannot be read is load_error's one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True, **kw)


def refuse_code(path: str, e: Exception) -> None:
    """A file whose pickle names a callable (`posix.system`, a class) holds code, which weights_only refused to run:
    say so in one line, without torch's advice to retry with weights_only=False."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and found:
        raise CheckpointError(f"{path}: refused: the file holds Python code ({found.group(1)}), not only tensors "
                              f"and plain values; imgpt never runs code from a file") from None


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by save_checkpoint, read with weights_only=True (tensors and plain Python only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch_load(path)
    except Exception as e:  # pickle, zip and weights_only errors have no common base class
        raise load_error(path, e, "a PyTorch checkpoint") from None
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), dict) for k in ("model", "model_config")):
        raise CheckpointError(f"{path}: not an imgpt checkpoint (needs the keys 'model' and 'model_config', "
                              "each a dictionary)")
    return payload


def saved_train_config(ckpt: str) -> dict | None:
    """The TrainConfig saved in a train.py checkpoint (a file, or an out_dir's ckpt.pt); None for pretrained weights
    (a name or a Hugging Face directory)."""
    path = os.path.join(ckpt, "ckpt.pt") if os.path.isdir(ckpt) else ckpt
    if not os.path.isfile(path):
        return None
    try:  # mmap: read the small config without loading the weights and optimizer state a second time
        payload = torch_load(path, mmap=True)
    except Exception:  # e.g. a legacy (non-zip) file: fall back to a plain load, with its clear errors
        payload = load_checkpoint(path)
    config = payload.get("config") if isinstance(payload, dict) else None
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{path}: key 'config' holds a {type(config).__name__}, not the training settings "
                              "train.py writes there")
    return config


TRAINING_KEYS = {"model": dict, "model_config": dict, "tokenizer": (str, dict), "config": dict, "optimizer": dict,
                 "scaler": dict, "step": int, "data_state": dict, "rng": list, "best_val_loss": (int, float),
                 "history": list}


def check_training_checkpoint(payload: dict, path: str) -> None:
    """Everything `train.py --init_from resume` reads from a checkpoint is there, each of the right kind."""
    for key, kind in TRAINING_KEYS.items():
        if key not in payload:
            raise CheckpointError(f"{path}: key {key!r} is missing: not a checkpoint train.py can resume")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(payload[key]).__name__}, not what train.py "
                                  "wrote there")
    if not all(type(payload["data_state"].get(k)) is int and payload["data_state"][k] >= 0 for k in ("epoch", "index")):
        raise CheckpointError(f"{path}: key 'data_state' needs whole numbers 'epoch' and 'index', 0 or more")
    if payload["step"] < 0:
        raise CheckpointError(f"{path}: key 'step' is negative ({payload['step']})")


def rng_state() -> dict:
    """Every random stream training draws from (dropout, NEFTune noise), as weights_only-loadable values. On CUDA,
    this process's own GPU only (the one it draws from), so a resume on a machine with fewer GPUs still fits."""
    version, state, gauss = random.getstate()
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": [version, list(state), gauss]}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():  # older checkpoints hold every visible GPU's: take this one's
        here = torch.cuda.current_device()
        torch.cuda.set_rng_state(s["cuda"][here if len(s["cuda"]) > here else 0])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
