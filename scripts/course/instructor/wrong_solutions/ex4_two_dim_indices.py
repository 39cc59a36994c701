"""torch.nonzero of the (B, T) weights as they are: (N, 2) pairs (row, column), not flat indices into the
B * T tokens."""
REPLACE = {("model.py", "head_positions"): """
def head_positions(weights: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(weights)
"""}
