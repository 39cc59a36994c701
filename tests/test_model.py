"""model.py and checkpoint.py: parity with Hugging Face GPT-2, loss, generation, packing, tokenizers, bad files."""
import json
import os
import shutil

import pytest
import tiktoken
import tiktoken.load
import torch
from safetensors.torch import load_file, save_file

import checkpoint
from data import doc_starts
from model import (GPT, CheckpointError, GPTConfig, KVCache, load_checkpoint, load_model, save_checkpoint,
                   sample_next, top_k_filter, top_p_filter, weighted_cross_entropy, get_tokenizer)
from runtime import UserError

# (n_layer, n_head, n_embd, n_positions, vocab_size): the last has neither a power-of-two vocab nor context
HF_SHAPES = [(2, 2, 32, 64, 128), (3, 4, 48, 40, 96), (1, 3, 24, 37, 101)]


def hf_model(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0):
    """A random reference GPT-2 whose greedy continuations vary (strong position embeddings keep them from
    collapsing into one repeated token, as GPT-2's own 0.02 init does)."""
    transformers = pytest.importorskip("transformers")  # the reference, from requirements-dev.txt
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                  vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, (1.0 if "wpe" in name else 0.2) if p.dim() > 1 else 0.1)
    return model


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


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=67)).eval()


# ----------------------------------------------------------------------------- parity with the reference

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


# ----------------------------------------------------------------------------- structure

def test_state_dict_names_are_huggingface_names(hf_dirs):
    hf = hf_dirs[0][0]
    c = hf.config
    ours = GPT(GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
                         vocab_size=c.vocab_size))
    assert set(ours.state_dict()) == set(hf.state_dict())


def param_formula(cfg):
    C = cfg.n_embd
    return cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * (12 * C * C + 13 * C) + 2 * C


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "tiny"])
def test_preset_parameter_counts(name):
    with torch.device("meta"):  # no memory, no init time
        model = GPT(GPTConfig.preset(name))
    assert model.num_params() == param_formula(model.config)
    if name == "gpt2":
        assert model.num_params() == 124_439_808


def test_preset_overrides_and_errors():
    assert GPTConfig.preset("tiny", n_layer=1).n_layer == 1
    assert GPTConfig.preset("tiny").vocab_size == get_tokenizer("byte").n_vocab
    with pytest.raises(UserError, match="unknown model preset 'gpt3'"):
        GPTConfig.preset("gpt3")
    with pytest.raises(UserError, match="not divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=512))
    block = model.transformer.h[0]
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(block.mlp.c_proj.weight.std().item() - 0.02 / 4) < 3e-4  # 0.02 / sqrt(2 * 8)
    assert block.mlp.c_fc.bias.abs().max() == 0


def test_tying_survives_an_optimizer_step(tiny):
    opt = tiny.configure_optimizers(weight_decay=0.1, learning_rate=1e-2)
    idx = torch.randint(0, 67, (2, 10))
    tiny.train()
    s, w = tiny.loss(idx, idx, torch.ones(2, 10))
    (s / w).backward()
    opt.step()
    assert tiny.lm_head.weight is tiny.transformer.wte.weight
    assert tiny.lm_head.weight.data_ptr() == tiny.transformer.wte.weight.data_ptr()


@pytest.mark.ex5
def test_explicit_attention_equals_sdpa(tiny):
    idx = torch.randint(0, 67, (3, 20))
    doc = torch.tensor([0] * 8 + [1] * 9 + [-1] * 3).expand(3, 20)
    cu = torch.from_numpy(doc_starts(doc.numpy()))  # packed rows: attention stays inside each document
    with torch.no_grad():
        fused, fused_doc = tiny(idx), tiny(idx, doc=doc, cu_seqlens=cu)
        tiny.config.attention = "math"  # read at every forward
        assert (tiny(idx) - fused).abs().max() < 1e-5
        diff = (tiny(idx, doc=doc, cu_seqlens=cu) - fused_doc).abs().max().item()
    assert diff < 1e-5, (f"packed rows (documents of 8 and 9 tokens, then 3 of padding): math attention's logits "
                         f"differ from sdpa's by {diff:.2e}, expected under 1e-5")


@pytest.mark.ex3
def test_explicit_attention_generates_what_sdpa_does(tiny):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]  # the first is left-padded
    fused = tiny.generate(prompts, 12)
    tiny.config.attention = "math"
    explicit = tiny.generate(prompts, 12)
    assert explicit == fused, f"greedy from {prompts}: math attention gave {explicit}, sdpa {fused}"


def test_dropout_follows_the_config_after_loading(tiny):
    idx = torch.randint(0, 67, (2, 16))
    tiny.train()
    with torch.no_grad():
        assert torch.equal(tiny(idx), tiny(idx))  # dropout 0: training is deterministic
        tiny.config.dropout = 0.3  # e.g. fine-tuning with dropout a checkpoint trained without
        assert not torch.allclose(tiny(idx), tiny(idx))
        tiny.eval()
        assert torch.equal(tiny(idx), tiny(idx))


# ----------------------------------------------------------------------------- loss

@pytest.mark.ex4
def test_loss_matches_hand_computation(tiny):
    idx, targets = torch.randint(0, 67, (2, 9)), torch.randint(0, 67, (2, 9))
    weights = torch.rand(2, 9) * (torch.rand(2, 9) > 0.3)
    with torch.no_grad():
        logp = tiny(idx).log_softmax(-1)
    expected = sum(-weights[b, t] * logp[b, t, targets[b, t]] for b in range(2) for t in range(9))
    s, w = tiny.loss(idx, targets, weights)
    assert s.dtype == w.dtype == torch.float32, f"loss() returned {s.dtype} and {w.dtype}, expected float32 both"
    assert abs(s.item() - expected.item()) < 1e-4 and abs(w.item() - weights.sum().item()) < 1e-6, (
        f"loss() of a (2, 9) batch with random weights, some 0: returned ({s.item():.5f}, {w.item():.5f}), expected "
        f"({expected.item():.5f}, {weights.sum().item():.5f}): sum of w * CE position by position, and sum of w")


def test_weighted_cross_entropy_ignores_targets_under_zero_weight():
    logits = torch.randn(4, 5)
    s, w = weighted_cross_entropy(logits, torch.tensor([1, -1, 3, -100]), torch.tensor([1.0, 0.0, 0.5, 0.0]))
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([1, 3]), reduction="none")
    assert torch.allclose(s, expected[0] + 0.5 * expected[1]) and w.item() == 1.5


@pytest.mark.ex4
def test_skipping_zero_weights_changes_nothing(tiny):
    idx, targets = torch.randint(0, 67, (3, 12)), torch.randint(0, 67, (3, 12))
    weights = (torch.rand(3, 12) > 0.5).float() * 0.7
    results = []
    for skip in (True, False):
        tiny.zero_grad()
        s, w = tiny.loss(idx, targets, weights, skip_zero=skip)
        s.backward()
        results.append((s.item(), w.item(), tiny.transformer.h[0].attn.c_attn.weight.grad.clone()))
    (s1, w1, g1), (s0, w0, g0) = results
    assert abs(s1 - s0) < 1e-5 and abs(w1 - w0) < 1e-5, (
        f"loss() of a (3, 12) batch, about half its weights 0: ({s1:.5f}, {w1:.5f}) with skip_zero, ({s0:.5f}, "
        f"{w0:.5f}) without: expected equal to 1e-5")
    diff = (g1 - g0).abs().max().item()
    assert diff < 1e-6, f"the same batch: gradients with and without skip_zero differ by up to {diff:.1e}, expected 0"


@pytest.mark.ex4
def test_all_zero_weights_give_zero_loss_and_gradient(tiny):
    idx = torch.randint(0, 67, (2, 5))
    s, w = tiny.loss(idx, torch.full((2, 5), -1), torch.zeros(2, 5))
    s.backward()
    grad = tiny.lm_head.weight.grad.abs().max().item()
    assert s.item() == 0.0 and w.item() == 0.0 and grad == 0, (
        f"loss() with every weight 0 (targets -1): returned ({s.item()}, {w.item()}), output head gradient up to "
        f"{grad}, expected (0, 0) and no gradient")


def test_optimizer_decays_matrices_only(tiny):
    decay, no_decay = tiny.configure_optimizers(weight_decay=0.1, learning_rate=1e-3).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.dim() for p in decay["params"]} == {2} and {p.dim() for p in no_decay["params"]} == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny.parameters()))


@pytest.mark.ex4
def test_select_returns_only_selected_rows(tiny):
    idx = torch.randint(0, 67, (2, 6))
    select = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got, want = tiny(idx, select=select), tiny(idx)[select]
    assert got.shape == want.shape, f"forward(select=) with 4 of 12 positions selected: logits {tuple(got.shape)}, " \
                                    f"expected {tuple(want.shape)}, the selected positions in row-major order"
    diff = (got - want).abs().max().item()
    assert diff < 1e-6, f"forward(select=): logits differ from those of the same positions of a full forward by {diff}"


@pytest.mark.ex4
def test_output_head_runs_only_on_positions_with_nonzero_weight(tiny):
    """Skipping is a speed claim, invisible in the loss: count the rows that reach the output head."""
    rows = []
    tiny.lm_head.register_forward_pre_hook(lambda m, args: rows.append(args[0].numel() // args[0].size(-1)))
    idx, targets = torch.randint(0, 67, (2, 10)), torch.randint(0, 67, (2, 10))  # every target is a real token
    weights = torch.zeros(2, 10)
    weights[0, 6:], weights[1, 3:5] = 1.0, 0.5  # IT: the prompt's targets are real tokens, their weights 0
    targets[1, 8:] = -1  # padding
    with torch.no_grad():
        tiny.loss(idx, targets, weights)
        tiny(idx, select=weights != 0)
    want = int((weights != 0).sum())
    assert rows == [want, want], (f"the output head ran on {rows[0]} rows in loss() and {rows[1]} in forward(select=), "
                                  f"expected {want}, the positions with nonzero weight (weights {weights.tolist()})")


@pytest.mark.ex4
def test_without_skip_zero_the_output_head_runs_on_every_position(tiny):
    """--no-skip_zero is bench_train's baseline: the head on every position, whatever the weights."""
    rows = []
    tiny.lm_head.register_forward_pre_hook(lambda m, args: rows.append(args[0].numel() // args[0].size(-1)))
    idx, targets = torch.randint(0, 67, (2, 10)), torch.randint(0, 67, (2, 10))
    weights = torch.zeros(2, 10)
    weights[0, 6:] = 1.0  # 4 of 20 positions weigh anything
    with torch.no_grad():
        tiny.loss(idx, targets, weights, skip_zero=False)
    assert rows == [20], (f"loss(skip_zero=False) of a (2, 10) batch with 4 nonzero weights ran the output head on "
                          f"{rows} rows, expected [20]: every position")


def test_neftune_noise_only_in_training_and_scaled_by_example_length(tiny):
    idx = torch.randint(0, 67, (1, 16))
    doc = torch.tensor([[0] * 4 + [1] * 12])
    with torch.no_grad():
        assert torch.equal(tiny(idx, doc=doc, neftune_alpha=5.0), tiny(idx, doc=doc))  # eval mode: no noise
        tiny.train()
        pos = torch.cat([torch.arange(4), torch.arange(12)]).unsqueeze(0)
        noise = tiny.embed(idx, pos, doc, 5.0) - tiny.embed(idx, pos, doc, 0.0)
    bound = 5.0 / torch.sqrt(torch.tensor([4.0, 12.0]) * 32)  # alpha / sqrt(L * d) for each example
    assert noise[0, :4].abs().max() <= bound[0] and noise[0, :4].abs().max() > 0.8 * bound[0]
    assert noise[0, 4:].abs().max() <= bound[1] and noise[0, 4:].abs().max() > 0.8 * bound[1]


# ----------------------------------------------------------------------------- packing

@pytest.mark.ex5
def test_packed_examples_do_not_see_each_other(tiny):
    a, b = torch.randint(0, 67, (5,)), torch.randint(0, 67, (7,))
    idx = torch.cat([a, b, torch.zeros(3, dtype=torch.long)]).unsqueeze(0)
    doc = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 3])
    pos = torch.cat([torch.arange(5), torch.arange(7), torch.zeros(3, dtype=torch.long)]).unsqueeze(0)
    cu = torch.from_numpy(doc_starts(doc.numpy()))
    assert cu.tolist() == [0, 5, 12, 15]
    with torch.no_grad():
        packed = tiny(idx, pos=pos, doc=doc, cu_seqlens=cu)
        changed = idx.clone()
        changed[0, 5:12] = torch.randint(0, 67, (7,))
        moved = (tiny(changed, pos=pos, doc=doc, cu_seqlens=cu)[0, :5] - packed[0, :5]).abs().max().item()
        diffs = [(tiny(a.unsqueeze(0))[0] - packed[0, :5]).abs().max().item(),
                 (tiny(b.unsqueeze(0))[0] - packed[0, 5:12]).abs().max().item()]
    fed = "one row packing examples of 5 and 7 tokens, then 3 of padding (doc [0]*5 + [1]*7 + [-1]*3)"
    assert moved == 0, f"{fed}: changing the second example moved the first one's logits by {moved:.2e}, expected 0"
    assert max(diffs) < 1e-5, (f"{fed}: the examples' logits differ from each example's alone by {diffs}, expected "
                               f"below 1e-5")
    assert not torch.isnan(packed).any(), f"{fed}: NaN logits at {packed.isnan().any(-1).nonzero().tolist()}"


# ----------------------------------------------------------------------------- generation

@pytest.mark.ex3
def test_cache_equals_no_cache_including_past_the_block_size(tiny):
    prompts = [list(range(1, 11)), [5, 9, 2]]
    for n in (10, 60):  # 60 new tokens run past block_size 48: the window slides
        cached, uncached = tiny.generate(prompts, n), tiny.generate(prompts, n, use_cache=False)
        assert cached == uncached, f"greedy from {prompts}, {n} new tokens: with the cache {cached}, without {uncached}"
        assert [len(row) for row in cached] == [n, n], f"{n} new tokens asked, {[len(row) for row in cached]} came"


@pytest.mark.ex3
def test_cached_step_logits_equal_full_forward(tiny):
    tokens = torch.randint(0, 67, (2, 12))
    valid = torch.ones_like(tokens, dtype=torch.bool)
    cache = KVCache(tiny.config.n_layer, 20)
    with torch.no_grad():
        tiny.next_logits(tokens[:, :8], valid[:, :8], cache)
        for t in range(9, 13):
            step = tiny.next_logits(tokens[:, :t], valid[:, :t], cache)
            diff = (step - tiny(tokens[:, :t])[:, -1]).abs().max().item()
            assert diff < 1e-5, (f"2 rows without padding, prefill 8 tokens, then a cached step with {t} tokens: its "
                                 f"logits differ from a full forward's by {diff:.2e}, expected below 1e-5")


@pytest.mark.ex3
def test_batched_mixed_lengths_equal_one_at_a_time(tiny):
    prompts = [[3], [7, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8]]
    alone = [tiny.generate([p], 15)[0] for p in prompts]
    batched = tiny.generate(prompts, 15)
    assert batched == alone, f"greedy from {prompts} as one batch: {batched}; each prompt alone: {alone}"
    eos = alone[1][4]  # a token that ends row 1 early; other rows stop at their own first eos, if any
    expected = [row[:row.index(eos)] if eos in row else row for row in alone]
    for cache in (True, False):
        got = tiny.generate(prompts, 15, eos_id=eos, use_cache=cache)
        assert got == expected, f"greedy from {prompts}, eos_id={eos}, use_cache={cache}: {got}, expected {expected}"
    assert len(expected[1]) == alone[1].index(eos) < 15


@pytest.mark.ex3
def test_sampling_is_seedable_and_cache_independent(tiny):
    prompts = [[1, 2, 3], [4, 5]]
    def run(seed, cache=True):
        g = torch.Generator().manual_seed(seed)
        return tiny.generate(prompts, 20, temperature=1.0, top_k=20, top_p=0.9, generator=g, use_cache=cache)
    first, again, uncached = run(0), run(0), run(0, cache=False)
    assert first == again == uncached, (f"sampling from {prompts} with seed 0: {first}, then {again}, then without the "
                                        f"cache {uncached}: expected the same three times")
    assert run(0) != run(1), "seeds 0 and 1 sampled the same tokens"


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[False, True, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.8)).tolist() == [[False, True, False, True]]  # 0.5 + 0.3
    assert torch.isinf(top_p_filter(logits, 0.81)).tolist() == [[False, True, False, False]]
    assert torch.isinf(top_p_filter(logits, 0.1)).tolist() == [[False, True, True, True]]  # the top token stays
    assert sample_next(logits).tolist() == [0]
    draws = sample_next(logits.expand(2000, 4), 1.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 2} and abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.05


def test_generate_rejects_empty_prompts(tiny):
    with pytest.raises(UserError, match="at least one token"):
        tiny.generate([[1], []], 3)


# ----------------------------------------------------------------------------- tokenizers

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


def write_tiny_bpe(directory, names=("vocab.json", "merges.txt")):
    """GPT-2's 256 byte tokens, three merges (he, ll, Ġw where Ġ spells a space), then <|endoftext|> = 259."""
    decode = checkpoint.gym_byte_decoder()
    vocab = {c: i for i, c in enumerate(decode)}
    for merged in ("he", "ll", "Ġw"):
        vocab[merged] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, names[0]), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, names[1]), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\nh e\nl l\nĠ w\n")
    return vocab


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


# ----------------------------------------------------------------------------- our checkpoints and load_model

def test_checkpoint_round_trip_brings_model_and_tokenizer_back(tmp_path):
    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=260)).eval()
    tok_dir = tmp_path / "tok"
    write_tiny_bpe(tok_dir)
    path = str(tmp_path / "run" / "ckpt.pt")
    record = checkpoint.tokenizer_record(get_tokenizer(str(tok_dir)))
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


def test_tokenizer_record_rebuilds_the_same_tokenizer(tmp_path):
    write_tiny_bpe(tmp_path)
    tok = get_tokenizer(str(tmp_path))
    record = checkpoint.tokenizer_record(tok)
    assert record["merges.txt"] == "#version: 0.2\nh e\nl l\nĠ w"  # the merges, recovered from the ranks
    again = checkpoint.tokenizer_from_record(record)
    assert again._mergeable_ranks == tok._mergeable_ranks and again.eot_token == 259
    assert checkpoint.tokenizer_record(get_tokenizer("byte")) == "byte"
    assert checkpoint.merge_of(b"abcd", {b"a": 0, b"b": 1, b"c": 2, b"d": 3, b"cd": 4, b"ab": 5, b"abcd": 6}) == \
        (b"ab", b"cd")
    with pytest.raises(CheckpointError, match=r"c.pt: its tokenizer directory /gone is gone .*vocab.json and merges"):
        checkpoint.tokenizer_from_record("/gone", "c.pt")


def test_gpt2_record_reproduces_gpt2_merges_file(gpt2_bpe_dir):
    record = checkpoint.tokenizer_record(get_tokenizer(gpt2_bpe_dir))
    with open(os.path.join(gpt2_bpe_dir, "vocab.bpe"), encoding="utf-8") as f:
        assert record["merges.txt"].split("\n") == f.read().rstrip("\n").split("\n")  # all 50000 merges, in order
    with open(os.path.join(gpt2_bpe_dir, "encoder.json"), encoding="utf-8") as f:
        assert json.loads(record["vocab.json"]) == json.load(f)


def test_compiled_and_ddp_prefixes_are_accepted(tmp_path):
    tiny = GPT(GPTConfig.preset("tiny", n_layer=1, n_head=2, n_embd=16, block_size=16))
    state = {"module._orig_mod." + k: v for k, v in tiny.state_dict().items()}
    save_checkpoint(str(tmp_path / "c.pt"), {"model": state, "model_config": vars(tiny.config), "tokenizer": "byte"})
    model, _ = load_model(str(tmp_path / "c.pt"))
    assert torch.equal(model.transformer.wte.weight, tiny.transformer.wte.weight)


# ----------------------------------------------------------------------------- bad checkpoints: one clear error each

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
    assert sorted(os.listdir(tmp_path / "cache" / "distilgpt2")) == sorted(checkpoint.HUB_FILES)
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
