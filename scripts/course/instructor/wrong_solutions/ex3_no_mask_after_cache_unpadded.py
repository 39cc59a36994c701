"""The mask built only when rows are padded (the kit's own solution until issue 26): an unpadded cached call
with several new tokens then runs attention with no mask and is_causal=False (the cache holds keys), so each new
query sees the new keys after it. generate makes one new token a step and never hits it; next_logits' contract
allows it (a prompt fed in two parts), and the logits drift by ~1e-4."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('# No mask only where is_causal is exact: nothing cached yet, or one new token (which sees every key).',
     ''),
    ('several_after_cache = start > 0 and tokens.size(1) - start > 1',
     ''),
    ('mask = attention_mask(doc[:, start:], doc, start) if padded or several_after_cache else None',
     'mask = attention_mask(doc[:, start:], doc, start) if padded else None'),
]}
