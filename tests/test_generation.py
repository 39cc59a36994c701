"""KV-cache generation with left-padded prompts (exercise 3's grader): what each step runs, at which positions,
attending to which keys, and logits equal to a full forward of each row alone. Greedy comparisons alone miss
attention errors when a model keeps emitting one token, so the fixture here is one whose outputs vary."""
import pytest
import torch

import model as model_module
from model import GPT, GPTConfig, KVCache, left_pad

PROMPTS = [[5, 9, 2], [7, 1, 4, 1, 5, 9], [3, 3, 8, 2, 6]]  # row 0 is left-padded by 3, row 2 by 1
NEW = [[11, 12, 13, 14], [21, 22, 23, 24], [31, 32, 33, 34]]  # the tokens fed at the cached steps


def varied_model(block_size: int, seed: int) -> GPT:
    """Strong random weights and position embeddings: greedy outputs vary instead of repeating one token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=67)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, (1.0 if "wpe" in name else 0.2) if p.dim() > 1 else 0.1)
    return model


@pytest.fixture
def varied():
    return varied_model(block_size=48, seed=0)


def run_steps(model: GPT, on_step=None) -> list[torch.Tensor]:
    """Prefill PROMPTS (left-padded), then feed NEW one column at a time through the cache: each call's logits."""
    tokens, valid = left_pad(PROMPTS, "cpu")
    cache = KVCache(model.config.n_layer, tokens.size(1) + len(NEW[0]))
    out = []
    with torch.no_grad():
        for step in range(len(NEW[0]) + 1):
            if step:
                tokens = torch.cat([tokens, torch.tensor([[row[step - 1]] for row in NEW])], 1)
                valid = torch.cat([valid, torch.ones(len(PROMPTS), 1, dtype=torch.bool)], 1)
            if on_step:
                on_step(step, tokens, valid)
            out.append(model.next_logits(tokens, valid, cache))
    return out


def padding(row: int) -> int:
    return max(map(len, PROMPTS)) - len(PROMPTS[row])


@pytest.mark.ex3
def test_a_cached_call_with_several_new_tokens_keeps_them_causal(varied):
    """next_logits' contract allows several new tokens after cached ones (a prompt fed in two parts). Unpadded, so
    no row needs a padding mask: each new token must still see only the tokens before it, as without a cache."""
    tokens = torch.randint(0, 67, (2, 10), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(tokens, dtype=torch.bool)
    cache = KVCache(varied.config.n_layer, 16)
    with torch.no_grad():
        varied.next_logits(tokens[:, :4], valid[:, :4], cache)
        got = varied.next_logits(tokens[:, :9], valid[:, :9], cache)  # 5 new tokens after 4 cached
        after = varied.next_logits(tokens, valid, cache)  # then one more, reading the keys the 5 left in the cache
        want, want_after = (varied.next_logits(tokens[:, :t], valid[:, :t], None) for t in (9, 10))
    for name, g, w in (("the 5-token call", got, want), ("the 1-token call after it", after, want_after)):
        diff = (g - w).abs().max().item()
        assert diff < 1e-5, (f"2 unpadded rows, 4 tokens cached, then 5 new ones in one call: {name}'s logits differ "
                             f"from those without a cache by {diff:.2e}, expected below 1e-5 (does each new token see "
                             f"only the keys up to its own position?)")


@pytest.mark.ex3
def test_each_cached_step_runs_only_the_new_token(varied):
    widths = []
    varied.transformer.h[0].register_forward_pre_hook(lambda m, args: widths.append(args[0].size(1)))
    run_steps(varied)
    expected = [max(map(len, PROMPTS))] + [1] * len(NEW[0])
    for step, (got, want) in enumerate(zip(widths, expected)):
        assert got == want, (f"step {step} ran {got} tokens per row through the model, expected {want}: the cache "
                             f"holds the others (does cache.len advance? do you run only tokens[:, start:]?)")


@pytest.mark.ex3
def test_positions_count_from_each_rows_first_real_token(varied, monkeypatch):
    seen = []
    embed = varied.embed
    monkeypatch.setattr(varied, "embed", lambda idx, pos, *a: seen.append(pos.clone()) or embed(idx, pos, *a))
    run_steps(varied)
    for row in range(len(PROMPTS)):
        got = seen[0][row, padding(row):].tolist()
        assert got == list(range(len(PROMPTS[row]))), (
            f"row {row} (left-padded by {padding(row)}): its prompt tokens got positions {got}, expected "
            f"{list(range(len(PROMPTS[row])))}: count positions from each row's first real token")
        for step in range(1, len(NEW[0]) + 1):
            got, want = seen[step][row, -1].item(), len(PROMPTS[row]) + step - 1
            assert got == want, f"row {row}, cached step {step}: the new token got position {got}, expected {want}"


@pytest.mark.ex3
def test_left_padded_queries_attend_to_their_own_real_tokens(varied):
    masks, valids = [], []
    varied.transformer.h[0].attn.register_forward_pre_hook(lambda m, args: masks.append(args[1]))
    run_steps(varied, on_step=lambda step, tokens, valid: valids.append(valid.clone()))
    for step, (mask, valid) in enumerate(zip(masks, valids)):
        assert mask is not None, f"step {step}: no attention mask, so the left-padded rows attend to their padding"
        if mask.dtype != torch.bool:
            pytest.skip("attention masks here are not boolean tensors")
        Tq, Tk = mask.shape[-2:]
        for row in range(len(PROMPTS)):
            for i in range(Tq):
                col = Tk - Tq + i  # the query's column in the row
                if not valid[row, col]:
                    continue
                got = mask[row, 0, i].nonzero().flatten().tolist()
                want = [j for j in range(col + 1) if valid[row, j]]
                assert got == want, (
                    f"step {step}: the query at column {col} of row {row} (left-padded by {padding(row)}) attends "
                    f"to {len(got)} keys {got}, expected {len(want)} {want}: its own real tokens up to itself")


@pytest.mark.ex3
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_left_padded_cached_logits_equal_a_full_forward_of_each_row(varied, attention):
    varied.config.attention = attention
    steps = run_steps(varied)
    with torch.no_grad():
        for row in range(len(PROMPTS)):
            for step, logits in enumerate(steps):
                alone = varied(torch.tensor([PROMPTS[row] + NEW[row][:step]]))[0, -1]
                diff = (logits[row] - alone).abs().max().item()
                assert diff < 1e-4, (
                    f"row {row} (left-padded by {padding(row)}), {'prefill' if step == 0 else f'cached step {step}'}: "
                    f"logits differ from a full forward of the row alone by {diff:.3f}: check the positions, the "
                    f"mask's offset `start` and what the cache stores and returns")


@pytest.mark.ex3
def test_greedy_with_cache_equals_without_on_outputs_that_vary(varied):
    prompts = [p[:] for p in PROMPTS]
    alone = [varied.generate([p], 20)[0] for p in prompts]
    assert all(len(set(row)) >= 5 for row in alone), "the fixture must not generate one repeated token"
    cached, uncached = varied.generate(prompts, 20), varied.generate(prompts, 20, use_cache=False)
    assert uncached == alone, "without the cache, a batch of left-padded prompts must generate what each alone does"
    for row in range(len(prompts)):
        first = next((t for t, (a, b) in enumerate(zip(cached[row], alone[row])) if a != b), None)
        assert first is None, (f"row {row} (left-padded by {padding(row)}): with the cache, greedy output departs "
                               f"from the row alone at new token {first}")


@pytest.fixture
def short_block():
    """The varied model's kind with block_size 8, so that generation soon runs past it."""
    return varied_model(block_size=8, seed=1)


@pytest.mark.ex3
def test_past_the_block_size_the_last_block_size_tokens_run_token_by_token(short_block):
    """Without a cache, next_logits runs the last block_size columns, each row's positions counting from its
    first real token inside that window: the logits of a forward of the row's last block_size real tokens."""
    prompts = [[5, 9, 2, 6, 5, 3], [7, 1], [3, 3, 8, 2]]  # 6 columns, then 10 more: past block_size 8 at column 9
    new = [[(11 * r + 7 * t) % 67 for t in range(10)] for r in range(3)]
    tokens, valid = left_pad(prompts, "cpu")
    for step in range(len(new[0]) + 1):
        if step:
            tokens = torch.cat([tokens, torch.tensor([[row[step - 1]] for row in new])], 1)
            valid = torch.cat([valid, torch.ones(3, 1, dtype=torch.bool)], 1)
        with torch.no_grad():
            got = short_block.next_logits(tokens, valid, None)
            for row in range(3):
                real = (prompts[row] + new[row][:step])[-8:]
                want = short_block(torch.tensor([real]))[0, -1]
                diff = (got[row] - want).abs().max().item()
                assert diff < 1e-4, (
                    f"next_logits without a cache, {tokens.size(1)} columns, row {row} (real tokens "
                    f"{prompts[row] + new[row][:step]}), block_size 8: its logits differ by {diff:.3f} from a forward "
                    f"of {real} at positions 0..{len(real) - 1}, expected below 1e-4 (the last block_size tokens, "
                    f"positions counted inside that window)")


@pytest.mark.ex3
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_past_the_block_size_slides_the_window(short_block, use_cache, monkeypatch):
    """generate's next tokens are scripted (so that they vary); the logits it computes for each must be those of a
    forward of each row's last 8 real tokens, before and after the cache (max_len 8) runs out."""
    prompts, script = [[5, 9, 2, 6, 5, 3], [7, 1]], [[(11 * r + 7 * t + 3) % 67 for r in range(2)] for t in range(12)]
    seen = []

    def scripted(logits, *args, **kwargs):
        seen.append(logits.clone())
        return torch.tensor(script[len(seen) - 1])

    monkeypatch.setattr(model_module, "sample_next", scripted)
    short_block.generate(prompts, 12, use_cache=use_cache)
    with torch.no_grad():
        for step, logits in enumerate(seen):
            for row in range(2):
                real = prompts[row] + [t[row] for t in script[:step]]
                want = short_block(torch.tensor([real[-8:]]))[0, -1]
                diff = (logits[row] - want).abs().max().item()
                assert diff < 1e-4, (
                    f"generate({prompts}, use_cache={use_cache}), block_size 8, step {step}: row {row}'s logits "
                    f"(after {real}) differ by {diff:.3f} from a forward of its last 8 tokens {real[-8:]}, expected "
                    f"below 1e-4")
