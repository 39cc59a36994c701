"""The output head on every position, indexed afterwards: the same numbers, none of the saving."""
REPLACE = {("model.py", 1): """
    return self.lm_head(self.transformer.ln_f(x))[select]
"""}
