"""Scores of generated text against references: exact match (with GSM8K's answer rule), BLEU
(sacrebleu) and ROUGE-L.
"""
from __future__ import annotations

import re

import sacrebleu

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
