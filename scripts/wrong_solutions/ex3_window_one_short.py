"""A window one token short (block_size - 1): the model runs without a token of context it has room for."""
REPLACE = {("model.py", 2): """
    start = cache.len if cache is not None else 0
    if cache is None:
        tokens, valid = tokens[:, 1 - self.config.block_size:], valid[:, 1 - self.config.block_size:]
    pos = (valid.cumsum(1) - 1).clamp(min=0)
    doc = torch.where(valid, 0, -1)
    mask = None if valid.all() else attention_mask(doc[:, start:], doc, start)
    x = self.embed(tokens[:, start:], pos[:, start:], None, 0.0)
"""}
