"""The mask's offset one too far: in the prefill of a padded batch every query also sees the next token."""
REPLACE = {("model.py", "GPT.next_logits"): [  # (what the solution says, what this mistake says instead)
    ('mask = attention_mask(doc[:, start:], doc, start) if padded or several_after_cache else None',
     'mask = attention_mask(doc[:, start:], doc, start + 1) if padded or several_after_cache else None'),
]}
