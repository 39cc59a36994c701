"""Only the positions of weight 1: the prompt tokens under a fractional prompt weight (0.1, or IM's template
weight) change the loss too, and their logits go missing."""
REPLACE = {("model.py", "head_positions"): """
def head_positions(weights: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(weights.reshape(-1) == 1).squeeze(1)
"""}
