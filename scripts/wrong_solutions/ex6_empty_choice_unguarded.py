"""Divided by len(choice) with no guard: an empty choice raises ZeroDivisionError, where lm-eval's definition
here counts it as one character."""
REPLACE = {("benchmarks.py", 1): """
    return max(range(len(logprobs)), key=lambda i: logprobs[i] / len(choices[i]))
"""}
