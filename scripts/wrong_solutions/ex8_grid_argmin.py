"""The best grid point: no finer than the grid, which is the point of interpolating."""
REPLACE = {("scripts/prompt_weight.py", 1): """
    return weights[min(range(len(losses)), key=losses.__getitem__)]
"""}
