"""kl_coef forgotten: the KL term always weighs 1, whatever --kl_coef says."""
REPLACE = {("loss.py", "micro_batch_loss"): """
def micro_batch_loss(ce: torch.Tensor, kl: torch.Tensor, kl_coef: float, divisor: float, world: int,
                     dummy: bool) -> torch.Tensor:
    return (ce + kl) * (world / divisor) * (0.0 if dummy else 1.0)
"""}
