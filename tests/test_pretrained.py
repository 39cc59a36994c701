"""imgpt/pretrained.py and model.load_model: Hugging Face GPT-2 checkpoints load with our logits; a bad file is one
line."""
import json
import os
import shutil

import pytest
import tiktoken
import tiktoken.load
import torch
from safetensors.torch import load_file, save_file

from conftest import hf_model, write_tiny_bpe
from imgpt import pretrained, tokenizers
from imgpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from imgpt.tokenizers import get_tokenizer
from model import GPT, GPTConfig, load_model

# (n_layer, n_head, n_embd, n_positions, vocab_size): the last has neither a power-of-two vocab nor context
HF_SHAPES = [(2, 2, 32, 64, 128), (3, 4, 48, 40, 96), (1, 3, 24, 37, 101)]


def save_legacy_bin(hf, directory):
    """The hub's old pytorch_model.bin layout: no `transformer.` prefix, causal-mask buffers, lm_head present."""
    os.makedirs(directory)
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    T = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.ones(T, T, dtype=torch.bool).tril().view(1, 1, T, T)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    hf.config.to_json_file(os.path.join(directory, "config.json"))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """For each shape: the reference model, and the same weights saved as safetensors and as a legacy .bin."""
    out = []
    for i, shape in enumerate(HF_SHAPES):
        hf = hf_model(*shape, seed=i)
        root = tmp_path_factory.mktemp(f"hf{i}")
        hf.save_pretrained(root / "st")
        save_legacy_bin(hf, root / "bin")
        out.append((hf, str(root / "st"), str(root / "bin")))
    return out


@pytest.mark.parametrize("case", range(len(HF_SHAPES)))
@pytest.mark.parametrize("fmt", ["st", "bin"])
def test_logits_and_greedy_match_huggingface(hf_dirs, case, fmt):
    hf, st_dir, bin_dir = hf_dirs[case]
    model = GPT.from_pretrained(st_dir if fmt == "st" else bin_dir).eval()
    T, V = hf.config.n_positions, hf.config.vocab_size
    assert model.config.block_size == T and model.config.vocab_size == V
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(case))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= 1e-4
    prompt = idx[:1, :7]
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    ours = model.generate(prompt, max_new_tokens=20)[0]
    assert ours == ref[0, 7:].tolist()
    assert len(set(ours)) > 3  # a real continuation, not one token repeated


def test_loaded_head_is_tied(hf_dirs):
    model = GPT.from_pretrained(hf_dirs[0][2])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, hf_dirs[0][0].lm_head.weight)


def test_state_dict_names_are_huggingface_names(hf_dirs):
    hf = hf_dirs[0][0]
    c = hf.config
    ours = GPT(GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
                         vocab_size=c.vocab_size))
    assert set(ours.state_dict()) == set(hf.state_dict())


def test_load_model_from_huggingface_directory(tmp_path):
    hf = hf_model(1, 2, 16, 20, 260)
    hf.save_pretrained(tmp_path)
    write_tiny_bpe(tmp_path)
    model, tok = load_model(str(tmp_path))
    assert tok.eot_token == 259 and model.config.vocab_size == 260 and not model.training
    small = hf_model(1, 2, 16, 20, 100)
    small.save_pretrained(tmp_path)  # a vocabulary smaller than the tokenizer's is refused
    with pytest.raises(CheckpointError, match="tokenizer has 260 tokens, the model only 100"):
        load_model(str(tmp_path))


def test_huggingface_directory_without_tokenizer_files(tmp_path, monkeypatch):
    hf_model(1, 2, 16, 20, 260).save_pretrained(tmp_path)  # save_pretrained writes no tokenizer files
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path))
    assert str(e.value) == (f"{tmp_path}: has no tokenizer files, and GPT-2's is not cached on this machine: add the "
                            f"model's vocab.json and merges.txt to {tmp_path}")
    write_tiny_bpe(tmp_path / "empty" / "gpt2")  # GPT-2's files cached by an earlier download: used offline
    assert load_model(str(tmp_path))[1].eot_token == 259


def test_compiled_and_ddp_prefixes_are_accepted(tmp_path):
    tiny = GPT(GPTConfig.preset("tiny", n_layer=1, n_head=2, n_embd=16, block_size=16))
    state = {"module._orig_mod." + k: v for k, v in tiny.state_dict().items()}
    save_checkpoint(str(tmp_path / "c.pt"), {"model": state, "model_config": vars(tiny.config), "tokenizer": "byte"})
    model, _ = load_model(str(tmp_path / "c.pt"))
    assert torch.equal(model.transformer.wte.weight, tiny.transformer.wte.weight)


def test_missing_directory_and_unknown_id(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory, and not a known model id"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="neither a local directory nor a known model id.*gpt2-medium"):
        GPT.from_pretrained("gpt3")


def test_corrupt_safetensors(hf_dirs, tmp_path):
    directory = tmp_path / "bad"
    shutil.copytree(hf_dirs[0][1], directory)
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a weights file \\(damaged"):
        GPT.from_pretrained(str(directory))


def test_wrong_shapes_and_missing_keys(hf_dirs, tmp_path):
    directory = tmp_path / "bad"
    shutil.copytree(hf_dirs[0][1], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_positions": 50}))
    with pytest.raises(CheckpointError, match=r"wrong shapes transformer.wpe.weight \(64, 32\) "
                                              r"\(expected \(50, 32\)\)"):
        GPT.from_pretrained(str(directory))
    (directory / "config.json").write_text(json.dumps(config))
    state = load_file(directory / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.1.extra"] = torch.zeros(1)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys transformer.h.1.mlp.c_fc.bias; "
                                              r"unexpected keys transformer.h.1.extra"):
        GPT.from_pretrained(str(directory))


def test_sharded_safetensors(hf_dirs, tmp_path):
    hf, st_dir, _ = hf_dirs[0]
    shutil.copy(os.path.join(st_dir, "config.json"), tmp_path)
    state = load_file(os.path.join(st_dir, "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    idx = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        assert (GPT.from_pretrained(str(tmp_path)).eval()(idx) - hf(idx).logits).abs().max() <= 1e-4
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: file not found"):
        GPT.from_pretrained(str(tmp_path))


def test_unsupported_architecture_and_missing_weights(hf_dirs, tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    shutil.copy(os.path.join(hf_dirs[0][1], "config.json"), directory)
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(str(directory))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="not a plain GPT-2 architecture: scale_attn_by_inverse_layer_idx=True"):
        GPT.from_pretrained(str(directory))


def test_offline_with_empty_cache_says_how_to_use_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port: refused at once
    with pytest.raises(CheckpointError, match=r"cannot download http://127.0.0.1:9/openai-community/gpt2/resolve/"
                                              r"main/config.json.*Offline\?.*pass that directory"):
        GPT.from_pretrained("gpt2")
    assert not any(p.suffix == ".tmp" for p in tmp_path.rglob("*"))


def test_download_uses_endpoint_and_cache(tmp_path, monkeypatch):
    """A stand-in hub on a local file:// endpoint: files land in the cache, then load with no endpoint at all."""
    repo = tmp_path / "mirror" / "distilbert" / "distilgpt2" / "resolve" / "main"
    hf_model(1, 2, 16, 20, 260).save_pretrained(repo)
    write_tiny_bpe(repo)
    monkeypatch.setenv("IMGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", (tmp_path / "mirror").as_uri())
    model, tok = load_model("distilgpt2")
    assert sorted(os.listdir(tmp_path / "cache" / "distilgpt2")) == sorted(pretrained.HUB_FILES)
    assert tok.eot_token == 259
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    again = GPT.from_pretrained("distilgpt2")
    assert torch.equal(again.transformer.wte.weight, model.transformer.wte.weight)


def test_corrupt_imgpt_checkpoint(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="ckpt.pt: not a PyTorch checkpoint \\(damaged"):
        load_model(str(tmp_path))
    torch.save({"step": 1}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="needs the keys 'model' and 'model_config'"):
        load_model(str(tmp_path / "ckpt.pt"))


def test_checkpoint_round_trip_brings_model_and_tokenizer_back(tmp_path):
    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=260)).eval()
    tok_dir = tmp_path / "tok"
    write_tiny_bpe(tok_dir)
    path = str(tmp_path / "run" / "ckpt.pt")
    record = tokenizers.tokenizer_record(get_tokenizer(str(tok_dir)))
    save_checkpoint(path, {"model": tiny.state_dict(), "model_config": vars(tiny.config), "tokenizer": record,
                           "step": 3})
    shutil.rmtree(tok_dir)  # the checkpoint carries its tokenizer: the files it came from may go
    assert not os.path.exists(path + ".tmp") and load_checkpoint(path)["step"] == 3
    for where in (path, str(tmp_path / "run")):  # the file, or the out_dir holding it
        model, tok = load_model(where)
        assert tok.eot_token == 259 and not model.training
        idx = torch.randint(0, 260, (1, 9))
        with torch.no_grad():
            assert torch.equal(model(idx), tiny(idx))
        assert model.lm_head.weight is model.transformer.wte.weight
