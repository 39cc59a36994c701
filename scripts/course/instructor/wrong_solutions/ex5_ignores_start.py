"""The `start` argument ignored: fine for a full sequence, wrong for queries after cached keys."""
REPLACE = {("model.py", "attention_mask"): [  # (what the solution says, what this mistake says instead)
    ('causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril(diagonal=start)',
     'causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril()'),
]}
