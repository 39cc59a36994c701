"""Tokenizers and how checkpoints carry them: GPT-2's BPE (tiktoken, or vocab.json + merges.txt
from a directory), a byte-level one for tiny models, and the record a checkpoint keeps.
"""
from __future__ import annotations

import json
import os

import tiktoken

from imgpt.checkpoint import CheckpointError
from imgpt.files import cache_dir
from imgpt.pretrained import HUB_MODELS, read_json

EOT = "<|endoftext|>"


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


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
