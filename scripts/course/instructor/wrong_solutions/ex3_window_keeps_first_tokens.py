"""Past block_size without a cache, the FIRST block_size tokens run instead of the last: every later step sees
the same window and predicts from a context that no longer ends at the newest token."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('tokens, valid = tokens[:, -self.config.block_size:], valid[:, -self.config.block_size:]',
     'tokens, valid = tokens[:, :self.config.block_size], valid[:, :self.config.block_size]'),
]}
