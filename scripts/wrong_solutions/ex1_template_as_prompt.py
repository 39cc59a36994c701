"""The template tokens weighted like the prompt: Eq. 4 leaves them at 0 unless template_loss_weight says otherwise."""
REPLACE = {("data.py", 1): """
    weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: prompt_loss_weight, USER: prompt_loss_weight,
              TEMPLATE: prompt_loss_weight, PAD: 0.0}
    return [0.0] + [weight[s] for s in segs[1:]]
"""}
