"""imgpt/tokenizers.py: GPT-2's BPE from any of its file sets, the byte tokenizer, and the record a checkpoint keeps."""
import json
import os
import shutil

import pytest
import tiktoken
import tiktoken.load

from conftest import write_tiny_bpe
from imgpt import tokenizers
from imgpt.checkpoint import CheckpointError
from imgpt.tokenizers import get_tokenizer


def test_gpt2_tokenizer_from_openai_files(gpt2_bpe_dir, monkeypatch):
    tok = get_tokenizer(gpt2_bpe_dir)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256] and tok.eot_token == 50256
    assert tok.n_vocab == 50257
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's own loader, without it copying the files to /tmp
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(gpt2_bpe_dir, "vocab.bpe"),
                                                          os.path.join(gpt2_bpe_dir, "encoder.json"))
    assert tok._mergeable_ranks == ranks


def test_gpt2_by_name_uses_tiktoken_cache(gpt2_bpe_dir, tmp_path, monkeypatch):
    # tiktoken names its cache files sha1(url) of the files' URLs; with matching hashes it never downloads
    shutil.copy(os.path.join(gpt2_bpe_dir, "vocab.bpe"), tmp_path / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(os.path.join(gpt2_bpe_dir, "encoder.json"), tmp_path / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("names", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
def test_tokenizer_from_a_directory(tmp_path, names):
    vocab = write_tiny_bpe(tmp_path, names)
    tok = get_tokenizer(str(tmp_path))
    assert tok.encode("hello") == [vocab["he"], vocab["ll"], ord("o") - 33]  # 'o' is printable: rank = byte - 33
    assert tok.encode(" w") == [vocab["Ġw"]]
    assert tok.eot_token == vocab["<|endoftext|>"] == 259 and tok.decode(tok.encode("hello world")) == "hello world"


def test_tokenizer_directory_with_inconsistent_files(tmp_path):
    write_tiny_bpe(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nl l\nh e\nĠ w\n")  # ids no longer follow merge order
    with pytest.raises(CheckpointError, match="do not follow the order of the merges"):
        get_tokenizer(str(tmp_path))


def test_byte_tokenizer_round_trip():
    tok = get_tokenizer("byte")
    text = "naïve café — 東京 🙂"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert tok.encode("<|endoftext|>", allowed_special="all") == [256] == [tok.eot_token] and tok.n_vocab == 257


def test_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="unknown tokenizer 'nope': not 'byte' or 'gpt2', and no such directory"):
        get_tokenizer("nope")
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        get_tokenizer(str(tmp_path))
    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="Offline.*directory holding vocab.json"):
        get_tokenizer("gpt2")


def test_tokenizer_record_rebuilds_the_same_tokenizer(tmp_path):
    write_tiny_bpe(tmp_path)
    tok = get_tokenizer(str(tmp_path))
    record = tokenizers.tokenizer_record(tok)
    assert record["merges.txt"] == "#version: 0.2\nh e\nl l\nĠ w"  # the merges, recovered from the ranks
    again = tokenizers.tokenizer_from_record(record)
    assert again._mergeable_ranks == tok._mergeable_ranks and again.eot_token == 259
    assert tokenizers.tokenizer_record(get_tokenizer("byte")) == "byte"
    assert tokenizers.merge_of(b"abcd", {b"a": 0, b"b": 1, b"c": 2, b"d": 3, b"cd": 4, b"ab": 5, b"abcd": 6}) == \
        (b"ab", b"cd")
    with pytest.raises(CheckpointError, match=r"c.pt: its tokenizer directory /gone is gone .*vocab.json and merges"):
        tokenizers.tokenizer_from_record("/gone", "c.pt")


def test_gpt2_record_reproduces_gpt2_merges_file(gpt2_bpe_dir):
    record = tokenizers.tokenizer_record(get_tokenizer(gpt2_bpe_dir))
    with open(os.path.join(gpt2_bpe_dir, "vocab.bpe"), encoding="utf-8") as f:
        assert record["merges.txt"].split("\n") == f.read().rstrip("\n").split("\n")  # all 50000 merges, in order
    with open(os.path.join(gpt2_bpe_dir, "encoder.json"), encoding="utf-8") as f:
        assert json.loads(record["vocab.json"]) == json.load(f)
