"""Ties in log-probability per character broken by the total log-probability (which favours the shorter choice):
lm-evaluation-harness takes numpy's argmax, the first of the tied choices."""
REPLACE = {("benchmarks.py", 1): """
    return max(range(len(logprobs)), key=lambda i: (logprobs[i] / max(len(choices[i]), 1), logprobs[i]))
"""}
