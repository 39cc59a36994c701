"""Normalized by UTF-8 bytes: lm-eval's acc_norm divides by characters, so non-ASCII choices come out wrong."""
REPLACE = {("imgpt/benchmarks.py", "pick_acc_norm"): """
def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    return max(range(len(logprobs)), key=lambda i: logprobs[i] / max(len(choices[i].encode()), 1))
"""}
