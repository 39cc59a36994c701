"""update writes every call's keys at the start of the buffer: a cached step overwrites the prompt's keys and
attends to slots nothing wrote."""
REPLACE = {("model.py", "KVCache.update"): [  # (what the solution says, what this mistake says instead)
    ('self.k[layer, :, :, self.len:end] = k',
     'self.k[layer, :, :, :k.size(2)] = k'),
    ('self.v[layer, :, :, self.len:end] = v',
     'self.v[layer, :, :, :k.size(2)] = v'),
]}
