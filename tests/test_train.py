"""train.py: the loss of a step does not depend on how it is split; resume is exact; failures are clear."""
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import loss as L
import train as T
from conftest import cli_error, free_port, log_records, tiny
from data import ASSISTANT, EOT, TEMPLATE, USER, Example, build_data, collate, make_example
from imgpt import device
from imgpt.batching import plan_epoch, split_sizes
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import UserError, make_config, run_cli
from imgpt.device import usable_cores
from imgpt.distributed import StopAtStepBoundary, destroy_distributed, init_distributed
from imgpt.train_config import resolve
from model import GPT, GPTConfig, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def params(out_dir: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(out_dir, "ckpt.pt"))["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- split invariance

MODES = {"it": dict(loss="it"), "im": dict(loss="im"), "plw0.3": dict(prompt_loss_weight=0.3),
         "sequence": dict(loss="im", loss_reduction="sequence"), "output": dict(loss="im", loss_reduction="output"),
         "token-capped": dict(loss="im", batch_tokens=450)}  # steps of 7, 3, 7 examples: uneven micro-batches


@contextlib.contextmanager
def quiet():
    """No training output (startup lines, progress bars) around a grading test's failure message."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def ddp_worker(rank: int, port: int, data: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    init_distributed("cpu")  # train() uses the caller's process group and leaves it to the caller
    try:
        with quiet():
            for name, mode in MODES.items():
                T.train(tiny(data, os.path.join(root, f"ddp-{name}"), micro_batch_size=2, **mode))
    finally:
        destroy_distributed()


class OneRank(L.StepLoss):
    """StepLoss as one DDP rank runs it, without the processes: the caller averages the ranks' gradients."""

    def no_sync(self):
        return contextlib.nullcontext()


class NoScaler:
    def scale(self, loss):
        return loss


PROMPT_LOSS_WEIGHT = 0.3


def step_gradient(model: GPT, examples: list[Example], ranks: list[list[list[int]]], ref: GPT | None = None,
                  kl_coef: float = 0.0, reduction: str = "token") -> tuple[torch.Tensor, float]:
    """(the flattened gradient, divisor) of one step run by run_micro_batches, whose examples are split into ranks x
    micro-batches, averaged over the ranks as DDP does ([] = a micro-batch with nothing in it)."""
    parts = [L.step_batches(examples, micro) for micro in ranks]
    ids = [i for micro in ranks for m in micro for i in m]
    divisor = L.step_divisor(L.example_totals(examples), ids, reduction)  # N of the whole step, every rank
    dummy = collate(examples[:1])
    grads = []
    for batches in parts:
        model.zero_grad()
        L.run_micro_batches(OneRank(model, True, 0.0), batches, dummy, divisor, len(ranks), ref, kl_coef, None,
                            NoScaler())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(grads).mean(0), divisor


def hand_gradient(model: GPT, examples: list[Example], ref: GPT | None, kl_coef: float) -> torch.Tensor:
    """The gradient of sum(w * (CE + kl_coef * KL)) / sum(w) over the whole step, written out: one forward of
    every example at once, no micro-batches, no run_micro_batches."""
    b = collate(examples)
    model.zero_grad()
    logp = model(b.idx, b.pos, b.doc).log_softmax(-1)  # (B, T, V)
    ce = -logp.gather(-1, b.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    per_token = ce
    if ref is not None:
        with torch.no_grad():
            logq = ref(b.idx, b.pos, b.doc).log_softmax(-1)
        per_token = ce + kl_coef * (logp.exp() * (logp - logq)).sum(-1)  # KL(model || reference) per token
    ((b.weights * per_token).sum() / b.weights.double().sum().float()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.ex2
@pytest.mark.parametrize("kl_coef", [0.0, 0.37])
def test_micro_batch_scaling_gives_the_whole_batch_gradient(kl_coef):
    """Fast and in one process: the gradient of every split equals that of sum(w * loss) / sum(w) over the step,
    written out by hand: its size as well as its direction, with and without the KL term."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=67)
    model = GPT(config)
    ref = GPT(config) if kl_coef else None  # another random model: the KL term is far from 0
    rng = random.Random(0)
    examples = []
    for n in [3, 9, 5, 14, 4, 7, 11, 6]:  # very different lengths: micro-batches get very different weight sums
        k = rng.randint(1, n - 1)
        examples.append(make_example([rng.randrange(67) for _ in range(n)], [USER] * k + [ASSISTANT] * (n - k),
                                     PROMPT_LOSS_WEIGHT))
    want = hand_gradient(model, examples, ref, kl_coef)
    cases = {"1 micro-batch of 8": [[list(range(8))]],
             "8 micro-batches of 1": [[[i] for i in range(8)]],
             "micro-batches of 1, 3, 4": [[[0], [1, 2, 3], [4, 5, 6, 7]]],
             "2 ranks x 2 micro-batches of 2": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]],
             "2 ranks, the second's last micro-batch empty (a dummy)": [[[0, 1, 2], [3, 4, 5]], [[6, 7], []]]}
    fed = (f"kl_coef={kl_coef} against a reference model" if ref else "no KL (ref None, kl_coef 0)")
    for name, ranks in cases.items():
        got, divisor = step_gradient(model, examples, ranks, ref, kl_coef)
        error = ((got - want).norm() / want.norm()).item()
        cosine, size = (got @ want / (got.norm() * want.norm())).item(), (got.norm() / want.norm()).item()
        how = (f"points the same way but is {size:.4g} x the size of" if cosine > 1 - 1e-6 else
               f"points another way (cosine {cosine:.6f}) and is {size:.4g} x the size of")  # a factor, or more
        assert error < 1e-5, (
            f"{name}, world={len(ranks)}, divisor={divisor:.2f}, {fed}: the gradient summed over micro-batches and "
            f"averaged over ranks {how} the gradient of sum(w * (CE + kl_coef * KL)) / sum(w) over the whole step "
            f"(relative error {error:.1e}, expected below 1e-5)")


def test_output_reduction_counts_only_output_tokens_and_is_split_invariant():
    """--loss_reduction output: N = the step's output tokens (weight 1 in every mode), hand-counted; instruction
    and template tokens add to the numerator only. The gradient of every split equals that of
    sum(w * CE) / n_out over the whole step, written out by hand."""
    examples = [make_example([5, 6, 7, 8, 9], [USER, USER, ASSISTANT, ASSISTANT, EOT], 0.5, 0.25),  # targets: 1
                make_example([1, 2, 3, 4, 5, 6, 7], [USER, TEMPLATE, USER, USER, USER, ASSISTANT, EOT], 0.5, 0.25)]
    totals = L.example_totals(examples)  # prompt, 3 output; then 1 template, 3 prompt, 2 output tokens
    assert L.step_divisor(totals, [0, 1], "output") == 5.0
    assert L.step_divisor(totals, [1], "output") == 2.0 and L.step_divisor(totals, [1, 1, 0], "output") == 7.0
    assert L.step_divisor(totals, [0, 1], "token") == 5.0 + 0.5 * 4 + 0.25 * 1  # token: every weight
    assert L.step_divisor(totals, [1, 1, 0], "sequence") == 3  # sequence: the examples
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=67))
    rng = random.Random(0)
    examples = []
    for n in [3, 9, 5, 14, 4, 7, 11, 6]:  # very different lengths: micro-batches get very different weight sums
        k = rng.randint(1, n - 1)
        examples.append(make_example([rng.randrange(67) for _ in range(n)], [USER] * k + [ASSISTANT] * (n - k),
                                     PROMPT_LOSS_WEIGHT))
    n_out = sum(len(e.ids) - e.segs.index(ASSISTANT) for e in examples)  # outputs: every token from the first
    weights = L.step_divisor(L.example_totals(examples), range(8), "token")
    want = hand_gradient(model, examples, None, 0.0) * (weights / n_out)  # sum(w * CE) / n_out, not / sum(w)
    assert n_out < weights - 1  # the two reductions differ: the test can fail
    for ranks in ([[list(range(8))]], [[[i] for i in range(8)]], [[[0], [1, 2, 3], [4, 5, 6, 7]]],
                  [[[0, 1], [2, 3]], [[4, 5], [6, 7]]], [[[0, 1, 2], [3, 4, 5]], [[6, 7], []]]):
        got, divisor = step_gradient(model, examples, ranks, reduction="output")
        assert divisor == n_out and ((got - want).norm() / want.norm()).item() < 1e-5, ranks


def test_output_reduction_at_prompt_weight_0_is_token_exactly(data_file, tmp_path):
    """IT's loss is the same under both reductions (its weighted tokens are its outputs): identical parameters."""
    for reduction in ("token", "output"):
        T.train(tiny(data_file, str(tmp_path / reduction), loss="it", loss_reduction=reduction, micro_batch_size=2))
    assert max_diff(params(str(tmp_path / "token")), params(str(tmp_path / "output"))) == 0.0


@pytest.mark.ex2
def test_update_does_not_depend_on_the_split(data_file, tmp_path):
    """One epoch, 3 optimizer steps (8, 8 and 1 examples; token-capped: 7, 3, 7): the updates of 8 x 1, 2 x 4,
    packed rows, and 2 processes x 2 x 2 agree. In the 1-example step one process has nothing and joins the
    gradient all-reduce with a zero-weighted dummy micro-batch."""
    mp.start_processes(ddp_worker, args=(free_port(), data_file, str(tmp_path)), nprocs=2, start_method="spawn")
    for name, mode in MODES.items():
        runs = {"8x1": {}, "2x4": dict(micro_batch_size=2), "packed 2x4": dict(micro_batch_size=2, pack=True)}
        if name == "it":
            runs["no skip_zero"] = dict(skip_zero=False)
        with quiet():
            for run, kw in runs.items():
                T.train(tiny(data_file, str(tmp_path / f"{name}-{run}"), **mode, **kw))
        ref = params(str(tmp_path / f"{name}-8x1"))
        for run in [r for r in runs if r != "8x1"] + ["ddp"]:
            out = str(tmp_path / (f"ddp-{name}" if run == "ddp" else f"{name}-{run}"))
            split = "2 processes x 2 x 2" if run == "ddp" else run
            fed = f"3 training steps with {', '.join(f'{k}={v}' for k, v in mode.items())}, split as {split}"
            diff = max_diff(ref, params(out))
            assert diff < 1e-6, f"{fed}: the parameters differ from 8 x 1's by up to {diff:.1e}, expected below 1e-6"
            # Adam's update hardly changes when ALL gradients are scaled alike (a wrong overall factor), so
            # compare the losses and the gradient norms of every step too.
            steps = [r for r in log_records(out) if "loss" in r]
            ref_steps = [r for r in log_records(str(tmp_path / f"{name}-8x1")) if "loss" in r]
            for key in ("loss", "grad_norm", "weight_sum"):
                got, want = [r[key] for r in steps], [r[key] for r in ref_steps]
                assert got == pytest.approx(want, rel=1e-6), (
                    f"{fed}: the logged {key} of each step is {got}, with 8 x 1 {want} (expected equal to 1e-6)")
    assert max_diff(params(str(tmp_path / "it-8x1")), params(str(tmp_path / "plw0.3-8x1"))) > 1e-4  # modes differ


def hand_losses(model, examples, prompt_loss_weight: float) -> dict[str, float]:
    """The loss of a batch under each reduction, one example at a time: token = sum(w*ce)/sum(w), sequence = mean
    of means, output = sum(w*ce)/(the output tokens' count, their weight at prompt weight 0)."""
    sums = []
    with torch.no_grad():
        for e in examples:
            b = collate([make_example(e.ids, e.segs, prompt_loss_weight)])
            ce, w = model.loss(b.idx, b.targets, b.weights, pos=b.pos, doc=b.doc)
            outputs = sum(s in (ASSISTANT, EOT) for s in e.segs[1:])
            sums.append((ce.item(), w.item(), outputs))
    return {"token": sum(c for c, _, _ in sums) / sum(w for _, w, _ in sums),
            "sequence": sum(c / w for c, w, _ in sums) / len(sums),
            "output": sum(c for c, _, _ in sums) / sum(n for _, _, n in sums)}


def test_loss_reductions_equal_hand_computation(data_file, tmp_path):
    """A full step's logged loss (2 x 4 micro-batches): token = sum(w*ce)/sum(w) over the batch; sequence = mean
    of per-example means; output = sum(w*ce) / the output tokens' count. Not the first step: at initialization
    every token's loss is about ln(vocab)."""
    cfg = resolve(tiny(data_file, "", micro_batch_size=2))
    model, tok = T.build_model(cfg)
    train_ex, _, _ = build_data(cfg, tok)
    plan = plan_epoch(cfg, train_ex, 0)
    k = next(i for i in range(1, len(plan)) if len(plan[i]) == 8)  # the step checked: 8 examples, after a first
    for reduction in ("token", "sequence", "output"):
        cfg = tiny(data_file, str(tmp_path / reduction), micro_batch_size=2, max_steps=k + 1, stop_step=k, lr=3e-2,
                   warmup_ratio=0.0, prompt_loss_weight=0.3, loss_reduction=reduction)
        T.train(cfg)
        model.load_state_dict(params(cfg.out_dir))  # the parameters before step k
        T.train(dataclasses.replace(cfg, init_from="resume", stop_step=0))
        logged = [r["loss"] for r in log_records(cfg.out_dir) if "loss" in r][k]
        hand = hand_losses(model, [train_ex[i] for i in plan[k]], prompt_loss_weight=0.3)
        others = [v for r, v in hand.items() if r != reduction]
        assert min(abs(hand[reduction] - v) for v in others) > 1e-4  # 10x the tolerance below: the test can fail
        assert logged == pytest.approx(hand[reduction], abs=1e-5)


@pytest.mark.ex2
def test_micro_batch_loss_divides_by_the_step_and_undoes_ddps_mean():
    ce, kl = torch.tensor(6.0), torch.tensor(2.0)
    got = L.micro_batch_loss(ce, kl, kl_coef=0.5, divisor=4.0, world=2, dummy=False).item()
    assert got == pytest.approx((6.0 + 0.5 * 2.0) * 2 / 4.0), (
        f"summed CE 6, summed KL 2, kl_coef 0.5, the step's N 4, 2 ranks: {got}, expected (6 + 0.5 * 2) x 2 / 4 = 3.5")
    dummy = L.micro_batch_loss(ce, kl, 0.5, 4.0, 2, dummy=True).item()
    assert dummy == 0.0, f"the dummy micro-batch's loss is {dummy}, expected 0: it must add no gradient"


def test_per_example_weights_normalizes_each_packed_example():
    w = torch.tensor([[0.0, 1.0, 1.0, 0.0, 2.0], [0.5, 0.5, 0.0, 0.0, 0.0]])
    doc = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, -1, -1]])
    expected = torch.tensor([[0.0, 0.5, 0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0, 0.0]])
    assert torch.equal(L.per_example_weights(w, doc), expected)


def test_lr_schedule_and_kl():
    assert T.lr_at(0, 100, 1.0, 0.0, 3, "linear") == 0.25  # warmup never starts at 0
    assert T.lr_at(3, 100, 1.0, 0.0, 3, "linear") == 1.0
    assert T.lr_at(50, 100, 1.0, 0.1, 0, "linear") == pytest.approx(0.55)
    assert T.lr_at(50, 100, 1.0, 0.1, 0, "cosine") == pytest.approx(0.55)
    assert T.lr_at(25, 100, 1.0, 0.0, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert T.lr_at(99, 100, 1.0, 0.0, 0, "constant") == 1.0
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p.softmax(-1)[0].tolist(), q.softmax(-1)[0].tolist()))
    assert L.weighted_kl(p, q, torch.tensor([0.5])).item() == pytest.approx(0.5 * hand, rel=1e-5)
    assert L.weighted_kl(p, p, torch.tensor([1.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_penalty_starts_at_zero_and_grows(data_file, tmp_path):
    T.train(tiny(data_file, str(tmp_path), kl_coef=0.5, max_steps=3, lr=1e-2))
    kl = [r["kl"] for r in log_records(str(tmp_path)) if "kl" in r]
    assert abs(kl[0]) < 1e-6 and kl[2] > 1e-4  # the model starts as its own reference, then moves away


def test_fine_tuning_starts_from_the_given_checkpoint_with_the_paper_recipe(data_file, tmp_path):
    first = T.train(tiny(data_file, str(tmp_path / "a"), lr=1e-2))
    cfg = T.TrainConfig(init_from=str(tmp_path / "a"), out_dir=str(tmp_path / "b"), data=data_file, val_size=4,
                        num_examples=17, max_steps=2, eval_examples=4, train_eval_size=4, seed=0, dropout=0.1)
    second = T.train(cfg)
    assert second["history"][0]["val_output_loss"] == pytest.approx(first["final"]["val_output_loss"], abs=1e-6)
    c = second["config"]
    assert (c["lr"], c["schedule"], c["warmup_ratio"], c["batch_size"], c["micro_batch_size"], c["block_size"]) == \
        (2e-5, "linear", 0.03, 128, 8, 64)  # the paper's recipe; the context of the checkpoint's model
    assert load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))["tokenizer"] == "byte"


def test_checkpoints_survive_deleting_the_base_model_directory(data_file, tmp_path):
    """The checkpoint carries the base model's tokenizer, not the path of its directory."""
    from conftest import hf_model, write_tiny_bpe  # noqa: F401 (fixtures)
    base = tmp_path / "base"
    hf_model(1, 2, 16, 80, 260).save_pretrained(base)
    vocab = write_tiny_bpe(base)
    cfg = T.TrainConfig(init_from=str(base), out_dir=str(tmp_path / "run"), data=data_file, val_size=4, max_steps=2,
                        stop_step=1, batch_size=8, eval_examples=4, train_eval_size=4, seed=0)
    T.train(cfg)
    shutil.rmtree(base)
    model, tok = load_model(str(tmp_path / "run"))
    assert tok.encode("hello") == [vocab["he"], vocab["ll"], ord("o") - 33] and tok.eot_token == 259
    resumed = T.train(dataclasses.replace(cfg, init_from="resume", stop_step=0))
    assert resumed["steps"] == 2


# ----------------------------------------------------------------------------- resume, Ctrl-C, NaN

RESUME = dict(max_steps=6, dropout=0.1, neftune_alpha=5.0, micro_batch_size=4)  # random streams must be restored


@pytest.fixture(scope="module")
def uninterrupted(data_file, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = str(tmp_path_factory.mktemp("full"))
    T.train(tiny(data_file, out, **RESUME))
    return params(out)


def test_resume_is_bit_exact(data_file, tmp_path, uninterrupted):
    """6 steps (two epochs) == 4 steps, stop, resume, 2 more: every parameter bit-identical."""
    out = str(tmp_path)
    first = T.train(tiny(data_file, out, stop_step=4, **RESUME))
    assert first["steps"] == 4 and not first["finished"]
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["step"] == 4
    second = T.train(T.TrainConfig(init_from="resume", out_dir=out))  # the rest comes from the checkpoint
    assert second["steps"] == 6 and second["finished"]
    resumed = params(out)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_no_ckpt_pt_at_step_0_yet_resume_and_best_pt_keep_their_promises(data_file, tmp_path, monkeypatch, capsys):
    """Step 0's ckpt.pt would hold only what a new run rebuilds; best.pt still starts there (the best evaluation so
    far). A run stopped later resumes bit-exact; one stopped before its first ckpt.pt says so and starts over."""
    saved, write = [], T.checkpoint.save_checkpoint
    monkeypatch.setattr(T.checkpoint, "save_checkpoint", lambda path, payload: (saved.append((os.path.basename(path),
                                                                                   payload["step"])),
                                                                      write(path, payload)))
    full = str(tmp_path / "full")
    T.train(tiny(data_file, full, max_steps=3, eval_interval=1))
    assert [step for name, step in saved if name == "ckpt.pt"] == [1, 2, 3]
    assert saved[0] == ("best.pt", 0)
    stopped = str(tmp_path / "stopped")
    T.train(tiny(data_file, stopped, max_steps=3, eval_interval=1, stop_step=1))
    T.train(T.TrainConfig(init_from="resume", out_dir=stopped))
    assert all(torch.equal(a, b) for a, b in zip(params(full).values(), params(stopped).values()))

    killed = str(tmp_path / "killed")  # dies in its first step, after step 0's evaluation
    monkeypatch.setattr(T, "train_step", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        T.train(tiny(data_file, killed, max_steps=3, eval_interval=1))
    assert sorted(os.listdir(killed)) == ["best.pt", "log.jsonl"]
    assert cli_error(T.main, ["train.py", f"--out_dir={killed}"], monkeypatch, capsys) == (
        f"error: --out_dir {killed} holds a training run (best.pt, log.jsonl): no ckpt.pt to resume from, "
        "--overwrite replaces it, or choose another --out_dir\n")
    assert cli_error(T.main, ["train.py", "--init_from=resume", f"--out_dir={killed}"], monkeypatch, capsys) == \
        f"error: {killed}/ckpt.pt: checkpoint file not found\n"


# ----------------------------------------------------------------------------- threads, and what they reproduce

@pytest.fixture
def idle(monkeypatch):
    """A machine with no other work (load 0, whatever this one's is now); torch's threads restored after."""
    monkeypatch.setattr(device, "machine_load", lambda: 0.0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_lone_run_takes_every_core_unless_busy_and_saves_the_count(data_file, tmp_path, idle, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    summary = T.train(tiny(data_file, str(tmp_path / "idle"), threads=0, max_steps=1))
    assert torch.get_num_threads() == 2 and summary["config"]["threads"] == 2
    out, err = capsys.readouterr()
    assert "on cpu with 2 threads" in out and "busy" not in out + err
    assert load_checkpoint(str(tmp_path / "idle" / "ckpt.pt"))["config"]["threads"] == 2  # a resume keeps it
    monkeypatch.setattr(device, "machine_load", lambda: 2.5)  # more threads running than cores
    summary = T.train(tiny(data_file, str(tmp_path / "busy"), threads=0, max_steps=1))
    assert torch.get_num_threads() == 1 and summary["config"]["threads"] == 1
    out, err = capsys.readouterr()
    assert err.count("busy machine: load 2.5 on 2 cores, so 1 thread (--threads N to choose)\n") == 1
    assert "on cpu with 1 thread\n" in out


def test_a_seed_repeats_a_run_bit_for_bit_on_one_machine_at_the_default_threads(data_file, tmp_path, idle):
    """Reproducible on one machine with one thread count (README): other CPUs or thread counts may change the
    digits. Dropout and NEFTune noise draw from the seeded streams too."""
    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        summary = T.train(tiny(data_file, str(tmp_path / name), threads=0, seed=seed, max_steps=4, dropout=0.1,
                               neftune_alpha=5.0))
        assert summary["config"]["threads"] == usable_cores()
        return params(str(tmp_path / name))
    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the comparison can tell runs apart


MOMENTS = ("forward", "backward", "optimizer, before the update", "optimizer, after the update")


def interrupt_once(s: T.Session, moment: str, step: int, rng: random.Random) -> None:
    """Send this process SIGINT once, at a random point of `moment` during optimizer step `step` (0-based): inside
    a random module's forward or a random parameter's backward (of any micro-batch), or in the optimizer step,
    before or after the fused kernel moved the weights (but before the loop counted the step)."""
    ids = plan_epoch(s.cfg, s.train, step // 3)[step % 3]  # 3 steps an epoch, of 8, 8 and 1 examples
    micro_batches = math.ceil(len(ids) / s.cfg.micro_batch_size)
    nth, calls = rng.randrange(micro_batches) if moment in ("forward", "backward") else 0, []

    def fire(*_):
        if s.prog.step == step:
            if len(calls) == nth:
                signal.raise_signal(signal.SIGINT)
            calls.append(1)

    if moment == "forward":
        rng.choice([m for block in s.model.transformer.h for m in block.modules()]).register_forward_hook(fire)
    elif moment == "backward":
        rng.choice(list(s.model.parameters())).register_hook(fire)
    elif moment == "optimizer, before the update":
        s.optimizer.register_step_pre_hook(fire)
    else:
        s.optimizer.register_step_post_hook(fire)


@pytest.mark.parametrize("trial", range(8))
def test_ctrl_c_at_any_moment_resumes_exactly(trial, data_file, tmp_path, monkeypatch, uninterrupted):
    """A real SIGINT at a random moment (dropout and NEFTune on, so random streams matter): the step in progress
    finishes, ckpt.pt is saved after it, and the resumed run ends bit-identical to the uninterrupted one. Before
    the stop flag, 9 of 12 such trials diverged and one tore a fused AdamW step."""
    rng, moment = random.Random(trial), MOMENTS[trial % len(MOMENTS)]
    step, setup = rng.randrange(5), T.setup  # the run has 6 steps: the signal always comes before the last

    def setup_with_interrupt(cfg, d, typed=None):
        s = setup(cfg, d, typed)
        interrupt_once(s, moment, step, rng)
        return s

    monkeypatch.setattr(T, "setup", setup_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(data_file, str(tmp_path), **RESUME))
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["step"] == step + 1  # the interrupted step, whole
    monkeypatch.setattr(T, "setup", setup)
    T.train(tiny(data_file, str(tmp_path), init_from="resume", **RESUME))
    resumed = params(str(tmp_path))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), (moment, step)


def test_second_ctrl_c_quits_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopAtStepBoundary() as signals:
            signal.raise_signal(signal.SIGTERM)
            assert signals.requested  # the first signal only asks
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C does not wait for the step to end
    assert signal.getsignal(signal.SIGINT) is before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_file, tmp_path, monkeypatch):
    run_micro = L.run_micro_batches
    calls = []

    def nan_on_third_step(*args, **kw):
        calls.append(1)
        sums = run_micro(*args, **kw)
        return sums * math.nan if len(calls) == 3 else sums

    monkeypatch.setattr(T, "run_micro_batches", nan_on_third_step)
    with pytest.raises(T.TrainingDiverged, match="nan.*step 3"):
        T.train(tiny(data_file, str(tmp_path), max_steps=5, eval_interval=2, micro_batch_size=8))
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------- configs and the command line

@pytest.mark.parametrize("values, message", [
    (dict(lr=-1.0), "--lr"),
    (dict(batch_size=10, micro_batch_size=4), "--batch_size 10 is not divisible by --micro_batch_size 4"),
    (dict(loss="both"), "--loss must be it or im"),
    (dict(init_from="gpt2", n_layer=2), "only apply to --init_from scratch"),
    (dict(schedule="step"), "--schedule"),
    (dict(max_steps=0, epochs=0.0), "--max_steps or --epochs"),
    (dict(bogus=1), "unknown setting"),
])
def test_invalid_configs_fail_before_any_work(values, message):
    with pytest.raises(UserError, match=message):
        make_config(T.TrainConfig, values)


def test_model_sizes_that_do_not_fit_fail_before_any_work(tmp_path):
    """GPTConfig lives in model.py, which the config package cannot import: train() checks the sizes right after
    the flags, before it touches the out_dir."""
    cfg = make_config(T.TrainConfig, dict(n_embd=100, n_head=3, out_dir=str(tmp_path / "out")))
    with pytest.raises(UserError, match="n_embd=100 is not divisible by n_head=3"):
        T.train(cfg)
    assert not (tmp_path / "out").exists()


def test_batch_must_split_over_the_processes():
    assert split_sizes(8, 2, 2) == (2, 2)
    assert split_sizes(8, 0, 2) == (4, 1)
    with pytest.raises(UserError, match="x 3 processes"):
        split_sizes(8, 2, 3)


def test_recipes():
    scratch = resolve(T.TrainConfig())
    assert (scratch.lr, scratch.min_lr, scratch.batch_size, scratch.max_steps) == (3e-3, pytest.approx(3e-4), 32, 400)
    assert resolve(T.TrainConfig(lr=1e-4)).min_lr == pytest.approx(1e-5)  # the floor follows a given lr
    paper = resolve(T.TrainConfig(init_from="gpt2"))
    recipe = (paper.lr, paper.schedule, paper.warmup_ratio, paper.epochs, paper.batch_size, paper.weight_decay)
    assert recipe == (2e-5, "linear", 0.03, 2, 128, 0.0)
    assert resolve(T.TrainConfig(init_from="gpt2", lr=1e-4)).lr == 1e-4
    assert resolve(T.TrainConfig(init_from="gpt2")).min_lr == 0.0
    assert resolve(T.TrainConfig(loss="im")).prompt_loss_weight == 1.0


def launch(args: list[str], torchrun: bool = False) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(launcher + [os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_command_line_smoke_runs(tmp_path, monkeypatch):
    """`python train.py` and `torchrun --nproc_per_node=2 train.py`, IT and IM, tiny: the held-out loss falls.
    (One of the four runs goes through main() in this process, while the others run, to save a start-up.)
    And a bad flag: one line on stderr, exit code 2."""
    small = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--synth_examples=40", "--synth_heldout=8", "--synth_facts=2",
             "--batch_size=4", "--max_steps=4", "--lr=1e-2", "--eval_examples=8", "--train_eval_size=8"]
    runs = [("python", "im"), ("torchrun", "it"), ("torchrun", "im"), ("in-process", "it")]
    args = {run: small + [f"--loss={run[1]}", f"--out_dir={tmp_path / '-'.join(run)}"] for run in runs}
    jobs = {run: launch(args[run], torchrun=run[0] == "torchrun") for run in runs[:3]}
    bad = launch(["--lr=-1", f"--out_dir={tmp_path / 'bad'}"])
    monkeypatch.setattr(sys, "argv", ["train.py", *args[runs[3]]])
    T.main()
    _, err = bad.communicate(timeout=120)
    assert (bad.returncode, err) == (2, "error: --lr must be >= 0, got -1\n")  # one line, no traceback
    for run in runs:
        if run in jobs:
            _, err = jobs[run].communicate(timeout=180)
            assert jobs[run].returncode == 0, (run, err[-3000:])
        with open(tmp_path / "-".join(run) / "summary.json") as f:
            summary = json.load(f)
        assert summary["world_size"] == (2 if run[0] == "torchrun" else 1)
        assert summary["config"]["prompt_loss_weight"] == (1.0 if run[1] == "im" else 0.0)
        first, last = summary["history"][0], summary["history"][-1]
        assert (first["step"], last["step"]) == (0, 4)
        assert last["val_output_loss"] < first["val_output_loss"] - 0.1, run


@pytest.mark.parametrize("flag, message", [
    ("--lr=-1", "error: --lr must be >= 0, got -1\n"),
    ("--batch_size=6", "error: --batch_size 6 is not divisible by --micro_batch_size 4\n"),
    ("--no_such_flag=1", "unrecognized arguments: --no_such_flag=1"),
])
def test_command_line_errors_are_one_line_and_exit_2(flag, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py", flag, "--micro_batch_size=4", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(T.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert not os.listdir(tmp_path)  # nothing was written


def test_overfits_one_batch(data_file, tmp_path):
    cfg = tiny(data_file, str(tmp_path), num_examples=4, batch_size=4, micro_batch_size=4, max_steps=50, lr=1e-2,
               schedule="constant", warmup_ratio=0.0, weight_decay=0.0, loss="im", save=False)
    T.train(cfg)
    losses = [r["loss"] for r in log_records(cfg.out_dir) if "loss" in r]
    assert losses[0] > 5.0 and losses[-1] < 0.5, (losses[0], losses[-1])
