"""Multiple-choice benchmarks by log-likelihood, as lm-evaluation-harness defines them.

A question is a context and its choices; each choice is scored by the summed log-probability of its tokens after
the context. `acc` picks the highest sum; `acc_norm` divides by the choice's length in characters first, so long
choices are not penalised for having more tokens. Readers for MMLU-format CSV files and for HellaSwag.
"""
from __future__ import annotations

import ast
import bz2
import contextlib
import csv
import io
import json
import os
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm

from imgpt.cli import UserError
from imgpt.formats import DataError
from imgpt.formats import lines as text_lines

# ----------------------------------------------------------------------------- multiple choice (lm-eval's definitions)

LETTERS = "ABCDEFGHIJ"


@dataclass
class Question:
    context: str
    choices: list[str]  # without the leading space that separates them from the context
    gold: int


def pick_acc(logprobs: list[float]) -> int:
    """lm-eval `acc`: the choice with the highest summed log-probability (ties: the first)."""
    return max(range(len(logprobs)), key=lambda i: logprobs[i])


def pick_acc_norm(logprobs: list[float], choices: list[str]) -> int:
    """lm-eval `acc_norm`: the highest log-probability per character of the choice (`len(choice)`, no delimiter)."""
    return max(range(len(logprobs)), key=lambda i: logprobs[i] / max(len(choices[i]), 1))


def read_text(path: str) -> str:
    """A benchmark file's text (.bz2 decompressed; a UTF-8 BOM dropped; a stray 0xD5 becomes U+FFFD); a file that
    cannot be read or decompressed is a DataError naming it."""
    opener = bz2.open if path.endswith(".bz2") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
            return f.read()
    except (OSError, EOFError) as e:  # a truncated .bz2 raises EOFError, a corrupt one OSError
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _parse_answer(text: str, n_choices: int, where: str, field: str = "answer") -> int:
    """The gold choice from a letter (A, B, ...) or a 0-based index."""
    text = text.strip()
    letter = len(text) == 1 and text.upper() in LETTERS
    gold = LETTERS.index(text.upper()) if letter else int(text) if text.isdigit() else -1
    if not 0 <= gold < n_choices:
        raise DataError(f"{where}: field '{field}': expected a letter A-{LETTERS[n_choices - 1]} "
                        f"or an index 0-{n_choices - 1}, got {text!r}")
    return gold


def _parse_choices(text: str, where: str) -> list[str]:
    try:
        choices = ast.literal_eval(text.strip())  # a Python-list string, as MMLU-Redux writes it; never eval()
    except (ValueError, SyntaxError):
        choices = None
    if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices': expected a list of strings like ['a', 'b', 'c', 'd'], "
                        f"got {text[:60]!r}")
    return list(choices)


def _sniff_delimiter(text: str, path: str) -> tuple[str, bool]:
    """(',' or ';', has_header): the delimiter under which the first record is a header or a 6-field MMLU row."""
    for delim in ",;":
        first = next(csv.reader(io.StringIO(text), delimiter=delim), [])
        if "question" in [c.strip().lower() for c in first]:
            return delim, True
        if len(first) >= 6 and first[5].strip().upper() in ("A", "B", "C", "D"):
            return delim, False
    raise DataError(f"{path}:1: expected a header with a 'question' column, or rows of question,A,B,C,D,answer "
                    f"separated by ',' or ';'")


def _option_columns(header: list[str]) -> list[int]:
    """Positions of four option columns named A..D, option_a.. or choice_a.. (in A-D order); [] if there are none."""
    found = {m.group(2): i for i, h in enumerate(header) if (m := re.fullmatch(r"(option|choice)?[ _]?([a-d])", h))}
    return [found[k] for k in "abcd"] if len(found) == 4 else []


def read_mmlu_csv(path: str) -> list[Question]:
    """MMLU-format CSV -> Questions (context = the bare question): header or not, ',' or ';', columns in any order,
    options as four columns or a `choices` Python-list string (MMLU-Redux), answer as a letter or an index."""
    text = read_text(path)
    delim, has_header = _sniff_delimiter(text, path)
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    header = [c.strip().lower() for c in next(reader)] if has_header else ["question", "a", "b", "c", "d", "answer"]
    options = _option_columns(header)
    if "answer" not in header or ("choices" not in header and not options):
        raise DataError(f"{path}:1: the header needs 'question', 'answer' and 'choices' (or A, B, C, D) columns")
    needed = [header.index("question"), header.index("answer")] + (options or [header.index("choices")])
    questions, line = [], reader.line_num + 1
    for row in reader:
        where, line = f"{path}:{line}", reader.line_num + 1  # a record may span lines: report where it starts
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(needed):
            raise DataError(f"{where}: expected {len(header)} fields separated by {delim!r}, got {len(row)}")
        choices = [row[i] for i in options] if options else _parse_choices(row[header.index("choices")], where)
        gold = _parse_answer(row[header.index("answer")], len(choices), where)
        questions.append(Question(row[header.index("question")].strip(), choices, gold))
    return nonempty(questions, path)


def nonempty(questions: list[Question], path: str) -> list[Question]:
    """An accuracy over 0 questions is no result: a file without any is an error."""
    if not questions:
        raise DataError(f"{path}: no questions in this file")
    return questions


def mmlu_subject(path: str) -> str:
    """'mmlu_college_biology.csv' or 'college_biology_test.csv' -> 'college biology'."""
    name = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"^mmlu_|_(test|val|dev)$", "", name).replace("_", " ")


def mmlu_prompt(q: Question, subject: str, style: str) -> Question:
    """lm-eval's zero-shot prompts, each after its task's description line. letters (`mmlu`): options listed,
    the choices are ' A'..' D'. continuation (`mmlu_continuation`): 'Question: ...\nAnswer:', the choices are the
    options' texts."""
    if style == "continuation":
        intro = f"The following are questions (with answers) about {subject}.\n\n"
        return Question(f"{intro}Question: {q.context.strip()}\nAnswer:", q.choices, q.gold)
    letters = LETTERS[:len(q.choices)]
    listed = "".join(f"\n{letter}. {choice}" for letter, choice in zip(letters, q.choices))
    intro = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return Question(f"{intro}{q.context}{listed}\nAnswer:", list(letters), q.gold)


def read_mmlu(path: str, style: str) -> list[Question]:
    """One CSV, or every .csv in a directory (one subject per file), as prompts ready to score."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".csv"))
    if not files:
        raise UserError(f"--mmlu: {path}: no .csv files in this directory")
    return [mmlu_prompt(q, mmlu_subject(f), style) for f in files for q in read_mmlu_csv(f)]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup of WikiHow artifacts: ' [title]' -> '. ', other [bracketed] spans dropped."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


SENTENCE_END = re.compile(r"[.!?]\s+")


def hellaswag_context(line: str) -> str:
    """lm-eval's query from the text file's context line, `label: ctx_a ctx_b`. lm-eval builds it as
    ctx_a + " " + ctx_b.capitalize(); the file keeps ctx_b as written ("... on a roof. he"). The file does not mark
    where ctx_b starts, so we take the text after the last sentence end; a line that ends a sentence has no ctx_b.
    Exact when ctx_b holds no sentence end of its own (jsonl input, which names ctx_b, is always exact)."""
    line = line.strip()
    ends = list(SENTENCE_END.finditer(line))
    if not ends or line[-1] in ".!?":
        return hellaswag_preprocess(line)
    cut = ends[-1].end()
    return hellaswag_preprocess(line[:cut] + line[cut:].capitalize())


def read_hellaswag(path: str) -> list[Question]:
    """HellaSwag as 6-line text records (context, label, 4 endings; .txt or .txt.bz2), or jsonl (ctx, endings,
    label), preprocessed as lm-eval's hellaswag task does (see hellaswag_context for the text file's one guess)."""
    lines = text_lines(read_text(path))
    if ".jsonl" in os.path.basename(path):
        return nonempty([_hellaswag_record(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()],
                        path)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path}: expected 6 lines per task (context, label, 4 endings), got {len(lines)} lines")
    questions = []
    for i in range(0, len(lines), 6):
        gold = _parse_answer(lines[i + 1], 4, f"{path}:{i + 2}", "label")
        endings = [hellaswag_preprocess(e) for e in lines[i + 2:i + 6]]
        questions.append(Question(hellaswag_context(lines[i]), endings, gold))
    return nonempty(questions, path)


def _hellaswag_record(line: str, where: str) -> Question:
    try:
        rec = json.loads(line)
        ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize() if "ctx_a" in rec else rec["ctx"]
        ctx = rec["activity_label"] + ": " + ctx if rec.get("activity_label") else ctx
        endings = [hellaswag_preprocess(e) for e in rec["endings"]]
        gold = _parse_answer(str(rec["label"]), len(endings), where, "label")
        return Question(hellaswag_preprocess(ctx), endings, gold)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DataError(f"{where}: expected a JSON object with ctx, endings and label ({e!r})") from None


# ----------------------------------------------------------------------------- scoring continuations


def scoring_rows(pairs: list[tuple[list[int], list[int]]], block_size: int) -> tuple[list, list[int]]:
    """Each pair as a row (input tokens, n scored positions): the model reads context + continuation without its
    last token, and its last n outputs predict the continuation. A context too long for the block loses its
    oldest tokens. Pairs that differ only in the last token (' A', ' B', ... after one prompt) make the same
    row: one forward serves them all. Returns the distinct rows and each pair's row."""
    rows: dict[tuple[tuple[int, ...], int], int] = {}
    row_of = []
    for ctx, cont in pairs:
        seq = (ctx + cont)[-(block_size + 1):]
        key = (tuple(seq[:-1]), min(len(cont), len(seq) - 1))
        row_of.append(rows.setdefault(key, len(rows)))
    return list(rows), row_of


def pad_rows(rows: list[tuple[tuple[int, ...], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded idx (B, T); the (N,) scored positions, each row's last n, as indices into the flattened
    (B * T) tokens (GPT.forward's `select`); and which of those N is its row's final position."""
    T = max(len(tokens) for tokens, _ in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    scored, is_last = [], []
    for r, (tokens, n) in enumerate(rows):
        idx[r, :len(tokens)] = torch.tensor(tokens)
        scored += range(r * T + len(tokens) - n, r * T + len(tokens))
        is_last += [False] * (n - 1) + [True]
    return idx, torch.tensor(scored, dtype=torch.long), torch.tensor(is_last)


@torch.no_grad()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int, device: str,
                          amp=None, show: bool = False) -> list[float]:
    """log P(continuation | context), summed over the continuation's tokens, for each (context, continuation) pair.
    One forward per batch of rows (longest first, so batches pad little); only scored positions reach the head."""
    rows, row_of = scoring_rows(pairs, model.config.block_size)
    last_token = [(ctx + cont)[-1] for ctx, cont in pairs]
    members: list[list[int]] = [[] for _ in rows]
    for i, r in enumerate(row_of):
        members[r].append(i)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    out = [0.0] * len(pairs)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring choices", disable=not show, leave=False):
        chunk = order[start:start + batch_size]
        idx, select, last = (t.to(device) for t in pad_rows([rows[r] for r in chunk]))
        with amp if amp is not None else contextlib.nullcontext():
            logits = model(idx, select=select)  # (N, V): the scored positions, row-major
        logp = logits.float().log_softmax(-1)  # (N, V)
        next_tokens = torch.cat([idx[:, 1:], idx[:, :1]], dim=1).flatten()[select]  # (N,) targets inside the input
        shared = logp.gather(1, next_tokens[:, None]).squeeze(1).masked_fill(last, 0.0)  # (N,) but the rows' last
        row = select // idx.size(1)  # (N,) the row of each scored position
        shared_sums = torch.zeros(len(chunk), device=device).index_add_(0, row, shared)  # (B,)
        ids = [i for r in chunk for i in members[r]]  # the pairs this batch scores, and their rows in it
        in_row = torch.tensor([b for b, r in enumerate(chunk) for _ in members[r]], device=device)
        final = torch.tensor([last_token[i] for i in ids], device=device)
        scores = shared_sums[in_row] + logp[last][in_row, final]  # logp[last]: (B, V), each row's final position
        for i, s in zip(ids, scores.tolist()):
            out[i] = s
    return out
