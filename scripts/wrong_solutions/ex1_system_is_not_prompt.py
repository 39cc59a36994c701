"""Only USER turns get the prompt weight: a system prompt is an instruction too, and IM trains on it."""
REPLACE = {("data.py", 1): """
    weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: 0.0, USER: prompt_loss_weight,
              TEMPLATE: template_loss_weight, PAD: 0.0}
    return [0.0] + [weight[s] for s in segs[1:]]
"""}
