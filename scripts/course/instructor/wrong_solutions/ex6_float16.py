"""Scores computed in float16 (as a half-precision model's outputs would be): close per-character scores round
to a tie or swap, and the wrong choice wins."""
REPLACE = {("imgpt/benchmarks.py", "pick_acc_norm"): """
def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    scores = torch.tensor(logprobs, dtype=torch.float16) / torch.tensor([max(len(c), 1) for c in choices],
                                                                        dtype=torch.float16)
    return int(scores.argmax())
"""}
