"""train.py's report: the lines train.py prints before and after a run."""
from imgpt.train_config import TrainConfig, resolve
from model import GPTConfig
from train import other_loss_command, startup_lines, summary_lines

STATS = {"examples": 200, "prompt_tokens": 39285, "output_tokens": 1244, "truncated": 0, "dropped": 0}


def summary(finished=True, **final):
    return {"steps": 400 if finished else 250, "total_steps": 400, "finished": finished, "time_s": 136.4,
            "tokens_per_s": 11500.0, "best_val_output_loss": 2.1108,
            "final": {"step": 400, "val_output_loss": 2.1632, "val_prompt_loss": 4.7825,
                      "train_output_loss": 1.3881, **final}}


def test_startup_is_a_few_readable_lines():
    cfg = resolve(TrainConfig(block_size=256, batch_size=8, micro_batch_size=8, lr=2e-3))
    lines = startup_lines(cfg, GPTConfig.preset("tiny"), 859008, 200, 100, STATS, 1, 1, 400, "cpu", None)
    assert lines[:4] == [
        "IT: loss on the outputs only",
        "model: from scratch, 4 layers x 128 wide, 859,008 parameters, context 256",
        "data: synthetic, 200 train / 100 held-out examples, 196 instruction and 6 output tokens each (ratio 31.6), "
        "0 truncated, 0 dropped",
        "steps: 400 of 8 examples (8 per micro-batch x 1 accumulation x 1 process), lr 0.002 cosine, on cpu"]
    assert len(lines) == 6 and lines[5].startswith("note: IT never trains on the instructions")
    im = startup_lines(resolve(TrainConfig(loss="im")), GPTConfig.preset("tiny"), 1, 2, 1, STATS, 1, 1, 4, "cpu", 3)
    assert len(im) == 5 and im[0] == "IM: loss on the instructions too" and im[3].endswith("resuming at step 3")
    qa = resolve(TrainConfig(init_from="out/base", data="synthetic-qa", micro_batch_size=16))
    qa = startup_lines(qa, GPTConfig.preset("tiny"), 1, 40, 40, STATS, 1, 1, 300, "cpu", None,
                       steps_per_epoch=3)  # 40 examples in steps of 16, 16, 8
    assert qa[3].startswith("steps: 300 of 16 examples, 100 epochs of 40 (16 per micro-batch")


def test_the_comparison_command_swaps_the_loss_and_the_out_dir():
    cfg = resolve(TrainConfig(out_dir="runs/a", data="my data.json"))
    argv = ["--data", "my data.json", "--loss", "it", "--out_dir=runs/a", "--max_steps", "20"]
    assert other_loss_command(argv, cfg) == \
        "python train.py --data 'my data.json' --max_steps 20 --loss im --out_dir runs/a-im"
    tuned = resolve(TrainConfig(init_from="gpt2", loss="im"))
    assert other_loss_command(["--init_from", "gpt2", "--loss=im"], tuned) == \
        "python train.py --init_from gpt2 --loss it --out_dir out-it"


def test_summary_names_files_every_final_metric_and_next_commands():
    cfg = resolve(TrainConfig())
    lines = summary_lines(summary(val_exact_match=0.25), cfg, [])
    assert lines == [
        "done: 400 of 400 steps in 2m16s, 11,500 tokens/s",
        "held-out output loss 2.1632 (best 2.1108, kept in best.pt), train output loss 1.3881",
        "final: val_prompt_loss 4.7825, val_exact_match 0.2500",
        "files: out/ckpt.pt (last), out/best.pt (best held-out output loss), out/summary.json, out/log.jsonl",
        "next: python eval.py --ckpt out --generate   # exact match, BLEU, ROUGE-L",
        "      python train.py --loss im --out_dir out-im   # the other loss, to compare",
        "      python sample.py --ckpt out   # talk to the model"]
    assert summary_lines(summary(), cfg, None)[-2:] == [lines[4], lines[6]]  # called from Python: no argv to repeat
    stopped = summary_lines(summary(finished=False), cfg, [])
    assert stopped[0].startswith("done: 250 of 400") and \
        stopped[-1] == "next: python train.py --init_from resume --out_dir out   # continue the run"


def test_a_run_without_checkpoints_names_none_and_suggests_nothing_that_needs_one():
    """--no-save (the real-text study's runs): no line may point at a ckpt.pt or best.pt that was never written."""
    cfg = resolve(TrainConfig(save=False))
    start = startup_lines(cfg, GPTConfig.preset("tiny"), 1, 200, 100, STATS, 1, 1, 400, "cpu", None)
    lines = summary_lines(summary(val_exact_match=0.25), cfg, [])
    assert start[4] == "files: out/ (log.jsonl, summary.json with every setting; --no-save: no checkpoints)"
    assert lines[1] == "held-out output loss 2.1632 (best 2.1108), train output loss 1.3881"
    assert lines[-1] == "files: out/summary.json, out/log.jsonl (--no-save: no checkpoints)"
    assert not any(".pt" in line for line in start + lines)


def test_plain_text_says_every_token_is_learned_and_suggests_tuning_the_base():
    cfg = resolve(TrainConfig(data="synthetic-corpus", out_dir="out/base"))
    text = {"examples": 1735, "prompt_tokens": 0, "output_tokens": 114000, "template_tokens": 0, "truncated": 0,
            "dropped": 0}
    lines = startup_lines(cfg, GPTConfig.preset("tiny"), 1, 1735, 120, text, 1, 1, 800, "cpu", None)
    assert lines[0] == "plain text: loss on every token (language modelling; --loss does not apply)"
    assert len(lines) == 5 and not any(line.startswith("note: IT") for line in lines)
    assert (cfg.max_steps, cfg.batch_size) == (1000, 24)  # the corpus recipe: the base knows every fact
    done = summary_lines({**summary(val_exact_match=1.0), "plain_text": True}, cfg, [])
    assert done[-1] == ("next: python -m scripts.experiments.compare --init_from out/base --data synthetic-qa --synth_examples 40"
                        "   # tune this base: IT vs IM")
    assert resolve(TrainConfig(init_from="out/base", data="synthetic-qa")).lr == 3e-4  # the base-tuning recipe
