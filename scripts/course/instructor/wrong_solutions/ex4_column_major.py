"""The right positions in column-major order (column 0 of every row first): the logits come out in another order
than the targets and weights they are scored against, row-major."""
REPLACE = {("model.py", "head_positions"): """
def head_positions(weights: torch.Tensor) -> torch.Tensor:
    B, T = weights.shape
    idx = torch.nonzero(weights.t().reshape(-1)).squeeze(1)  # column-major: column t, row r is t * B + r
    return (idx % B) * T + idx // B
"""}
