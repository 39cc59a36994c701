"""Only USER turns get the prompt weight: a system prompt is an instruction too, and IM trains on it."""
REPLACE = {("data.py", "loss_weights"): [  # (what the solution says, what this mistake says instead)
    ('weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: prompt_loss_weight, USER: prompt_loss_weight,',
     'weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: 0.0, USER: prompt_loss_weight,'),
]}
