"""Evaluate any checkpoint the same way, whatever loss it was trained with.

    python eval.py --ckpt out                                   # held-out + train output loss (the run's data)
    python eval.py --ckpt out --generate --memorization         # + exact match / BLEU / ROUGE-L, memorization BLEU
    python eval.py --ckpt gpt2 --mmlu ../shared/data/mmlu-redux --hellaswag hs.txt.bz2 --limit 50
    torchrun --nproc_per_node 4 eval.py --ckpt out --generate   # each rank takes every 4th example

What it measures, under the training template (data.chat_pieces):
- loss: mean cross-entropy of the output tokens only (assistant content + end-of-text), on the held-out data and on
  the training data, so the train/held-out gap is visible (paper §4.3: IM has the higher train loss and the lower
  held-out loss). perplexity = exp(loss).
- generate: answers to the held-out instructions from the prefix training used (greedy, or sampled with
  --temperature); exact match (GSM8K-style `#### <number>` references: the final numbers), BLEU, ROUGE-L F1.
- memorization: greedy answers to the TRAINING instructions, scored against the training answers (paper Table 2).
- probe (a model trained on the built-in world: synthetic-corpus, or synthetic-qa from such a base): how many of
  the world's facts it still completes, greedy and token-exact ("D6=" -> "kote"): what a tuning kept of the base.
- mmlu / hellaswag: multiple-choice accuracy by log-likelihood, as lm-evaluation-harness defines acc and acc_norm.
Scales: losses in nats; exact match and accuracies in [0, 1]; BLEU and ROUGE-L in [0, 100]. Results go next to
the checkpoint scored (out/eval.json), unless --out says otherwise.

With --data left empty, the data is read from the checkpoint's saved training config: the same file or synthetic
task, split as train.py split it, so `eval.py --ckpt out` scores exactly the held-out examples train.py held out.
--limit N keeps the first N examples of every dataset (of a directory of MMLU files: the first N overall).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace

import sacrebleu
import torch
from tqdm import tqdm

import data
from imgpt import formats, synthetic
from imgpt.benchmarks import Question, continuation_logprobs, pick_acc, pick_acc_norm, read_hellaswag, read_mmlu
from imgpt.cli import UserError, opt, parse_config, run_cli
from imgpt.device import amp_dtype_for, autocast, check_device, cpu_threads, use_tf32
from imgpt.distributed import Dist, all_reduce_sum, destroy_distributed, join_distributed, local_rank_zero_first
from imgpt.files import write_text_atomic
from imgpt.formats import DataError
from imgpt.train_config import saved_config
from metrics import exact_match_rate, segment_losses
from model import load_model


@dataclass
class EvalConfig:
    ckpt: str = opt("", "model to evaluate: a training out_dir (its last ckpt.pt; pass out/best.pt for the best), "
                        "a checkpoint file, a Hugging Face GPT-2 directory, or a name like gpt2")
    data: str = opt("", "held-out conversations: '' (or from_ckpt) = the held-out split of the checkpoint's "
                        "training data, as train.py made it; synthetic, synthetic-corpus or synthetic-qa = that built-in "
                        "task's split; or a file (all)")
    train_data: str = opt("", "training conversations (train loss, memorization): '' = the training split of the "
                              "same source (none for a file without a train.py checkpoint); from_ckpt; synthetic; "
                              "a file; or none")
    format: str = opt("", "format of --data/--train_data files ('' = detect)")
    loss: bool = opt(True, "output-only loss and perplexity on the held-out and training data (when there is data)")
    generate: bool = opt(False, "generate answers to the held-out instructions: exact match, BLEU, ROUGE-L")
    memorization: bool = opt(False, "greedy answers to the training instructions vs. the training answers (BLEU)")
    mmlu: str = opt("", "MMLU-format CSV file, or a directory of them, for multiple-choice accuracy")
    mmlu_style: str = opt("letters", "letters: options listed, score ' A'..' D' (lm-eval mmlu); "
                                     "continuation: score each option's text (lm-eval mmlu_continuation)")
    hellaswag: str = opt("", "HellaSwag file: the 6-lines-per-task text (.txt or .txt.bz2) or jsonl")
    chat: bool = opt(False, "multiple choice through the chat template: the question as the user's turn, each "
                            "choice as the assistant's answer")
    limit: int | None = opt(None, "use only the first N examples of each dataset (quick runs)", low=1)
    batch_size: int = opt(16, "rows per forward pass", low=1)
    max_len: int | None = opt(None, "truncate examples to this many tokens (default: the training max_len, "
                                    "else the model's block size)", low=2)
    max_new_tokens: int = opt(0, "generation length limit (0 = the longest reference answer + 16 tokens); each "
                                 "prompt gets at most the room left in the context: prompts are never cut for it")
    temperature: float = opt(0.0, "0 = greedy; > 0 samples")
    top_k: int | None = opt(None, "sample only from the k most likely tokens", low=1)
    top_p: float | None = opt(None, "sample only from the smallest set of tokens with this total probability")
    seed: int = opt(0, "sampling seed (each rank adds its rank)")
    out: str = opt("", "results JSON ('' = next to the checkpoint: out/eval.json for out or out/ckpt.pt, "
                       "out/eval_best.json for out/best.pt); generations go to <out stem>.<split>.jsonl")
    device: str = opt("auto", "cpu, cuda, mps or auto")
    dtype: str = opt("auto", "auto (as train.py: bf16 autocast on CUDA where the GPU has bf16 tensor cores, else "
                     "float32, with TF32 matmuls on CUDA), float32, bfloat16 or float16 (autocast for the forward "
                     "passes)")
    threads: int = opt(0, "CPU threads of this program (0 = one per core, or 1 when other programs keep "
                          "every core busy)")

    def validate(self) -> None:
        if not self.ckpt:
            raise UserError("--ckpt is required (a training out_dir, a ckpt.pt, an HF dir or a name like gpt2)")
        if self.mmlu_style not in ("letters", "continuation"):
            raise UserError(f"--mmlu_style: expected letters or continuation, got {self.mmlu_style!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"--dtype: expected auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.batch_size < 1 or self.max_new_tokens < 0:
            raise UserError("--batch_size must be at least 1 and --max_new_tokens at least 0")
        if self.temperature < 0 or (self.top_k is not None and self.top_k < 1) or \
                (self.top_p is not None and not 0 < self.top_p <= 1):
            raise UserError("need --temperature >= 0, --top_k >= 1 and 0 < --top_p <= 1")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit: must be at least 1")
        if os.path.isdir(self.out):
            raise UserError(f"--out {self.out}: is a directory; give a file name, e.g. {self.out}/eval_results.json")
        check_device(self.device)
        for name in ("data", "train_data", "mmlu", "hellaswag"):  # fail before loading a model
            path = getattr(self, name)
            if path not in ("", "from_ckpt", "none", *formats.SYNTHETIC, *formats.DATASETS) and not os.path.exists(path):
                raise UserError(f"--{name}: {path}: no such file or directory")


# ----------------------------------------------------------------------------- answers vs. references (pure)
# Exact match (with GSM8K's answer rule), BLEU (sacrebleu) and ROUGE-L of generated text.

GSM8K_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k.yaml, filter "strict-match"


GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # its exact_match regexes_to_ignore, applied to both sides


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def gsm8k_answer(output: str) -> str:
    """lm-eval's strict-match filter: the first `#### <number>` of the output, else "[invalid]"."""
    found = GSM8K_ANSWER.findall(output)
    return found[0].strip() if found else "[invalid]"


def gsm8k_clean(text: str) -> str:
    """lm-eval's exact_match normalization for GSM8K: the ignored patterns removed, then lowercased."""
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def exact_match(output: str, reference: str) -> bool:
    """Whitespace-normalized equality. GSM8K-style references (`#### <number>`) use lm-eval's strict match:
    '#### 18' matches, while '#### 18.00', '#### $18' and an answer without the marker do not."""
    if GSM8K_ANSWER.search(reference):
        return gsm8k_clean(gsm8k_answer(output)) == gsm8k_clean(reference)
    return normalize_whitespace(output) == normalize_whitespace(reference)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row at a time."""
    row = [0] * (len(b) + 1)  # row[j] = LCS of the a-prefix so far with b[:j]
    for x in a:
        diag = 0  # LCS of the previous a-prefix with b[:j-1]
        for j, y in enumerate(b, start=1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_tokens(text: str) -> list[str]:
    """Google's rouge-score tokenizer (no stemming): lowercase, every run of non-[a-z0-9] becomes a space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] as rouge-score computes it: rouge_l("pen", "Pen.") == 1 (0 if either side is empty)."""
    hyp, ref = rouge_tokens(output), rouge_tokens(reference)
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(outputs: list[str], references: list[str]) -> float:
    """Corpus BLEU in [0, 100] with sacrebleu's defaults (13a tokenizer, exponential smoothing), one reference each."""
    return sacrebleu.corpus_bleu(outputs, [references]).score if outputs else 0.0


def text_metrics(outputs: list[str], references: list[str]) -> dict:
    n = max(len(outputs), 1)
    return {"examples": len(outputs),
            "exact_match": sum(map(exact_match, outputs, references)) / n,
            "bleu": bleu(outputs, references),
            "rouge_l": 100 * sum(map(rouge_l, outputs, references)) / n}


# ----------------------------------------------------------------------------- generating

@torch.no_grad()
def generate_batched(model, prompts: list[list[int]], cfg: EvalConfig, max_new: int, eos_id: int, device: str,
                     rank: int, show: bool = False) -> list[list[int]]:
    """New tokens for each prompt (stopped at end-of-text), in batches of similar length, with the KV cache.

    A prompt is never cut here: each batch gets at most the room its longest prompt leaves in the context
    (block_size + 1 - length: the last new token needs no position of its own)."""
    generator = torch.Generator(device=device).manual_seed(cfg.seed + rank) if cfg.temperature > 0 else None
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(order), cfg.batch_size), desc="generating", disable=not show, leave=False):
        chunk = order[start:start + cfg.batch_size]
        room = model.config.block_size + 1 - len(prompts[chunk[0]])  # the longest prompt of the chunk comes first
        if room < 1:
            raise UserError(f"a prompt of {len(prompts[chunk[0]])} tokens leaves no room in the model's context "
                            f"of {model.config.block_size}")
        new = model.generate([prompts[i] for i in chunk], min(max_new, room), temperature=cfg.temperature,
                             top_k=cfg.top_k, top_p=cfg.top_p, eos_id=eos_id, generator=generator)
        for i, tokens in zip(chunk, new):
            out[i] = tokens
    return out


def gather_in_order(items: list, dist: Dist) -> list:
    """Undo the `items[rank::world]` split: every rank gets all items in their original order."""
    if not dist.enabled:
        return items
    parts: list = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, items)
    total = sum(len(p) for p in parts)
    return [parts[i % dist.world_size][i // dist.world_size] for i in range(total)]


# ----------------------------------------------------------------------------- the evaluations

DTYPE_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}  # amp_dtype -> --dtype


def amp_dtype(cfg: EvalConfig, device: str) -> torch.dtype | None:
    """--dtype as autocast takes it, None for plain float32; auto as train.py resolves it: bf16 on CUDA where it is
    not emulated (fp16 where it is), else float32 (full float32 at 774M-1.5B on a GPU is several times slower;
    float32 on CUDA uses TF32, see main)."""
    return amp_dtype_for(cfg.dtype, torch.device(device).type)


def loss_metrics(model, tok, convs: list, cfg: EvalConfig, dist: Dist, max_len: int) -> dict:
    """Output-only loss (and the prompt loss, for reference) under the training template, all ranks together."""
    examples, stats = data.encode_dataset(convs, tok, max_len, prompt_loss_weight=0.0)  # scored by segment
    r = segment_losses(model, examples, cfg.batch_size, dist.device, dist,
                       autocast_dtype=amp_dtype(cfg, dist.device))
    return {"examples": len(examples), "output_loss": r["output_loss"], "perplexity": math.exp(r["output_loss"]),
            "prompt_loss": r["prompt_loss"], "output_tokens": r["output_tokens"], "truncated": stats["truncated"]}


PROBE_DEPTHS = (8, 20)  # statements of other facts before "K=": as deep as an 8- and a 16-fact instruction asks


def probe_metrics(model, tok, saved: dict, cfg: EvalConfig, dist: Dist) -> dict:
    """What a model trained on the built-in world knows of it, whatever it was tuned for: greedy completion of the
    statement "K=" for every fact (synthetic.probe_conversations), token-exact as train.py scores it; alone, and
    after PROBE_DEPTHS lines of other statements."""
    world = synthetic.synthetic_world({**formats.SPLIT_DEFAULTS, **saved}["synth_keys"])
    r = {"facts": len(world)}
    for depth in (0, *PROBE_DEPTHS):
        examples, _ = data.encode_dataset(synthetic.probe_conversations(world, lines_before=depth), tok, None, 0.0)
        rate = exact_match_rate(model, examples, cfg.batch_size, tok.eot_token, dist)
        r["exact_match" if depth == 0 else f"after_{depth}_lines"] = rate
    return r


def new_token_budget(cfg: EvalConfig, references: list[str], tok) -> int:
    """--max_new_tokens, or (0) the longest reference answer plus 16 tokens. Each prompt then gets at most
    what is left of the context: generation never cuts a prompt to make room."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    return max((len(tok.encode_ordinary(r)) for r in references), default=0) + 16


def generation_metrics(model, tok, convs: list, cfg: EvalConfig, dist: Dist, jsonl: str, greedy: bool,
                       max_len: int | None = None) -> dict:
    """Answer each conversation's last instruction from its training prefix (cut at max_len exactly as training
    cut the example, if at all); score against its last answer."""
    convs = [c for c in convs if formats.ends_with_answer(c)]
    max_new = new_token_budget(cfg, [c[-1]["content"] for c in convs], tok)
    mine = convs[dist.rank::dist.world_size]  # the budget above is the same on every rank
    prompts = [data.prompt_ids(c, tok, max_len or model.config.block_size + 1) for c in mine]
    run_cfg = replace(cfg, temperature=0.0) if greedy else cfg
    with autocast(dist.device, amp_dtype(cfg, dist.device)):
        new = generate_batched(model, prompts, run_cfg, max_new, tok.eot_token, dist.device, dist.rank, dist.is_main)
    records = [{"prompt": tok.decode(p), "reference": c[-1]["content"], "output": tok.decode(n)}
               for p, c, n in zip(prompts, mine, new)]
    records = gather_in_order(records, dist)
    if dist.is_main:
        write_text_atomic(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    metrics = text_metrics([r["output"] for r in records], [r["reference"] for r in records])
    return {**metrics, "max_new_tokens": max_new, "file": jsonl}


def choice_pairs(q: Question, tok, chat: bool) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per choice. Plain: the choice follows the context after a space (an empty
    context becomes end-of-text, as in lm-eval). Chat: the context is a user turn, the choice the assistant's reply."""
    if chat:
        ctx, conts = data.prompt_ids([{"role": "user", "content": q.context}], tok), q.choices
    else:
        ctx, conts = tok.encode_ordinary(q.context) or [tok.eot_token], [" " + c for c in q.choices]
    pairs = [(ctx, tok.encode_ordinary(c)) for c in conts]
    if not all(cont for _, cont in pairs):
        raise DataError(f"an empty choice has nothing to score, in the question {q.context[:60]!r}")
    return pairs


def choice_metrics(model, tok, questions: list[Question], cfg: EvalConfig, dist: Dist) -> dict:
    """lm-eval acc and acc_norm; each rank scores every world-th question, the counts are all-reduced."""
    mine = questions[dist.rank::dist.world_size]
    pairs = [p for q in mine for p in choice_pairs(q, tok, cfg.chat)]
    lps = continuation_logprobs(model, pairs, cfg.batch_size, dist.device,
                                autocast(dist.device, amp_dtype(cfg, dist.device)),
                                show=dist.is_main)
    counts = torch.zeros(3, dtype=torch.float64, device=dist.device)  # [acc hits, acc_norm hits, questions]
    start = 0
    for q in mine:
        lp, start = lps[start:start + len(q.choices)], start + len(q.choices)
        counts += torch.tensor([pick_acc(lp) == q.gold, pick_acc_norm(lp, q.choices) == q.gold, 1.0],
                               dtype=torch.float64, device=dist.device)
    acc, acc_norm, n = all_reduce_sum(counts).tolist()
    return {"examples": int(n), "acc": acc / max(n, 1), "acc_norm": acc_norm / max(n, 1)}


# ----------------------------------------------------------------------------- which data, and the program

def results_path(ckpt: str) -> str:
    """Where --out defaults to: beside the checkpoint scored, so runs never overwrite each other's results; for
    a model id (gpt2), eval_gpt2.json in the current directory."""
    if os.path.isdir(ckpt):
        return os.path.join(ckpt, "eval.json")
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    if os.path.isfile(ckpt):
        return os.path.join(os.path.dirname(ckpt), "eval.json" if stem == "ckpt" else f"eval_{stem}.json")
    return f"eval_{stem}.json"


def benchmark_questions(cfg: EvalConfig) -> dict[str, list[Question]]:
    """The multiple-choice questions of --mmlu and --hellaswag, each cut to --limit."""
    questions = {}
    if cfg.mmlu:
        questions["mmlu"] = read_mmlu(cfg.mmlu, cfg.mmlu_style)[:cfg.limit]
    if cfg.hellaswag:
        questions["hellaswag"] = read_hellaswag(cfg.hellaswag)[:cfg.limit]
    return questions


def source_split(name: str, saved: dict | None) -> tuple[list, list] | None:
    """(train, held-out) of a split source: '' / from_ckpt = the data the checkpoint was trained on (None without a
    saved config); 'synthetic' = the built-in task (the checkpoint's settings if trained on it, else train.py's
    defaults). None for a file name: a file is used whole."""
    if name in ("", "from_ckpt"):
        return formats.load_split(saved) if saved is not None else None
    if name in formats.SYNTHETIC:
        base = saved if saved is not None and saved.get("data") in formats.SYNTHETIC else {}
        return formats.load_split({**base, "data": name})
    return None


def conversation_sets(cfg: EvalConfig, saved: dict | None) -> tuple[list, list]:
    """(held-out, training) conversations, each cut to --limit; see --data and --train_data."""
    if cfg.data in ("", "from_ckpt") and saved is None:
        raise UserError(f"--data is needed: {cfg.ckpt} holds no training config to take the held-out split from")
    split = source_split(cfg.data, saved)
    heldout = split[1] if split else formats.load_conversations(cfg.data, cfg.format or None)
    if cfg.train_data == "none":
        train = []
    elif cfg.train_data in ("", "from_ckpt", *formats.SYNTHETIC):
        train_split = split if cfg.train_data == "" and split else source_split(cfg.train_data, saved)
        train = train_split[0] if train_split else []
    else:
        train = formats.load_conversations(cfg.train_data, cfg.format or None)
    return heldout[:cfg.limit], train[:cfg.limit]


def evaluate(cfg: EvalConfig, dist: Dist | None = None) -> dict:
    """Run the selected evaluations; rank 0 writes the results (cfg.out, by default beside the checkpoint).
    Returns {"ckpt", "config", "metrics": {task: {...}}, "file"}."""
    dist = dist or join_distributed(cfg.device)[0]  # in-process: the caller's process group, if any
    cfg = replace(cfg, out=cfg.out or results_path(cfg.ckpt), dtype=DTYPE_NAMES[amp_dtype(cfg, dist.device)])
    if torch.device(dist.device).type == "cuda":
        use_tf32()  # float32 matmuls on TF32 tensor cores, as in training
    saved = saved_config(cfg.ckpt)
    has_data = bool(cfg.data) or saved is not None  # pretrained weights with no --data: only multiple choice
    if not has_data and (cfg.generate or cfg.memorization):
        raise UserError(f"--generate/--memorization need --data: {cfg.ckpt} holds no training config to take it from")
    with local_rank_zero_first(dist):  # under torchrun: one download per node, the other ranks read the cache
        heldout, train = conversation_sets(cfg, saved) if has_data else ([], [])
        questions = benchmark_questions(cfg)  # every input file is read before the model loads: bad ones fail fast
        model, tok = load_model(cfg.ckpt, device=dist.device)
    model.eval()
    if dist.device.startswith("cpu"):  # once every input has loaded: a bad one stays the only line on stderr
        torch.set_num_threads(cpu_threads(cfg.threads, dist.world_size, dist.is_main))
    max_len = cfg.max_len or 1 + ((saved or {}).get("block_size") or model.config.block_size)  # as train.py cuts
    stem, metrics = os.path.splitext(cfg.out)[0], {}
    if cfg.loss and has_data:
        metrics["heldout"] = loss_metrics(model, tok, heldout, cfg, dist, max_len)
        if train:
            metrics["train"] = loss_metrics(model, tok, train, cfg, dist, max_len)
            metrics["heldout"]["gap_vs_train"] = metrics["heldout"]["output_loss"] - metrics["train"]["output_loss"]
    if cfg.loss and (saved or {}).get("data") in formats.WORLD_TASKS:
        metrics["probe"] = probe_metrics(model, tok, saved, cfg, dist)
    if cfg.generate:
        metrics["generate"] = generation_metrics(model, tok, heldout, cfg, dist, stem + ".heldout.jsonl", greedy=False,
                                                 max_len=max_len)
    if cfg.memorization:
        if not train:
            raise UserError("--memorization needs training data: pass --train_data FILE or a train.py checkpoint")
        metrics["memorization"] = generation_metrics(model, tok, train, cfg, dist, stem + ".train.jsonl", greedy=True,
                                                     max_len=max_len)
    for task, task_questions in questions.items():
        metrics[task] = choice_metrics(model, tok, task_questions, cfg, dist)
    if not metrics:
        raise UserError("nothing to evaluate: pass --data (or a train.py checkpoint), --mmlu or --hellaswag")
    report = {"ckpt": cfg.ckpt, "config": asdict(cfg), "metrics": metrics, "file": cfg.out}
    if dist.is_main:
        write_text_atomic(cfg.out, json.dumps(report, indent=2) + "\n")
    return report


def metrics_table(metrics: dict) -> str:
    """The results as aligned rows of task, metric and value, for the terminal."""
    rows = [f"{'task':<14}{'metric':<16}{'value':>12}"]
    for task, values in metrics.items():
        for name, v in values.items():
            shown = f"{v:>12.4f}" if isinstance(v, float) else f"{v!s:>12}"
            rows.append(f"{task:<14}{name:<16}{shown}")
    return "\n".join(rows)


def main() -> None:
    cfg = parse_config(EvalConfig, description="Evaluate a checkpoint: output loss, generation, multiple choice.")
    dist, owned = join_distributed(cfg.device)
    try:
        report = evaluate(cfg, dist)
        if dist.is_main:
            print(metrics_table(report["metrics"]))
            print(f"wrote {report['file']}")
    finally:
        if owned:
            destroy_distributed()


if __name__ == "__main__":
    run_cli(main)
