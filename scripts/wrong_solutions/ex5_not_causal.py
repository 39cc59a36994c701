"""Documents kept apart but not causal: every token sees its document's future."""
REPLACE = {("model.py", 1): """
    same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)
    return same_doc.unsqueeze(1)
"""}
