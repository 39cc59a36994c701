"""Selecting every position with a real target: under IT the prompt's targets are real but weigh 0, and they are
most of the tokens."""
REPLACE = {("model.py", 2): """
    select = targets >= 0 if skip_zero else None
"""}
