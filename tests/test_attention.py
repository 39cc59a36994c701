"""model.attention_mask (exercise 5's grader): the mask against its definition, key by key, with an offset `start`
for queries that come after cached keys, and padding rows that are never empty (an empty row is NaN)."""
import pytest
import torch

from data import doc_starts
from model import GPT, GPTConfig, attention_mask

# two packed rows: documents 0, 1, 2 then padding; one document then padding; a row padded on the left, as
# generation pads prompts
DOC = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1],
                    [0, 0, 0, 0, 0, 0, 0, -1, -1, -1],
                    [-1, -1, -1, -1, 0, 0, 0, 0, 0, 0]])


def allowed(doc: torch.Tensor, row: int, q: int, start: int) -> list[int]:
    """The definition: query q (at position start + q) sees key j iff j <= start + q and both share a document."""
    return [j for j in range(doc.size(1)) if j <= start + q and doc[row, j] == doc[row, start + q]]


@pytest.mark.ex5
@pytest.mark.parametrize("start", [0, 3, 9])
def test_mask_equals_its_definition_key_by_key(start):
    mask = attention_mask(DOC[:, start:], DOC, start)
    Tq, Tk = DOC.size(1) - start, DOC.size(1)
    want = (3, 1, Tq, Tk)
    assert tuple(mask.shape) == want, f"mask shape {tuple(mask.shape)}, expected (B, 1, Tq, Tk) = {want}"
    for row in range(3):
        for q in range(Tq):
            got, want = mask[row, 0, q].nonzero().flatten().tolist(), allowed(DOC, row, q, start)
            assert got == want, (
                f"start={start}: query {q} of row {row} (position {start + q}, document {DOC[row, start + q].item()}) "
                f"attends to {len(got)} keys {got}, expected {len(want)} {want}: query i sits at position start + i, "
                f"and sees only earlier keys of its own document (padding, -1: earlier padding)")


@pytest.mark.ex5
def test_padding_queries_see_padding_so_no_row_is_empty():
    mask = attention_mask(DOC, DOC)
    for row, q in (DOC < 0).nonzero().tolist():
        assert mask[row, 0, q].any(), (f"query {q} of row {row} is padding and attends to no key: softmax over nothing "
                                      f"is NaN (on the math path); let padding see padding")


@pytest.mark.ex5
def test_packed_rows_with_padding_give_no_nan_on_the_math_path():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=67, attention="math")).eval()
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6, 0, 0, 0], [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        logits = model(torch.randint(0, 67, DOC.shape), pos=pos, doc=DOC)
    nan_rows = logits.isnan().any(-1).nonzero().tolist()
    assert not nan_rows, f"NaN logits at (row, position) {nan_rows}: a query that attends to nothing"


@pytest.mark.ex5
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_a_left_padded_rows_logits_equal_the_row_unpadded(attention):
    """Real queries must not see padding keys: with padding on the left every real query comes after it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=67, attention=attention)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # strong weights: attention far from uniform
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.1)
    real = [5, 9, 2, 6, 5, 3]
    idx = torch.tensor([[7, 7, 7, 7] + real])  # 4 padding tokens first
    doc = torch.tensor([[-1] * 4 + [0] * 6])
    pos = torch.tensor([[0] * 4 + list(range(6))])
    with torch.no_grad():
        padded = model(idx, pos=pos, doc=doc, cu_seqlens=torch.from_numpy(doc_starts(doc.numpy())))[0, 4:]
        alone = model(torch.tensor([real]))[0]
    diff = (padded - alone).abs().max(-1).values
    assert diff.max() < 1e-4, (
        f"{attention} attention, the row {real} after 4 padding tokens (doc {doc[0].tolist()}, through "
        f"attention_mask): its logits differ from the row's alone by {[round(d, 4) for d in diff.tolist()]} per "
        f"token, expected below 1e-4: a real query must see no padding key")
