"""scripts/experiments/compare.py and scripts/experiments/sweep.py: the summary math on hand-made records, the flag plumbing, and both
scripts end to end on a tiny setting (a few training steps of a one-layer model on a small synthetic task)."""
import json
import os

import pytest
import torch

from imgpt.cli import UserError
from scripts.experiments import budget, compare, report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a one-layer model, a 40-example task, 2 optimizer steps, 4 generations of 8 tokens: seconds per run
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--synth_examples", "30", "--synth_facts", "2",
        "--synth_heldout", "10", "--synth_mentions", "2", "--max_steps", "2", "--batch_size", "4", "--eval_interval",
        "1", "--train_eval_size", "8", "--device", "cpu", "--gen_examples", "4", "--max_new_tokens", "8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are too small to gain from a second thread, and on a busy machine two threads that wait for
    each other made a run 20x slower (0.4 s vs 8 s measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def record(mode: str, seed: int, **metrics) -> dict:
    return {"mode": mode, "seed": seed, "metrics": metrics, "time_s": {"train": 1.0, "eval": 0.5}, "history": []}


def assert_png(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_SIGNATURE and os.path.getsize(path) > 1000


# ----------------------------------------------------------------------------- modes and flags

def test_mode_settings():
    assert compare.mode_settings("it", 5.0, 0.1) == {"prompt_loss_weight": 0.0, "neftune_alpha": 0.0, "kl_coef": 0.0}
    assert compare.mode_settings("im+neft", 5.0, 0.1) == {"prompt_loss_weight": 1.0, "neftune_alpha": 5.0,
                                                          "kl_coef": 0.0}
    assert compare.mode_settings("plw0.3+kl", 5.0, 0.1) == {"prompt_loss_weight": 0.3, "neftune_alpha": 0.0,
                                                            "kl_coef": 0.1}
    assert compare.mode_settings("it+neft+kl", 2.0, 0.5)["neftune_alpha"] == 2.0
    assert compare.mode_settings("im+out", 5.0, 0.1) == {"prompt_loss_weight": 1.0, "neftune_alpha": 0.0,
                                                         "kl_coef": 0.0, "loss_reduction": "output"}
    for bad in ("xx", "plw", "plwabc", "plw-1", "im+noise", "IM"):
        with pytest.raises(UserError, match="bad mode"):
            compare.mode_settings(bad, 5.0, 0.1)


def test_all_modes_appends_prompt_loss_weights_without_duplicates():
    cfg = compare.CompareConfig(modes=["it", "im", "plw0.1"], prompt_loss_weights=[0.1, 0.3, 1.0])
    assert compare.all_modes(cfg) == ["it", "im", "plw0.1", "plw0.3", "plw1"]


def test_split_argv_routes_our_flags_and_passes_the_rest_to_train():
    argv = ["--modes", "it,im", "--lr", "1e-3", "--resume", "--init_from=gpt2", "--no-keep_checkpoints",
            "--compile", "--seeds=2", "--data", "x.json"]
    mine, rest = compare.split_argv(argv, compare.CompareConfig)
    assert mine == ["--modes", "it,im", "--resume", "--no-keep_checkpoints", "--seeds=2"]
    assert rest == ["--lr", "1e-3", "--init_from=gpt2", "--compile", "--data", "x.json"]


def test_parse_args_passes_train_settings_and_rejects_what_modes_decide():
    cfg, base = compare.parse_args(compare.CompareConfig, ["--seeds", "2", "--lr", "0.01", "--max_steps", "7"])
    assert (cfg.seeds, base.lr, base.max_steps) == (2, 0.01, 7)
    run = compare.run_train_config(base, cfg, "im+neft", 5, "/tmp/x")
    assert (run.prompt_loss_weight, run.neftune_alpha, run.kl_coef, run.seed, run.lr) == (1.0, 5.0, 0.0, 5, 0.01)
    for reserved in (["--seed", "3"], ["--loss", "im"], ["--prompt_loss_weight", "1"]):
        with pytest.raises(UserError, match="set by --modes"):
            compare.parse_args(compare.CompareConfig, reserved)
    with pytest.raises(UserError, match="bad mode"):
        compare.parse_args(compare.CompareConfig, ["--modes", "it,imm"])


def test_each_run_gets_one_thread_and_the_cores_fill_with_runs(monkeypatch):
    """compare.py, sweep.py and budget.py (one parse_args): a run per core at one thread each, so every run's
    digits are those of a 1-thread run whatever --jobs is; --threads N gives each run N threads and a run per N."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    for argv, jobs, threads in (([], 4, 1), (["--threads", "2"], 2, 2), (["--threads", "0"], 1, 0),
                                (["--jobs", "3"], 3, 1), (["--jobs", "1"], 1, 1)):
        cfg, base = compare.parse_args(compare.CompareConfig, argv)
        assert (cfg.jobs, base.threads) == (jobs, threads), argv
        run = compare.run_train_config(base, cfg, "it", 0, "/tmp/x")
        assert [e.threads for e in compare.eval_configs(cfg, run, "/tmp/x")] == [threads] * 2  # its evaluations too
    cfg, base = compare.parse_args(sweep.SweepConfig, [])
    assert (cfg.jobs, base.threads, compare.training.resolve(base).threads) == (4, 1, 1)


def test_help_tells_the_mode_grammar_and_lists_only_our_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(compare.CompareConfig, ["--lr", "1", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "plw0.3" in text and "--prompt_loss_weights" in text and "python train.py --help" in text
    assert "--max_steps MAX_STEPS" not in text  # train.py's flags are train.py's help


# ----------------------------------------------------------------------------- the summary math

IT_VALUES = ((0, 4.0, 0.0), (1, 4.2, 0.1), (2, 4.4, 0.2))  # (seed, held-out loss, exact match)
IM_VALUES = ((0, 1.0, 0.5), (1, 1.5, 0.1), (2, 2.0, 0.0))
RECORDS = ([record("it", s, heldout_loss=v, exact_match=e) for s, v, e in IT_VALUES]
           + [record("im", s, heldout_loss=v, exact_match=e) for s, v, e in IM_VALUES])


def test_mean_std_is_the_sample_std():
    assert report.mean_std([4.0, 4.2, 4.4]) == pytest.approx((4.2, 0.2))
    assert report.mean_std([3.0]) == (3.0, 0.0)


def test_summary_table_has_one_row_per_mode_with_mean_and_std():
    table = report.summary_table(RECORDS).splitlines()
    assert len(table) == 4  # header, separator, it, im
    assert table[2].startswith("| it | 3 | 4.200 ± 0.200 | 0.100 ± 0.100 |")
    assert table[3].startswith("| im | 3 | 1.500 ± 0.500 | 0.200 ± 0.265 |")


def test_verdict_says_who_won_and_whether_beyond_the_seed_spread():
    loss = report.verdict(RECORDS, "heldout_loss", "Held-out output loss", lower_is_better=True)
    assert "IM beat IT: 4.2 → 1.5 (difference -2.7, beyond the seed spread" in loss
    assert "= 0.7" in loss and "IM better on 3 of 3 seeds" in loss
    em = report.verdict(RECORDS, "exact_match", "Exact match", lower_is_better=False)
    assert "IM beat IT: 0.1 → 0.2 (difference +0.1, within the seed spread" in em and "on 1 of 3 seeds" in em
    worse = [record("it", 0, heldout_loss=1.0), record("im", 0, heldout_loss=2.0)]
    text = report.verdict(worse, "heldout_loss", "Loss", lower_is_better=True)
    assert "IM did NOT beat IT" in text and "one seed only" in text
    assert "no IT/IM pair" in report.verdict(RECORDS[:3], "heldout_loss", "Loss", lower_is_better=True)
    tie = [record("it", 0, exact_match=0.5), record("im", 0, exact_match=0.5)]
    assert "tie" in report.verdict(tie, "exact_match", "Exact match", lower_is_better=False)


def test_summary_markdown_states_the_setup_and_a_verdict_per_mode_against_it():
    settings = {"data": "synthetic", "synth_facts": 8, "synth_mentions": 10, "init_from": "scratch", "model": "tiny",
                "n_layer": 0, "n_head": 0, "n_embd": 0, "block_size": 256, "lr": 0.002, "batch_size": 16}
    extra = [record("plw0.3", s, heldout_loss=v, exact_match=0.0) for s, v in ((0, 4.6), (1, 4.7), (2, 4.8))]
    records = [{**r, "steps": 400, "train_settings": settings, "eval_settings": [{"ckpt": "x/ckpt.pt"}]}
               for r in RECORDS + extra]
    text = report.summary_markdown(records, {"train_examples": 200, "heldout_examples": 100, "ratio": 16.25})
    assert "200 training and 100 held-out examples; instruction/output token ratio 16.25" in text
    assert "tiny from scratch (block_size 256); 400 steps, lr 0.002, batch 16" in text and "its last checkpoint" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and " vs IT, " in line]
    assert [v.split(":")[0] for v in verdicts] == ["- IM vs IT, held-out output loss", "- IM vs IT, held-out exact match",
                                                   "- PLW0.3 vs IT, held-out output loss",
                                                   "- PLW0.3 vs IT, held-out exact match"]
    assert "IM's gain per seed +3, +2.7, +2.4" in verdicts[0] and "each held-out fact stated 10 times" in text
    assert "PLW0.3 did NOT beat IT: 4.2 → 4.7 (difference +0.5, beyond the seed spread" in verdicts[2]


def test_paired_gain_is_positive_when_im_does_better():
    loss = sweep.paired_gain(RECORDS, "heldout_loss", lower_is_better=True)
    assert loss == pytest.approx({"mean": 2.7, "std": 0.3, "seeds": 3, "it": 4.2, "im": 1.5})  # gains 3.0, 2.7, 2.4
    em = sweep.paired_gain(RECORDS, "exact_match", lower_is_better=False)
    assert em["mean"] == pytest.approx(0.1) and em["std"] == pytest.approx(0.36055, abs=1e-4)  # gains .5, 0, -.2
    assert sweep.call(loss) == "IM better" and sweep.call(em) == "IM better, within seed spread"
    assert sweep.call({**loss, "mean": -1.0, "std": 0.1}) == "IT better"


def test_point_settings_move_one_knob_and_hold_the_rest():
    """The examples sweep never touches the held-out set or its mentions; the ratio sweep changes the instruction
    length, with held-out facts stated in proportion; a real file is subsampled."""
    base = compare.training.TrainConfig()
    assert sweep.point_settings("examples", 50, base) == {"synth_examples": 50}
    assert sweep.point_settings("ratio", 4, base) == {"synth_facts": 4, "synth_mentions": 5}
    assert sweep.point_settings("ratio", 1, base) == {"synth_facts": 1, "synth_mentions": 1}
    real = compare.training.TrainConfig(data="alpaca.json")
    assert sweep.point_settings("examples", 1000, real) == {"num_examples": 1000}
    # what the points generate: the same held-out questions, each fact stated 10 times, at every examples point
    from imgpt.formats import load_split
    splits = [load_split({**vars(base), **sweep.point_settings("examples", n, base)}) for n in (50, 100, 200, 400)]
    assert all(val == splits[0][1] for _, val in splits) and [len(tr) for tr, _ in splits] == [50, 100, 200, 400]
    for train, val in splits:
        statements = [f for c in train for f in c[0]["content"].split(", ")[:-1]]
        assert {statements.count(c[0]["content"].split(", ")[-1] + c[1]["content"]) for c in val} == {10}


def test_ratio_bins_are_equal_size_and_ordered_by_ratio():
    convs = list("abcdefg")
    bins = sweep.ratio_bins(convs, [5.0, 1.0, 3.0, 0.5, 9.0, 2.0, 7.0], bins=3)
    assert bins == [["b", "d"], ["c", "f"], ["a", "g"]]  # ratios {1, .5}, {3, 2}, {5, 7}; 'e' (9) is left over


def test_example_ratio_counts_instruction_over_output_tokens():
    from imgpt.tokenizers import get_tokenizer
    msgs = [{"role": "user", "content": "abcdef"}, {"role": "assistant", "content": "xy"}]
    assert sweep.example_ratio(msgs, get_tokenizer("byte")) == pytest.approx(6 / 3)  # byte tokens; output + eot


# ----------------------------------------------------------------------------- end to end

def test_compare_end_to_end_writes_results_summary_and_curves(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    compare.main(["--out_dir", out, "--modes", "it,im", "--seeds", "2"] + TINY)
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    runs = results["runs"]
    assert [(r["mode"], r["seed"]) for r in runs] == [("it", 0), ("it", 1), ("im", 0), ("im", 1)]
    for r in runs:
        assert {k for k, _, _ in report.METRICS} - {"knowledge"} <= set(r["metrics"]), r["metrics"].keys()
        assert "knowledge" not in r["metrics"]  # only a base tuned on the world it learned has a probe
        assert r["train_settings"]["prompt_loss_weight"] == {"it": 0.0, "im": 1.0}[r["mode"]]
        assert r["train_settings"]["seed"] == r["seed"] and r["train_settings"]["max_steps"] == 2
        assert [h["step"] for h in r["history"]] == [0, 1, 2] and r["time_s"]["train"] > 0
        assert 0.0 <= r["metrics"]["exact_match"] <= 1.0 and r["steps"] == 2
        assert [e["limit"] for e in r["eval_settings"]] == [1000, 4]
    assert results["data"]["train_examples"] == 30 and results["data"]["ratio"] > 1
    gains = results["gains_over_it"]["im"]["exact_match"]
    assert set(gains["per_seed"]) == {"0", "1"} and gains["min"] == min(gains["per_seed"].values())
    assert results["wall_s"] > 0 and results["verdict"][0].startswith("IM vs IT, held-out output loss")
    summary = open(os.path.join(out, "summary.md")).read()
    rows = [line for line in summary.splitlines() if line.startswith("| i")]
    assert [row.split(" | ")[0] for row in rows] == ["| it", "| im"]
    assert "- IM vs IT, held-out output loss: IM " in summary and "- IM vs IT, held-out exact match: IM " in summary
    assert_png(os.path.join(out, "curves.png"))
    assert not os.path.exists(os.path.join(out, "runs", "it-s0", "ckpt.pt"))  # checkpoints removed by default

    # the same run alone, in this process instead of a worker: results depend on neither run order nor --jobs
    alone = compare.main(["--out_dir", str(tmp_path / "alone"), "--modes", "im", "--seeds", "1", "--jobs", "1"] + TINY)
    assert alone[0]["metrics"] == runs[2]["metrics"]

    capsys.readouterr()
    again = compare.main(["--out_dir", out, "--modes", "it,im", "--seeds", "2", "--resume"] + TINY)
    assert capsys.readouterr().out.count("reused") == 4 and again == runs


def test_sweep_end_to_end_two_points(tmp_path):
    out = str(tmp_path / "sweep")
    tiny = [a for i, a in enumerate(TINY) if "--synth_facts" not in TINY[max(i - 1, 0):i + 1]]  # the points set it
    rows = sweep.main(["--out_dir", out, "--factor", "ratio", "--points", "1,3", "--seeds", "1"] + tiny)
    assert [r["point"] for r in rows] == ["ratio1", "ratio3"]
    assert rows[0]["ratio"] < rows[1]["ratio"]  # more stated facts, longer instructions
    with open(os.path.join(out, "sweep.json")) as f:
        points = json.load(f)["points"]
    assert [len(p["runs"]) for p in points] == [2, 2]
    assert {p["runs"][0]["train_settings"]["synth_facts"] for p in points} == {1, 3}
    table = open(os.path.join(out, "sweep.md")).read()
    assert table.count("| ratio") == 2
    assert_png(os.path.join(out, "sweep.png"))
    assert_png(os.path.join(out, "ratio1", "curves.png"))


# ----------------------------------------------------------------------------- budget.py

def test_budgets_set_examples_and_epochs_or_steps_and_nothing_else():
    base = compare.training.TrainConfig(data="synthetic-qa", init_from="out/base")
    assert budget.parse_budget("40x10") == (40, 10.0, None) and budget.parse_budget("40@300") == (40, None, 300)
    assert budget.budget_settings("200x2.5", base) == {"synth_examples": 200, "max_steps": 0, "epochs": 2.5}
    assert budget.budget_settings("40@300", base) == {"synth_examples": 40, "max_steps": 300}
    for bad in ("40", "x10", "40x0", "0x2", "40@0", "40x10@3", "40 epochs"):
        with pytest.raises(UserError, match="bad budget"):
            budget.parse_budget(bad)
    with pytest.raises(UserError, match="set by --budgets"):
        budget.main(["--max_steps", "5"])


def test_budget_rows_are_mean_and_std_per_mode():
    records = [record("it", 0, exact_match=0.5), record("it", 1, exact_match=0.7), record("im", 0, exact_match=0.1)]
    rows = budget.budget_row("40x2", records, 6, 2.0)
    assert [(r["mode"], r["seeds"]) for r in rows] == [("it", 2), ("im", 1)]
    assert rows[0]["cells"]["exact_match"] == pytest.approx((0.6, 0.1414213), abs=1e-6)
    assert rows[1]["cells"]["exact_match"] == (0.1, 0.0)
    table = budget.budget_markdown(rows)
    assert "| 40x2 | 6 | 2 | it | 0.600 ± 0.141 | n/a |" in table and "|  |  |  | im | 0.100 ± 0.000 | n/a |" in table


def test_budget_end_to_end_epochs_and_steps(tmp_path):
    out = str(tmp_path / "budget")
    pairs = [TINY[i:i + 2] for i in range(0, len(TINY), 2)]  # the budgets decide the examples and the steps
    tiny = [a for flag, value in pairs if flag not in ("--max_steps", "--synth_examples") for a in (flag, value)]
    assert len(tiny) == len(TINY) - 4
    rows = budget.main(["--out_dir", out, "--budgets", "12x2,30@2", "--seeds", "1"] + tiny)
    assert [(r["budget"], r["mode"], r["steps"], r["epochs"]) for r in rows] == [
        ("12x2", m, 6, 2.0) for m in ("it", "im", "im+out")] + [("30@2", m, 2, 0.25) for m in ("it", "im", "im+out")]
    with open(os.path.join(out, "budget.json")) as f:
        budgets = json.load(f)["budgets"]
    runs = {(b["budget"], r["mode"]): r for b in budgets for r in b["runs"]}
    assert runs[("12x2", "it")]["steps"] == 6 and runs[("30@2", "im")]["steps"] == 2
    assert runs[("12x2", "im+out")]["train_settings"]["loss_reduction"] == "output"
    assert runs[("12x2", "im")]["train_settings"]["loss_reduction"] == "token"
    assert runs[("12x2", "it")]["train_settings"]["synth_examples"] == 12
    assert "train_prompt_loss" in runs[("30@2", "it")]["metrics"]
    assert_png(os.path.join(out, "budget.png"))
    assert_png(os.path.join(out, "12x2", "curves.png"))
