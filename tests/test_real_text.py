"""The real-text study (scripts/experiments/english_base.py, real_text.py) on tiny hand-made copies of its files:
the base command end to end and bit for bit, the study's smoke mode, and the one-run-many-budgets shortcut it
rests on (a run scored after 1 of 2 epochs at a constant rate is the 1-epoch run)."""
import argparse
import bz2
import csv
import json
import os

import pytest
import torch

from imgpt.cli import run_cli
from scripts.experiments import english_base, real_text

TASK = "Baking cookies: A woman mixes flour and sugar in a bowl. she"
ENDINGS = ["throws the bowl.", "adds two eggs and stirs.", "sings loudly.", "walks away."]


def write_sources(data_dir) -> str:
    """HellaSwag's 6-lines-a-task text, GSM8K records with calculator annotations, MMLU-Redux CSVs (one with ';'
    as the delimiter, as nine real ones have) and an Alpaca file: the layout of shared/data, a few dozen rows."""
    (data_dir / "hellaswag").mkdir()
    (data_dir / "gsm8k").mkdir()
    tasks = [f"{TASK}\n1\n" + "\n".join(ENDINGS) for _ in range(12)]
    with bz2.open(data_dir / "hellaswag" / "hellaswag_val_full.txt.bz2", "wt") as f:
        f.write("\n".join(tasks) + "\n")
    rec = {"question": "Tom has 3 apples and buys 2 more. How many does he have?",
           "answer": "He has 3+2 = <<3+2=5>>5 apples.\n#### 5"}
    for name in ("train", "test"):
        (data_dir / "gsm8k" / f"{name}.jsonl").write_text("\n".join(json.dumps(rec) for _ in range(6)) + "\n")
    (data_dir / "mmlu-redux").mkdir()
    for subject, delimiter in (("a", ","), ("b", ";")):
        with open(data_dir / "mmlu-redux" / f"mmlu_{subject}.csv", "w", newline="") as f:
            w = csv.writer(f, delimiter=delimiter)
            w.writerow(["question", "choices", "answer", "error_type"])
            for i in range(10):
                w.writerow([f"What is {i} plus one?", str([str(i), str(i + 1), "ten", "none"]), 1, "ok"])
            w.writerow(["A bad question?", "['a', 'b', 'c', 'd']", 0, "wrong_groundtruth"])
    (data_dir / "llamafactory-alpaca-demo").mkdir()
    alpaca = [{"instruction": f"Describe the number {i}.", "input": "",
               "output": f"The number {i} is a whole number. " * 8} for i in range(20)]
    (data_dir / "llamafactory-alpaca-demo" / "alpaca_en_demo.json").write_text(json.dumps(alpaca))
    (data_dir / "lima").mkdir()
    lima = [{"instruction": f"Tell me about {i}.", "input": "", "output": f"{i} is a number I like. " * 9,
             "history": []} for i in range(16)]
    lima.append({"instruction": "And then?", "input": "", "output": "More.", "history": [["Hi", "Hello"]]})
    lima.append({"instruction": "Tell me about everything there is to know about numbers, please.", "input": "",
                 "output": "Numbers.", "history": []})
    (data_dir / "lima" / "lima.json").write_text(json.dumps(lima))
    return str(data_dir)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> str:
    return write_sources(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def base(sources, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("base"))
    return out, english_base.main(["--smoke", "--data_dir", sources, "--out_dir", out, "--threads", "1"])


def test_base_corpus_holds_the_named_text_only(sources):
    docs = english_base.corpus_documents(sources)
    assert len(docs) == 12 + 6 + 6
    assert docs[0] == f"{TASK} adds two eggs and stirs."  # the context with its labelled ending (1)
    assert docs[-1] == "Tom has 3 apples and buys 2 more. How many does he have?\nHe has 3+2 = 5 apples.\n#### 5"
    assert not any("<<" in d or "\n\n" in d for d in docs)


def test_base_smoke_learns_and_reports(base):
    out, report = base
    assert report["documents"] == 24 and report["steps"] == 4
    assert 0 < report["held_out_loss_per_byte"] < 5.0  # below a uniform guess over 257 bytes (5.55 nats)
    assert len(report["samples"]) == len(english_base.PROMPTS)
    assert json.load(open(os.path.join(out, "base_report.json")))["held_out_bytes"] == report["held_out_bytes"]


def test_base_is_reproduced_bit_for_bit(base, sources, tmp_path):
    """The same command on the same machine and thread count gives the same weights, every bit (float32 on CPU);
    the report names the thread count (train.py's choice depends on the machine's load when not given)."""
    again = str(tmp_path / "again")
    report = english_base.main(["--smoke", "--data_dir", sources, "--out_dir", again, "--threads", "1"])
    first = torch.load(os.path.join(base[0], "ckpt.pt"), weights_only=True)["model"]
    second = torch.load(os.path.join(again, "ckpt.pt"), weights_only=True)["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert report["held_out_loss_per_byte"] == base[1]["held_out_loss_per_byte"]
    assert report["threads"] == base[1]["threads"] == 1
    different = english_base.main(["--smoke", "--data_dir", sources, "--out_dir", str(tmp_path / "s2"), "--seed", "2",
                                   "--threads", "1"])
    assert different["held_out_loss_per_byte"] != report["held_out_loss_per_byte"]  # the seed does reach it


def test_instruction_sets_read_both_delimiters_and_filter(sources):
    mmlu = real_text.mmlu_records(sources, max_len=192)
    assert len(mmlu) == 20  # 10 ok rows from each file; the wrong_groundtruth rows left out
    assert mmlu[0] == {"instruction": "What is 0 plus one?\nA. 0\nB. 1\nC. ten\nD. none", "input": "", "output": "1"}
    assert real_text.mmlu_records(sources, max_len=40) == []  # none fits 40 bytes whole
    assert len(real_text.alpaca_records(sources)) == 20
    assert real_text.alpaca_records(sources, max_prompt=10) == []
    lima = real_text.lima_records(sources)
    assert len(lima) == 16  # the multi-turn example and the 64-byte instruction left out
    assert lima[0]["instruction"] == "Tell me about 0."


def scored(base_dir: str, data: str, out: str, epochs: list[int]) -> list[float]:
    """Held-out output loss at each budget of one real_text.tune run (IM, seed 0, 8 examples)."""
    args = argparse.Namespace(val_size=4, examples=8, max_len=96, batch_size=4, epochs=epochs, lr=1e-3, gen_examples=2,
                              train_eval=2, max_new=8)
    cfg = real_text.tune_config(base_dir, data, out, 1.0, 0, args, examples=8)
    know = real_text.knowledge_examples(base_dir, 2)
    return [p["val_output_loss"] for p in real_text.tune(cfg, know, args, with_base=False)]


def test_scoring_a_run_at_an_earlier_epoch_is_the_shorter_run(base, sources, tmp_path):
    """The study's shortcut: at a constant rate, a 2-epoch run scored after epoch 1 equals the 1-epoch run."""
    data = str(tmp_path / "mmlu.json")
    with open(data, "w") as f:
        json.dump(real_text.mmlu_records(sources, 96), f)
    one_of_two, two = scored(base[0], data, str(tmp_path / "a"), [1, 2])
    (one,) = scored(base[0], data, str(tmp_path / "b"), [1])
    assert one_of_two == one
    assert two != one  # the second epoch did train


def test_study_smoke_writes_paired_results_and_plot(base, sources, tmp_path):
    out = str(tmp_path / "study")
    result = real_text.main(["--smoke", "--base", base[0], "--data_dir", sources, "--out_dir", out])
    records = result["records"]
    assert len(records) == 3 * (1 + 3 * 2)  # per set: the base, then 3 modes x 2 budgets (1 seed)
    assert {r["mode"] for r in records} == {"base", "it", "plw0.1", "im"}
    im = next(r for r in result["rows"] if r["set"] == "mmlu" and r["mode"] == "im" and r["epochs"] == 2)
    it = next(r for r in result["rows"] if r["set"] == "mmlu" and r["mode"] == "it" and r["epochs"] == 2)
    assert im["minus_it"]["val_output_loss"] == [pytest.approx(im["val_output_loss"][0] - it["val_output_loss"][0])]
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == json.loads(json.dumps(result["rows"]))
    assert open(os.path.join(out, "real_text.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert result["sets"]["mmlu"]["output_over_prompt"] < 0.1 < 1 < result["sets"]["alpaca"]["output_over_prompt"]
    assert result["sets"]["lima"]["output_over_prompt"] > 1


def test_study_numbers_do_not_depend_on_jobs(base, sources, tmp_path):
    """Runs side by side (each its own process, one thread) give the numbers of runs one after another; every
    example that fits is trained on with --examples all."""
    argv = ["--smoke", "--base", base[0], "--data_dir", sources, "--sets", "lima", "--modes", "it,im",
            "--examples", "all"]
    one = real_text.main(argv + ["--out_dir", str(tmp_path / "one"), "--jobs", "1"])
    two = real_text.main(argv + ["--out_dir", str(tmp_path / "two"), "--jobs", "2"])
    assert one["sets"]["lima"]["train_examples"] == 16 - 4  # all 16 kept, less the 4 held out
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in one["records"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in two["records"]]
    assert len(one["records"]) == 1 + 2 * 2


@pytest.mark.parametrize("flag, value", [("--examples", "lots"), ("--examples", "0"), ("--jobs", "0")])
def test_study_refuses_bad_counts_in_one_line(base, sources, tmp_path, flag, value, capsys):
    out = tmp_path / "study"
    argv = ["--smoke", "--base", base[0], "--data_dir", sources, "--out_dir", str(out), flag, value]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: real_text.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: ") and err.count("\n") == 1
    assert not out.exists()  # refused before anything was written


def test_the_real_text_page_shows_the_recorded_results():
    """docs/real-text.md's tables are the recorded run's (docs/real-text-results.json), row for row: a rerun that
    changes the file without the page (or a hand-edited number) fails here."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "real-text-results.json")) as f:
        recorded = json.load(f)
    with open(os.path.join(root, "docs", "real-text.md")) as f:
        page = f.read()
    rows = [line for line in real_text.markdown(recorded["rows"]).splitlines() if line.startswith("| ") and
            line[2].isdigit()]  # the number rows: epochs first
    assert len(rows) == len(recorded["sets"]) * (10 + 6)  # per set: base + 3 modes x 3 budgets, 2 modes x 3 vs IT
    assert [row for row in rows if row not in page] == []
    assert recorded["command"] in page.replace("\n", " ")  # the page names the command that made the file
