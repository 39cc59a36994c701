"""Documents kept apart but not causal: every token sees its document's future."""
REPLACE = {("model.py", "attention_mask"): """
def attention_mask(doc_q: torch.Tensor, doc_k: torch.Tensor, start: int = 0) -> torch.Tensor:
    same_doc = doc_q.unsqueeze(2) == doc_k.unsqueeze(1)
    return same_doc.unsqueeze(1)
"""}
