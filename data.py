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
synthetic task lives in imgpt/synthetic.py.
At the bottom, `python data.py stats|show`: a dataset's token statistics, or its examples marked by loss weight.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields

import numpy as np
import tiktoken
import torch

from imgpt.batching import epoch_batches, first_fit
from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.formats import FORMATS, ends_with_answer, is_document, load_conversations, load_split
from imgpt.synthetic import synthetic_split
from imgpt.tokenizers import get_tokenizer
from imgpt.train_config import LOSS_PRESETS, TrainConfig
from model import head_positions

TEMPLATE, SYSTEM, USER, ASSISTANT, EOT = 0, 1, 2, 3, 4  # the segment of each token
PROMPT_SEGMENTS, OUTPUT_SEGMENTS = (SYSTEM, USER), (ASSISTANT, EOT)  # the instruction's segments; the answer's
PAD = -1
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
        prompt = sum(n for n, (_, s) in zip(lens, pieces) if s in PROMPT_SEGMENTS)
        template = sum(n for n, (_, s) in zip(lens, pieces) if s == TEMPLATE)
        room = max_len - template
        keep = max(room - (sum(lens) - prompt - template), min(prompt, room // 2), 0)
        cut, out = prompt - keep, []
        for p, s in pieces:  # earliest prompt pieces go first: oldest turns, then the left of the last one
            k = min(cut, len(p)) if s in PROMPT_SEGMENTS else 0
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
    weight = {ASSISTANT: 1.0, EOT: 1.0, SYSTEM: prompt_loss_weight, USER: prompt_loss_weight,
              TEMPLATE: template_loss_weight, PAD: 0.0}
    return [0.0] + [weight[s] for s in segs[1:]]  # token 0 has no context to be predicted from


def answer_start(segs: list[int]) -> int:
    """Where the last answer begins: the first token of the final run of ASSISTANT/EOT segments."""
    i = len(segs)
    while i > 0 and segs[i - 1] in OUTPUT_SEGMENTS:
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
    """One training example as the data build made it: its tokens, each token's segment, and each token's loss
    weight (loss_weights at the run's prompt and template weights). Everything after the build reads the weights
    from here; nothing recomputes them."""
    ids: list[int]
    segs: list[int]
    weights: list[float]


def make_example(ids: list[int], segs: list[int], prompt_loss_weight: float,
                 template_loss_weight: float = 0.0) -> Example:
    """The example with its weights: where the run's prompt weight meets the data, once."""
    return Example(ids, segs, loss_weights(segs, prompt_loss_weight, template_loss_weight))


def encode_example(messages: list[dict], tok: tiktoken.Encoding, prompt_loss_weight: float,
                   template_loss_weight: float = 0.0, max_len: int | None = None) -> tuple[list[int], list[float]]:
    """(ids, weights) of one conversation: the whole method in one call."""
    e = make_example(*encode_segments(messages, tok, max_len), prompt_loss_weight, template_loss_weight)
    return e.ids, e.weights


def has_output(segs: list[int]) -> bool:
    return any(s in OUTPUT_SEGMENTS for s in segs[1:])


def windows(ids: list[int], segs: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """A document cut into windows of max_len tokens that overlap by one: a window's last token is the next one's
    first, which is context only (weight 0), so every token after the document's first is predicted exactly once."""
    if len(ids) <= max_len:
        return [(ids, segs)]
    return [(ids[i:i + max_len], segs[i:i + max_len]) for i in range(0, len(ids) - 1, max_len - 1)]


def encode_dataset(convs: list[list[dict]], tok: tiktoken.Encoding, max_len: int | None, prompt_loss_weight: float,
                   template_loss_weight: float = 0.0) -> tuple[list[Example], dict]:
    """Tokenize every conversation, truncate it to max_len and weigh its tokens, dropping those left with no output
    token to learn; a plain-text document (`is_document`) ends with end-of-text and is cut into windows instead,
    losing nothing."""
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
                examples.append(make_example(ids, segs, prompt_loss_weight, template_loss_weight))
            else:
                stats["dropped"] += 1
    stats["kept"] = len(examples)
    return examples, stats


def build_data(cfg: TrainConfig, tok, max_len: int | None = None) -> tuple[list[Example], list[Example], dict]:
    """Encoded and weighted training and held-out examples (deterministic for the seed), plus statistics. Examples
    are cut to block_size + 1 tokens by default: block_size inputs, each predicting the next token."""
    max_len = max_len or cfg.block_size + 1
    train_convs, val_convs = load_split(asdict(cfg))
    weigh = (cfg.prompt_loss_weight, cfg.template_loss_weight)  # the run's weights, carried by every example
    train_ex, stats = encode_dataset(train_convs, tok, max_len, *weigh)
    val_ex, _ = encode_dataset(val_convs, tok, max_len, *weigh)
    if not train_ex:
        raise UserError(f"{cfg.data}: no training examples left (stats: {stats})")
    return train_ex, val_ex, stats


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
    select: torch.Tensor | None = None  # (N,) model.head_positions(weights): the positions the output head scores
    cu_seqlens: torch.Tensor | None = None  # packed only: (D+1,) int32 start of each run of one doc id, flattened

    def to(self, device: str | torch.device) -> "Batch":
        """A copy on `device`; from pinned memory the copies overlap with the GPU's work (non_blocking)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else
                        getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).pin_memory()
                        for f in fields(self)})


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


def collate(examples: list[Example], pack_len: int | None = None) -> Batch:
    """One example per row, right-padded to the longest; or, with pack_len, several examples per row. The weights
    are the examples' own (weight 0 on padding)."""
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
            weights[r, at] = e.weights[1:]
            pos[r, at], doc[r, at] = np.arange(n), d
            t += n
    idx, targets, weights, segs, pos, doc = (torch.from_numpy(a) for a in (idx, targets, weights, segs, pos, doc))
    select = head_positions(weights)  # here, on the CPU: on a GPU, counting the positions would wait for it
    cu_seqlens = None if pack_len is None else torch.from_numpy(doc_starts(doc.numpy()))
    return Batch(idx, targets, weights, segs, pos, doc, select, cu_seqlens)


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


# ----------------------------------------------------------------------------- python data.py stats|show

# See an example as the loss sees it: every token marked by its loss weight (`python data.py show`).
#
# On a terminal each token gets a background by its weight (grey: not trained on; green: weight 1; amber: between),
# two shades alternating so token boundaries show. Elsewhere (a file, a pipe, README) runs of tokens with the same
# weight are bracketed: `[...]` is trained on with weight 1, `[...]x0.3` with weight 0.3, plain text not at all.

RESET = "\033[0m"
SHADES = {"zero": ("\033[48;5;236m", "\033[48;5;239m"), "part": ("\033[48;5;94m", "\033[48;5;130m"),
          "full": ("\033[48;5;22m", "\033[48;5;28m")}  # 256-colour backgrounds, two per kind


def visible(text: str) -> str:
    """Whitespace a reader would miss, spelled out: one example stays one line."""
    return text.replace("\n", "\\n").replace("\t", "\\t")


def kind(weight: float) -> str:
    return "zero" if weight == 0 else "full" if weight == 1 else "part"


def colored(tokens: list[tuple[str, float]]) -> str:
    """ANSI: each token on the background of its weight's kind, alternating shades."""
    return "".join(f"{SHADES[kind(w)][i % 2]}{visible(t)}" for i, (t, w) in enumerate(tokens)) + RESET


def bracketed(tokens: list[tuple[str, float]]) -> str:
    """Plain text: each run of equal nonzero weight in brackets (with its weight unless 1), zero weight bare."""
    runs: list[tuple[str, float]] = []
    for text, w in tokens:
        if runs and runs[-1][1] == w:
            runs[-1] = (runs[-1][0] + text, w)
        else:
            runs.append((text, w))
    marked = (visible(t) if w == 0 else f"[{visible(t)}]" + ("" if w == 1 else f"x{w:g}") for t, w in runs)
    return "".join(marked)


def legend(color: bool) -> str:
    if color:
        return (f"{SHADES['zero'][0]} weight 0 {RESET} {SHADES['part'][0]} 0 < weight < 1 {RESET} "
                f"{SHADES['full'][0]} weight 1 {RESET}  (shades alternate per token)")
    return "[...] weight 1, [...]xW weight W, unmarked weight 0 (the loss for predicting each token)"


def render(tokens: list[tuple[str, float]], color: bool) -> str:
    """One example, one line: a count of the tokens trained on, then the marked tokens."""
    head = f"{sum(w > 0 for _, w in tokens)} of {len(tokens)} tokens trained on: "
    return head + (colored(tokens) if color else bracketed(tokens))


@dataclass
class ShowConfig:
    loss: str = opt("it", "it, im, or the prompt loss weight as a number (e.g. 0.3)")
    n: int = opt(3, "how many examples to show, from the start")
    format: str | None = opt(None, "input format ('' = detect)")
    tokenizer: str = opt("", "gpt2, byte or a directory ('' = byte for synthetic, else gpt2)")
    max_len: int = opt(1024, "truncate examples to this many tokens, as training would")
    color: str = opt("auto", "auto (colour on a terminal), always, or never (brackets)")

    def prompt_loss_weight(self) -> float:
        try:
            return LOSS_PRESETS[self.loss] if self.loss in LOSS_PRESETS else float(self.loss)
        except ValueError:
            raise UserError(f"--loss: expected it, im or a number, got {self.loss!r}") from None

    def use_color(self, is_tty: bool) -> bool:
        if self.color not in ("auto", "always", "never"):
            raise UserError(f"--color: expected auto, always or never, got {self.color!r}")
        return self.color == "always" or (self.color == "auto" and is_tty)



USAGE = """Usage: python data.py stats FILE [FILE ...] [--max_len N] [--format F] [--tokenizer gpt2|byte|DIR]
       python data.py show FILE|synthetic [--loss it|im|WEIGHT] [--n N] [--tokenizer T] [--color auto|always|never]"""


@dataclass
class StatsConfig:
    max_len: int = opt(1024, "context length: examples longer than this are truncated (or dropped)", low=2)
    format: str | None = opt(None, f"input format, detected when not given: {', '.join(FORMATS)}")
    tokenizer: str = opt("gpt2", "gpt2, byte, or a directory with vocab.json+merges.txt (or encoder.json+vocab.bpe)")
    batch_size: int = opt(8, "batch size for measuring padding (length-grouped batches)", low=1)


def dataset_stats(convs: list[list[dict]], tok: tiktoken.Encoding, max_len: int, batch_size: int = 8) -> dict:
    """One row of a Table-5-like summary: lengths before truncation, weight shares and padding after."""
    examples, st = encode_dataset(convs, tok, max_len, prompt_loss_weight=0.0)  # weighed per preset below
    n, positions = st["examples"], sum(len(e.ids) - 1 for e in examples)
    weighted = {k: sum(sum(loss_weights(e.segs, plw)) for e in examples) / max(positions, 1)
                for k, plw in LOSS_PRESETS.items()}
    lengths = [len(e.ids) for e in examples]
    useful = {}
    for name, pack_len in (("padded", None), ("packed", max_len)):  # length-grouped batches, as in training
        docs = [collate([examples[i] for i in b], pack_len=pack_len).doc
                for b in epoch_batches(lengths, batch_size, seed=0, epoch=0)]
        useful[name] = sum(int((d >= 0).sum()) for d in docs) / max(sum(d.numel() for d in docs), 1)
    return {"examples": n, "instruction": st["prompt_tokens"] / n, "output": st["output_tokens"] / n,
            "ratio": st["prompt_tokens"] / max(st["output_tokens"], 1), "IT weighted": weighted["it"],
            "IM weighted": weighted["im"], "truncated": st["truncated"], "dropped": st["dropped"],
            f"useful@{batch_size}": useful["padded"], f"useful@{batch_size} packed": useful["packed"]}


def stats_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per dataset."""
    cols = list(next(iter(rows.values())))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) and v < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    return "\n".join(lines + [f"| {name} | " + " | ".join(cell(r[c]) for c in cols) + " |" for name, r in rows.items()])


def show(source: str, flags: list[str]) -> None:
    """The first examples of a file, or of train.py's default synthetic training split, marked by loss weight."""
    cfg = parse_config(ShowConfig, flags, description="Examples with each token marked by its loss weight")
    weight, color = cfg.prompt_loss_weight(), cfg.use_color(sys.stdout.isatty())
    convs = load_split({})[0] if source == "synthetic" else load_conversations(source, cfg.format)
    tok = get_tokenizer(cfg.tokenizer or ("byte" if source == "synthetic" else "gpt2"))
    print(legend(color))
    for i, conv in enumerate(convs[:cfg.n], 1):
        ids, weights = encode_example(conv, tok, weight, max_len=cfg.max_len)
        text = [tok.decode_single_token_bytes(t).decode("utf-8", errors="replace") for t in ids]
        print(f"example {i}, " + render(list(zip(text, weights)), color))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\n" + USAGE)
        return
    if argv[:1] == ["show"] and len(argv) > 1 and not argv[1].startswith("-"):
        return show(argv[1], argv[2:])
    if not argv or argv[0] != "stats":
        raise UserError("usage: " + " | ".join(u.strip() for u in USAGE.split("Usage: ")[1].strip().splitlines()))
    rest = argv[1:]
    k = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))  # FILE ... then --flags
    files, flags = rest[:k], rest[k:]
    cfg = parse_config(StatsConfig, flags, description="Token statistics of instruction datasets")
    if not files:
        raise UserError("stats: give at least one data file, a dataset name, or 'synthetic'")
    datasets = {os.path.basename(f): synthetic_split()[0] if f == "synthetic"
                else load_conversations(f, cfg.format) for f in files}  # a bad file fails before any download
    tok = get_tokenizer(cfg.tokenizer)
    rows = {name: dataset_stats(convs, tok, cfg.max_len, cfg.batch_size) for name, convs in datasets.items()}
    print(stats_table(rows))
    print(f"tokens per example before truncation; weighted = share of target tokens with weight > 0 (IT: outputs, "
          f"IM: + instructions); truncated/dropped at max_len={cfg.max_len}; useful = real / computed tokens")


if __name__ == "__main__":
    run_cli(main)
