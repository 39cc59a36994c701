"""model.py: GPT-2 top to bottom: presets, init, tying, attention, the weighted loss, packing, KV-cache generation."""

import pytest
import torch

from data import doc_starts
from imgpt.cli import UserError
from imgpt.tokenizers import get_tokenizer
from model import (GPT, GPTConfig, KVCache, head_positions, sample_next, top_k_filter, top_p_filter,
                   weighted_cross_entropy)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=67)).eval()


# ----------------------------------------------------------------------------- parity with the reference


# ----------------------------------------------------------------------------- structure


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
def test_head_positions_are_the_flat_row_major_indices_of_nonzero_weights():
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.3], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = head_positions(weights)
    assert got.dtype == torch.int64 and got.tolist() == [1, 3, 4], (
        f"head_positions of a (3, 4) weight matrix with nonzero weights at (0, 1), (0, 3), (1, 0): {got.tolist()} "
        f"({got.dtype}), expected [1, 3, 4] (int64): row r, column t is index r * 4 + t, row-major order")
    assert head_positions(torch.zeros(2, 5)).tolist() == [], "all weights 0: expected no positions"


@pytest.mark.ex4
def test_skipping_zero_weights_changes_nothing(tiny):
    idx, targets = torch.randint(0, 67, (3, 12)), torch.randint(0, 67, (3, 12))
    weights = (torch.rand(3, 12) > 0.5).float() * 0.7
    results = []
    for select in (head_positions(weights), None):
        tiny.zero_grad()
        s, w = tiny.loss(idx, targets, weights, select=select)
        s.backward()
        results.append((s.item(), w.item(), tiny.transformer.h[0].attn.c_attn.weight.grad.clone()))
    (s1, w1, g1), (s0, w0, g0) = results
    assert abs(s1 - s0) < 1e-5 and abs(w1 - w0) < 1e-5, (
        f"loss() of a (3, 12) batch, about half its weights 0: ({s1:.5f}, {w1:.5f}) with select=head_positions("
        f"weights), ({s0:.5f}, {w0:.5f}) without: expected equal to 1e-5")
    diff = (g1 - g0).abs().max().item()
    assert diff < 1e-6, f"the same batch: gradients with and without select differ by up to {diff:.1e}, expected 0"


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
    chosen = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got, want = tiny(idx, select=head_positions(chosen)), tiny(idx)[chosen]
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
        tiny.loss(idx, targets, weights, select=head_positions(weights))
        tiny(idx, select=head_positions(weights))
    want = int((weights != 0).sum())
    assert rows == [want, want], (f"the output head ran on {rows[0]} rows in loss() and {rows[1]} in forward(select=), "
                                  f"expected {want}, the positions with nonzero weight (weights {weights.tolist()})")


@pytest.mark.ex4
def test_without_select_the_output_head_runs_on_every_position(tiny):
    """--no-skip_zero is bench_train's baseline: the head on every position, whatever the weights."""
    rows = []
    tiny.lm_head.register_forward_pre_hook(lambda m, args: rows.append(args[0].numel() // args[0].size(-1)))
    idx, targets = torch.randint(0, 67, (2, 10)), torch.randint(0, 67, (2, 10))
    weights = torch.zeros(2, 10)
    weights[0, 6:] = 1.0  # 4 of 20 positions weigh anything
    with torch.no_grad():
        tiny.loss(idx, targets, weights)
    assert rows == [20], (f"loss() without select of a (2, 10) batch with 4 nonzero weights ran the output head on "
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


# ----------------------------------------------------------------------------- our checkpoints and load_model


# ----------------------------------------------------------------------------- bad checkpoints: one clear error each
