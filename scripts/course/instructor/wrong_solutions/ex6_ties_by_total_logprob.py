"""Ties in log-probability per character broken by the total log-probability (which favours the shorter choice):
lm-evaluation-harness takes numpy's argmax, the first of the tied choices."""
REPLACE = {("imgpt/benchmarks.py", "pick_acc_norm"): """
def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    return max(range(len(logprobs)), key=lambda i: (logprobs[i] / max(len(choices[i]), 1), logprobs[i]))
"""}
