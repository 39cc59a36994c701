"""The mask's offset one short: at each cached step the new token cannot see itself."""
REPLACE = {("model.py", 2): """
    start = cache.len if cache is not None else 0
    if cache is None:
        tokens, valid = tokens[:, -self.config.block_size:], valid[:, -self.config.block_size:]
    pos = (valid.cumsum(1) - 1).clamp(min=0)
    doc = torch.where(valid, 0, -1)
    mask = None if valid.all() else attention_mask(doc[:, start:], doc, max(start - 1, 0))
    x = self.embed(tokens[:, start:], pos[:, start:], None, 0.0)
"""}
