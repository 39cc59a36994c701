"""Divided by world instead of multiplied, as if DDP summed the ranks' gradients: it averages them, so with 2
processes every update is a quarter of what it should be."""
REPLACE = {("loss.py", "micro_batch_loss"): """
def micro_batch_loss(ce: torch.Tensor, kl: torch.Tensor, kl_coef: float, divisor: float, world: int,
                     dummy: bool) -> torch.Tensor:
    return (ce + kl_coef * kl) / (world * divisor) * (0.0 if dummy else 1.0)
"""}
