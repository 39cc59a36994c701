"""The summed loss never divided by divisor: split-invariant, yet every gradient is divisor (the step's weight sum)
times too large, and the learning rate silently means something else for every batch size."""
REPLACE = {("loss.py", 1): """
    loss = (ce + kl_coef * kl) * world * (0.0 if b is None else 1.0)
"""}
