"""imgpt/ev.py: exact match (lm-eval's gsm8k strict match), BLEU (sacrebleu) and ROUGE-L (rouge-score),
against hand values."""
import pytest
import sacrebleu

import eval as ev


def test_exact_match_and_gsm8k_strict_match_as_lm_eval():
    assert ev.exact_match("  The  answer\nis 4 ", "The answer is 4")
    assert not ev.exact_match("The answer is 4.", "The answer is 4")
    ref = "She has 3 + 15 = 18 apples.\n#### 18"
    assert ev.exact_match("3 + 15 = 18\n#### 18", ref)
    assert ev.exact_match("#### 18 (I think, not 20)\n#### 20", ref)  # take_first: the first marked number
    assert ev.exact_match("#### 1,800.", "#### 1800")  # ',' and a final '.' are ignored on both sides
    # lm-eval's strict match refuses what a lenient rule would accept:
    assert not ev.exact_match("#### 18.00", ref)  # no number canonicalization
    assert not ev.exact_match("#### $18", ref)  # '$' is not in the answer pattern: "[invalid]"
    assert not ev.exact_match("3 apples and 15 more: 18", ref)  # no marker: "[invalid]"
    assert ev.gsm8k_answer("x #### -3.50 y") == "-3.50" and ev.gsm8k_answer("none") == "[invalid]"
    assert ev.gsm8k_clean("Step 1. $1,000\n#### 1,000.") == "1000"


def test_bleu_equals_sacrebleu_and_hand_value():
    # 1- to 4-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    assert ev.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    hyps, refs = ["the cat sat on the mat", "a dog ran off", "hello"], ["the cat sat on a mat", "the dog ran", "hi"]
    assert ev.bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score  # corpus-level, not a mean
    assert ev.bleu([], []) == 0.0


def test_rouge_l_hand_cases():
    assert ev.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert ev.rouge_l("the cat sat on the mat", "The cat is on the MAT") == pytest.approx(5 / 6)
    assert ev.rouge_l("a b c d", "b d e") == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))  # 4/7
    assert ev.rouge_l("", "x") == ev.rouge_l("x", "") == ev.rouge_l("x", "y") == 0.0
    # rouge-score's tokenizer: punctuation is a separator, not part of a word
    assert ev.rouge_l("pen", "Pen.") == 1.0 and ev.rouge_l("a-b, c!", "A b c") == 1.0
    assert ev.rouge_tokens("It's 3.5 km/h!") == ["it", "s", "3", "5", "km", "h"]
    assert ev.rouge_l("...", "pen") == 0.0  # nothing left to match
    m = ev.text_metrics(["a b c d", "x"], ["b d e", "x"])
    assert m["exact_match"] == 0.5 and m["rouge_l"] == pytest.approx(100 * (4 / 7 + 1) / 2)
