"""Padding keys visible to every query (padding queries still see padding only, so no row is empty): with left
padding every real query then attends to the padding before it, and its logits change."""
REPLACE = {("model.py", "attention_mask"): [  # (what the solution says, what this mistake says instead)
    ('same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)  # (B, Tq, Tk)',
     'same_doc = (doc_q.unsqueeze(2) == doc_k.unsqueeze(1)) | (doc_k.unsqueeze(1) < 0)'),
]}
