"""weights[0] from token 0's segment: token 0 is never predicted (nothing comes before it), so its weight is 0."""
REPLACE = {("data.py", 1): """
    weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: prompt_loss_weight, USER: prompt_loss_weight,
              TEMPLATE: template_loss_weight, PAD: 0.0}
    return [weight[s] for s in segs]
"""}
