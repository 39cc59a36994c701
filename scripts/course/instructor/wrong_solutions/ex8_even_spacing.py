"""The textbook vertex for evenly spaced points, on a grid that is not: 0, 0.1, 0.3, 1."""
REPLACE = {("scripts/experiments/prompt_weight.py", "best_weight"): """
def best_weight(weights: list[float], losses: list[float]) -> float:
    i = min(range(len(losses)), key=losses.__getitem__)
    if i == 0 or i == len(losses) - 1:
        return weights[i]
    (a, fa), (b, fb), (c, fc) = zip(weights[i - 1:i + 2], losses[i - 1:i + 2])
    return b + (b - a) * (fa - fc) / (2 * (fa - 2 * fb + fc))
"""}
