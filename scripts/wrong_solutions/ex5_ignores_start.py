"""The `start` argument ignored: fine for a full sequence, wrong for queries after cached keys."""
REPLACE = {("model.py", 1): """
    Tq, Tk = doc_q.size(1), doc_k.size(1)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril()
    same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)
    return (same_doc & causal).unsqueeze(1)
"""}
