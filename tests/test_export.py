"""scripts/tools/export.py: transformers loads the exported directory and computes what we compute."""
import json
import os

import pytest
import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

import data
from imgpt import tokenizers
from imgpt.checkpoint import save_checkpoint
from imgpt.cli import UserError
from imgpt.tokenizers import get_tokenizer
from model import GPT, GPTConfig, load_model
from scripts.tools import export
from conftest import write_tiny_bpe

TEXTS = ["hello world", "Hello, naïve café — 東京 🙂\n\n  tabs\tand  spaces", "he'll well <|endoftext|> hello"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me Kane's tool."},
        {"role": "assistant", "content": "pen."}, {"role": "user", "content": "And hello?"}]


def random_checkpoint(directory, tok) -> str:
    """A tiny GPT with weights far from their initialization (so logits differ across tokens), saved by us."""
    torch.manual_seed(0)
    net = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.n_vocab + 3))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    path = os.path.join(directory, "ckpt.pt")
    save_checkpoint(path, {"model": net.state_dict(), "model_config": vars(net.config),
                           "tokenizer": tokenizers.tokenizer_record(tok)})
    return path


@pytest.fixture(params=["byte", "bpe"])
def exported(request, tmp_path):
    """(our model, our tokenizer, the exported directory) for the byte tokenizer and a small BPE."""
    if request.param == "byte":
        tok = get_tokenizer("byte")
    else:
        write_tiny_bpe(tmp_path / "tok")
        tok = get_tokenizer(str(tmp_path / "tok"))
    ckpt = random_checkpoint(tmp_path, tok)
    out = export.export(export.ExportConfig(ckpt=ckpt, out_dir=str(tmp_path / "hf")))
    model, tok = load_model(ckpt)
    return model, tok, out


def test_transformers_gives_our_logits(exported):
    model, tok, out = exported
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.tensor([tok.encode(TEXTS[1])[:40], tok.encode(TEXTS[0] * 8)[:40]])  # (2, 40)
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() <= 1e-4
    assert ours.std().item() > 0.3  # the weights are far from their init, so the check has teeth
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as in ours


def test_transformers_tokenizer_gives_our_ids(exported):
    _, tok, out = exported
    hf_tok = GPT2TokenizerFast.from_pretrained(out)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text, allowed_special="all")
    assert hf_tok.eos_token_id == tok.eot_token
    ids = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == data.prompt_ids(CHAT, tok)  # the exported chat template is training's template


def test_export_reads_back_in_imgpt(exported):
    model, tok, out = exported
    again, again_tok = load_model(out)
    idx = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        assert torch.equal(again(idx), model(idx))
    assert again_tok._mergeable_ranks == tok._mergeable_ranks
    assert json.loads(open(os.path.join(out, "config.json")).read())["architectures"] == ["GPT2LMHeadModel"]


def test_export_refuses_to_replace_a_directory(tmp_path):
    ckpt = random_checkpoint(tmp_path, get_tokenizer("byte"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match=r"--out_dir .*hf: exists and is not empty; pass --overwrite"):
        export.export(export.ExportConfig(ckpt=ckpt, out_dir=str(tmp_path / "hf")))
    assert os.listdir(tmp_path / "hf") == ["mine.txt"] and not os.path.exists(tmp_path / "hf.tmp")
    export.export(export.ExportConfig(ckpt=ckpt, out_dir=str(tmp_path / "hf"), overwrite=True))
    assert "mine.txt" not in os.listdir(tmp_path / "hf") and "model.safetensors" in os.listdir(tmp_path / "hf")


def test_real_gpt2_tokenizer_exports_equal(gpt2_bpe_dir, tmp_path):
    tok = get_tokenizer(gpt2_bpe_dir)
    for name, text in export.tokenizer_files(tok).items():
        (tmp_path / name).write_text(text)
    hf_tok = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    for text in TEXTS + ["The Quick brown fox's 1,234.5 jumps; it'll don't I've."]:
        assert hf_tok(text)["input_ids"] == tok.encode(text, allowed_special="all")
