"""imgpt/benchmarks.py: MMLU and HellaSwag files read as lm-evaluation-harness reads them; a bad file names its
line and field."""
import bz2
import json
import os

import pytest

from conftest import write_file
from imgpt import benchmarks as bm
from imgpt import formats


def test_mmlu_reader_separators_columns_and_stray_byte(tmp_path):
    plain = bm.read_mmlu_csv(write_file(tmp_path / "a.csv", b'"What is 2+2, really?",3,4,5,6,B\nNext?,a,b,c,d,D\n'))
    assert [(q.context, q.choices, q.gold) for q in plain] == [
        ("What is 2+2, really?", ["3", "4", "5", "6"], 1), ("Next?", ["a", "b", "c", "d"], 3)]
    redux = bm.read_mmlu_csv(write_file(tmp_path / "b.csv", b"answer;question;choices;error_type\n"
                                   b"2;Pick, one;\"['x; 1', \"\"y's\"\", 'z', 'w']\";ok\n"))
    assert [(q.context, q.choices, q.gold) for q in redux] == [("Pick, one", ["x; 1", "y's", "z", "w"], 2)]
    shuffled = bm.read_mmlu_csv(write_file(tmp_path / "c.csv", b"D,question,B,Answer,A,C,,\n4,Q?,2,c,1,3,,\n"))
    assert (shuffled[0].choices, shuffled[0].gold) == (["1", "2", "3", "4"], 2)
    stray = bm.read_mmlu_csv(write_file(tmp_path / "d.csv",
                                   b"question,choices,answer\n\"Don\xd5t\nstop\",\"['a', 'b']\",1\n"))
    assert stray[0].context == "Don\ufffdt\nstop" and stray[0].gold == 1


def test_mmlu_reader_errors_name_file_line_and_field(tmp_path):
    bad = write_file(tmp_path / "e.csv", b"question,choices,answer\n"
                b"\"two\nlines\",\"['a', 'b']\",0\nQ,\"['a', 'b']\",E\n")  # the bad record starts on line 4
    with pytest.raises(formats.DataError, match=r"e\.csv:4: field 'answer'"):
        bm.read_mmlu_csv(bad)
    with pytest.raises(formats.DataError, match=r"f\.csv:2: field 'choices'"):
        bm.read_mmlu_csv(write_file(tmp_path / "f.csv", b"question,choices,answer\nQ,__import__('os'),0\n"))
    with pytest.raises(formats.DataError, match=r"g\.csv:1:"):
        bm.read_mmlu_csv(write_file(tmp_path / "g.csv", b"just some text\n"))


def test_mmlu_prompts_follow_lm_eval(tmp_path):
    path = write_file(tmp_path / "mmlu_college_biology.csv", b"question,choices,answer\nWhy? ,\"['a', 'b', 'c', 'd']\",3\n")
    (q,) = bm.read_mmlu(str(tmp_path), "letters")
    assert q.context == ("The following are multiple choice questions (with answers) about college biology.\n\n"
                         "Why?\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    assert q.choices == ["A", "B", "C", "D"] and q.gold == 3
    (c,) = bm.read_mmlu(path, "continuation")
    assert (c.context, c.choices) == ("The following are questions (with answers) about college biology.\n\n"
                                      "Question: Why?\nAnswer:", ["a", "b", "c", "d"])  # lm-eval's description line


def test_hellaswag_text_bz2_and_jsonl(tmp_path):
    text = ("Act: A man sits [title] on a roof. he\n2\nfalls.\nwaves.\nclimbs [step] down.\nsleeps.\n"
            "Cook: She stirs. she\n0\nsmiles.\ncries.\nleaves.\nsings.\n")
    path = str(tmp_path / "hs.txt.bz2")
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    qs = bm.read_hellaswag(path)
    # lm-eval capitalizes ctx_b (the text after the last sentence end) with str.capitalize, before the cleanup
    assert [(q.context, q.gold) for q in qs] == [("Act: A man sits. on a roof. He", 2), ("Cook: She stirs. She", 0)]
    assert qs[0].choices == ["falls.", "waves.", "climbs down.", "sleeps."]
    with pytest.raises(formats.DataError, match=r"bad\.txt:8: field 'label'"):
        bm.read_hellaswag(write_file(tmp_path / "bad.txt", text.replace("\n0\n", "\n7\n").encode()))
    with pytest.raises(formats.DataError, match="6 lines per task"):
        bm.read_hellaswag(write_file(tmp_path / "short.txt", b"ctx\n1\na\nb\n"))
    rec = {"activity_label": "Act", "ctx_a": "A man sits.", "ctx_b": "he", "endings": ["x", "y"], "label": "1"}
    (j,) = bm.read_hellaswag(write_file(tmp_path / "hs.jsonl", json.dumps(rec).encode() + b"\n"))
    assert (j.context, j.choices, j.gold) == ("Act: A man sits. He", ["x", "y"], 1)


def test_real_mmlu_redux_and_hellaswag(shared_data):
    mmlu = os.path.join(shared_data, "mmlu-redux")
    questions = [q for f in sorted(os.listdir(mmlu)) for q in bm.read_mmlu_csv(os.path.join(mmlu, f))]
    assert len(questions) == 5700 and all(len(q.choices) == 4 for q in questions)
    assert [sum(q.gold == k for q in questions) for k in range(4)] == [1298, 1398, 1458, 1546]
    assert any("\ufffd" in q.context + "".join(q.choices) for q in bm.read_mmlu_csv(
        os.path.join(mmlu, "mmlu_moral_scenarios.csv")))
    hs = bm.read_hellaswag(os.path.join(shared_data, "hellaswag", "hellaswag_val_full.txt.bz2"))
    assert len(hs) == 10042 and [sum(q.gold == k for q in hs) for k in range(4)] == [2515, 2485, 2584, 2458]
    assert hs[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    with bz2.open(os.path.join(shared_data, "hellaswag", "hellaswag_val_full.txt.bz2"), "rt") as f:
        raw = f.read().splitlines()[0::6]
    assert sum(bm.hellaswag_context(c) != bm.hellaswag_preprocess(c) for c in raw) == 3236  # 32% of 10042
