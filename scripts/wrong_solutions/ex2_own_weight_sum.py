"""Each micro-batch divided by its own weight sum, the common shortcut: tokens of light micro-batches weigh more,
so the update depends on the split."""
REPLACE = {("loss.py", 1): """
    loss = (ce + kl_coef * kl) * world / x.weights.sum().clamp_min(1e-12) * (0.0 if b is None else 1.0)
"""}
