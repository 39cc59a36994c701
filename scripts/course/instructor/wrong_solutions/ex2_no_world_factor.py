"""No factor world: DDP averages gradients over ranks, so with 2 processes every update is half as large."""
REPLACE = {("loss.py", "micro_batch_loss"): """
def micro_batch_loss(ce: torch.Tensor, kl: torch.Tensor, kl_coef: float, divisor: float, world: int,
                     dummy: bool) -> torch.Tensor:
    return (ce + kl_coef * kl) / divisor * (0.0 if dummy else 1.0)
"""}
