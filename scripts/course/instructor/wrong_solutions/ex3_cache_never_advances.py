"""cache.len never advances: every step recomputes the whole sequence. Right output, no caching at all."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('if cache is not None:',
     ''),
    ('cache.len = tokens.size(1)',
     'pass'),
]}
