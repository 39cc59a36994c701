"""The template tokens weighted like the prompt: Eq. 4 leaves them at 0 unless template_loss_weight says otherwise."""
REPLACE = {("data.py", "loss_weights"): [  # (what the solution says, what this mistake says instead)
    ('TEMPLATE: template_loss_weight, PAD: 0.0}',
     'TEMPLATE: prompt_loss_weight, PAD: 0.0}'),
]}
