"""The summed loss never divided by divisor: split-invariant, yet every gradient is divisor (the step's weight sum)
times too large, and the learning rate silently means something else for every batch size."""
REPLACE = {("loss.py", "micro_batch_loss"): """
def micro_batch_loss(ce: torch.Tensor, kl: torch.Tensor, kl_coef: float, divisor: float, world: int,
                     dummy: bool) -> torch.Tensor:
    return (ce + kl_coef * kl) * world * (0.0 if dummy else 1.0)
"""}
