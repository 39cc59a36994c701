"""A window one token short (block_size - 1): the model runs without a token of context it has room for."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('tokens, valid = tokens[:, -self.config.block_size:], valid[:, -self.config.block_size:]',
     'tokens, valid = tokens[:, 1 - self.config.block_size:], valid[:, 1 - self.config.block_size:]'),
]}
