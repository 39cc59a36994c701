"""One parabola fitted to every point: far points (a loss that is not a parabola) pull the vertex away."""
REPLACE = {("scripts/experiments/prompt_weight.py", "best_weight"): """
def best_weight(weights: list[float], losses: list[float]) -> float:
    import numpy as np
    i = min(range(len(losses)), key=losses.__getitem__)
    if i == 0 or i == len(losses) - 1:
        return weights[i]
    a, b, _ = np.polyfit(weights, losses, 2)
    return -b / (2 * a)
"""}
