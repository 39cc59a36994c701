"""Positions 0..T-1 in every row: a left-padded row's first real token sits at its padding length, not at 0."""
REPLACE = {("model.py", 2): """
    start = cache.len if cache is not None else 0
    if cache is None:
        tokens, valid = tokens[:, -self.config.block_size:], valid[:, -self.config.block_size:]
    pos = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
    doc = torch.where(valid, 0, -1)
    mask = None if valid.all() else attention_mask(doc[:, start:], doc, start)
    x = self.embed(tokens[:, start:], pos[:, start:], None, 0.0)
"""}
