"""No factor world: DDP averages gradients over ranks, so with 2 processes every update is half as large."""
REPLACE = {("loss.py", 1): """
    loss = (ce + kl_coef * kl) / divisor * (0.0 if b is None else 1.0)
"""}
