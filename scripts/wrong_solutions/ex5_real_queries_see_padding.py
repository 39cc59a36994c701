"""Padding keys visible to every query (padding queries still see padding only, so no row is empty): with left
padding every real query then attends to the padding before it, and its logits change."""
REPLACE = {("model.py", 1): """
    Tq, Tk = doc_q.size(1), doc_k.size(1)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril(diagonal=start)
    same_doc = (doc_q.unsqueeze(2) == doc_k.unsqueeze(1)) | (doc_k.unsqueeze(1) < 0)
    return (same_doc & causal).unsqueeze(1)
"""}
