"""Divided by len(choice) with no guard: an empty choice raises ZeroDivisionError, where lm-eval's definition
here counts it as one character."""
REPLACE = {("imgpt/benchmarks.py", "pick_acc_norm"): """
def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    return max(range(len(logprobs)), key=lambda i: logprobs[i] / len(choices[i]))
"""}
