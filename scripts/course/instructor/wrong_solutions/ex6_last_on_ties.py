"""Ties resolved to the last choice (>= in a hand-written loop): lm-eval, like numpy's argmax, takes the first."""
REPLACE = {("imgpt/benchmarks.py", "pick_acc_norm"): """
def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    best = 0
    for i in range(len(logprobs)):
        if logprobs[i] / max(len(choices[i]), 1) >= logprobs[best] / max(len(choices[best]), 1):
            best = i
    return best
"""}
