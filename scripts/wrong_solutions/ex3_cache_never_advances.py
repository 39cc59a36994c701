"""cache.len never advances: every step recomputes the whole sequence. Right output, no caching at all."""
REPLACE = {("model.py", 3): """
    pass
"""}
