"""Positions 0..T-1 in every row: a left-padded row's first real token sits at its padding length, not at 0."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('pos = (valid.cumsum(1) - 1).clamp(min=0)  # each row counts from its first real token',
     'pos = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)'),
]}
