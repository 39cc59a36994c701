"""A (B * T) bool mask instead of indices: GPT.forward indexes with index_select, which wants int64 indices;
the contract is the positions' flat indices."""
REPLACE = {("model.py", "head_positions"): """
def head_positions(weights: torch.Tensor) -> torch.Tensor:
    return weights.reshape(-1) != 0
"""}
