"""Instruction datasets on disk -> conversations, each a list of messages [{"role", "content"}].

One reader per format (Alpaca and its LIMA `history` variant, Dolly, prompt/completion, question/answer as in
GSM8K, chat `messages`, ShareGPT, self-instruct seed tasks); the first record's keys pick the format unless one is given. Everything downstream
(template, weights, batches) sees only messages, so a new format is one small function here. A bad file ends in
one DataError that names the file, the line (JSONL) or record index (JSON array), and the field.
At the bottom, the split: which conversations train and which are held out (a data file split by a seed, or the
built-in tasks' own splits).
"""
from __future__ import annotations

import json
import os
import urllib.error

import numpy as np

from imgpt.cli import UserError
from imgpt.files import cache_dir, download
from imgpt.synthetic import corpus_documents, probe_conversations, qa_split, synthetic_split, synthetic_world

ROLES = ("system", "user", "assistant")


class DataError(UserError):
    """A bad data file: the message names the file, the line (JSONL) or record index (JSON array), and the field."""


# ----------------------------------------------------------------------------- files -> records -> messages

def read_text(path: str) -> str:
    """A file's UTF-8 text; errors name the file (and the line of a byte that is not UTF-8)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8") from None


def read_records(path: str) -> list[tuple[str, object]]:
    """(where, record) for each record of a JSON array or JSONL file; `where` is `file:line` or `file: record [i]`."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if text.lstrip().startswith("["):  # one JSON array; otherwise one JSON object per line
        return [(f"{path}: record [{i}]", r) for i, r in enumerate(parse_json(text, path))]
    return [(f"{path}:{n}", parse_json(line, path, n)) for n, line in enumerate(lines(text), start=1) if line.strip()]


def lines(text: str) -> list[str]:
    """JSONL lines: split at line feeds only (dropping a carriage return before one). str.splitlines() also splits
    at U+2028, U+2029 and U+0085, which JSON allows raw inside strings (json.dumps(ensure_ascii=False) writes them)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def parse_json(text: str, path: str, line: int | None = None) -> object:
    """json.loads of a whole file (line None) or of its line `line`; errors name the file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line or e.lineno}: malformed JSON{' line' if line else ''} ({e.msg})") from None
    except RecursionError:  # e.g. 100000 nested brackets: deeper than the parser's stack
        raise DataError(f"{path}:{line or 1}: JSON nested too deeply to read") from None


def _field(rec: dict, key: str, kind: type, where: str, required: bool) -> object:
    """rec[key] checked to be a `kind`; an optional field may be absent or null (then kind())."""
    value = rec.get(key)
    if value is None and not required:
        return kind()
    if key not in rec:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(value, kind):
        got = "null" if value is None else type(value).__name__
        raise DataError(f"{where}: field '{key}' must be a {'string' if kind is str else kind.__name__}, got {got}")
    return value


def _text(rec: dict, key: str, where: str, required: bool = True) -> str:
    return _field(rec, key, str, where, required)  # type: ignore[return-value]


def _list(rec: dict, key: str, where: str, required: bool = True) -> list:
    return _field(rec, key, list, where, required)  # type: ignore[return-value]


def _user(instruction: str, extra: str) -> str:
    """Alpaca/Dolly: the instruction, then a blank line and the input/context when there is one."""
    return instruction + "\n\n" + extra if extra.strip() else instruction


def from_alpaca(rec: dict, where: str) -> list[list[dict]]:
    """instruction, optional input, output; optional system and history [[user, assistant], ...] (LLaMA-Factory)."""
    msgs = [{"role": "system", "content": _text(rec, "system", where, False)}] if rec.get("system") else []
    for i, pair in enumerate(_list(rec, "history", where, required=False)):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise DataError(f"{where}: field 'history[{i}]' must be a [user, assistant] pair of strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = _user(_text(rec, "instruction", where), _text(rec, "input", where, False))
    return [msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "output", where)}]]


def from_dolly(rec: dict, where: str) -> list[list[dict]]:
    user = _user(_text(rec, "instruction", where), _text(rec, "context", where, False))
    return [[{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "response", where)}]]


def from_prompt_completion(rec: dict, where: str) -> list[list[dict]]:
    return [[{"role": "user", "content": _text(rec, "prompt", where)},
             {"role": "assistant", "content": _text(rec, "completion", where)}]]


def from_question_answer(rec: dict, where: str) -> list[list[dict]]:
    """GSM8K-style records; the answer keeps its reasoning and its final `#### <number>` line."""
    return [[{"role": "user", "content": _text(rec, "question", where)},
             {"role": "assistant", "content": _text(rec, "answer", where)}]]


def from_seed_tasks(rec: dict, where: str) -> list[list[dict]]:
    """Self-instruct seed tasks (Stanford Alpaca): one instruction, several {input, output} instances."""
    instruction, convs = _text(rec, "instruction", where), []
    for i, inst in enumerate(_list(rec, "instances", where)):
        at = f"{where} instances[{i}]"
        inst = inst if isinstance(inst, dict) else {}
        convs.append([{"role": "user", "content": _user(instruction, _text(inst, "input", at, False))},
                      {"role": "assistant", "content": _text(inst, "output", at)}])
    return convs


def from_messages(rec: dict, where: str) -> list[list[dict]]:
    msgs = []
    for i, m in enumerate(_list(rec, "messages", where)):
        at = f"{where} messages[{i}]"
        role = _text(m if isinstance(m, dict) else {}, "role", at)
        if role not in ROLES:
            raise DataError(f"{at}: field 'role' must be system, user or assistant, got {role!r}")
        msgs.append({"role": role, "content": _text(m, "content", at)})
    return [msgs]


def from_text(rec: dict, where: str) -> list[list[dict]]:
    """Plain text for language modelling (continued pretraining): one document, every token learned."""
    return [[{"role": "text", "content": _text(rec, "text", where)}]]


def text_documents(text: str) -> list[list[dict]]:
    """A .txt file's documents: its paragraphs (separated by blank lines), each a `text` document."""
    paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    return [[{"role": "text", "content": p}] for p in paragraphs if p.strip()]


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant"}


def from_sharegpt(rec: dict, where: str) -> list[list[dict]]:
    """`conversations` of {from, value}; a list of plain strings (GAIR/lima) alternates user and assistant."""
    msgs = []
    for i, turn in enumerate(_list(rec, "conversations", where)):
        at = f"{where} conversations[{i}]"
        if isinstance(turn, str):
            msgs.append({"role": ("user", "assistant")[i % 2], "content": turn})
            continue
        who = _text(turn if isinstance(turn, dict) else {}, "from", at)
        if who.lower() not in SHAREGPT_ROLES:
            raise DataError(f"{at}: field 'from' must be one of {', '.join(SHAREGPT_ROLES)}, got {who!r}")
        msgs.append({"role": SHAREGPT_ROLES[who.lower()], "content": _text(turn, "value", at)})
    return [msgs]


# format name -> (fields that identify it, converter); detection takes the first whose fields the record has
FORMATS = {"messages": ({"messages"}, from_messages), "sharegpt": ({"conversations"}, from_sharegpt),
           "seed_tasks": ({"instruction", "instances"}, from_seed_tasks),
           "dolly": ({"instruction", "response"}, from_dolly),
           "prompt_completion": ({"prompt", "completion"}, from_prompt_completion),
           "question_answer": ({"question", "answer"}, from_question_answer),
           "alpaca": ({"instruction", "output"}, from_alpaca), "text": ({"text"}, from_text)}


def detect_format(rec: dict, where: str) -> str:
    keys = set(rec)
    for name, (needed, _) in FORMATS.items():
        if needed <= keys:
            return name
    raise DataError(f"{where}: cannot tell the format from fields {sorted(keys)}; expected e.g. instruction+output "
                    f"(alpaca), messages, conversations, prompt+completion; or pass --format ({', '.join(FORMATS)})")


def is_document(conv: list[dict]) -> bool:
    """Plain text for language modelling: one `text` message (a paragraph of a .txt file, or a record's `text`)."""
    return len(conv) == 1 and conv[0]["role"] == "text"


def ends_with_answer(conv: list[dict]) -> bool:
    """The conversation ends with what the model should produce: an assistant turn, or text after a context (a
    probe). A document alone has no prompt to answer."""
    return bool(conv) and (conv[-1]["role"] == "assistant" or conv[-1]["role"] == "text" and len(conv) > 1)


def check_conversation(msgs: list[dict], where: str) -> list[dict]:
    """Drop trailing turns with no answer after them (ShareGPT dumps have some); require one assistant turn."""
    if is_document(msgs):  # plain text: all of it is learned
        return msgs
    while msgs and msgs[-1]["role"] != "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise DataError(f"{where}: no assistant turn (nothing to learn from)")
    return msgs


def load_conversations(path_or_name: str, fmt: str | None = None) -> list[list[dict]]:
    """A local JSON/JSONL file, or a named public dataset (downloaded once), as a list of conversations."""
    path = path_or_name
    if not os.path.exists(path) and path_or_name in DATASETS:
        path, fmt = download_dataset(path_or_name), fmt or DATASETS[path_or_name][1]
    elif not os.path.exists(path):
        raise DataError(f"{path}: no such file (known dataset names: {', '.join(DATASETS)})")
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path.endswith(".txt"):  # plain text, not JSON
        convs = text_documents(read_text(path))
        if not convs:
            raise DataError(f"{path}: no text")
        return convs
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    for where, rec in records:
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    convert = FORMATS[fmt or detect_format(records[0][1], records[0][0])][1]  # the first record decides
    return [check_conversation(c, where) for where, rec in records for c in convert(rec, where)]


# name -> (url, format). Fetched once into the cache when online; offline, pass a local file instead.
DATASETS = {
    "alpaca": ("https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json", "alpaca"),
    "dolly": ("https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/"
              "databricks-dolly-15k.jsonl", "dolly"),
    "lima": ("https://huggingface.co/datasets/GAIR/lima/resolve/main/train.jsonl", "sharegpt"),  # gated: log in first
    "codealpaca": ("https://raw.githubusercontent.com/sahil280114/codealpaca/master/data/code_alpaca_20k.json",
                   "alpaca"),
}


def download_dataset(name: str) -> str:
    """The cached copy of a named dataset, fetched once (atomically, so many ranks may ask at the same time)."""
    url = DATASETS[name][0]
    path = os.path.join(cache_dir(), f"{name}-{os.path.basename(url)}")
    if not os.path.exists(path):
        try:
            download(url, path)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"cannot download dataset '{name}' from {url} ({getattr(e, 'reason', e)}). Offline? "
                            f"Get the file elsewhere and pass its local path instead") from None
    return path


# ----------------------------------------------------------------------------- which train, which are held out

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
