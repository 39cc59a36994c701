"""Keys of padding masked for every query, padding queries included: their rows are empty, NaN on the math path."""
REPLACE = {("model.py", 1): """
    Tq, Tk = doc_q.size(1), doc_k.size(1)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=doc_q.device).tril(diagonal=start)
    same_doc = (doc_q.unsqueeze(2) == doc_k.unsqueeze(1)) & (doc_k.unsqueeze(1) >= 0)
    return (same_doc & causal).unsqueeze(1)
"""}
