"""The mask's offset one short: at each cached step the new token cannot see itself."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('mask = attention_mask(doc[:, start:], doc, start) if padded or several_after_cache else None',
     'mask = attention_mask(doc[:, start:], doc, max(start - 1, 0)) if padded or several_after_cache else None'),
]}
