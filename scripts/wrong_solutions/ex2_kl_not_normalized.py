"""The KL term added as a raw weighted token sum: only the cross-entropy is divided by norm, so with --kl_coef
the penalty weighs norm times more than asked (and depends on the batch's size)."""
REPLACE = {("loss.py", 1): """
    loss = (ce * (world / norm) + kl_coef * kl) * (0.0 if b is None else 1.0)
"""}
