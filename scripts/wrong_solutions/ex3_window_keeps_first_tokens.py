"""Past block_size without a cache, the FIRST block_size tokens run instead of the last: every later step sees
the same window and predicts from a context that no longer ends at the newest token."""
REPLACE = {("model.py", 2): """
    start = cache.len if cache is not None else 0
    if cache is None:
        tokens, valid = tokens[:, :self.config.block_size], valid[:, :self.config.block_size]
    pos = (valid.cumsum(1) - 1).clamp(min=0)
    doc = torch.where(valid, 0, -1)
    mask = None if valid.all() else attention_mask(doc[:, start:], doc, start)
    x = self.embed(tokens[:, start:], pos[:, start:], None, 0.0)
"""}
