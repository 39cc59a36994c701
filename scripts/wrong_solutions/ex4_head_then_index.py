"""The output head on every position, indexed afterwards: the same numbers, none of the saving."""
REPLACE = {("model.py", 1): """
    if select is not None:
        return self.lm_head(self.transformer.ln_f(x))[select]
"""}
