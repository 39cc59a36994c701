"""weights[0] from token 0's segment: token 0 is never predicted (nothing comes before it), so its weight is 0."""
REPLACE = {("data.py", "loss_weights"): [  # (what the solution says, what this mistake says instead)
    ('return [0.0] + [weight[s] for s in segs[1:]]  # token 0 has no context to be predicted from',
     'return [weight[s] for s in segs]'),
]}
