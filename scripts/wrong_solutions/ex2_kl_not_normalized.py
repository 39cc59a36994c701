"""The KL term added as a raw weighted token sum: only the cross-entropy is divided by divisor, so with --kl_coef
the penalty weighs divisor times more than asked (and depends on the batch's size)."""
REPLACE = {("loss.py", 1): """
    loss = (ce * (world / divisor) + kl_coef * kl) * (0.0 if b is None else 1.0)
"""}
