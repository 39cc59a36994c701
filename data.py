# HANDOUT DOCSTRING ex1: Instruction data -> token ids + one loss weight per token. IT and IM differ in ONE number.
# HANDOUT DOCSTRING ex1: Every record becomes a list of messages; the one chat template cuts it into pieces, each
# HANDOUT DOCSTRING ex1: with a segment (TEMPLATE, SYSTEM, USER, ASSISTANT, EOT); weights[t] (exercise 1) weighs the
# HANDOUT DOCSTRING ex1: loss of predicting ids[t] from ids[:t]. Then: truncation, batching, a deterministic order.
# HANDOUT DOCSTRING ex1: Usage: python data.py stats|show ... (data_cli.py)
"""Instruction data -> token ids + one loss weight per token. IT and IM differ in ONE number.

Every record on disk (Alpaca, Dolly, prompt/completion, chat `messages`, ShareGPT) becomes a list of messages
[{"role", "content"}]. The one chat template cuts a conversation into pieces, each with a segment; pieces are
tokenized separately, so every token has exactly one segment and one loss weight:

    <|user|>\\n   Name a color.   \\n<|assistant|>\\n   Teal.      <|endoftext|>
    TEMPLATE     USER            TEMPLATE            ASSISTANT  EOT
IT  0            0               0                   1          1        prompt_loss_weight = 0 (Shi et al. Eq. 3)
IM  0            1               0                   1          1        prompt_loss_weight = 1 (Eq. 4)

weights[t] is the weight of the loss for predicting ids[t] from ids[:t]. Then: truncation, batching with
little padding (length grouping or packing), and a deterministic order per (seed, epoch). The built-in
synthetic task lives in synthetic.py.
Usage: python data.py stats|show ... (data_cli.py: a dataset's token statistics, or its examples marked by weight)
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import tiktoken
import torch

from formats import (DATASETS, FORMATS, DataError, ends_with_answer, is_document,  # noqa: F401 (data.X for users)
                     load_conversations)
from runtime import UserError, run_cli
from synthetic import corpus_documents, probe_conversations, qa_split, synthetic_split, synthetic_world

TEMPLATE, SYSTEM, USER, ASSISTANT, EOT = 0, 1, 2, 3, 4  # the segment of each token
PAD = -1
LOSS_PRESETS = {"it": 0.0, "im": 1.0}  # --loss it|im: shorthands for prompt_loss_weight
ROLE_TAGS = {"system": ("<|system|>\n", SYSTEM), "user": ("<|user|>\n", USER),
             "assistant": ("<|assistant|>\n", ASSISTANT)}  # role -> (the tag before its content, its segment)
PLAIN_ROLES = {"text": ASSISTANT, "context": USER}  # plain text, no template: a document is all output (weight 1
# under any loss); `context` is text to continue from (weight 0 under IT), as in a statement probe


# ----------------------------------------------------------------------------- the template and the weights

def chat_pieces(messages: list[dict]) -> list[tuple[str, int]]:
    """The ONE chat template, as (text, segment) pieces, used by training, evaluation and generation.

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}<|endoftext|><|user|>\\n...
    The newline that closes a user or system turn is TEMPLATE (merged with the next tag: "\\n<|assistant|>\\n"),
    so user content is exactly the user's text and a prompt ending in "<|assistant|>\\n" is a piece boundary.
    """
    pieces: list[tuple[str, int]] = []

    def add(text: str, seg: int) -> None:
        if seg == TEMPLATE and pieces and pieces[-1][1] == TEMPLATE:
            pieces[-1] = (pieces[-1][0] + text, TEMPLATE)
        elif text or seg == EOT:  # empty content adds no piece
            pieces.append((text, seg))

    for m in messages:
        if m["role"] in PLAIN_ROLES:
            add(m["content"], PLAIN_ROLES[m["role"]])
            if is_document(messages):  # a document ends, as GPT-2's training text did, with end-of-text
                add("<|endoftext|>", EOT)
            continue
        tag, seg = ROLE_TAGS[m["role"]]
        add(tag, TEMPLATE)
        add(m["content"], seg)
        add(*(("<|endoftext|>", EOT) if seg == ASSISTANT else ("\n", TEMPLATE)))
    return pieces


def encode_pieces(messages: list[dict], tok: tiktoken.Encoding) -> list[tuple[list[int], int]]:
    """Each piece tokenized on its own. Template strings are ordinary text; only EOT is the special token."""
    return [([tok.eot_token] if seg == EOT else tok.encode_ordinary(text), seg) for text, seg in chat_pieces(messages)]


def truncate_pieces(pieces: list[tuple[list[int], int]], max_len: int) -> tuple[list[int], list[int]]:
    """Fit max_len tokens: cut the prompt first, from the left; then cut the end; template pieces are kept.

    Why the left: the end of the prompt sits next to the answer (the question, the latest turn), as when a
    context window slides. Tokens come out of the content only, so the example keeps the template the model
    sees at inference. The prompt keeps at least half the room (all of itself if shorter), so a long answer
    does not leave an example with no question; the rest of the excess comes off the end, and the answer
    keeps its start. Returns flat (ids, segs).
    """
    lens = [len(p) for p, _ in pieces]
    if sum(lens) > max_len:
        prompt = sum(n for n, (_, s) in zip(lens, pieces) if s in (SYSTEM, USER))
        template = sum(n for n, (_, s) in zip(lens, pieces) if s == TEMPLATE)
        room = max_len - template
        keep = max(room - (sum(lens) - prompt - template), min(prompt, room // 2), 0)
        cut, out = prompt - keep, []
        for p, s in pieces:  # earliest prompt pieces go first: oldest turns, then the left of the last one
            k = min(cut, len(p)) if s in (SYSTEM, USER) else 0
            out.append((p[k:], s))
            cut -= k
        pieces = out
    ids = [i for p, _ in pieces for i in p][:max_len]
    segs = [s for p, s in pieces for _ in p][:max_len]
    return ids, segs


def encode_segments(messages: list[dict], tok: tiktoken.Encoding,
                    max_len: int | None = None) -> tuple[list[int], list[int]]:
    """ids and the segment of each token (optionally truncated to max_len)."""
    return truncate_pieces(encode_pieces(messages, tok), max_len or 1 << 62)


def loss_weights(segs: list[int], prompt_loss_weight: float, template_loss_weight: float = 0.0) -> list[float]:
    """THE difference between IT (prompt_loss_weight=0) and IM (=1): weights[t] for predicting token t."""
    # BEGIN SOLUTION ex1: one weight per segment kind (TEMPLATE ... PAD); token 0 is never a target
    weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: prompt_loss_weight, USER: prompt_loss_weight,
              TEMPLATE: template_loss_weight, PAD: 0.0}
    return [0.0] + [weight[s] for s in segs[1:]]  # token 0 has no context to be predicted from
    # END SOLUTION


def encode_example(messages: list[dict], tok: tiktoken.Encoding, prompt_loss_weight: float,
                   template_loss_weight: float = 0.0, max_len: int | None = None) -> tuple[list[int], list[float]]:
    """(ids, weights) of one conversation: the whole method in one call."""
    ids, segs = encode_segments(messages, tok, max_len)
    return ids, loss_weights(segs, prompt_loss_weight, template_loss_weight)


def answer_start(segs: list[int]) -> int:
    """Where the last answer begins: the first token of the final run of ASSISTANT/EOT segments."""
    i = len(segs)
    while i > 0 and segs[i - 1] in (ASSISTANT, EOT):
        i -= 1
    return i


def prompt_ids(messages: list[dict], tok: tiktoken.Encoding, max_len: int | None = None) -> list[int]:
    """What generation starts from: everything before the last answer, through "<|assistant|>\\n".

    For a conversation that ends with its answer this is exactly the training example's prefix, cut with the
    same max_len the way training cut it (the answer counts for the cut): evaluation never sees a prompt cut that
    training did not cut, nor a longer one. An open conversation (no answer yet) is cut on its own.
    """
    if ends_with_answer(messages):
        ids, segs = encode_segments(messages, tok, max_len)
        return ids[:answer_start(segs)]
    pieces = encode_pieces(messages + [{"role": "assistant", "content": ""}], tok)[:-1]  # drop the closing EOT
    return truncate_pieces(pieces, max_len or 1 << 62)[0]


@dataclass
class Example:
    ids: list[int]
    segs: list[int]


def has_output(segs: list[int]) -> bool:
    return any(s in (ASSISTANT, EOT) for s in segs[1:])


def windows(ids: list[int], segs: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """A document cut into windows of max_len tokens that overlap by one: a window's last token is the next one's
    first, which is context only (weight 0), so every token after the document's first is predicted exactly once."""
    if len(ids) <= max_len:
        return [(ids, segs)]
    return [(ids[i:i + max_len], segs[i:i + max_len]) for i in range(0, len(ids) - 1, max_len - 1)]


def encode_dataset(convs: list[list[dict]], tok: tiktoken.Encoding,
                   max_len: int | None) -> tuple[list[Example], dict]:
    """Tokenize every conversation and truncate it to max_len, dropping those left with no output token to learn;
    a plain-text document (`is_document`) ends with end-of-text and is cut into windows instead, losing nothing."""
    stats = dict(examples=len(convs), kept=0, truncated=0, dropped=0,
                 prompt_tokens=0, output_tokens=0, template_tokens=0)
    names = {SYSTEM: "prompt_tokens", USER: "prompt_tokens", ASSISTANT: "output_tokens", EOT: "output_tokens",
             TEMPLATE: "template_tokens"}
    examples = []
    for msgs in convs:
        pieces = encode_pieces(msgs, tok)
        for p, s in pieces:  # lengths before truncation: what the data is, not what fits
            stats[names[s]] += len(p)
        if is_document(msgs):
            ids, segs = truncate_pieces(pieces, 1 << 62)
            cut = windows(ids, segs, max_len or 1 << 62)
        else:
            cut = [truncate_pieces(pieces, max_len or 1 << 62)]
            stats["truncated"] += len(cut[0][0]) < sum(len(p) for p, _ in pieces)
        for ids, segs in cut:
            if has_output(segs):
                examples.append(Example(ids, segs))
            else:
                stats["dropped"] += 1
    stats["kept"] = len(examples)
    return examples, stats


# ----------------------------------------------------------------------------- batches with little padding

@dataclass
class Batch:
    """All (B, T). Position t feeds idx[t] and predicts targets[t] with weight weights[t]; segs is the target's
    segment (PAD=-1); pos restarts at 0 for each packed example; doc says which example (-1 = padding)."""
    idx: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    segs: torch.Tensor
    pos: torch.Tensor
    doc: torch.Tensor
    select: torch.Tensor | None = None  # (N,) flat indices of the nonzero weights: the positions the head scores
    cu_seqlens: torch.Tensor | None = None  # packed only: (D+1,) int32 start of each run of one doc id, flattened

    def to(self, device: str | torch.device) -> "Batch":
        """A copy on `device`; from pinned memory the copies overlap with the GPU's work (non_blocking)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else
                        getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).pin_memory()
                        for f in fields(self)})


def first_fit(lengths: list[int], order: list[int], cap: int) -> list[list[int]]:
    """Each item (in `order`) into the first row with room left; a new row when none has."""
    rows: list[list[int]] = []
    load: list[int] = []
    for i in order:
        r = next((r for r, used in enumerate(load) if used + lengths[i] <= cap), len(rows))
        if r == len(rows):
            rows.append([])
            load.append(0)
        rows[r].append(i)
        load[r] += lengths[i]
    return rows


def pack(examples: list[Example], pack_len: int) -> list[list[Example]]:
    """Rows of at most pack_len positions (len(ids) - 1 each): as few rows as first-fit decreasing needs, then
    balanced (longest first into the emptiest row) when that fits, since the batch is as wide as its fullest row."""
    n = [len(e.ids) - 1 for e in examples]
    if max(n, default=0) > pack_len:
        raise ValueError(f"an example of {max(n) + 1} tokens does not fit pack_len={pack_len}; truncate to pack_len+1")
    order = sorted(range(len(n)), key=lambda i: -n[i])
    rows = first_fit(n, order, pack_len)
    balanced: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for i in order:
        r = load.index(min(load))
        balanced[r].append(i)
        load[r] += n[i]
    if max(load, default=0) <= pack_len:
        rows = balanced
    return [[examples[i] for i in row] for row in rows]


def collate(examples: list[Example], prompt_loss_weight: float, template_loss_weight: float = 0.0,
            pack_len: int | None = None) -> Batch:
    """One example per row, right-padded to the longest; or, with pack_len, several examples per row."""
    rows = [[e] for e in examples] if pack_len is None else pack(examples, pack_len)
    B, T = len(rows), max([sum(len(e.ids) - 1 for e in row) for row in rows] + [1])
    idx, targets, segs, pos = (np.zeros((B, T), np.int64) for _ in range(4))  # numpy: lists convert ~6x faster
    weights, doc = np.zeros((B, T), np.float32), np.full((B, T), -1, np.int64)
    segs[:] = PAD
    for r, row in enumerate(rows):
        t = 0
        for d, e in enumerate(row):
            n = len(e.ids) - 1
            at = slice(t, t + n)
            idx[r, at], targets[r, at], segs[r, at] = e.ids[:-1], e.ids[1:], e.segs[1:]
            weights[r, at] = loss_weights(e.segs, prompt_loss_weight, template_loss_weight)[1:]
            pos[r, at], doc[r, at] = np.arange(n), d
            t += n
    select = torch.from_numpy(np.flatnonzero(weights))  # here, on the CPU: boolean indexing on a GPU would sync
    cu_seqlens = None if pack_len is None else torch.from_numpy(doc_starts(doc))
    return Batch(*(torch.from_numpy(a) for a in (idx, targets, weights, segs, pos, doc)), select, cu_seqlens)


def doc_starts(doc: np.ndarray) -> np.ndarray:
    """(B, T) document ids -> (D+1,) int32: where each run of one id starts in the flattened B * T tokens, and
    B * T at the end (varlen attention's cu_seqlens). Each row's padding is a run of its own, seeing only itself."""
    B, T = doc.shape
    flat = doc.reshape(-1)
    new_run = np.ones(B * T, dtype=bool)
    new_run[1:] = flat[1:] != flat[:-1]
    new_run[::T] = True  # a row never continues the previous row's document
    return np.append(np.flatnonzero(new_run), B * T).astype(np.int32)


def useful_fraction(batch: Batch) -> float:
    """Real positions / computed positions (1.0 = no padding)."""
    return int((batch.doc >= 0).sum()) / batch.doc.numel() if batch.doc.numel() else 1.0


def _cut(order: list[int], lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of `order`: at most batch_size examples and (if set) batch_tokens padded tokens."""
    batches: list[list[int]] = []
    for i in order:
        b = batches[-1] if batches else None
        if b is None or len(b) == batch_size or (
                batch_tokens and (len(b) + 1) * max(lengths[j] for j in b + [i]) > batch_tokens):
            batches.append([i])
        else:
            b.append(i)
    return batches


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  batch_tokens: int | None = None, megabatch: int = 50) -> list[list[int]]:
    """The optimizer steps of one epoch (lists of example indices), a pure function of (seed, epoch).

    Grouping (as in Hugging Face's length-grouped sampler): shuffle, sort each run of megabatch * batch_size
    examples by length, cut into batches, shuffle the batches: little padding, yet a random order.
    The last batch may be short. Ranks and micro-batch sizes do not enter, so training resumes exactly.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return _cut(order, lengths, batch_size, batch_tokens)
    size = megabatch * batch_size
    batches = []
    for i in range(0, len(order), size):
        batches += _cut(sorted(order[i:i + size], key=lambda j: -lengths[j]), lengths, batch_size, batch_tokens)
    return [batches[k] for k in rng.permutation(len(batches))]


def micro_batches(batch: list[int], rank: int, world_size: int, accum: int) -> list[list[int]]:
    """This rank's `accum` micro-batches of one step; together over ranks and micro-steps: exactly `batch`.

    Always `accum` lists (some empty when the batch is short), so every rank runs the same number of
    forward/backward passes and DDP cannot deadlock. Chunk j*world_size + rank: at each micro-step the
    ranks hold neighbouring chunks of the length-sorted batch, so they finish at about the same time.
    """
    k = world_size * accum
    bounds = [len(batch) * i // k for i in range(k + 1)]  # chunk sizes differ by at most one
    return [batch[bounds[c]:bounds[c + 1]] for c in (j * world_size + rank for j in range(accum))]


def split_and_subsample(convs: list, val_size: float, num_examples: int, seed: int) -> tuple[list, list]:
    """(train, val): hold out val_size (a count, or a fraction if < 1) first, then keep num_examples (0 = all).

    The held-out set does not depend on num_examples, and smaller training sets are subsets of larger ones.
    """
    n = len(convs)
    n_val = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if not 0 <= n_val < n:
        raise UserError(f"val_size={val_size} leaves no training examples out of {n}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    val, train = perm[:n_val], perm[n_val:]
    if num_examples > len(train):
        raise UserError(f"num_examples={num_examples}, but only {len(train)} are left after holding out {n_val}")
    train = train[:num_examples] if num_examples > 0 else train
    return [convs[i] for i in sorted(train)], [convs[i] for i in sorted(val)]


# train.py's data settings and their defaults: the one place both train.py and eval.py turn them into a split
SYNTHETIC = ("synthetic", "synthetic-corpus", "synthetic-qa")  # the built-in tasks: from scratch; pretraining; tuning
WORLD_TASKS = SYNTHETIC[1:]  # the pretrained regime: a base learns the world from text, then is tuned on questions
SPLIT_DEFAULTS = dict(data="synthetic", format="", val_size=100, num_examples=0, seed=1337,
                      synth_examples=200, synth_heldout=40, synth_facts=8, synth_mentions=10, synth_keys=120,
                      synth_seed=0)


def load_split(settings: dict) -> tuple[list, list]:
    """(train, held-out) conversations from data settings (any others are ignored; missing ones take
    SPLIT_DEFAULTS). eval.py calls it with a checkpoint's saved config, so it scores exactly what training held out."""
    s = {**SPLIT_DEFAULTS, **{k: v for k, v in settings.items() if k in SPLIT_DEFAULTS}}
    if s["data"] in SYNTHETIC:  # their splits are part of the tasks: held-out questions ask about held-out keys
        if s["num_examples"]:
            raise UserError("--num_examples subsamples a data file; the synthetic tasks' is --synth_examples")
        if s["data"] == "synthetic-corpus":  # plain text stating the whole world; held out: the statement probe
            world = synthetic_world(s["synth_keys"])
            return [[{"role": "text", "content": d}] for d in corpus_documents(world, seed=s["synth_seed"])], \
                probe_conversations(world)
        if s["data"] == "synthetic-qa":
            return qa_split(s["synth_examples"], s["synth_heldout"], s["synth_facts"], s["synth_seed"],
                            n_keys=s["synth_keys"])
        return synthetic_split(s["synth_examples"], s["synth_heldout"], s["synth_facts"], s["synth_mentions"],
                               s["synth_seed"], n_keys=s["synth_keys"])
    convs = load_conversations(s["data"], s["format"] or None)
    return split_and_subsample(convs, s["val_size"], s["num_examples"], s["seed"])


def main(argv: list[str] | None = None) -> None:
    """`python data.py stats|show ...` (data_cli.py)."""
    from data_cli import main as cli  # here, not at the top: data_cli imports this module
    cli(argv)


if __name__ == "__main__":
    run_cli(main)
