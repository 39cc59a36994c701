"""Keys of padding masked for every query, padding queries included: their rows are empty, NaN on the math path."""
REPLACE = {("model.py", "attention_mask"): [  # (what the solution says, what this mistake says instead)
    ('same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)  # (B, Tq, Tk)',
     'same_doc = (doc_q.unsqueeze(2) == doc_k.unsqueeze(1)) & (doc_k.unsqueeze(1) >= 0)'),
]}
